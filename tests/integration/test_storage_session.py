"""Storage sessions end to end: kvsnb's master (MasterSession, aiortc) joins a real Local KVS
on 127.0.0.1 and its media is stored; read back with boto3 (ListFragments,
GetMediaForFragmentList) and decoded with PyAV."""

from __future__ import annotations

import io
import itertools
import random
import re
import time
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from kvsnb.analysis import compare_delivery
from kvsnb.client.ingest import ingest
from kvsnb.client.session import (
    JoinPolicy,
    MasterSession,
    SessionError,
    is_retryable,
    prepare_remote_offer,
)
from kvsnb.client.signaling import SignalingClient, SignalingMessage
from kvsnb.client.target import Target
from kvsnb.client.timeline import STEPS
from kvsnb.launch import connect
from kvsnb.local import LocalKvs
from kvsnb.playback import decode_video, get_media, list_fragments
from kvsnb.wire import sdp
from tests.conftest import (
    FRAGMENT_S,
    ingest_frames,
    make_client,
    start_kvs,
    stored_delivery,
    stored_stamps,
    wait_until,
)

POLICY = JoinPolicy.local()


async def master_finished(kvs: LocalKvs, channel_arn: str) -> None:
    """Wait until the channel's storage session with its master has ended and released
    what it held (its partial fragment stored)."""

    def finished() -> bool:
        master = kvs.sessions.sessions.get(channel_arn)
        return master is not None and master.finished

    await wait_until(finished, "the master's storage session ended and stored its media")


async def test_master_ingests_and_every_frame_is_stored(target: Target, kvs: LocalKvs) -> None:
    _, stream_arn = target.create_storage_channel("ingest")
    result = await ingest_frames(target, "ingest", 105)  # 3.5 s of capture, or more

    # ListFragments with a plain boto3 client at the GetDataEndpoint endpoint.
    kv = make_client("kinesisvideo", kvs.url)
    endpoint = kv.get_data_endpoint(StreamARN=stream_arn, APIName="LIST_FRAGMENTS")
    am = make_client("kinesis-video-archived-media", endpoint["DataEndpoint"])
    listed = am.list_fragments(StreamARN=stream_arn)["Fragments"]
    assert len(listed) >= 3
    numbers = sorted(listed, key=lambda f: int(f["FragmentNumber"]))
    starts = [f["ProducerTimestamp"].timestamp() for f in numbers]
    assert starts == sorted(starts)
    # Fragments cover the frames sent: first capture ≥ first fragment start, and contiguous.
    first_capture = result.frames_sent["capture_ms"].min() / 1000
    assert abs(first_capture - starts[0]) < 0.5
    for a, b in itertools.pairwise(numbers):
        end_a = a["ProducerTimestamp"].timestamp() + a["FragmentLengthInMilliseconds"] / 1000
        assert abs(end_a - b["ProducerTimestamp"].timestamp()) < 0.1

    # Each fragment is keyframe-aligned: its first decoded frame is a keyframe.
    for f in numbers:
        body = am.get_media_for_fragment_list(
            StreamARN=stream_arn, Fragments=[f["FragmentNumber"]]
        )["Payload"].read()
        first = next(iter(decode_video(body)))
        assert first.keyframe, f["FragmentNumber"]
        tags = body.count(b"AWS_KINESISVIDEO_FRAGMENT_NUMBER")
        assert tags == 1

    # Every stamp sent is in the stored media, once, in order (no loss on loopback).
    _, (stamps, unreadable) = stored_stamps(target, stream_arn)
    delivery = compare_delivery(result.frames_sent, stamps, unreadable)
    assert list(result.frames_sent["frame_index"]) == list(range(105))
    assert delivery.complete, str(delivery)

    # The stored media has an AAC track next to H.264.
    media = get_media(target, stream_arn, [f["FragmentNumber"] for f in numbers])
    with av.open(io.BytesIO(media), mode="r") as c:
        assert {s.codec_context.name for s in c.streams} == {"h264", "aac"}
    # The master encoded with kvsnb's real-time encoder: x264 states its settings in an SEI
    # of its first keyframe, and the veryfast preset's are subme=2 (aiortc's own: subme=7).
    assert x264_settings(media) == [REALTIME_X264]


REALTIME_X264 = b"subme=2"  # what x264 writes for the preset kvsnb's masters encode with


def x264_settings(media: bytes) -> list[bytes]:
    """The subpixel setting of each x264 encoder that made ``media`` (one SEI per encoder,
    in its first keyframe)."""
    return re.findall(rb"subme=\d+", media)


async def test_timeline_records_every_step_and_early_candidates(target: Target) -> None:
    target.create_storage_channel("timeline")
    result = await ingest(target, "timeline", seconds=0.5, policy=POLICY)
    steps = list(result.timeline.to_frame()["step"])
    for step in STEPS:  # every setup step, as kvsnb.client.timeline lists them
        assert step in steps, step
    assert steps.index("socket_open") < steps.index("join_call")  # socket first, then join
    # Local KVS trickles its candidates before the offer (candidates_first): buffered.
    buffered = result.timeline.first("candidates_buffered")
    assert buffered is not None and buffered.detail["count"] >= 1
    assert 0 < len(result.timeline.frames) == len(result.frames_sent)


async def test_candidates_after_the_offer(tmp_path: Path) -> None:
    server = start_kvs(tmp_path / "d", candidates_first=False)
    try:
        with connect(endpoint_url=server.url) as tg:
            tg.create_storage_channel("late-candidates")
            result = await ingest(tg, "late-candidates", seconds=0.5, policy=POLICY)
            assert result.timeline.first("dtls_connected") is not None
    finally:
        server.stop_in_thread()


async def test_bundle_only_video_offer(tmp_path: Path) -> None:
    server = start_kvs(tmp_path / "d", bundle_only_video=True)
    try:
        with connect(endpoint_url=server.url) as tg:
            _, stream_arn = tg.create_storage_channel("bundle")
            source = _pattern()
            session = MasterSession(tg, "bundle", video=source, audio=_tone(), policy=POLICY)
            await session.start(timeout=15)
            await wait_until(lambda: len(source.sent) >= 36, "36 frames sent")
            await session.stop()
            offered = session.offers.last_offer
            assert offered is not None
            assert "m=video 0 " in offered and "a=bundle-only" in offered
            await wait_until(
                lambda: len(list_fragments(tg, stream_arn)) >= 1, "a fragment is stored"
            )
    finally:
        server.stop_in_thread()


async def test_offer_shape_is_aws(target: Target, kvs: LocalKvs) -> None:
    channel_arn, _ = target.create_storage_channel("shape")
    ep = target.endpoints(channel_arn, "MASTER")
    client = SignalingClient(ep.wss, channel_arn, target.credentials(), target.region)
    await client.open()
    try:
        webrtc = make_client("kinesis-video-webrtc-storage", ep.webrtc)
        resp = webrtc.join_storage_session(channelArn=channel_arn)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
        messages: list[SignalingMessage] = []
        while not any(m.type == "SDP_OFFER" for m in messages):
            ev = await client.next_event(5)
            if ev.message is not None:
                messages.append(ev.message)
        offer = next(m for m in messages if m.type == "SDP_OFFER")
        cands = [m for m in messages if m.type == "ICE_CANDIDATE"]
        assert offer.sender_client_id is None
        assert cands and all("sdpMid" not in c.payload for c in cands)  # type: ignore[operator]
        text = offer.payload["sdp"]  # type: ignore[index]
        lines = text.splitlines()
        mlines = [ln for ln in lines if ln.startswith("m=")]
        assert mlines[0].startswith("m=audio") and mlines[1].startswith("m=video")
        assert "a=group:BUNDLE 0 1" in lines
        assert "a=rtpmap:126 H264/90000" in lines and "a=rtpmap:111 opus/48000/2" in lines
        assert any(
            ln.startswith("a=fmtp:126 ")
            and "profile-level-id=42e01f" in ln
            and "packetization-mode=1" in ln
            for ln in lines
        )
        video = text[text.index("m=video") :]
        audio = text[text.index("m=audio") : text.index("m=video")]
        assert "a=recvonly" in video and "a=sendrecv" in audio
        assert "a=candidate" not in text
    finally:
        await client.close()


async def send_wrong_master_answer(target: Target, channel_arn: str) -> Any:
    """Join as master, answer the offer with video inactive (not sendonly) and return the
    STATUS_RESPONSE that follows, after checking its correlationId."""
    ep = target.endpoints(channel_arn, "MASTER")
    client = SignalingClient(ep.wss, channel_arn, target.credentials(), target.region)
    await client.open()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        make_client("kinesis-video-webrtc-storage", ep.webrtc).join_storage_session(
            channelArn=channel_arn
        )
        while True:
            ev = await client.next_event(5)
            if ev.message is not None and ev.message.type == "SDP_OFFER":
                break
        assert ev.message.payload is not None
        # An answer with no tracks attached: video inactive instead of sendonly.
        await pc.setRemoteDescription(RTCSessionDescription(ev.message.payload["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        corr = await client.send("SDP_ANSWER", {"type": "answer", "sdp": pc.localDescription.sdp})
        while True:
            ev = await client.next_event(5)
            if ev.message is not None and ev.message.type == "STATUS_RESPONSE":
                break
        status = ev.message.status
        assert status is not None
        assert status.correlation_id == corr
        return status
    finally:
        await pc.close()
        await client.close()


async def test_wrong_answer_gets_status_response_and_no_session(
    target: Target, kvs: LocalKvs
) -> None:
    channel_arn, _ = target.create_storage_channel("wrong")
    status = await send_wrong_master_answer(target, channel_arn)
    assert status.error_type == "InvalidArgumentException"
    assert status.status_code == "400"
    assert "video must be sendonly" in (status.description or "")
    assert (
        kvs.sessions.sessions.get(channel_arn) is None or kvs.sessions.sessions[channel_arn].closed
    )


async def test_video_only_master_is_refused_when_audio_is_required(target: Target) -> None:
    target.create_storage_channel("novideo")
    session = MasterSession(target, "novideo", video=_pattern(), audio=None, policy=POLICY)
    with pytest.raises(SessionError, match="audio must be sendonly or sendrecv"):
        await session.start(timeout=15)


async def test_video_only_master_accepted_when_switched(tmp_path: Path) -> None:
    server = start_kvs(tmp_path / "d", require_audio=False)
    try:
        with connect(endpoint_url=server.url) as tg:
            channel_arn, stream_arn = tg.create_storage_channel("videoonly")
            source = _pattern()
            async with MasterSession(tg, "videoonly", video=source, policy=POLICY):
                await wait_until(lambda: len(source.sent) >= 45, "45 frames sent")
                source.stop()
                master = server.sessions.sessions[channel_arn]
                await wait_until(
                    lambda: master.stats.video_frames >= len(source.sent),
                    "every frame sent reached the storage peer",
                )
            delivery = await stored_delivery(tg, stream_arn, source.frames_df())
            assert delivery.complete, str(delivery)
    finally:
        server.stop_in_thread()


async def test_no_offer_is_retried_with_backoff(tmp_path: Path) -> None:
    # 6 joins left unanswered: the 7th call of the same attempt (as the JS loop) gets one
    server = start_kvs(tmp_path / "d", unanswered_joins=6)
    try:
        with connect(endpoint_url=server.url) as tg:
            tg.create_storage_channel("retry")
            # offers waited for 0.6 s: calls stay within the 2 joins/s quota
            policy = JoinPolicy.local()
            session = MasterSession(tg, "retry", video=_pattern(), audio=_tone(), policy=policy)
            await session.start(timeout=30)
            await session.stop()
            events = session.timeline.events
            calls = [e for e in events if e.step == "join_call"]
            timeouts = [e for e in events if e.step == "offer_timeout"]
            assert len(calls) == 7 and len(timeouts) == 6
            assert session.timeline.first("attempt_failed") is None  # all in one attempt
            for a, b in itertools.pairwise(calls):
                assert b.mono - a.mono >= policy.offer_wait_s  # waited before calling again
            assert session.joins == 7
    finally:
        server.stop_in_thread()


def test_retry_policy_is_the_js_sdks() -> None:
    policy = JoinPolicy()

    class Fixed(random.Random):
        def __init__(self, r: float) -> None:
            super().__init__()
            self.r = r

        def random(self) -> float:
            return self.r

    # the JS sample: 6000 + min(rand·200^(retries−1), 10000) ms, retries = calls before
    assert policy.retry_delay(1, Fixed(0.5)) == pytest.approx(6.0000025)  # 200^-1 · 0.5 ms
    assert policy.retry_delay(2, Fixed(0.5)) == pytest.approx(6.0005)  # 200^0 · 0.5 ms
    assert policy.retry_delay(3, Fixed(0.5)) == pytest.approx(6.1)  # 200^1 · 0.5 ms
    assert policy.retry_delay(4, Fixed(0.5)) == pytest.approx(16.0)  # capped at 10 s
    assert policy.max_calls_per_attempt == 7  # first call + 6 retries (``retries <= 5``)
    from botocore.exceptions import ClientError

    def err(code: str, msg: str, status: int) -> ClientError:
        # partial ResponseMetadata: botocore-stubs' TypedDict wants all of its keys
        response: Any = {
            "Error": {"Code": code, "Message": msg},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return ClientError(response, "JoinStorageSession")

    assert is_retryable(err("ClientLimitExceededException", "too many calls", 400))
    assert not is_retryable(
        err(
            "ClientLimitExceededException",
            "Reached the maximum number of viewers connected to the session",
            400,
        )
    )
    assert is_retryable(err("InternalFailure", "boom", 500))
    assert not is_retryable(err("InvalidArgumentException", "nope", 400))
    assert is_retryable(TimeoutError())


async def test_session_refuses_channel_without_storage(target: Target) -> None:
    target.kinesisvideo.create_signaling_channel(ChannelName="nostorage")
    session = MasterSession(target, "nostorage", video=_pattern(), audio=_tone(), policy=POLICY)
    with pytest.raises(SessionError, match="media storage DISABLED"):
        await session.start(timeout=10)


async def test_disconnect_mid_fragment_loses_nothing(target: Target, kvs: LocalKvs) -> None:
    channel_arn, stream_arn = target.create_storage_channel("partial")
    result = await ingest(target, "partial", seconds=2.4, policy=POLICY)
    await master_finished(kvs, channel_arn)
    fragments, (stamps, unreadable) = stored_stamps(target, stream_arn)
    delivery = compare_delivery(result.frames_sent, stamps, unreadable)
    assert delivery.complete, str(delivery)
    # the last fragment is the partial one, closed when the master left
    assert fragments["duration_ms"].iloc[-1] < FRAGMENT_S * 1000 * 0.9


async def test_restart_serves_stored_fragments(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_kvs(data)
    try:
        with connect(endpoint_url=server.url) as tg:
            channel_arn, stream_arn = tg.create_storage_channel("durable")
            result = await ingest(tg, "durable", seconds=1.5, policy=POLICY)
            await master_finished(server, channel_arn)
            before, _ = stored_stamps(tg, stream_arn)
    finally:
        server.stop_in_thread()
    again = start_kvs(data)
    try:
        with connect(endpoint_url=again.url) as tg:
            after, (stamps, unreadable) = stored_stamps(tg, stream_arn)
            assert list(after["fragment_number"]) == list(before["fragment_number"])
            assert compare_delivery(result.frames_sent, stamps, unreadable).complete
    finally:
        again.stop_in_thread()


async def test_newest_master_wins(target: Target, kvs: LocalKvs) -> None:
    channel_arn, stream_arn = target.create_storage_channel("two-masters")
    first_source = _pattern(start_index=0)
    first = MasterSession(target, "two-masters", video=first_source, audio=_tone(), policy=POLICY)
    await first.start(timeout=15)
    await wait_until(lambda: len(first_source.sent) >= 30, "the first master sends")
    old = kvs.sessions.sessions[channel_arn]
    second_source = _pattern(start_index=100_000)
    second = MasterSession(target, "two-masters", video=second_source, audio=_tone(), policy=POLICY)
    await second.start(timeout=15)
    t_switch = time.time()
    await wait_until(lambda: len(second_source.sent) >= 45, "the second master sends")
    assert old.closed and old.stats.end_reason == "replaced by a newer JoinStorageSession"
    assert kvs.sessions.sessions[channel_arn] is not old
    await second.stop()
    await first.stop()
    await master_finished(kvs, channel_arn)
    _, (stamps, _) = stored_stamps(target, stream_arn)
    late = stamps[stamps["capture_ms"] > (t_switch + 0.5) * 1000]
    assert len(late) > 20 and (late["frame_index"] >= 100_000).all()


def _pattern(start_index: int = 0) -> Any:
    from kvsnb.sources import TestPatternTrack

    return TestPatternTrack(320, 240, 30, start_index=start_index)


def _tone() -> Any:
    from kvsnb.sources import ToneTrack

    return ToneTrack()


@pytest.mark.timeout(300)  # re-joins every 1.5 s: long on a busy machine
async def test_media_flows_on_after_each_rejoin(tmp_path: Path) -> None:
    """Signaling sockets idle out (10 min on AWS, 1.5 s here); the clients reconnect and
    re-join, as the JS SDK does, on new peer connections with the same sources: the sources
    stay live, every frame but those in flight at a re-join is stored, the viewer keeps
    receiving."""
    from kvsnb.client.session import ViewerSession
    from kvsnb.local import SignalingLimits
    from kvsnb.sources import TestPatternTrack, ToneTrack

    limits = SignalingLimits(connects_per_s=100.0, idle_timeout_s=1.5)
    server = start_kvs(tmp_path / "data", signaling=limits)
    try:
        with connect(endpoint_url=server.url) as tg:
            _, stream_arn = tg.create_storage_channel("rejoin")
            video = TestPatternTrack(320, 240, 30)
            master = MasterSession(tg, "rejoin", video=video, audio=ToneTrack(), policy=POLICY)
            viewer = ViewerSession(tg, "rejoin", client_id="watcher", policy=POLICY)
            await master.start(timeout=15)
            await viewer.start(timeout=15)

            def reconnects(session: Any) -> list[Any]:
                return [e for e in session.timeline.events if e.step == "socket_reconnected"]

            def sent_after_rejoin(n: int) -> int:
                """Frames captured from 0.5 s after the master's n-th re-join on."""
                rejoins = reconnects(master)
                if len(rejoins) <= n:
                    return 0
                after = rejoins[n].wall * 1000 + 500
                return sum(1 for f in video.sent if f.capture_ms > after)

            await wait_until(
                lambda: (
                    len(reconnects(viewer)) >= 2
                    and sent_after_rejoin(0) >= 60
                    and sent_after_rejoin(1) >= 15
                ),
                "two re-joins each, 60 frames sent after the first and 15 after the second",
            )
            # the two re-joins waited for (a third may be under way as the source stops)
            rejoins = reconnects(master)[:2]
            first_rejoin = min(e.wall for e in rejoins)
            assert video.readyState == "live"
            video.stop()
            sent = video.frames_df()
            later = sent[sent["capture_ms"] > first_rejoin * 1000 + 500]

            def seen_by_viewer() -> set[int]:
                received = viewer.received.frames_df().dropna()
                return set(later["frame_index"]) & set(received["frame_index"].astype(int))

            # the last frames reach the viewer through the storage session
            await wait_until(
                lambda: len(seen_by_viewer()) >= 0.8 * len(later),
                "the viewer saw 80 % of the frames sent after the first re-join",
                deadline_s=15,
            )
            seen = seen_by_viewer()
            await viewer.stop()
            await master.stop()
            # each re-join's new sender encoded with kvsnb's real-time encoder too
            fragments = list_fragments(tg, stream_arn)["fragment_number"]
            settings = x264_settings(get_media(tg, stream_arn, list(fragments)))
            assert len(settings) >= 3 and set(settings) == {REALTIME_X264}, settings
            # the source never stopped: one run of frames from the first to the last
            assert list(sent["frame_index"]) == list(range(len(sent)))
            assert sent["capture_ms"].max() > max(e.wall for e in rejoins) * 1000
            delivery = await stored_delivery(tg, stream_arn, sent)
            # frames in flight at a re-join may be lost: at most one per re-join
            assert len(delivery.missing) <= len(reconnects(master)), str(delivery)
            # the viewer sees the master on after re-joins (short gaps at its own re-joins)
            assert len(later) >= 60 and len(seen) >= 0.8 * len(later), (len(seen), len(later))
    finally:
        server.stop_in_thread()


class _Sent:
    """Records what kvsnb's signaling clients send (the real ``send`` still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        original = SignalingClient.send

        async def send(client: SignalingClient, action: Any, payload: Any, *a: Any) -> str:
            self.messages.append((action, payload))
            return await original(client, action, payload, *a)

        monkeypatch.setattr(SignalingClient, "send", send)

    def of(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.messages if a == action]


async def test_answer_is_h264_and_opus_whatever_the_offer_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offer listing VP8 and High H.264 before the storage H.264, PCMU/PCMA before Opus:
    the answer has H.264 Constrained Baseline (what the encoder sends) with its RTX and Opus,
    and what is stored is H.264 + AAC with every frame sent (issue 15, point 1)."""
    sent = _Sent(monkeypatch)
    server = start_kvs(tmp_path / "d", browser_codec_order=True)
    try:
        with connect(endpoint_url=server.url) as tg:
            _, stream_arn = tg.create_storage_channel("order")
            result = await ingest(tg, "order", seconds=1.5, policy=POLICY)
            answer = sent.of("SDP_ANSWER")[0]["sdp"]
            video = sdp.codecs(answer, "video")
            assert [c.name for c in video] == ["H264"]
            assert video[0].payload_type == 126
            assert video[0].params["profile-level-id"] == "42e01f"
            assert video[0].params["packetization-mode"] == "1"
            assert sdp.payload_types(answer, "video", "rtx") == [127]
            assert sdp.fmtp(answer, 127)["apt"] == "126"
            assert [c.name for c in sdp.codecs(answer, "audio")] == ["opus"]
            assert "640c1f" not in answer
            delivery = await stored_delivery(tg, stream_arn, result.frames_sent)
            assert delivery.complete, str(delivery)
            fragments = list_fragments(tg, stream_arn)
            body = get_media(tg, stream_arn, list(fragments["fragment_number"]))
            with av.open(io.BytesIO(body), mode="r") as c:
                assert {s.codec_context.name for s in c.streams} == {"h264", "aac"}
    finally:
        server.stop_in_thread()


def test_offer_without_h264_or_opus_is_named() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 98\r\na=rtpmap:96 VP8/90000\r\n"
        "a=rtpmap:98 H264/90000\r\na=fmtp:98 profile-level-id=42e01f;packetization-mode=0\r\n"
    )
    with pytest.raises(SessionError, match=r"VP8/90000 \(PT 96\).*packetization-mode=0"):
        prepare_remote_offer(offer)
    fixed = offer.replace("packetization-mode=0", "packetization-mode=1")
    with pytest.raises(SessionError, match=r"audio has no codec .*PCMU/8000 \(PT 0\)"):
        prepare_remote_offer(fixed)


@pytest.mark.parametrize("candidates_first", [True, False])
async def test_a_newer_offer_before_connecting_replaces_the_peer(
    tmp_path: Path, candidates_first: bool
) -> None:
    """The first join's offer arrives after the re-join was called, the re-join's offer after
    kvsnb answered it: kvsnb closes the superseded peer, answers the newest offer and connects
    at once, on that offer's candidates only (issue 15, point 2)."""
    server = start_kvs(
        tmp_path / "d",
        unanswered_joins=0,
        offer_delays_s=(0.6, 1.2),
        candidate_ufrag=True,
        candidates_first=candidates_first,
    )
    try:
        with connect(endpoint_url=server.url) as tg:
            tg.create_storage_channel("late")
            # offers waited for 0.3 s: the first offer (0.6 s late) comes after the re-join
            policy = JoinPolicy.local(offer_wait_s=0.3)
            session = MasterSession(tg, "late", video=_pattern(), audio=_tone(), policy=policy)
            await session.start(timeout=30)
            try:
                steps = [e.step for e in session.timeline.events]
                assert "offer_superseded" in steps
                assert "attempt_failed" not in steps  # no 10 s connect timeout, no 3rd join
                assert session.joins == 2
                first_call = session.timeline.first("join_call")
                connected = session.timeline.first("dtls_connected")
                assert first_call is not None and connected is not None
                assert connected.mono - first_call.mono < policy.connect_timeout_s
                # the connected peer holds the newest offer's candidates and no others
                assert session.pc is not None
                ufrag = session.candidates.remote_ufrag
                received = list(session.candidates.received)
                ice_transport = session.pc.getTransceivers()[0].receiver.transport.transport
                remote = {(c.ip, c.port) for c in ice_transport.getRemoteCandidates()}
                ours = [p for p in received if p.get("usernameFragment") == ufrag]
                others = [p for p in received if p.get("usernameFragment") != ufrag]
                assert ours and others
                from aiortc.sdp import candidate_from_sdp

                def addr(p: dict[str, Any]) -> tuple[str, int]:
                    c = candidate_from_sdp(p["candidate"].removeprefix("candidate:"))
                    return (c.ip, c.port)

                assert {addr(p) for p in ours} <= remote
                assert not {addr(p) for p in others} & remote
            finally:
                await session.stop()
    finally:
        server.stop_in_thread()


async def test_each_local_candidate_is_trickled_once(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transport is bundled: each candidate goes once, for the first m-line of the BUNDLE
    (issue 15, point 3)."""
    sent = _Sent(monkeypatch)
    target.create_storage_channel("once")
    await ingest(target, "once", seconds=0.3, policy=POLICY)
    candidates = sent.of("ICE_CANDIDATE")
    assert candidates
    strings = [c["candidate"] for c in candidates]
    assert len(strings) == len(set(strings))
    assert {(c["sdpMid"], c["sdpMLineIndex"]) for c in candidates} == {("0", 0)}


async def test_status_responses_are_in_the_timeline_and_only_the_answers_is_fatal(
    target: Target,
) -> None:
    """A STATUS_RESPONSE about something else than the current answer (here a bad candidate)
    is recorded with what it is about and the session carries on (issue 15, point 4)."""
    target.create_storage_channel("status")
    source = _pattern()
    session = MasterSession(target, "status", video=source, audio=_tone(), policy=POLICY)
    await session.start(timeout=30)
    try:
        assert session.signaling is not None
        await session.signaling.send("ICE_CANDIDATE", {"candidate": "candidate:garbage"})
        await wait_until(
            lambda: session.timeline.first("status_response") is not None, "a STATUS_RESPONSE"
        )
        event = session.timeline.first("status_response")
        assert event is not None
        assert event.detail["error"] == "InvalidArgumentException"
        assert event.detail["status"] == "400"
        assert event.detail["about"] == "unknown" and event.detail["fatal"] is False
        sent = len(source.sent)  # the session carries on: 15 more frames go out connected
        await wait_until(lambda: len(source.sent) >= sent + 15, "15 more frames sent")
        assert session.state == "connected"
    finally:
        await session.stop()
