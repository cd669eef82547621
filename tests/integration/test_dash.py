"""MPEG-DASH from a real Local KVS: stamped media is ingested through a real storage session,
then played back with boto3 (GetDASHStreamingSessionURL), ffprobe over HTTP and
``kvsnb.playback``'s DASH reader."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import math
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest

from kvsnb.launch import connect
from kvsnb.local.archive.dash import KVS_NAMESPACE, DashPlane
from kvsnb.local.archive.sessions import PLAYLIST_CALLS_PER_S
from kvsnb.playback.dash import DashReader, parse_duration
from kvsnb.sources.stamp import read_stamp
from kvsnb.wire.times import epoch_ms, parse_time
from tests.integration.conftest import Http
from tests.integration.gaps import gaps_ms, media_ms, record_gap, stored_video_times
from tests.integration.test_hls import (
    FFPROBE_TIMEOUT_S,
    Recorded,
    expect_aws_error,
    ffprobe_frames,
    moof_timing,
    record,
    stored_tracks,
)

NAME = "dash"
GAP_NAME = "dash-gap"
# A frame's timestamp (kvs:ts plus its offset in the segment) less the capture time in its
# stamp: about the same for every frame (seen 30-72 ms on a loaded machine), far below the gap
STAMP_SPREAD_MS = 500
SELECTOR = "PRODUCER_TIMESTAMP"
MPD = "{urn:mpeg:dash:schema:mpd:2011}"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    rec = record(tmp_path_factory.mktemp("dash") / "data", NAME)
    try:
        yield rec
    finally:
        rec.kvs.stop_in_thread()


def plane(rec: Recorded) -> DashPlane:
    """The DASH plane of the Local KVS (for its clock)."""
    return next(p for p in rec.kvs.planes["archived-media"].parts if isinstance(p, DashPlane))


def whole_range(rec: Recorded, **extra: Any) -> dict[str, Any]:
    """ON_DEMAND arguments covering every stored fragment."""
    start = dt.datetime.fromtimestamp(rec.fragments[0].producer_start_ms / 1000 - 1, dt.UTC)
    end = dt.datetime.fromtimestamp(rec.fragments[-1].producer_start_ms / 1000 + 1, dt.UTC)
    return {
        "StreamName": NAME,
        "PlaybackMode": "ON_DEMAND",
        "DASHFragmentSelector": {
            "FragmentSelectorType": SELECTOR,
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
        },
        **extra,
    }


def session_url(rec: Recorded, **kwargs: Any) -> str:
    url: str = rec.am.get_dash_streaming_session_url(**kwargs)["DASHStreamingSessionURL"]
    return url


def manifest(url: str) -> ET.Element:
    response = Http.request("GET", url)
    assert response.status == 200, (response.status, response.body[:300])
    assert response.headers["content-type"] == "application/dash+xml"
    assert response.headers["access-control-allow-origin"] == "*"
    return ET.fromstring(response.body)


def timeline(root: ET.Element, content: str) -> tuple[ET.Element, list[ET.Element]]:
    """The SegmentTemplate and S elements of one AdaptationSet."""
    aset = next(a for a in root.iter(f"{MPD}AdaptationSet") if a.get("contentType") == content)
    template = next(aset.iter(f"{MPD}SegmentTemplate"))
    return template, list(template.iter(f"{MPD}S"))


def resolve(url: str, uri: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + uri


# ---------------------------------------------------------------------------- ON_DEMAND


def test_on_demand_plays_every_frame(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded))
    assert url.startswith(recorded.am.meta.endpoint_url + "/dash/v1/getDASHManifest.mpd?")
    frames = ffprobe_frames(url)
    assert frames["video"] == recorded.frames_sent
    # every stored AAC frame is served, once (counted in the served trun boxes: ffmpeg's
    # dash demuxer reads one to a few audio packets fewer at random across runs)
    template, ss = timeline(manifest(url), "audio")
    served = 0
    for number in range(int(template.get("startNumber") or 0), len(ss)):
        media = (template.get("media") or "").replace("$Number$", str(number))
        served += len(moof_timing(Http.request("GET", resolve(url, media)).body)[1])
    assert served == stored_tracks(recorded, recorded.fragments)[0]


def test_on_demand_manifest(recorded: Recorded) -> None:
    url = session_url(
        recorded,
        **whole_range(recorded, DisplayFragmentTimestamp="ALWAYS", DisplayFragmentNumber="ALWAYS"),
    )
    root = manifest(url)
    assert root.get("type") == "static" and root.get("mediaPresentationDuration")
    fragments = recorded.fragments
    for content, track in (("video", 1), ("audio", 2)):
        template, ss = timeline(root, content)
        assert template.get("timescale") == "1000" and template.get("startNumber") == "0"
        assert f"TrackNumber={track}" in (template.get("initialization") or "")
        assert "FragmentNumber=$Number$" in (template.get("media") or "")
        assert [int(s.get("d") or 0) for s in ss] == [f.duration_ms for f in fragments]
        assert [s.get(f"{{{KVS_NAMESPACE}}}ts") for s in ss] == [
            str(f.producer_start_ms) for f in fragments
        ]
        assert [s.get(f"{{{KVS_NAMESPACE}}}fn") for s in ss] == [
            f.fragment_number for f in fragments
        ]
        starts = [int(s.get("t") or 0) for s in ss]
        assert template.get("presentationTimeOffset") == str(starts[0])
        # t is the media time of each segment's tfdt (ms)
        init = Http.request("GET", resolve(url, template.get("initialization") or ""))
        assert init.status == 200 and init.body[4:8] == b"ftyp"
        for number, start in ((0, starts[0]), (len(ss) - 1, starts[-1])):
            media = (template.get("media") or "").replace("$Number$", str(number))
            body = Http.request("GET", resolve(url, media)).body
            base, _ = moof_timing(body)
            if content == "video":
                assert base == start * 90
    plain = manifest(session_url(recorded, **whole_range(recorded)))
    _, ss = timeline(plain, "video")
    assert all(s.get(f"{{{KVS_NAMESPACE}}}ts") is None for s in ss)
    assert all(s.get(f"{{{KVS_NAMESPACE}}}fn") is None for s in ss)


def test_max_results_keeps_the_oldest_on_demand(recorded: Recorded) -> None:
    root = manifest(session_url(recorded, **whole_range(recorded, MaxManifestFragmentResults=2)))
    _, ss = timeline(root, "video")
    assert len(ss) == 2


# ---------------------------------------------------------------------------- live modes


def test_live_manifest_is_dynamic_with_the_newest(recorded: Recorded) -> None:
    newest = max(f.server_start_ms for f in recorded.fragments)
    dash = plane(recorded)
    dash.clock = lambda: newest / 1000 + 2
    try:
        url = session_url(
            recorded, StreamName=NAME, MaxManifestFragmentResults=3, DisplayFragmentNumber="ALWAYS"
        )
        root = manifest(url)
    finally:
        dash.clock = time.time
    assert root.get("type") == "dynamic"
    assert root.get("minimumUpdatePeriod") == "PT1.000S"
    assert root.get("availabilityStartTime") and root.get("suggestedPresentationDelay")
    assert next(root.iter(f"{MPD}UTCTiming")).get("schemeIdUri") == "urn:mpeg:dash:utc:direct:2014"
    template, ss = timeline(root, "video")
    assert [s.get(f"{{{KVS_NAMESPACE}}}fn") for s in ss] == [
        f.fragment_number for f in recorded.fragments[-3:]
    ]
    assert template.get("presentationTimeOffset") is None


def test_live_manifest_keeps_its_segments_available(recorded: Recorded) -> None:
    """Each listed segment of a LIVE MPD is available at the MPD's publishTime by the MPD's
    own rule (availabilityStartTime + its end ≤ now ≤ that + timeShiftBufferDepth), also when
    the newest fragment ended longer ago than the listed media lasts (one listed, as just
    after a stream's first fragment): a depth of only the listed media put them out of the
    window, and dash.js then requested every segment ~1.2 s late for the whole session."""
    newest = recorded.fragments[-1]
    dash = plane(recorded)
    dash.clock = lambda: (newest.server_start_ms + 2 * newest.duration_ms + 1000) / 1000
    try:
        url = session_url(recorded, StreamName=NAME, MaxManifestFragmentResults=1)
        root = manifest(url)
    finally:
        dash.clock = time.time
    published, start = root.get("publishTime"), root.get("availabilityStartTime")
    assert published and start
    now, available = epoch_ms(parse_time(published)), epoch_ms(parse_time(start))
    depth = parse_duration(root.get("timeShiftBufferDepth"))
    assert depth is not None
    for content in ("video", "audio"):
        template, ss = timeline(root, content)
        scale = int(template.get("timescale") or 1)
        assert len(ss) == 1
        for s in ss:
            end = available + (int(s.get("t") or 0) + int(s.get("d") or 0)) * 1000 / scale
            assert end <= now <= end + depth * 1000, (content, end, now, depth)


def test_live_replay_adds_fragments_as_time_passes(recorded: Recorded) -> None:
    dash = plane(recorded)
    created = time.time()
    dash.clock = lambda: created
    try:
        args = whole_range(
            recorded, PlaybackMode="LIVE_REPLAY", MaxManifestFragmentResults=2, Expires=43200
        )
        url = session_url(recorded, **args)
        first = manifest(url)
        assert first.get("type") == "dynamic" and len(timeline(first, "video")[1]) == 2
        dash.clock = lambda: created + 3600
        last = manifest(url)
    finally:
        dash.clock = time.time
    # all released and the range is over: the presentation is complete
    assert last.get("type") == "static"
    assert len(timeline(last, "video")[1]) == 2  # the newest MaxManifestFragmentResults


def test_manifest_calls_are_limited_per_session_as_on_aws(recorded: Recorded) -> None:
    # AWS: GetDASHManifest 5 calls a second per session; media fragments have their own
    dash = plane(recorded)
    held = time.time()
    dash.clock = lambda: held
    try:
        url = session_url(recorded, **whole_range(recorded))
        for _ in range(int(PLAYLIST_CALLS_PER_S)):
            root = manifest(url)
        throttled = Http.request("GET", url)
        template, _ = timeline(root, "video")
        media = resolve(url, (template.get("media") or "").replace("$Number$", "0"))
        assert Http.request("GET", media).status == 200
        dash.clock = lambda: held + 1
        assert manifest(url).get("type") == "static"
    finally:
        dash.clock = time.time
    assert throttled.status == 400 and throttled.error_code == "ClientLimitExceededException"
    assert "getDASHManifest.mpd" in throttled.message


async def test_live_manifest_follows_ingest(recorded: Recorded) -> None:
    kvs = recorded.kvs
    with connect(endpoint_url=kvs.url) as tg:
        _, arn = tg.create_storage_channel("dash-live")
        task = asyncio.create_task(tg_ingest(tg, "dash-live"))
        try:
            await kvs.store.wait_for_fragment(arn, timeout=20)
            url = await asyncio.to_thread(session_url, recorded, StreamName="dash-live")
            starts: list[int] = []
            while not task.done():
                root = await asyncio.to_thread(manifest, url)
                template, ss = timeline(root, "video")
                starts.append(int(template.get("startNumber") or 0) + len(ss))
                await asyncio.sleep(0.2)  # paces the manifest requests while the ingest runs
            await task
        finally:
            if not task.done():
                task.cancel()
    assert starts == sorted(starts) and starts[-1] > starts[0]


async def tg_ingest(tg: Any, name: str) -> None:
    from kvsnb.client.ingest import ingest
    from tests.conftest import FAST

    await ingest(tg, name, seconds=3.5, policy=FAST)


# ---------------------------------------------------------------------------- the reader


async def test_playback_reads_dash_frames_and_segments(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded, DisplayFragmentTimestamp="ALWAYS"))
    reader = DashReader(url)
    frames = [f async for f in reader.frames()]
    assert len(frames) == recorded.frames_sent
    table = reader.segments_table()
    assert list(table["fragment_number"]) == [f.fragment_number for f in recorded.fragments] or (
        table["fragment_number"].isna().all()
    )
    assert len(table) == len(recorded.fragments)
    # frame times: the fragment's timestamp plus the frame's offset, and the stamp agrees
    pixels = frames[len(frames) // 2].to_ndarray()
    stamp = read_stamp(pixels)
    assert stamp is not None
    assert frames[0].timestamp is not None
    first_ms = recorded.fragments[0].producer_start_ms
    assert abs(frames[0].timestamp.value // 1_000_000 - first_ms) <= 1


# ---------------------------------------------------------------------------- errors


def test_session_url_errors(recorded: Recorded) -> None:
    am = recorded.am
    start = dt.datetime.fromtimestamp(recorded.fragments[0].producer_start_ms / 1000, dt.UTC)

    def call(**kwargs: Any) -> Callable[[], Any]:
        return lambda: am.get_dash_streaming_session_url(**{"StreamName": NAME, **kwargs})

    sel = {"FragmentSelectorType": SELECTOR, "TimestampRange": {"StartTimestamp": start}}
    cases: list[tuple[dict[str, Any], str, int]] = [
        ({"PlaybackMode": "LIVE", "DASHFragmentSelector": sel}, "InvalidArgumentException", 400),
        ({"PlaybackMode": "ON_DEMAND", "DASHFragmentSelector": sel}, "InvalidArgumentException",
         400),
        ({"PlaybackMode": "LIVE_REPLAY"}, "InvalidArgumentException", 400),
        ({"PlaybackMode": "SOMETIMES"}, "InvalidArgumentException", 400),
        ({"MaxManifestFragmentResults": 5001}, "InvalidArgumentException", 400),
        ({"DisplayFragmentNumber": "SOMETIMES"}, "InvalidArgumentException", 400),
        ({"StreamName": "no-such-stream"}, "ResourceNotFoundException", 404),
    ]  # fmt: skip
    for kwargs, code, status in cases:
        expect_aws_error(call(**kwargs), code, status)
    # LIVE with nothing ingested in the last 30 s
    dash = plane(recorded)
    dash.clock = lambda: time.time() + 60
    try:
        expect_aws_error(call(), "ResourceNotFoundException", 404)
    finally:
        dash.clock = time.time


def test_tokens_and_resource_errors(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded))
    token = url.split("SessionToken=", 1)[1]
    base = url.rsplit("/", 1)[0]
    n = len(recorded.fragments)
    hls = recorded.am.get_hls_streaming_session_url(
        **{
            "StreamName": NAME,
            "PlaybackMode": "ON_DEMAND",
            "HLSFragmentSelector": whole_range(recorded)["DASHFragmentSelector"],
        }
    )["HLSStreamingSessionURL"]
    hls_token = hls.split("SessionToken=", 1)[1]
    cases = [
        (f"getMP4MediaFragment.mp4?FragmentNumber={n}&SessionToken={token}&TrackNumber=1",
         404, "ResourceNotFoundException"),
        (f"getMP4MediaFragment.mp4?FragmentNumber=0&SessionToken={token}&TrackNumber=3",
         400, "InvalidArgumentException"),
        (f"getMP4MediaFragment.mp4?FragmentNumber=x&SessionToken={token}&TrackNumber=1",
         400, "InvalidArgumentException"),
        (f"getMP4InitFragment.mp4?SessionToken={token}", 400, "InvalidArgumentException"),
        ("getDASHManifest.mpd", 400, "InvalidArgumentException"),
        (f"getDASHManifest.mpd?SessionToken={hls_token}", 401, "NotAuthorizedException"),
        (f"getDASHManifest.mpd?SessionToken={'x' * len(token)}", 401, "NotAuthorizedException"),
        (f"getHLSMasterPlaylist.m3u8?SessionToken={token}", 404, "UnknownOperationException"),
    ]  # fmt: skip
    for uri, status, code in cases:
        response = Http.request("GET", f"{base}/{uri}")
        assert (response.status, response.error_code) == (status, code), uri
    dash = plane(recorded)
    dash.clock = lambda: time.time() + 301
    try:
        expired = Http.request("GET", url)
    finally:
        dash.clock = time.time
    assert expired.status == 401 and expired.error_code == "NotAuthorizedException"
    assert Http.request("GET", url).error_code == "NotAuthorizedException"


# ---------------------------------------------------------------------------- across a gap


@pytest.fixture(scope="module")
def gapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """Two recordings with a pause longer than a fragment between them (``gaps.py``)."""
    rec = record_gap(tmp_path_factory.mktemp("dash-gap") / "data", GAP_NAME)
    assert len(gaps_ms(rec.fragments)) == 1 and gaps_ms(rec.fragments)[0] > 2000
    try:
        yield rec
    finally:
        rec.kvs.stop_in_thread()


def gap_range(rec: Recorded, mode: str = "ON_DEMAND", **extra: Any) -> dict[str, Any]:
    """Arguments of a session listing every fragment of ``rec`` (the gap inside)."""
    args = whole_range(rec, PlaybackMode=mode, MaxManifestFragmentResults=100, **extra)
    return {**args, "StreamName": GAP_NAME}


def ffprobe_timing(url: str) -> tuple[float, list[float]]:
    """The duration ffprobe reports for a URL and the times of its video packets (s)."""
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
            "format=duration:packet=pts_time", "-of", "json", url,
        ],
        capture_output=True, text=True, timeout=FFPROBE_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    probed = json.loads(out.stdout)
    times = sorted(float(p["pts_time"]) for p in probed["packets"])
    return float(probed["format"]["duration"]), times


@pytest.mark.parametrize("mode", ["ON_DEMAND", "LIVE_REPLAY"])
def test_a_gap_is_closed_in_the_manifest_and_the_segments(gapped: Recorded, mode: str) -> None:
    """AWS: "Kinesis Video Streams adjusts the media timeline in the manifest file to enable
    playback of media with discontinuities": the timeline runs on across the pause, the
    presentation lasts as long as the media, kvs:ts keeps the real times and each segment's
    tfdt sits where its S says."""
    fragments = gapped.fragments
    dash = plane(gapped)
    created = time.time()
    dash.clock = lambda: created
    try:
        args = gap_range(gapped, mode, DisplayFragmentTimestamp="ALWAYS", Expires=43200)
        url = session_url(gapped, **args)
        # LIVE_REPLAY: once the range has ended and every fragment has been out a while, the
        # session is a static presentation on its live timeline
        dash.clock = lambda: created + 3600
        root = manifest(url)
    finally:
        dash.clock = time.time
    assert root.get("type") == "static"
    total = parse_duration(root.get("mediaPresentationDuration"))
    assert total == pytest.approx(media_ms(fragments) / 1000, abs=0.002)
    for content, track in (("video", 1), ("audio", 2)):
        template, ss = timeline(root, content)
        starts = [int(s.get("t") or 0) for s in ss]
        durations = [int(s.get("d") or 0) for s in ss]
        assert durations == [f.duration_ms for f in fragments]
        assert all(b == a + d for a, b, d in zip(starts, starts[1:], durations, strict=False))
        assert [int(s.get(f"{{{KVS_NAMESPACE}}}ts") or 0) for s in ss] == [
            f.producer_start_ms for f in fragments
        ]
        pto = int(template.get("presentationTimeOffset") or 0)
        assert (starts[-1] + durations[-1] - pto) / 1000 == pytest.approx(total, abs=0.001)
        for number, start in enumerate(starts):
            media = (template.get("media") or "").replace("$Number$", str(number))
            base, _ = moof_timing(Http.request("GET", resolve(url, media)).body)
            if track == 1:
                assert base == start * 90, number
            else:  # audio: where the fragment's audio starts, within a frame of its video
                assert abs(base / 48 - start) < 50, number


def test_ffprobe_plays_across_the_gap(gapped: Recorded) -> None:
    """ffmpeg's DASH demuxer reads every frame on the media's own timeline with the pause
    taken out (no hole where it was) and reports the media's duration (whole seconds of
    mediaPresentationDuration), in ON_DEMAND and in a LIVE_REPLAY session played out."""
    media_s = media_ms(gapped.fragments) / 1000
    stored = stored_video_times(gapped)
    dash = plane(gapped)
    urls = [session_url(gapped, **gap_range(gapped, Expires=43200))]
    created = time.time()
    dash.clock = lambda: created
    try:
        urls.append(session_url(gapped, **gap_range(gapped, "LIVE_REPLAY", Expires=43200)))
    finally:
        dash.clock = time.time
    dash.clock = lambda: created + 3600
    try:
        for url in urls:
            reported, times = ffprobe_timing(url)
            assert math.floor(media_s) <= reported <= media_s
            assert len(times) == gapped.frames_sent
            played = [t - times[0] for t in times]
            expected = [t - stored[0] for t in stored]
            assert max(abs(a - b) for a, b in zip(played, expected, strict=True)) < 0.002
    finally:
        dash.clock = time.time


async def test_reader_gives_real_times_across_the_gap(gapped: Recorded) -> None:
    """``DashReader`` timestamps frames from kvs:ts: across the gap they jump by the pause,
    and each agrees with the capture time stamped in its pixels."""
    url = await asyncio.to_thread(
        session_url, gapped, **gap_range(gapped, DisplayFragmentTimestamp="ALWAYS")
    )
    frames = [f async for f in DashReader(url).frames()]
    assert len(frames) == gapped.frames_sent
    assert all(f.timestamp is not None for f in frames)
    times = [int(pd.Timestamp(f.timestamp).value // 1_000_000) for f in frames]  # type: ignore[arg-type]
    stamps = [read_stamp(f.to_ndarray()).capture_ms for f in frames]
    offsets = [t - s for t, s in zip(times, stamps, strict=True)]
    assert max(offsets) - min(offsets) <= STAMP_SPREAD_MS, offsets
    (gap,) = gaps_ms(gapped.fragments)
    steps = [b - a for a, b in itertools.pairwise(times)]
    assert max(steps) >= gap
    jump = steps.index(max(steps))
    assert frames[jump + 1].sequence == len(gapped.first_session)
