"""GetImages end to end: stamped test media ingested into a real Local KVS by kvsnb's master
(WebRTC), then sampled with boto3 ``get_images``; every returned image is decoded with PyAV
and its stamp read back to see which frame it is."""

from __future__ import annotations

import asyncio
import base64
import bisect
import datetime as dt
import io
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import pytest
from botocore.exceptions import ClientError

from kvsnb.client.ingest import IngestResult, ingest
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs
from kvsnb.local.archive.images import ImagesPlane
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.sources.stamp import Stamp, read_stamp, read_stamp_frame
from tests.conftest import (
    FAST,
    make_client,
    start_kvs,
    stored_frame_count,
    wait_until,
    wait_until_sync,
)
from tests.unit.test_recorder import BASE_S, Camera

CHANNEL = "images"
FPS = 30
FRAME_MS = 1000 / FPS
PAUSE_S = 1.5
CLOCK_JITTER_MS = 10
UTC = dt.UTC


@dataclass
class StoredFrame:
    """A frame as stored: its producer timestamp (ms) and the stamp it carries."""

    pts: int
    stamp: Stamp


@dataclass
class Media:
    """What the module ingested: two bursts of stamped video with a pause between them."""

    kvs: LocalKvs
    target: Target
    stream_arn: str
    client: Any  # boto3 kinesis-video-archived-media client at the GET_IMAGES endpoint
    runs: list[IngestResult]
    fragments: list[dict[str, Any]]  # ListFragments entries, by producer start
    frames: list[StoredFrame]  # every stored frame, by pts

    def frame_at(self, t_ms: int) -> StoredFrame | None:
        """The stored frame shown at producer time ``t_ms`` (None in a gap / before)."""
        for f in self.fragments:
            start = round(f["ProducerTimestamp"].timestamp() * 1000)
            if start <= t_ms < start + f["FragmentLengthInMilliseconds"]:
                pts = [fr.pts for fr in self.frames]
                return self.frames[bisect.bisect_right(pts, t_ms) - 1]
        return None

    def producer_offset_ms(self, t_ms: int) -> float:
        """Median of (producer pts − capture time) over the stored frames within 1 s of t."""
        near = [f.pts - f.stamp.capture_ms for f in self.frames if abs(f.pts - t_ms) <= 1000]
        return float(np.median(near))

    def start_ms(self, i: int) -> int:
        return round(self.fragments[i]["ProducerTimestamp"].timestamp() * 1000)

    def end_ms(self, i: int) -> int:
        return self.start_ms(i) + int(self.fragments[i]["FragmentLengthInMilliseconds"])

    @property
    def images_plane(self) -> ImagesPlane:
        plane = self.kvs.planes["archived-media"].part(ImagesPlane)
        return plane


def when(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, UTC)


def decode_image(content: str) -> tuple[str, av.VideoFrame]:
    """The codec name and the one picture of a base64 JPEG/PNG, decoded by PyAV."""
    with av.open(io.BytesIO(base64.b64decode(content)), mode="r") as container:
        codec = container.streams.video[0].codec_context.name
        frame = next(container.decode(video=0))
    return codec, frame


def stamp_of(frame: av.VideoFrame) -> Stamp:
    return read_stamp(frame.to_ndarray(format="rgb24"))


def stored_frames(client: Any, stream_arn: str, numbers: list[str]) -> list[StoredFrame]:
    body = client.get_media_for_fragment_list(StreamARN=stream_arn, Fragments=numbers)[
        "Payload"
    ].read()
    out = []
    with av.open(io.BytesIO(body), mode="r") as container:
        for frame in container.decode(video=0):
            assert frame.pts is not None
            out.append(StoredFrame(int(frame.pts), read_stamp_frame(frame)))
    return sorted(out, key=lambda f: f.pts)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Media]:
    kvs = start_kvs(tmp_path_factory.mktemp("images") / "data")
    target = connect(endpoint_url=kvs.url)
    try:
        _, stream_arn = target.create_storage_channel(CHANNEL)

        async def bursts() -> list[IngestResult]:
            first = await ingest(target, CHANNEL, seconds=3.0, policy=FAST)
            await asyncio.sleep(PAUSE_S)  # the gap between the bursts, part of the recording
            second = await ingest(target, CHANNEL, seconds=1.5, policy=FAST)
            sent = len(first.frames_sent) + len(second.frames_sent)
            await wait_until(  # the fragment the leaving master held is stored a moment later
                lambda: stored_frame_count(kvs, stream_arn) >= sent,
                "every frame sent is stored",
                deadline_s=30,
            )
            return [first, second]

        runs = asyncio.run(bursts())
        kv = make_client("kinesisvideo", kvs.url)
        endpoint = kv.get_data_endpoint(StreamARN=stream_arn, APIName="GET_IMAGES")
        client = make_client("kinesis-video-archived-media", endpoint["DataEndpoint"])
        fragments = sorted(
            client.list_fragments(StreamARN=stream_arn)["Fragments"],
            key=lambda f: f["ProducerTimestamp"],
        )
        frames = stored_frames(client, stream_arn, [f["FragmentNumber"] for f in fragments])
        yield Media(kvs, target, stream_arn, client, runs, fragments, frames)
    finally:
        target.close()
        kvs.stop_in_thread()


def gap_after(media: Media) -> int:
    """Index of the last fragment before the pause between the bursts."""
    return max(
        range(len(media.fragments) - 1), key=lambda i: media.start_ms(i + 1) - media.end_ms(i)
    )


def get_images(media: Media, start_ms: float, end_ms: float, **kw: Any) -> dict[str, Any]:
    args = {
        "StreamARN": media.stream_arn,
        "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "StartTimestamp": when(start_ms),
        "EndTimestamp": when(end_ms),
        "SamplingInterval": 200,
        "Format": "JPEG",
        **kw,
    }
    result: dict[str, Any] = media.client.get_images(**args)
    return result


def error_of(call: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err["Error"]["Message"], err["ResponseMetadata"]["HTTPStatusCode"]


def ms_of(image: dict[str, Any]) -> int:
    return round(image["TimeStamp"].timestamp() * 1000)


# ---------------------------------------------------------------------------- content


def test_media_is_two_bursts_with_a_gap(media: Media) -> None:
    gaps = [media.start_ms(i + 1) - media.end_ms(i) for i in range(len(media.fragments) - 1)]
    assert max(gaps) > 1000  # the pause between the bursts
    assert sorted(gaps)[-2] < 50  # fragments within a burst are contiguous
    assert len(media.frames) > FPS * 4


def test_each_sample_is_the_frame_shown_at_its_time(media: Media) -> None:
    start = media.start_ms(0) + 377
    result = get_images(media, start, start + 2000, FormatConfig={"JPEGQuality": "90"})
    images = result["Images"]
    assert [ms_of(im) for im in images] == [start + 200 * k for k in range(11)]
    assert "NextToken" not in result
    for image in images:
        t = ms_of(image)
        codec, frame = decode_image(image["ImageContent"])
        assert (codec, frame.width, frame.height) == ("mjpeg", 640, 480)
        stamp = stamp_of(frame)
        expected = media.frame_at(t)
        assert expected is not None and stamp == expected.stamp, t
        # Producer timestamps are the RTP clock anchored at the first frame's arrival: they
        # run a steady offset after the capture clock. Less that offset, the frame shown was
        # captured within one frame interval before the sampled time.
        offset = media.producer_offset_ms(t)
        assert -CLOCK_JITTER_MS <= t - (stamp.capture_ms + offset) < FRAME_MS + CLOCK_JITTER_MS


def test_png_stretched_to_the_size_asked(media: Media) -> None:
    start = media.start_ms(1) + 333
    result = get_images(
        media, start, start + 900, Format="PNG", WidthPixels=400, HeightPixels=150,
        SamplingInterval=300,
    )  # fmt: skip
    assert len(result["Images"]) == 4
    for image in result["Images"]:
        codec, frame = decode_image(image["ImageContent"])
        assert (codec, frame.width, frame.height) == ("png", 400, 150)
        expected = media.frame_at(ms_of(image))
        assert expected is not None
        assert stamp_of(frame) == expected.stamp


def test_jpeg_quality_changes_the_encoding(media: Media) -> None:
    t = media.start_ms(0) + 500
    sizes = [
        len(get_images(media, t, t, FormatConfig={"JPEGQuality": q})["Images"][0]["ImageContent"])
        for q in ("5", "80", "100")
    ]
    assert sizes[0] < sizes[1] < sizes[2]
    default = get_images(media, t, t)["Images"][0]["ImageContent"]
    assert len(default) == sizes[1]  # JPEGQuality defaults to 80


def test_range_shorter_than_interval_gives_the_image_at_start(media: Media) -> None:
    t = media.start_ms(0) + 1234
    images = get_images(media, t, t + 999, SamplingInterval=1000)["Images"]
    assert [ms_of(im) for im in images] == [t]
    expected = media.frame_at(t)
    assert expected is not None
    assert stamp_of(decode_image(images[0]["ImageContent"])[1]) == expected.stamp


def test_server_timestamp_selection(media: Media) -> None:
    fragment = media.fragments[1]
    server_ms = round(fragment["ServerTimestamp"].timestamp() * 1000)
    producer_ms = media.start_ms(1)
    result = media.client.get_images(
        StreamARN=media.stream_arn,
        ImageSelectorType="SERVER_TIMESTAMP",
        StartTimestamp=when(server_ms + 100),
        EndTimestamp=when(server_ms + 700),
        SamplingInterval=300,
        Format="JPEG",
    )
    assert len(result["Images"]) == 3
    for k, image in enumerate(result["Images"]):
        expected = media.frame_at(producer_ms + 100 + 300 * k)
        assert expected is not None
        assert stamp_of(decode_image(image["ImageContent"])[1]) == expected.stamp


def test_no_media_before_the_first_frame_and_in_the_gap(media: Media) -> None:
    first = media.start_ms(0)
    images = get_images(media, first - 1000, first + 400, SamplingInterval=250)["Images"]
    errors = [im.get("Error") for im in images]
    assert errors == ["NO_MEDIA"] * 4 + [None] * 2
    assert all("ImageContent" not in im for im in images[:4])
    gap_index = gap_after(media)
    gap_start, gap_end = media.end_ms(gap_index), media.start_ms(gap_index + 1)
    images = get_images(media, gap_start - 100, gap_end + 100, SamplingInterval=200)["Images"]
    for image in images:
        t = ms_of(image)
        if gap_start <= t < gap_end:
            assert image.get("Error") == "NO_MEDIA" and "ImageContent" not in image, t
        else:
            assert "ImageContent" in image and "Error" not in image, t


def test_decodes_only_from_the_keyframe_before_each_sample(media: Media) -> None:
    renderer = media.images_plane.renderer
    # sample the first burst every second, 400 ms into each 1 s fragment
    times = [media.start_ms(0) + 400 + 1000 * k for k in range(3)]
    needed = 0  # frames from the start (a keyframe) of each covering fragment to the sample
    in_fragments = 0
    for t in times:
        i = next(j for j in range(len(media.fragments)) if media.end_ms(j) > t)
        frames = [f for f in media.frames if media.start_ms(i) <= f.pts < media.end_ms(i)]
        needed += sum(1 for f in frames if f.pts <= t)
        in_fragments += len(frames)
    before = renderer.frames_decoded
    images = get_images(media, times[0], times[-1], SamplingInterval=1000)["Images"]
    decoded = renderer.frames_decoded - before
    assert [im.get("Error") for im in images] == [None] * 3
    assert 0 < decoded <= needed < in_fragments


# ---------------------------------------------------------------------------- paging


def test_pages_of_25_cover_every_sample_once(media: Media) -> None:
    start = media.start_ms(0) - 2000
    end = start + 59 * 200  # 60 samples
    expected = [start + 200 * k for k in range(60)]
    seen: list[int] = []
    sizes = []
    token: str | None = None
    while True:
        kw: dict[str, str] = {"NextToken": token} if token else {}
        page = get_images(media, start, end, WidthPixels=64, HeightPixels=48, **kw)
        sizes.append(len(page["Images"]))
        seen += [ms_of(im) for im in page["Images"]]
        token = page.get("NextToken")
        if token is None:
            break
    assert sizes == [25, 25, 10]
    assert seen == expected
    # the boto3 paginator walks the same pages
    paginator = media.client.get_paginator("get_images")
    pages = paginator.paginate(
        StreamARN=media.stream_arn,
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=when(start),
        EndTimestamp=when(end),
        SamplingInterval=200,
        Format="JPEG",
        WidthPixels=64,
        HeightPixels=48,
    )
    assert [ms_of(im) for p in pages for im in p["Images"]] == expected


def test_every_page_holds_the_frames_shown_at_its_times(media: Media) -> None:
    # later pages are decoded ahead while the client reads earlier ones; each must still be
    # the frame shown at its sampled time (the range spans the pause between the bursts)
    start = media.start_ms(0) + 123
    end = start + 29 * 200  # 30 samples, 3 pages of 10
    token: str | None = None
    seen = []
    while True:
        kw: dict[str, Any] = {"NextToken": token} if token else {}
        page = get_images(media, start, end, MaxResults=10, **kw)
        for image in page["Images"]:
            t = ms_of(image)
            expected = media.frame_at(t)
            if expected is None:
                assert image.get("Error") == "NO_MEDIA" and "ImageContent" not in image, t
            else:
                assert stamp_of(decode_image(image["ImageContent"])[1]) == expected.stamp, t
            seen.append(t)
        token = page.get("NextToken")
        if token is None:
            break
    assert seen == [start + 200 * k for k in range(30)]


def test_the_same_request_again_sees_what_was_stored_since(media: Media) -> None:
    kv = make_client("kinesisvideo", media.kvs.url)
    arn = kv.create_stream(StreamName="images-later", DataRetentionInHours=1)["StreamARN"]
    camera = Camera(gop=30)

    def record(seconds: float) -> None:
        recorder = FragmentRecorder(media.kvs.store, arn, fragment_duration_s=1.0, audio=False)
        for _ in range(round(seconds * FPS)):
            recorder.add_video(camera.next())
        asyncio.run(recorder.close())

    def errors() -> list[str | None]:
        images = media.client.get_images(
            StreamARN=arn,
            ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=when(BASE_S * 1000 + 250),
            EndTimestamp=when(BASE_S * 1000 + 3750),
            SamplingInterval=500,
            Format="JPEG",
            WidthPixels=64,
            HeightPixels=48,
        )["Images"]
        return [im.get("Error") for im in images]

    record(2.0)
    assert errors() == [None] * 4 + ["NO_MEDIA"] * 4
    record(2.0)  # the camera goes on: its next 2 s are stored
    assert errors() == [None] * 8


def test_pages_ending_inside_a_fragment_decode_each_gop_once(media: Media) -> None:
    # 1 s fragments of one GOP each, 5 samples in each, pages of 3: every page but the
    # first ends inside a fragment. Each fragment is still one task (its samples rendered
    # together), so each GOP is decoded once, from its keyframe to its last sample.
    kv = make_client("kinesisvideo", media.kvs.url)
    arn = kv.create_stream(StreamName="images-whole", DataRetentionInHours=1)["StreamARN"]
    camera = Camera(gop=30)
    recorder = FragmentRecorder(media.kvs.store, arn, fragment_duration_s=1.0, audio=False)
    for _ in range(4 * FPS):
        recorder.add_video(camera.next())
    asyncio.run(recorder.close())
    renderer = media.images_plane.renderer
    renderer.clear_caches()  # no decoder left mid-GOP by an earlier request
    tasks, decoded = renderer.tasks_submitted, renderer.frames_decoded
    base = BASE_S * 1000
    entries: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kw: dict[str, Any] = {"NextToken": token} if token else {}
        page = media.client.get_images(
            StreamARN=arn,
            ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=when(base),
            EndTimestamp=when(base + 2800),  # 15 samples: 0, 200, ... 800 ms into 3 fragments
            SamplingInterval=200,
            Format="JPEG",
            WidthPixels=64,
            HeightPixels=48,
            MaxResults=3,
            **kw,
        )
        entries += page["Images"]
        token = page.get("NextToken")
        if token is None:
            break
    assert [ms_of(im) - base for im in entries] == [200 * k for k in range(15)]
    assert all("ImageContent" in im for im in entries), [im.get("Error") for im in entries]
    assert renderer.tasks_submitted - tasks == 3
    assert renderer.frames_decoded - decoded == 3 * 25  # frames 0..24 (800 ms) of each GOP


def test_a_decode_process_that_died_is_replaced(media: Media) -> None:
    pool = media.images_plane.renderer.pool
    if not pool.processes:
        pytest.skip("GetImages decodes on threads here (KVSNB_DECODE_PROCESSES=0)")
    start = media.start_ms(0) + 100
    assert all("ImageContent" in im for im in get_images(media, start, start + 400)["Images"])
    killed = pool.pids
    assert killed  # the request above ran in decode processes
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_until_sync(lambda: not set(pool.pids) & set(killed), "the decode processes died")
    images = get_images(media, start + 1000, start + 1400)["Images"]
    assert all("ImageContent" in im for im in images), [im.get("Error") for im in images]
    assert pool.pids and not set(pool.pids) & set(killed)  # replaced by new ones


def test_max_results_sets_the_page_size_up_to_25(media: Media) -> None:
    start = media.start_ms(0)
    end = start + 29 * 200  # 30 samples
    first = get_images(media, start, end, MaxResults=10, WidthPixels=32, HeightPixels=24)
    assert len(first["Images"]) == 10 and first.get("NextToken")
    second = get_images(
        media, start, end, MaxResults=10, WidthPixels=32, HeightPixels=24,
        NextToken=first["NextToken"],
    )  # fmt: skip
    assert [ms_of(im) for im in second["Images"]] == [start + 200 * k for k in range(10, 20)]
    big = get_images(media, start, end, MaxResults=100, WidthPixels=32, HeightPixels=24)
    assert len(big["Images"]) == 25 and big.get("NextToken")


def test_next_token_belongs_to_its_request(media: Media) -> None:
    start = media.start_ms(0)
    page = get_images(media, start, start + 30 * 200, WidthPixels=32, HeightPixels=24)
    code, _, status = error_of(
        lambda: get_images(media, start, start + 30 * 200, NextToken=page["NextToken"])
    )
    assert (code, status) == ("InvalidArgumentException", 400)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"end": -1}, "EndTimestamp"),
        ({"end": 300_001}, "300 seconds"),
        ({"SamplingInterval": 199}, "SamplingInterval"),
        ({"FormatConfig": {"JPEGQuality": "0"}}, "JPEGQuality"),
        ({"FormatConfig": {"JPEGQuality": "101"}}, "JPEGQuality"),
        ({"FormatConfig": {"JPEGQuality": "high"}}, "JPEGQuality"),
        ({"FormatConfig": {"Quality": "50"}}, "JPEGQuality"),
        ({"WidthPixels": 320}, "Height and width"),
        ({"HeightPixels": 240}, "Height and width"),
    ],
)
def test_bad_arguments(media: Media, kw: dict[str, Any], words: str) -> None:
    start = media.start_ms(0)
    end = start + kw.pop("end", 1000)
    code, message, status = error_of(lambda: get_images(media, start, end, **kw))
    assert (code, status) == ("InvalidArgumentException", 400)
    assert words in message


def test_exactly_300_seconds_is_allowed(media: Media) -> None:
    start = media.start_ms(0) - 150_000
    page = get_images(media, start, start + 300_000, SamplingInterval=60_000, MaxResults=3)
    assert len(page["Images"]) == 3 and page.get("NextToken")


def test_unknown_stream_and_no_fragments(media: Media) -> None:
    start = media.start_ms(0)
    code, _, status = error_of(
        lambda: media.client.get_images(
            StreamName="no-such-stream",
            ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=when(start),
            EndTimestamp=when(start + 1000),
            SamplingInterval=200,
            Format="JPEG",
        )
    )
    assert (code, status) == ("ResourceNotFoundException", 404)
    long_ago = start - 3600_000
    code, message, status = error_of(lambda: get_images(media, long_ago, long_ago + 60_000))
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert message.startswith("No fragments found")
    # a range inside the gap between the bursts has no fragment either
    gap_index = gap_after(media)
    gap_start = media.end_ms(gap_index) + 50
    code, _, _ = error_of(lambda: get_images(media, gap_start, gap_start + 500))
    assert code == "ResourceNotFoundException"


def test_stream_without_retention(media: Media) -> None:
    kv = make_client("kinesisvideo", media.kvs.url)
    kv.create_stream(StreamName="no-retention", DataRetentionInHours=0)
    code, _, status = error_of(
        lambda: media.client.get_images(
            StreamName="no-retention",
            ImageSelectorType="PRODUCER_TIMESTAMP",
            StartTimestamp=when(media.start_ms(0)),
            EndTimestamp=when(media.start_ms(0) + 1000),
            SamplingInterval=200,
            Format="JPEG",
        )
    )
    assert (code, status) == ("NoDataRetentionException", 400)


def test_corrupt_fragment_gives_media_error(media: Media) -> None:
    # the first fragment of the second burst: its file overwritten with noise
    store = media.kvs.store
    index = gap_after(media) + 1
    number = media.fragments[index]["FragmentNumber"]
    path = store.resolve(store.get_fragments(media.stream_arn, [number])[0])
    original = path.read_bytes()
    renderer = media.images_plane.renderer
    try:
        rng = np.random.default_rng(7)
        path.write_bytes(rng.integers(0, 256, len(original), dtype=np.uint8).tobytes())
        renderer.clear_caches()
        t = media.start_ms(index) + 100
        images = get_images(media, t - 400, t + 400, SamplingInterval=200)["Images"]
        assert [im.get("Error") for im in images] == ["NO_MEDIA"] * 2 + ["MEDIA_ERROR"] * 3
    finally:
        path.write_bytes(original)
        renderer.clear_caches()
