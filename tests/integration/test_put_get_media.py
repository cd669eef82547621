"""PutMedia and GetMedia against a real Local KVS: acknowledgements while the upload goes on,
every error case with AWS's ErrorId, fragments stored like WebRTC ones and read back by the
archived-media APIs, GetMedia's start selectors, tags and continuation, following a stream."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import boto3
import pytest
from botocore.exceptions import ClientError

from kvsnb.client.ingest import ingest
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig, StrictKeys
from kvsnb.local.media.plane import MediaOptions
from kvsnb.playback import (
    HlsReader,
    decode_video,
    get_clip,
    get_images,
    get_media,
    hls_session_url,
    iter_chunks,
    list_fragments,
    open_media,
    read_media,
    start_selector,
)
from kvsnb.putmedia import (
    Ack,
    PutMediaError,
    file_fragments,
    import_file_async,
    plan_file,
    put_media,
)
from kvsnb.sources.tracks import make_test_file
from kvsnb.wire import ebml
from kvsnb.wire.ebml import read_segment_tags
from tests.conftest import FAST

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # a producer time well in the past
SECONDS = 10.0
FPS = 30
SIZE_LIMIT = 400_000
OPTIONS = MediaOptions(
    max_fragment_bytes=SIZE_LIMIT, idle_ack_interval_s=0.3, idle_timeout_s=30, get_media_idle_s=1.5
)


@pytest.fixture(scope="module")
def media_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of stamped test pattern (H.264 baseline, a keyframe every second) and AAC."""
    path = tmp_path_factory.mktemp("media") / "pattern.mp4"
    return make_test_file(
        path, seconds=SECONDS, width=320, height=240, fps=FPS, gop=FPS, start_ms=0
    )


@pytest.fixture(scope="module")
def producer_body(media_file: Path) -> list[bytes]:
    """The producer's Matroska for the file: the header, then one cluster per fragment."""
    return list(file_fragments(plan_file(media_file)))


@pytest.fixture(scope="module")
def video_track(media_file: Path) -> tuple[ebml.TrackSpec, list[tuple[int, bool, bytes]]]:
    """Track 1 of the file and its packets (ms from 0, keyframe, length-prefixed data)."""
    with av.open(str(media_file)) as container:
        vs = container.streams.video[0]
        track = ebml.TrackSpec(
            1, "V_MPEG4/ISO/AVC", bytes(vs.codec_context.extradata or b""), "video", 320, 240
        )
        packets = [
            (round(float(p.pts * p.time_base) * 1000), p.is_keyframe, bytes(p))
            for p in container.demux(vs)
            if p.pts is not None
        ]
    return track, packets


@pytest.fixture
def media_kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    """A Local KVS with short media-plane timers and a 400 kB fragment limit."""
    config = LocalKvsConfig(data_dir=tmp_path / "data", extra={"media": OPTIONS})
    with LocalKvs(config) as kvs:
        yield kvs


@pytest.fixture
def target(media_kvs: LocalKvs) -> Iterator[Target]:
    """A client target on the Local KVS (a stream ``cam`` with 24 h retention)."""
    t = connect(endpoint_url=media_kvs.url)
    t.kinesisvideo.create_stream(StreamName="cam", DataRetentionInHours=24)
    yield t
    t.close()


async def _body(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _put(target: Target, chunks: Sequence[bytes], stream: str = "cam", **kw: Any) -> list[Ack]:
    return asyncio.run(
        put_media(target, stream, _body(chunks), producer_start=START, raise_on_error=False, **kw)
    )


def _events(acks: list[Ack]) -> list[str]:
    return [a.event for a in acks if a.event != "IDLE"]


def _cluster(track_frames: Sequence[tuple[int, int, bool, bytes]]) -> bytes:
    frames = [ebml.Frame(t, ms, key, data) for t, ms, key, data in track_frames]
    return ebml.cluster(frames[0].timecode, frames)


def _gop_clusters(
    packets: list[tuple[int, bool, bytes]], *, shift_ms: int = 0
) -> list[list[tuple[int, int, bool, bytes]]]:
    """The file's video cut at every keyframe (1 s fragments), timecodes shifted."""
    out: list[list[tuple[int, int, bool, bytes]]] = []
    for ms, key, data in packets:
        if key or not out:
            out.append([])
        out[-1].append((1, ms + shift_ms, key, data))
    return out


# ---------------------------------------------------------------------------- PutMedia


def test_data_endpoints_for_put_and_get_media(target: Target, media_kvs: LocalKvs) -> None:
    for api in ("PUT_MEDIA", "GET_MEDIA"):
        assert target.data_endpoint("cam", api) == f"{media_kvs.url}/stream-media"
    assert target.data_endpoint("cam", "LIST_FRAGMENTS") == f"{media_kvs.url}/archived-media"


def test_put_media_acknowledges_each_fragment_and_stores_it(
    target: Target, producer_body: list[bytes], tmp_path: Path
) -> None:
    acks = _put(target, producer_body)
    persisted = [a for a in acks if a.event == "PERSISTED"]
    fragments_sent = len(producer_body) - 1
    assert len(persisted) == fragments_sent
    for ack in persisted:  # BUFFERING, RECEIVED, PERSISTED for the same fragment, in order
        mine = [a for a in acks if a.fragment_number == ack.fragment_number]
        assert [a.event for a in mine] == ["BUFFERING", "RECEIVED", "PERSISTED"]
        assert len({a.fragment_timecode for a in mine}) == 1
    assert "ERROR" not in _events(acks)

    listed = list_fragments(target, "cam")
    assert list(listed["fragment_number"]) == [a.fragment_number for a in persisted]
    expected = [START + dt.timedelta(milliseconds=a.fragment_timecode or 0) for a in persisted]
    assert list(listed["producer_time"]) == expected  # past producer times, as sent
    # every archived-media reader serves them: GetMediaForFragmentList and GetImages
    media = get_media(target, "cam", list(listed["fragment_number"]))
    frames = list(decode_video(media))
    assert len(frames) == round(SECONDS * FPS)
    images = get_images(
        target, "cam", START + dt.timedelta(seconds=2), START + dt.timedelta(seconds=4)
    )
    assert len(images) >= 1 and images["error"].isna().all()
    clip = get_clip(target, "cam", START, START + dt.timedelta(seconds=SECONDS), tmp_path / "c.mp4")
    with av.open(str(clip)) as container:
        assert container.streams.audio and container.streams.video
        assert sum(1 for _ in container.decode(video=0)) == round(SECONDS * FPS)
    url = hls_session_url(target, "cam", selector="PRODUCER_TIMESTAMP")
    segments = asyncio.run(HlsReader(url).playlist()).segments
    assert len(segments) == len(persisted)


def test_acknowledgements_arrive_while_the_upload_goes_on(
    target: Target, producer_body: list[bytes]
) -> None:
    header, first, second = producer_body[0], producer_body[1], producer_body[2]

    async def run() -> tuple[list[Ack], list[str]]:
        persisted = asyncio.Event()
        seen_before_second: list[str] = []

        def on_ack(ack: Ack) -> None:
            if ack.event == "PERSISTED":
                persisted.set()

        async def body() -> AsyncIterator[bytes]:
            yield header + first
            await asyncio.wait_for(persisted.wait(), 30)  # the first is acked mid-upload
            seen_before_second.append("PERSISTED")
            yield second

        acks = await put_media(target, "cam", body(), producer_start=START, on_ack=on_ack)
        return acks, seen_before_second

    acks, seen = asyncio.run(run())
    assert seen == ["PERSISTED"]
    assert _events(acks).count("PERSISTED") == 2


def test_idle_acknowledgements_while_no_data_comes(
    target: Target, producer_body: list[bytes]
) -> None:
    async def run() -> list[Ack]:
        idle = asyncio.Event()

        def on_ack(ack: Ack) -> None:
            if ack.event == "IDLE":
                idle.set()

        async def body() -> AsyncIterator[bytes]:
            yield producer_body[0] + producer_body[1]
            await asyncio.wait_for(idle.wait(), 30)  # no data until the server says IDLE
            yield producer_body[2]

        return await put_media(target, "cam", body(), producer_start=START, on_ack=on_ack)

    acks = asyncio.run(run())
    assert any(a.event == "IDLE" for a in acks)
    assert _events(acks).count("PERSISTED") == 2


def test_not_matroska_gets_error_4006_and_stores_nothing(target: Target) -> None:
    acks = _put(target, [b"this is not a Matroska file at all" * 10])
    errors = [a for a in acks if a.event == "ERROR"]
    assert [(e.error_id, e.error_code) for e in errors] == [(4006, "INVALID_MKV_DATA")]
    assert list_fragments(target, "cam").empty


def test_body_ending_inside_a_fragment_keeps_the_complete_ones(
    target: Target, producer_body: list[bytes]
) -> None:
    half = producer_body[2][: len(producer_body[2]) // 2]
    acks = _put(target, [producer_body[0], producer_body[1], half])
    assert [(a.error_id, a.error_code) for a in acks if a.event == "ERROR"] == [
        (4006, "INVALID_MKV_DATA")
    ]
    persisted = [a.fragment_number for a in acks if a.event == "PERSISTED"]
    assert len(persisted) == 1
    assert list(list_fragments(target, "cam")["fragment_number"]) == persisted


def test_timecode_going_backwards_gets_4004_and_keeps_earlier_fragments(
    target: Target, video_track: Any
) -> None:
    track, packets = video_track
    gops = _gop_clusters(packets)
    backwards = [(t, ms - 1500, k, d) for t, ms, k, d in gops[3]]  # before gop 2's frames
    chunks = [ebml.stream_start([track]), _cluster(gops[0]), _cluster(gops[1])]
    chunks += [_cluster(gops[2]), _cluster(backwards), _cluster(gops[4])]
    acks = _put(target, chunks)
    errors = [a for a in acks if a.event == "ERROR"]
    assert [(e.error_id, e.error_code) for e in errors] == [
        (4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS")
    ]
    persisted = [a.fragment_number for a in acks if a.event == "PERSISTED"]
    assert len(persisted) == 3
    assert list(list_fragments(target, "cam")["fragment_number"]) == persisted


def test_fragment_over_the_size_limit_gets_4001(target: Target, video_track: Any) -> None:
    track, packets = video_track
    gops = _gop_clusters(packets)
    big = [(1, gops[1][0][1] + i * 33, i == 0, bytes(100_000)) for i in range(5)]
    acks = _put(target, [ebml.stream_start([track]), _cluster(gops[0]), _cluster(big)])
    assert [(a.error_id, a.error_code) for a in acks if a.event == "ERROR"] == [
        (4001, "MAX_FRAGMENT_SIZE_REACHED")
    ]
    assert len(list_fragments(target, "cam")) == 1  # what was persisted before stays


def test_fragment_over_ten_seconds_gets_4002(target: Target, video_track: Any) -> None:
    track, packets = video_track
    gops = _gop_clusters(packets)
    first_ms = gops[1][0][1]
    long = [(1, first_ms, True, gops[1][0][3]), (1, first_ms + 10_500, False, gops[1][1][3])]
    acks = _put(target, [ebml.stream_start([track]), _cluster(gops[0]), _cluster(long)])
    assert [(a.error_id, a.error_code) for a in acks if a.event == "ERROR"] == [
        (4002, "MAX_FRAGMENT_DURATION_REACHED")
    ]
    assert len(list_fragments(target, "cam")) == 1


def test_block_of_an_undeclared_track_gets_4010(target: Target, video_track: Any) -> None:
    track, packets = video_track
    gops = _gop_clusters(packets)
    wrong = [(3 if i == 2 else t, ms, k, d) for i, (t, ms, k, d) in enumerate(gops[1])]
    acks = _put(target, [ebml.stream_start([track]), _cluster(gops[0]), _cluster(wrong)])
    assert [(a.error_id, a.error_code) for a in acks if a.event == "ERROR"] == [
        (4010, "TRACK_NUMBER_MISMATCH")
    ]
    assert len(list_fragments(target, "cam")) == 1


def test_a_track_without_frames_gets_4011(target: Target, video_track: Any) -> None:
    track, packets = video_track
    audio = ebml.TrackSpec(2, "A_AAC", b"\x11\x90", "audio", sample_rate=48000.0, channels=1)
    gops = _gop_clusters(packets)
    acks = _put(target, [ebml.stream_start([track, audio]), _cluster(gops[0])])
    assert [(a.error_id, a.error_code) for a in acks if a.event == "ERROR"] == [
        (4011, "FRAMES_MISSING_FOR_TRACK")
    ]
    assert list_fragments(target, "cam").empty


def test_more_than_three_tracks_gets_4012(target: Target, video_track: Any) -> None:
    track, _ = video_track
    audio = [ebml.TrackSpec(n, "A_AAC", b"\x11\x90", "audio", 0, 0, 48000.0, 1) for n in (2, 3, 4)]
    acks = _put(target, [ebml.stream_start([track, *audio])])
    assert [(a.error_id, a.error_code) for a in acks if a.event == "ERROR"] == [
        (4012, "MORE_THAN_ALLOWED_TRACKS_FOUND")
    ]


def test_unknown_stream_is_404_and_bad_headers_400(
    target: Target, producer_body: list[bytes]
) -> None:
    endpoint = target.data_endpoint("cam", "PUT_MEDIA")
    with pytest.raises(PutMediaError) as err:
        _put(target, producer_body, stream="no-such-stream", endpoint_url=endpoint)
    assert err.value.code == "ResourceNotFoundException"
    assert "HTTP 404" in str(err.value)
    with pytest.raises(PutMediaError) as err:
        _put(target, producer_body, timecode_type="SIDEWAYS")
    assert err.value.code == "InvalidArgumentException"
    assert "HTTP 400" in str(err.value)


def test_stream_without_retention_acknowledges_but_stores_nothing(
    target: Target, producer_body: list[bytes]
) -> None:
    target.kinesisvideo.create_stream(StreamName="live-only", DataRetentionInHours=0)
    acks = _put(target, producer_body[:3], stream="live-only")
    assert _events(acks) == ["BUFFERING", "RECEIVED"] * 2
    assert list_fragments(target, "live-only").empty


def test_deleted_stream_mid_upload_gets_4008_and_keeps_stored(
    target: Target, producer_body: list[bytes]
) -> None:
    arn = target.kinesisvideo.describe_stream(StreamName="cam")["StreamInfo"]["StreamARN"]

    async def run() -> list[Ack]:
        persisted = asyncio.Event()

        def on_ack(ack: Ack) -> None:
            if ack.event == "PERSISTED":
                persisted.set()

        async def body() -> AsyncIterator[bytes]:
            yield producer_body[0] + producer_body[1]
            await asyncio.wait_for(persisted.wait(), 30)
            await asyncio.to_thread(target.kinesisvideo.delete_stream, StreamARN=arn)
            yield producer_body[2]

        return await put_media(
            target, arn, body(), producer_start=START, on_ack=on_ack, raise_on_error=False
        )

    acks = asyncio.run(run())
    assert [(a.error_id, a.error_code) for a in acks if a.event == "ERROR"] == [
        (4008, "STREAM_NOT_ACTIVE")
    ]


def test_import_file_loads_faster_than_real_time(target: Target, media_file: Path) -> None:
    result = asyncio.run(import_file_async(target, media_file, "cam", start=START, progress=False))
    assert result.notes == []  # H.264 baseline + AAC: passed through
    assert len(result.fragments) == len(list_fragments(target, "cam"))
    assert result.media_seconds == pytest.approx(SECONDS, abs=0.1)


def test_import_transcodes_other_codecs_with_a_note(target: Target, tmp_path: Path) -> None:
    vp8 = make_test_file(tmp_path / "vp8.webm", seconds=3, width=320, height=240, codec="vp8")
    result = asyncio.run(import_file_async(target, vp8, "cam", start=START, progress=False))
    assert any("transcoded to H.264" in n for n in result.notes)
    assert any("transcoded to AAC" in n for n in result.notes)
    frames = list(decode_video(read_media(target, "cam", "EARLIEST").data))
    assert len(frames) == 3 * FPS


# ---------------------------------------------------------------------------- GetMedia


@pytest.fixture
def stored(target: Target, producer_body: list[bytes]) -> list[Ack]:
    """The 10 s file stored as 5 fragments of 2 s; their PERSISTED acknowledgements."""
    acks = _put(target, producer_body)
    persisted = [a for a in acks if a.event == "PERSISTED"]
    assert len(persisted) == 5
    return persisted


def test_get_media_earliest_returns_every_chunk_with_aws_tags(
    target: Target, stored: list[Ack]
) -> None:
    result = read_media(target, "cam", "EARLIEST")
    table = result.fragments
    assert list(table["fragment_number"]) == [a.fragment_number for a in stored]
    assert list(table["continuation_token"]) == list(table["fragment_number"])
    assert list(table["producer_time"]) == list(list_fragments(target, "cam")["producer_time"])
    assert (table["millis_behind_now"] >= 0).all()
    tags = read_segment_tags(result.data)
    assert set(tags[0]) == {
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
        "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
        "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
        "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW",
        "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
    }
    frames = result.to_ndarrays()
    assert len(frames) == round(SECONDS * FPS) and frames[0].shape == (240, 320, 3)


def test_get_media_continues_across_calls_with_the_token(target: Target, stored: list[Ack]) -> None:
    first = read_media(target, "cam", "EARLIEST", max_fragments=2)
    rest = read_media(
        target, "cam", "CONTINUATION_TOKEN", continuation_token=first.continuation_token
    )
    numbers = list(first.fragments["fragment_number"]) + list(rest.fragments["fragment_number"])
    assert numbers == [a.fragment_number for a in stored]


def test_get_media_fragment_number_and_timestamp_selectors(
    target: Target, stored: list[Ack]
) -> None:
    numbers = [a.fragment_number for a in stored]
    after = read_media(target, "cam", "FRAGMENT_NUMBER", after_fragment=numbers[1])
    assert list(after.fragments["fragment_number"]) == numbers[2:]
    # PRODUCER_TIMESTAMP: the chunk containing 5 s (fragments start at 0, 2, 4, 6, 8 s)
    by_producer = read_media(
        target, "cam", "PRODUCER_TIMESTAMP", timestamp=START + dt.timedelta(seconds=5)
    )
    assert list(by_producer.fragments["fragment_number"]) == numbers[2:]
    listed = list_fragments(target, "cam")
    server_start = listed["server_time"].iloc[3].to_pydatetime()
    by_server = read_media(target, "cam", "SERVER_TIMESTAMP", timestamp=server_start)
    got = list(by_server.fragments["fragment_number"])
    # fragments uploaded at disk speed overlap in server time: the stream starts with a
    # fragment that contains the time, at or before the one that starts at it, and runs on
    first = listed[listed["fragment_number"] == got[0]].iloc[0]
    first_start = first["server_time"].to_pydatetime()
    assert first_start <= server_start
    assert server_start <= first_start + dt.timedelta(milliseconds=int(first["duration_ms"]))
    assert numbers[3] in got and got == numbers[numbers.index(got[0]) :]


def test_get_media_errors(target: Target, stored: list[Ack], media_kvs: LocalKvs) -> None:
    client = target.client("kinesis-video-media", target.data_endpoint("cam", "GET_MEDIA"))
    with pytest.raises(ClientError) as err:
        client.get_media(
            StreamName="cam",
            StartSelector={"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "12"},
        )
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as err:
        client.get_media(StreamName="cam", StartSelector={"StartSelectorType": "FRAGMENT_NUMBER"})
    assert err.value.response["Error"]["Code"] == "InvalidArgumentException"
    with pytest.raises(ClientError) as err:
        client.get_media(StreamName="nope", StartSelector={"StartSelectorType": "EARLIEST"})
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_get_media_now_follows_the_stream_as_it_grows(
    target: Target, stored: list[Ack], producer_body: list[bytes]
) -> None:
    got: list[str | None] = []
    payload = open_media(target, "cam", start_selector("NOW"))  # the answer has begun

    def reader() -> None:
        got.extend(c.fragment_number for c in iter_chunks(payload, max_chunks=5))

    thread = threading.Thread(target=reader)
    thread.start()
    acks = asyncio.run(  # the same media again, an hour later
        put_media(target, "cam", _body(producer_body), producer_start=START + dt.timedelta(hours=1))
    )
    thread.join(60)
    new = [a.fragment_number for a in acks if a.event == "PERSISTED"]
    assert got == new
    assert not {a.fragment_number for a in stored} & set(got)


def test_kvsnb_import_command(
    media_kvs: LocalKvs, media_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvsnb.cli import main

    args = ["import", str(media_file), "--stream", "from-cli", "--create"]
    args += ["--start", "2026-01-01T00:00:00Z", "--endpoint-url", media_kvs.url]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "5 fragments, 10.0 media s" in out and "from 2026-01-01T00:00:00+00:00" in out
    assert (
        main(["import", str(media_file), "--stream", "nope", "--endpoint-url", media_kvs.url]) == 1
    )
    assert "ResourceNotFoundException" in capsys.readouterr().err


def test_stopping_local_kvs_mid_upload_keeps_what_was_stored(
    tmp_path: Path, producer_body: list[bytes]
) -> None:
    config = LocalKvsConfig(data_dir=tmp_path / "data", extra={"media": OPTIONS})
    kvs = LocalKvs(config).start_in_thread()
    target = connect(endpoint_url=kvs.url)
    target.kinesisvideo.create_stream(StreamName="cam", DataRetentionInHours=24)
    stopped = threading.Event()

    def stop() -> None:
        kvs.stop_in_thread()
        stopped.set()

    async def run() -> None:
        def on_ack(ack: Ack) -> None:
            if ack.event == "PERSISTED":  # Local KVS stops while the upload is open
                threading.Thread(target=stop).start()

        async def body() -> AsyncIterator[bytes]:
            yield producer_body[0] + producer_body[1]
            await asyncio.Event().wait()  # the producer has nothing more, until cancelled

        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                put_media(target, "cam", body(), producer_start=START, on_ack=on_ack), 60
            )

    asyncio.run(run())
    assert stopped.wait(30)
    with LocalKvs(LocalKvsConfig(data_dir=tmp_path / "data")) as again:
        restarted = connect(endpoint_url=again.url)
        assert len(list_fragments(restarted, "cam")) == 1
        restarted.close()
    target.close()


def test_put_media_signature_is_checked_in_strict_mode(
    tmp_path: Path, producer_body: list[bytes]
) -> None:
    keys = StrictKeys("AKIASTRICTMEDIA00001", "strict/media+secret")
    config = LocalKvsConfig(data_dir=tmp_path / "data", strict_keys=keys)
    with LocalKvs(config) as kvs:

        def target_with(secret: str) -> Target:
            session = boto3.Session(
                aws_access_key_id=keys.access_key,
                aws_secret_access_key=secret,
                region_name="us-west-2",
            )
            return Target("endpoint", "us-west-2", session, endpoint_url=kvs.url)

        good = target_with(keys.secret_key)
        good.kinesisvideo.create_stream(StreamName="cam", DataRetentionInHours=24)
        endpoint = good.data_endpoint("cam", "PUT_MEDIA")
        acks = _put(good, producer_body[:2])
        assert _events(acks) == ["BUFFERING", "RECEIVED", "PERSISTED"]
        with pytest.raises(PutMediaError) as err:
            _put(target_with("wrong-secret"), producer_body[:2], endpoint_url=endpoint)
        assert err.value.code == "InvalidSignatureException"


async def test_get_media_reads_fragments_stored_by_a_storage_session(kvs: LocalKvs) -> None:
    webrtc = connect(endpoint_url=kvs.url)
    _, stream_arn = webrtc.create_storage_channel("webrtc")
    kvs.planes["stream-media"].options = MediaOptions(get_media_idle_s=5)
    await ingest(webrtc, "webrtc", seconds=2.5, policy=FAST)
    # GetMedia follows the stream, so it also gets a fragment stored as the session closes
    result = await asyncio.to_thread(read_media, webrtc, stream_arn, "EARLIEST")
    listed = await asyncio.to_thread(list_fragments, webrtc, stream_arn)
    assert list(result.fragments["fragment_number"]) == list(listed["fragment_number"])
    stored = await asyncio.to_thread(get_media, webrtc, stream_arn, list(listed["fragment_number"]))
    assert len(list(result.video_frames())) == len(list(decode_video(stored)))
    webrtc.close()
