"""AWS's published storage-session rules, each enforced by Local KVS as AWS enforces it and
each met by kvsnb's client (docs/wire.md, "Storage sessions", "Quotas", "SigV4 time"):

1. a storage session lasts at most 1 hour: the storage session ends it (its peer connection
   closes) and the master joins again on its own, losing no frame after the new session's
   first keyframe;
2. at most 100 signaling channels per account have media storage enabled: one more is
   ``ClientLimitExceededException`` and changes nothing; disabling storage frees a slot;
3. a viewer waits at most 3 minutes for a master: the storage session ends it and the
   ``ViewerSession`` ends ``failed`` with a ``SessionError`` that says so;
4. a SigV4 time more than 5 minutes from the server's clock is refused (strict mode), and a
   kvsnb ``Target`` corrects its clock from the refusal's ``Date`` and retries.

Durations are shortened through ``StorageOptions``; the clock of test 4 is Local KVS's
``clock_offset_s``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from yarl import URL

from kvsnb.analysis import stamps_from_frames
from kvsnb.client.clock import SigningClock
from kvsnb.client.session import JoinPolicy, MasterSession, SessionError, ViewerSession
from kvsnb.client.signaling import SignalingClient, presign_url
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits, StrictKeys
from kvsnb.local.control.plane import MAX_STORAGE_CHANNELS
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import decode_video, get_media, list_fragments
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import FAST, ingest_frames, make_client, start_kvs, wait_until

pytestmark = pytest.mark.timeout(120)

SESSION_LIMIT_S = 4.0  # the storage session's maximum duration (AWS: 1 h)
VIEWER_WAIT_S = 2.0  # a viewer's wait for a master (AWS: 3 min)
SKEW_S = 600.0  # Local KVS's clock runs 10 minutes ahead
KEY = "AKIASKEWEDCLOCKTEST1"
SECRET = "skewed-clock-secret"
AMZ_TIME = r"\d{8}T\d{6}Z"


# ---------------------------------------------------------------------------- 1. session limit


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[LocalKvs]:
    """Local KVS whose storage sessions end after ``SESSION_LIMIT_S``."""
    server = start_kvs(tmp_path / "data", max_session_s=SESSION_LIMIT_S)
    yield server
    server.stop_in_thread()


def stored_indexes(target: Target, stream_arn: str, numbers: list[str]) -> list[int]:
    """The stamped frame indexes stored in the fragments ``numbers``, in order (no frame may
    be unreadable)."""
    stamps, unreadable = stamps_from_frames(decode_video(get_media(target, stream_arn, numbers)))
    assert unreadable == 0
    return [int(i) for i in stamps["frame_index"]]


async def test_master_rejoins_when_the_storage_session_ends(limited: LocalKvs) -> None:
    """The storage session ends at its maximum duration (its peer connection closes, as AWS's
    media server ends it); the master's own 1 h timer has not fired, yet it joins again, and
    every frame it sends from the new session's first keyframe on is stored."""
    with connect(endpoint_url=limited.url) as target:
        channel_arn, stream_arn = target.create_storage_channel("limited")
        frames = 300  # 10 s: the server's limit ends at least one session midway
        pattern = TestPatternTrack(320, 240, 30, max_frames=frames)
        tone = ToneTrack()
        policy = JoinPolicy.local()
        assert policy.session_max_s == 3600.0  # the client's own timer stays out of the way
        session = MasterSession(target, "limited", video=pattern, audio=tone, policy=policy)
        peers: list[Any] = []  # every storage session of the master, in order

        def pattern_sent() -> bool:
            st = limited.sessions.channels.get(channel_arn)
            if st is not None and st.master is not None and st.master not in peers:
                peers.append(st.master)
            return pattern.readyState == "ended"

        try:
            await session.start(timeout=60)
            await wait_until(pattern_sent, f"the master sends all {frames} frames", 90, 0.02)
        finally:
            tone.stop()
            pattern.stop()
            await session.stop()
        assert len(pattern.sent) == frames
        await wait_until(lambda: peers[-1].finished, "the last session is cleaned up", 15)

        # the sessions that recorded (a join answered twice on a busy machine may add one
        # replaced before it connected)
        recorded = [p for p in peers if p.recorder is not None and p.recorder.stats.fragments]
        assert len(recorded) >= 2, [p.stats for p in peers]
        first = recorded[0].stats
        assert first.end_reason == "maximum session duration", first
        assert first.ended_at is not None and first.offer_sent_at is not None
        lasted = first.ended_at - first.offer_sent_at
        assert SESSION_LIMIT_S - 0.5 < lasted < SESSION_LIMIT_S + 2.0, lasted
        assert session.joins >= len(recorded)
        assert session.timeline.first("session_limit") is None  # not the client's timer

        fragments = list_fragments(target, stream_arn)
        numbers = sorted(fragments["fragment_number"], key=int)
        assert len(numbers) == sum(p.recorder.stats.fragments for p in recorded)
        start = 0
        for n, peer in enumerate(recorded):
            stats = peer.recorder.stats
            own = numbers[start : start + stats.fragments]
            start += stats.fragments
            if n == 0:
                continue
            # a re-joined session: from its first keyframe on, every frame it got is stored,
            # and the frames it stored are every frame the master sent in that span
            assert stats.errors == 0, stats
            assert stats.frames_stored == stats.frames_in - stats.dropped_before_keyframe > 0
            indexes = stored_indexes(target, stream_arn, own)
            assert len(indexes) == stats.frames_stored, (len(indexes), stats)
            assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), "a hole"
            if peer is recorded[-1]:
                assert indexes[-1] == frames - 1  # up to the last frame sent


# ---------------------------------------------------------------------------- 2. storage quota


def storage_of(kv: Any, channel_arn: str) -> dict[str, Any]:
    """DescribeMediaStorageConfiguration of a channel."""
    conf: dict[str, Any] = kv.describe_media_storage_configuration(ChannelARN=channel_arn)
    return conf["MediaStorageConfiguration"]


def make_pairs(kv: Any, n: int, prefix: str) -> list[tuple[str, str]]:
    """``n`` channels and streams (24 h retention), unmapped: ``(channel_arn, stream_arn)``."""
    pairs = []
    for i in range(n):
        channel = kv.create_signaling_channel(ChannelName=f"{prefix}{i}")["ChannelARN"]
        stream = kv.create_stream(StreamName=f"{prefix}{i}", DataRetentionInHours=24)["StreamARN"]
        pairs.append((channel, stream))
    return pairs


def enable(kv: Any, channel_arn: str, stream_arn: str) -> Any:
    """UpdateMediaStorageConfiguration ENABLED."""
    return kv.update_media_storage_configuration(
        ChannelARN=channel_arn,
        MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"},
    )


def test_storage_channel_quota(tmp_path: Path) -> None:
    """With a limit of 2: a third channel is refused with ClientLimitExceededException and
    nothing changes; remapping an enabled channel keeps its slot; disabling one frees it;
    deleting an enabled channel frees it too."""
    config = LocalKvsConfig(data_dir=tmp_path / "data", max_storage_channels=2)
    with LocalKvs(config) as kvs:
        kv = make_client("kinesisvideo", kvs.url)
        (c1, s1), (c2, s2), (c3, s3), (_, s4) = make_pairs(kv, 4, "quota")
        enable(kv, c1, s1)
        enable(kv, c2, s2)
        before = {c: storage_of(kv, c) for c in (c1, c2, c3)}
        with pytest.raises(ClientError) as err:
            enable(kv, c3, s3)
        error = err.value.response["Error"]
        assert error["Code"] == "ClientLimitExceededException"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "limit of 2 signaling channels with media storage enabled" in error["Message"]
        assert isinstance(err.value, kv.exceptions.ClientLimitExceededException)
        # nothing changed: the refused channel stays DISABLED, its stream unmapped
        assert {c: storage_of(kv, c) for c in (c1, c2, c3)} == before
        assert storage_of(kv, c3) == {"Status": "DISABLED"}
        mapped = kv.describe_mapped_resource_configuration(StreamARN=s3)
        assert mapped["MappedResourceConfigurationList"] == []
        # an enabled channel moved to another stream keeps its slot
        enable(kv, c1, s4)
        assert storage_of(kv, c1) == {"Status": "ENABLED", "StreamARN": s4}
        # disabling one frees a slot, and only one
        kv.update_media_storage_configuration(
            ChannelARN=c2, MediaStorageConfiguration={"Status": "DISABLED"}
        )
        enable(kv, c3, s3)
        with pytest.raises(kv.exceptions.ClientLimitExceededException):
            enable(kv, c2, s2)
        assert storage_of(kv, c2) == {"Status": "DISABLED"}
        # deleting an enabled channel frees its slot as well
        version = kv.describe_signaling_channel(ChannelARN=c1)["ChannelInfo"]["Version"]
        kv.delete_signaling_channel(ChannelARN=c1, CurrentVersion=version)
        enable(kv, c2, s2)
        assert storage_of(kv, c2) == {"Status": "ENABLED", "StreamARN": s2}


def test_storage_channel_quota_is_100_by_default(kv: Any) -> None:
    """AWS's figure: 100 channels with storage enabled, the 101st refused."""
    assert MAX_STORAGE_CHANNELS == 100
    pairs = make_pairs(kv, MAX_STORAGE_CHANNELS + 1, "many")
    for channel, stream in pairs[:-1]:
        enable(kv, channel, stream)
    with pytest.raises(kv.exceptions.ClientLimitExceededException):
        enable(kv, *pairs[-1])
    assert storage_of(kv, pairs[-1][0]) == {"Status": "DISABLED"}


# ---------------------------------------------------------------------------- 3. viewer waits


@pytest.fixture
def waiting(tmp_path: Path) -> Iterator[LocalKvs]:
    """Local KVS whose viewers wait at most ``VIEWER_WAIT_S`` for a master."""
    server = start_kvs(tmp_path / "data", viewer_wait_for_master_s=VIEWER_WAIT_S)
    yield server
    server.stop_in_thread()


async def test_viewer_without_a_master_is_ended(waiting: LocalKvs) -> None:
    """No master joins: the storage session ends the viewer's session after the wait, and
    the ViewerSession does not join again for ever: it ends ``failed`` with a SessionError
    that names the rule."""
    with connect(endpoint_url=waiting.url) as target:
        channel_arn, _ = target.create_storage_channel("lonely")
        viewer = ViewerSession(target, "lonely", policy=FAST)
        await viewer.start(timeout=30)
        peer = waiting.sessions.channels[channel_arn].viewers[viewer.client_id]
        try:
            await wait_until(lambda: viewer.state == "failed", "the viewer gives up", 30)
            with pytest.raises(SessionError, match="no master"):
                await viewer.wait_closed()
        finally:
            await viewer.stop()
        assert peer.finished
        assert peer.stats.end_reason == "no master within the viewer wait limit", peer.stats
        assert peer.stats.ended_at is not None and peer.stats.offer_sent_at is not None
        assert peer.stats.ended_at - peer.stats.offer_sent_at >= VIEWER_WAIT_S - 0.1
        assert viewer.joins == 1
        assert len(viewer.received.rows) == 0


async def test_viewer_with_a_master_stays(waiting: LocalKvs) -> None:
    """While a master sends, the wait does not apply: a viewer stays connected and gets the
    master's video for twice the wait."""
    with connect(endpoint_url=waiting.url) as target:
        channel_arn, _ = target.create_storage_channel("company")
        frames = round(30 * (VIEWER_WAIT_S * 2 + 2))
        master = asyncio.ensure_future(ingest_frames(target, "company", frames, policy=FAST))

        def master_sending() -> bool:
            assert not master.done() or master.exception() is None
            st = waiting.sessions.channels.get(channel_arn)
            return st is not None and st.master is not None and st.master.stats.video_frames > 0

        await wait_until(master_sending, "the master's media arrives", 60)
        viewer = ViewerSession(target, "company", policy=FAST)
        try:
            await viewer.start(timeout=30)
            joined = time.monotonic()
            await master
            assert time.monotonic() - joined > VIEWER_WAIT_S
            assert viewer.state == "connected"
            assert viewer.joins == 1
            assert len(viewer.received.rows) > 30 * VIEWER_WAIT_S
        finally:
            await viewer.stop()


# ---------------------------------------------------------------------------- 4. SigV4 time


@pytest.fixture
def skewed(tmp_path: Path) -> Iterator[LocalKvs]:
    """A strict Local KVS whose clock runs ``SKEW_S`` ahead of this machine's."""
    config = LocalKvsConfig(
        data_dir=tmp_path / "data",
        strict_keys=StrictKeys(KEY, SECRET),
        clock_offset_s=SKEW_S,
        signaling=SignalingLimits(connects_per_s=100.0),
        extra={"storage": StorageOptions(fragment_duration_s=1.0)},
    )
    with LocalKvs(config) as kvs:
        yield kvs


@pytest.fixture
def strict_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's credential chain yields the strict keys."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def server_offset_s(headers: Any) -> float:
    """How far a response's ``Date`` is from this machine's clock, in seconds."""
    date = parsedate_to_datetime(headers["date"] if "date" in headers else headers["Date"])
    return (date - dt.datetime.now(dt.UTC)).total_seconds()


async def test_plain_clients_are_refused_by_a_skewed_server(
    skewed: LocalKvs, strict_env: None
) -> None:
    """A boto3 client and a presigned signaling URL signed with this machine's clock are
    refused as AWS refuses them, and the refusal's Date tells the server's time."""
    kv = make_client(
        "kinesisvideo", skewed.url, aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    with pytest.raises(ClientError) as err:
        kv.list_signaling_channels()
    response = err.value.response
    assert response["Error"]["Code"] == "InvalidSignatureException"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    expired = (
        rf"Signature expired: {AMZ_TIME} is now earlier than {AMZ_TIME} \({AMZ_TIME} - 5 min\.\)"
    )
    assert re.fullmatch(expired, response["Error"]["Message"]), response["Error"]["Message"]
    assert abs(server_offset_s(response["ResponseMetadata"]["HTTPHeaders"]) - SKEW_S) < 5

    # a corrected client works: the server's clock, not the keys, was the problem
    with connect(endpoint_url=skewed.url, region="us-west-2") as target:
        target.clock.offset_s = SKEW_S
        channel_arn = target.kinesisvideo.create_signaling_channel(ChannelName="skew")["ChannelARN"]
        wss = target.endpoints(channel_arn, "MASTER", ("WSS",)).wss
    url = presign_url(wss, channel_arn, Credentials(KEY, SECRET), "us-west-2")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(URL(url, encoded=True))
        assert refused.value.status == 403
        assert refused.value.headers is not None
        assert refused.value.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")
        assert abs(server_offset_s(refused.value.headers) - SKEW_S) < 5
        # presigned at the server's time, the same URL is taken
        ahead = SigningClock(SKEW_S)
        url = presign_url(wss, channel_arn, Credentials(KEY, SECRET), "us-west-2", clock=ahead)
        ws = await http.ws_connect(URL(url, encoded=True))
        await ws.close()


async def test_a_target_corrects_its_clock(skewed: LocalKvs, strict_env: None) -> None:
    """A kvsnb Target refused for its clock takes the server's time from the refusal and
    retries once; from then on the control plane, GetIceServerConfig, the signaling
    WebSocket and JoinStorageSession all succeed, and a master's media is stored."""
    with connect(endpoint_url=skewed.url, region="us-west-2") as target:
        assert target.clock.offset_s == 0.0
        channel_arn, stream_arn = target.create_storage_channel("skewed")
        assert abs(target.clock.offset_s - SKEW_S) < 5
        endpoints = target.endpoints(channel_arn, "MASTER")
        assert target.ice_servers(endpoints, None) is not None  # GetIceServerConfig
        frames = 60
        result = await ingest_frames(target, "skewed", frames, policy=FAST)
        assert result.timeline.first("join_response") is not None  # JoinStorageSession
        await wait_until(
            lambda: (
                sum(f.frame_count for f in skewed.store.list_fragments(stream_arn)) >= frames - 2
            ),
            "the master's frames are stored",
            30,
        )
        # sessions presign their signaling URL with the target's clock (its offset learnt)
        viewer = ViewerSession(target, "skewed", policy=FAST)
        try:
            await viewer.start(timeout=30)
            assert viewer.signaling is not None and viewer.signaling.clock is target.clock
        finally:
            await viewer.stop()


async def test_a_wrong_secret_is_retried_once(
    skewed: LocalKvs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Correction is for the clock only: a wrong secret is refused for its time, retried once
    at the server's time, and then refused for its signature."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with connect(endpoint_url=skewed.url, region="us-west-2") as target:
        with pytest.raises(ClientError) as err:
            target.kinesisvideo.list_signaling_channels()
        assert err.value.response["Error"]["Code"] == "InvalidSignatureException"
        assert "does not match" in err.value.response["Error"]["Message"]
        assert abs(target.clock.offset_s - SKEW_S) < 5


async def test_a_signaling_client_corrects_its_own_clock(
    skewed: LocalKvs, strict_env: None
) -> None:
    """A SignalingClient whose URL expired on the server's clock reads the server's time
    from the refusal's Date and opens the socket on its second try; on a fresh clock that
    is off again, a reconnect corrects it the same way."""
    with connect(endpoint_url=skewed.url, region="us-west-2") as target:
        target.clock.offset_s = SKEW_S
        channel_arn = target.kinesisvideo.create_signaling_channel(ChannelName="own")["ChannelARN"]
        wss = target.endpoints(channel_arn, "MASTER", ("WSS",)).wss
    client = SignalingClient(wss, channel_arn, Credentials(KEY, SECRET), "us-west-2")
    assert client.clock.offset_s == 0.0
    await client.open()
    try:
        assert client.is_open
        assert abs(client.clock.offset_s - SKEW_S) < 5
        assert client.connects == 1
        client.clock.offset_s = 0.0  # the clock is off again: the reconnect corrects it
        await client.drop()
        await wait_until(lambda: client.connects == 2 and client.is_open, "it reconnects", 15)
        assert abs(client.clock.offset_s - SKEW_S) < 5
    finally:
        await client.close()


async def test_a_server_clock_behind_is_met_too(tmp_path: Path, strict_env: None) -> None:
    """A server clock 10 minutes behind: a plain client's signature is "not yet current",
    and a Target corrects its clock backwards."""
    config = LocalKvsConfig(
        data_dir=tmp_path / "data", strict_keys=StrictKeys(KEY, SECRET), clock_offset_s=-SKEW_S
    )
    with LocalKvs(config) as kvs:
        kv = make_client(
            "kinesisvideo", kvs.url, aws_access_key_id=KEY, aws_secret_access_key=SECRET
        )
        with pytest.raises(ClientError) as err:
            kv.list_streams()
        message = err.value.response["Error"]["Message"]
        ahead = rf"Signature not yet current: {AMZ_TIME} is still later than {AMZ_TIME} "
        assert re.fullmatch(ahead + rf"\({AMZ_TIME} \+ 5 min\.\)", message), message
        with connect(endpoint_url=kvs.url, region="us-west-2") as target:
            assert target.kinesisvideo.list_streams()["StreamInfoList"] == []
            assert abs(target.clock.offset_s + SKEW_S) < 5
