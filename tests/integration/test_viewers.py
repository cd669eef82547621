"""Viewers in storage sessions end to end (JoinStorageSessionAsViewer): a master streams
stamped video and a tone into a real Local KVS; viewers (kvsnb ViewerSession, aiortc)
receive the master's media from the storage session, talk back, and the rules of docs/wire.md
hold."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from kvsnb.client.session import JoinPolicy, MasterSession, SessionError, ViewerSession
from kvsnb.client.signaling import SignalingClient
from kvsnb.client.target import Target
from kvsnb.local import LocalKvs
from kvsnb.playback import get_media, list_fragments
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import make_client, start_kvs, wait_for, wait_until

POLICY = JoinPolicy.local()
MASTER_HZ = 440.0
VIEWER_HZ = 1000.0
RATE = 48_000
SILENCE_RMS = 30.0  # int16 RMS below which audio is taken as silence (tones are ~thousands)


def tone_level(samples: np.ndarray, hz: float) -> float:
    """Spectral peak near ``hz`` relative to the spectrum around it (±300 Hz, the peak's band
    left out): ≫ 1 when the tone is there; near 1 for silence or broadband sound (the time
    marks of another tone are clicks, not a tone)."""
    if len(samples) < RATE // 4:
        return 0.0
    x = samples[-RATE:].astype(float)
    if np.sqrt(np.mean(x**2)) < SILENCE_RMS:
        return 0.0  # near silence: its spectrum's peak-to-mean ratio says nothing
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    band = (freqs > hz - 15) & (freqs < hz + 15)
    around = (np.abs(freqs - hz) < 300) & ~band
    return float(spec[band].max() / (np.median(spec[around]) + 1e-9))


@pytest.fixture
def kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    server = start_kvs(tmp_path / "data", viewer_slot_hold_s=1.0)
    yield server
    server.stop_in_thread()


def master(target: Target, channel: str) -> MasterSession:
    return MasterSession(
        target,
        channel,
        video=TestPatternTrack(320, 240, 30),
        audio=ToneTrack(MASTER_HZ),
        policy=POLICY,
    )


async def test_two_viewers_get_the_masters_media_and_talk_back(
    target: Target, kvs: LocalKvs
) -> None:
    channel_arn, stream_arn = target.create_storage_channel("room")
    v1 = ViewerSession(target, "room", client_id="v1", audio=ToneTrack(VIEWER_HZ), policy=POLICY)
    v2 = ViewerSession(target, "room", client_id="v2", policy=POLICY)
    # viewers join before the master: connected, but nothing to see or hear yet
    await v1.start(timeout=15)
    await v2.start(timeout=15)
    viewers = kvs.sessions.channels[channel_arn].viewers
    await wait_until(  # a second of v1's tone has reached the storage session
        lambda: "v1" in viewers and viewers["v1"].stats.audio_frames >= 50,
        "Local KVS receives v1's audio",
    )
    assert len(v1.received.frames_df()) == 0
    # without a master, viewers don't hear each other
    assert tone_level(v2.received.audio(), VIEWER_HZ) < 5
    m = master(target, "room")
    await m.start(timeout=15)
    for v in (v1, v2):  # media once the master arrived
        await wait_until(
            lambda v=v: len(v.received.frames_df().dropna()) > 45,  # type: ignore[misc]
            f"{v.client_id} receives the master's frames",
        )
    for v in (v1, v2):  # the master's tone, and v1 heard by v2 and by the master
        await wait_until(
            lambda v=v: tone_level(v.received.audio(), MASTER_HZ) > 20,  # type: ignore[misc]
            f"{v.client_id} hears the master",
        )
    await wait_until(lambda: tone_level(v2.received.audio(), VIEWER_HZ) > 20, "v2 hears v1")
    await wait_until(lambda: tone_level(m.received.audio(), VIEWER_HZ) > 20, "m hears v1")
    for v in (v1, v2):
        frames = v.received.frames_df().dropna()
        idx = frames["frame_index"].astype(int).to_numpy()
        assert (np.diff(idx) > 0).all()  # stamps in order
        assert (frames["latency_ms"] >= 0).all()  # on one clock: never before capture
        assert tone_level(v.received.audio(), MASTER_HZ) > 20  # the master's tone
    assert tone_level(v2.received.audio(), VIEWER_HZ) > 20  # v1 heard by v2
    assert tone_level(v1.received.audio(), VIEWER_HZ) < 5  # but not by itself
    assert tone_level(m.received.audio(), VIEWER_HZ) > 20  # v1 heard by the master
    assert v1.received.latest_frame() is not None
    await m.stop()
    await wait_until(  # the master's session has ended with the viewers still in
        lambda: kvs.sessions.channels[channel_arn].master_left_at is not None,
        "Local KVS ends the master's storage session",
    )
    await v1.stop()
    await v2.stop()
    # the viewer's tone is in the stored audio, mixed with the master's
    fragments = list_fragments(target, stream_arn)
    media = get_media(target, stream_arn, list(fragments["fragment_number"]))
    with av.open(io.BytesIO(media), mode="r") as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(
            np.float32
        )
    stored = (pcm * 32767).astype(np.int16) if np.abs(pcm).max() <= 1.0 else pcm.astype(np.int16)
    assert tone_level(stored, VIEWER_HZ) > 10
    assert tone_level(stored, MASTER_HZ) > 10


async def check_fourth_viewer_refused(target: Target, channel: str, channel_arn: str) -> None:
    """With 3 viewers in, a fourth ClientId gets AWS's ClientLimitExceededException (400)
    from boto3, and a kvsnb ViewerSession fails with that message."""
    ep = target.endpoints(channel_arn, "VIEWER")
    client = make_client("kinesis-video-webrtc-storage", ep.webrtc)
    refusals: list[Any] = []

    async def refused_past_the_quota() -> bool:
        with pytest.raises(client.exceptions.ClientLimitExceededException) as err:
            client.join_storage_session_as_viewer(channelArn=channel_arn, clientId="v4")
        refusals.append(err.value)
        return "calls per second" not in str(err.value)

    # the 2 joins/s quota may answer first when the three joined just now: calls paced
    # 0.6 s apart until the answer is about the viewers
    await wait_for(refused_past_the_quota, "a refusal past the joins quota", 30, every_s=0.6)
    assert "maximum number of viewers connected to the session" in str(refusals[-1])
    assert refusals[-1].response["ResponseMetadata"]["HTTPStatusCode"] == 400
    fourth = ViewerSession(target, channel, client_id="v4", policy=POLICY)
    with pytest.raises(SessionError, match="maximum number of viewers"):
        await fourth.start(timeout=15)


async def test_fourth_viewer_is_refused(target: Target, kvs: LocalKvs) -> None:
    channel_arn, _ = target.create_storage_channel("full")
    viewers = [ViewerSession(target, "full", client_id=f"v{i}", policy=POLICY) for i in range(3)]
    for v in viewers:
        await v.start(timeout=15)
    await check_fourth_viewer_refused(target, "full", channel_arn)
    # the same ClientId again is no fourth viewer: the new session replaces the older one
    again = ViewerSession(target, "full", client_id="v0", policy=POLICY)
    await again.start(timeout=15)
    await wait_until(
        lambda: viewers[0].state in ("failed", "closed", "reconnecting"),
        "the replaced viewer's session ends",
    )
    assert kvs.sessions.channels[channel_arn].viewers["v0"].conn is not None
    ended = [p for p in kvs.sessions.ended if p.client_id == "v0"]
    assert ended and ended[0].stats.end_reason == "replaced by a newer JoinStorageSessionAsViewer"
    for v in [again, *viewers[1:]]:
        await v.stop()
    await viewers[0].stop()
    # a departed viewer's slot is held for a while (1 s here) and then freed: a new viewer
    # is refused while the three slots are held, and joins once they are freed
    joined: list[ViewerSession] = []

    async def late_viewer_joins() -> bool:
        late = ViewerSession(target, "full", client_id="v9", policy=POLICY)
        try:
            await late.start(timeout=15)
        except SessionError as exc:
            assert "maximum number of viewers" in str(exc)
            return False
        joined.append(late)
        return True

    await wait_for(late_viewer_joins, "a departed viewer's slot is freed", deadline_s=30)
    await joined[0].stop()


async def test_wrong_viewer_answer_gets_status_response(target: Target) -> None:
    channel_arn, _ = target.create_storage_channel("wrongviewer")
    ep = target.endpoints(channel_arn, "VIEWER")
    client = SignalingClient(
        ep.wss,
        channel_arn,
        target.credentials(),
        target.region,
        role="VIEWER",
        client_id="bad",
    )
    await client.open()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        make_client("kinesis-video-webrtc-storage", ep.webrtc).join_storage_session_as_viewer(
            channelArn=channel_arn, clientId="bad"
        )
        while True:
            ev = await client.next_event(5)
            if ev.message is not None and ev.message.type == "SDP_OFFER":
                break
        assert ev.message.sender_client_id is None
        offer = ev.message.payload["sdp"]  # type: ignore[index]
        assert "a=sendonly" in offer[offer.index("m=video") :]  # video towards the viewer
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for t in pc.getTransceivers():
            if t.kind == "video":
                t.direction = "inactive"  # a viewer must receive video: recvonly
        await pc.setLocalDescription(await pc.createAnswer())
        corr = await client.send("SDP_ANSWER", {"type": "answer", "sdp": pc.localDescription.sdp})
        while True:
            ev = await client.next_event(5)
            if ev.message is not None and ev.message.type == "STATUS_RESPONSE":
                break
        status = ev.message.status
        assert status is not None and status.correlation_id == corr
        assert status.error_type == "InvalidArgumentException" and status.status_code == "400"
        assert "video must be recvonly" in (status.description or "")
    finally:
        await pc.close()
        await client.close()


def test_view_command(kvs: LocalKvs, target: Target) -> None:
    """``kvsnb view`` prints the timeline and a summary, and exits non-zero with AWS's
    error message when the join is refused."""
    target.kinesisvideo.create_signaling_channel(ChannelName="plain")  # no storage
    cmd = [
        sys.executable,
        "-m",
        "kvsnb.cli",
        "view",
        "--channel",
        "plain",
        "--client-id",
        "c1",
        "--seconds",
        "1",
        "--endpoint-url",
        kvs.url,
        "--connect-timeout",
        "10",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "media storage DISABLED" in done.stderr
    target.create_storage_channel("withstorage")

    async def stream_and_view() -> subprocess.CompletedProcess[str]:
        m = master(target, "withstorage")
        await m.start(timeout=15)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kvsnb.cli",
                "view",
                "--channel",
                "withstorage",
                "--client-id",
                "c2",
                "--seconds",
                "2",
                "--endpoint-url",
                kvs.url,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            await m.stop()
        return subprocess.CompletedProcess(cmd, proc.returncode or 0, out.decode(), err.decode())

    done = asyncio.run(stream_and_view())
    assert done.returncode == 0, done.stderr
    frames_line = next(ln for ln in done.stdout.splitlines() if ln.startswith("frames received:"))
    assert int(frames_line.split(":")[1]) > 0  # how many in 2 s depends on the load
    assert "master → viewer latency: p50" in done.stdout
