"""HLS from a real Local KVS: stamped media is ingested through a real storage session, then
played back with boto3 (GetHLSStreamingSessionURL) and ffmpeg/ffprobe over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import math
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from kvsnb.client.ingest import IngestResult, ingest
from kvsnb.launch import connect
from kvsnb.local import LocalKvs
from kvsnb.local.archive.hls import HlsPlane, program_date_time
from kvsnb.local.archive.sessions import PLAYLIST_CALLS_PER_S
from kvsnb.local.store.fragments import Fragment
from kvsnb.putmedia import file_fragments, plan_file, put_media
from kvsnb.sources.tracks import make_test_file
from kvsnb.wire import ebml
from tests.conftest import (
    FAST,
    make_client,
    start_kvs,
    stored_frame_count,
    wait_until,
    wait_until_sync,
)
from tests.integration.conftest import Http

NAME = "hls"
SELECTOR = "PRODUCER_TIMESTAMP"
FFPROBE_TIMEOUT_S = 60


@dataclass
class Recorded:
    """A Local KVS holding one stream ingested in two sessions with a gap between them."""

    kvs: LocalKvs
    arn: str
    results: list[IngestResult]
    fragments: list[Fragment]  # by producer time
    first_session: list[Fragment]  # the fragments of the first ingest
    am: Any  # kinesis-video-archived-media client at the GetDataEndpoint endpoint

    @property
    def frames_sent(self) -> int:
        """Video frames sent by both ingests."""
        return sum(len(r.frames_sent) for r in self.results)

    @property
    def plane(self) -> HlsPlane:
        """The HLS plane of the Local KVS (for its clock)."""
        return next(p for p in self.kvs.planes["archived-media"].parts if isinstance(p, HlsPlane))


def record(tmp: Path, name: str) -> Recorded:
    """Start Local KVS (1 s fragments) and ingest 2.5 s, pause, then 1.5 s more."""
    kvs = start_kvs(tmp)
    with connect(endpoint_url=kvs.url) as tg:
        _, arn = tg.create_storage_channel(name)
        first = asyncio.run(ingest(tg, name, seconds=2.5, policy=FAST))
        time.sleep(0.3)  # the pause between the two sessions, part of the recording
        second = asyncio.run(ingest(tg, name, seconds=1.5, policy=FAST))
    sent = len(first.frames_sent) + len(second.frames_sent)
    wait_until_sync(  # the fragment a leaving master held is stored a moment later
        lambda: stored_frame_count(kvs, arn) >= sent,
        "every frame sent is stored",
        deadline_s=30,
    )
    fragments = kvs.store.list_fragments(arn, SELECTOR)
    first_session = [f for f in fragments if f.producer_start_ms < first.ended * 1000]
    kv = make_client("kinesisvideo", kvs.url)
    endpoint = kv.get_data_endpoint(StreamARN=arn, APIName="GET_HLS_STREAMING_SESSION_URL")
    am = make_client("kinesis-video-archived-media", endpoint["DataEndpoint"])
    return Recorded(kvs, arn, [first, second], fragments, first_session, am)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    rec = record(tmp_path_factory.mktemp("hls") / "data", NAME)
    try:
        yield rec
    finally:
        rec.kvs.stop_in_thread()


def whole_range(rec: Recorded, **extra: Any) -> dict[str, Any]:
    """ON_DEMAND arguments covering every stored fragment."""
    start = dt.datetime.fromtimestamp(rec.fragments[0].producer_start_ms / 1000 - 1, dt.UTC)
    end = dt.datetime.fromtimestamp(rec.fragments[-1].producer_start_ms / 1000 + 1, dt.UTC)
    return {
        "StreamName": NAME,
        "PlaybackMode": "ON_DEMAND",
        "HLSFragmentSelector": {
            "FragmentSelectorType": SELECTOR,
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
        },
        **extra,
    }


def session_url(rec: Recorded, **kwargs: Any) -> str:
    url: str = rec.am.get_hls_streaming_session_url(**kwargs)["HLSStreamingSessionURL"]
    return url


def fetch(url: str) -> str:
    response = Http.request("GET", url)
    assert response.status == 200, (response.status, response.body[:300])
    return response.body.decode()


def resolve(master_url: str, uri: str) -> str:
    return master_url.rsplit("/", 1)[0] + "/" + uri


def media_playlists(master_url: str) -> dict[int, str]:
    """TrackNumber → media playlist text, from the master playlist's URIs."""
    text = fetch(master_url)
    uris = [ln for ln in text.splitlines() if ln.startswith("getHLSMediaPlaylist")]
    uris += re.findall(r'URI="([^"]+)"', text)
    out = {}
    for uri in uris:
        track = int(re.search(r"TrackNumber=(\d)", uri).group(1))  # type: ignore[union-attr]
        out[track] = fetch(resolve(master_url, uri))
    return out


def ffprobe_frames(url: str) -> dict[str, int]:
    """Frames ffprobe decodes per stream type from a URL (HLS master playlist or file)."""
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-show_entries",
            "stream=codec_type,nb_read_frames", "-of", "json", url,
        ],
        capture_output=True, text=True, timeout=FFPROBE_TIMEOUT_S, check=True,
    )  # fmt: skip
    streams = json.loads(out.stdout)["streams"]
    return {s["codec_type"]: int(s["nb_read_frames"]) for s in streams}


def tags(text: str, name: str) -> list[str]:
    """The values of one tag (``#EXT-X-FOO:value``) in playlist order."""
    prefix = f"#{name}:"
    return [ln[len(prefix) :] for ln in text.splitlines() if ln.startswith(prefix)]


def segments(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


# ---------------------------------------------------------------------------- playback


@pytest.mark.parametrize("container", ["FRAGMENTED_MP4", "MPEG_TS"])
def test_on_demand_plays_every_frame(recorded: Recorded, container: str) -> None:
    url = session_url(recorded, **whole_range(recorded, ContainerFormat=container))
    frames = ffprobe_frames(url)
    assert frames["video"] == recorded.frames_sent
    assert frames["audio"] == sum(f.audio_frame_count for f in recorded.fragments)


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of the ISO BMFF boxes in ``data[start:end]``."""
    pos, stop = start, len(data) if end is None else end
    while pos + 8 <= stop:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield kind, pos + 8, pos + size
        pos += size


def moof_timing(body: bytes) -> tuple[int, list[int]]:
    """A media segment's tfdt base media decode time and its trun sample durations."""
    _, s, e = next(b for b in boxes(body) if b[0] == b"moof")
    _, s, e = next(b for b in boxes(body, s, e) if b[0] == b"traf")
    inner = {kind: start for kind, start, _ in boxes(body, s, e)}
    tfdt = inner[b"tfdt"]
    base = struct.unpack(">Q" if body[tfdt] == 1 else ">I", body[tfdt + 4 : tfdt + 12])[0]
    trun = inner[b"trun"]
    flags = int.from_bytes(body[trun + 1 : trun + 4], "big")
    assert flags & 0x100, "per-sample durations"
    count = struct.unpack(">I", body[trun + 4 : trun + 8])[0]
    pos = trun + 8 + (4 if flags & 1 else 0) + (4 if flags & 4 else 0)
    row = 4 * bin(flags & 0xF00).count("1")
    durations = [
        struct.unpack(">I", body[p : p + 4])[0] for p in range(pos, pos + count * row, row)
    ]
    return int(base), durations


def test_fmp4_timeline_is_continuous(recorded: Recorded) -> None:
    """Video tfdt of fragment i+1 = tfdt of fragment i + its duration (same ingest)."""
    url = session_url(recorded, **whole_range(recorded))
    playlist = media_playlists(url)[1]
    timings = []
    for uri in segments(playlist):
        response = Http.request("GET", resolve(url, uri))
        assert response.status == 200 and response.headers["content-type"] == "video/mp4"
        timings.append(moof_timing(response.body))
    # media time 0 is the session's earliest sample, video or audio
    assert 0 <= timings[0][0] <= 90 * 1024 * 1000 // 48_000
    first = len(recorded.first_session)
    for (start, durations), (following, _) in itertools.pairwise(timings[:first]):
        assert following == start + sum(durations)
    # after the gap between the ingests, the timeline jumps by the gap (producer time)
    gap_ms = recorded.fragments[first].producer_start_ms - recorded.fragments[0].producer_start_ms
    assert timings[first][0] - timings[0][0] == gap_ms * 90


def stored_tracks(rec: Recorded, fragments: list[Fragment]) -> tuple[int, float]:
    """From the stored Matroska files: the audio frame count of ``fragments`` and the first
    fragment's first audio time minus its first video time (s)."""
    count = 0
    offset = math.nan
    for i, f in enumerate(fragments):
        with av.open(str(rec.kvs.store.resolve(f))) as container:
            firsts: dict[str, float] = {}
            for packet in container.demux():
                if packet.pts is None or packet.size == 0:
                    continue
                kind = packet.stream.type
                firsts.setdefault(kind, float(packet.pts * packet.time_base))
                count += kind == "audio"
        if i == 0:
            offset = firsts["audio"] - firsts["video"]
    return count, offset


def fmp4_tracks(master_url: str) -> tuple[int, float]:
    """From an fMP4 HLS session: the audio frame count and the first audio segment's tfdt
    minus the first video segment's (s), as a player reads them."""
    playlists = media_playlists(master_url)
    starts: dict[int, float] = {}
    count = 0
    for track, scale in ((1, 90_000), (2, 48_000)):
        for i, uri in enumerate(segments(playlists[track])):
            response = Http.request("GET", resolve(master_url, uri))
            assert response.status == 200
            base, durations = moof_timing(response.body)
            if i == 0:
                starts[track] = base / scale
            if track == 2:
                count += len(durations)
    return count, starts[2] - starts[1]


LEADING = "hls-audio-leads"
LEAD_MS = 30  # the audio of this span before each keyframe opens the keyframe's fragment


async def _chunks(chunks: list[bytes]) -> Any:
    for chunk in chunks:
        yield chunk


@pytest.fixture(scope="module")
def audio_leads(recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A stream put with PutMedia into ``recorded``'s Local KVS whose fragments (1 s GOPs)
    each open with the audio of the ``LEAD_MS`` before their keyframe, as a producer that
    cuts clusters as frames arrive may send them (Local KVS's recorder and kvsnb's
    fragmenter never do: their fragments hold the audio of their own span)."""
    from tests.integration.test_get_media_shape import read_body

    media = make_test_file(
        tmp_path_factory.mktemp("lead") / "lead.mp4", seconds=4.0, width=320, height=240,
        fps=30, gop=30, start_ms=0,
    )  # fmt: skip
    head, *clusters = file_fragments(plan_file(media))
    frames = [
        ebml.Frame(track, c.timecode + relative, key, data)
        for chunk in read_body(b"".join([head, *clusters]))
        for c in chunk.clusters
        for track, relative, key, data in c.blocks
    ]
    keys = sorted(f.timecode for f in frames if f.track == 1 and f.keyframe)
    bounds = [*keys[1:], 2**31]
    body = [head]
    for i, (start, end) in enumerate(zip(keys, bounds, strict=True)):
        lead = 0 if i == 0 else LEAD_MS

        def inside(f: ebml.Frame, lead: int = lead, start: int = start, end: int = end) -> bool:
            shift = 0 if f.track == 1 else LEAD_MS
            return start - lead <= f.timecode < end - (shift if end < 2**31 else 0)

        mine = sorted((f for f in frames if inside(f)), key=lambda f: (f.timecode, f.track))
        body.append(ebml.cluster(start, mine))
    with connect(endpoint_url=recorded.kvs.url) as target:
        target.kinesisvideo.create_stream(StreamName=LEADING, DataRetentionInHours=24)
        asyncio.run(
            put_media(target, LEADING, _chunks(body), producer_start=dt.datetime.now(dt.UTC))
        )
        arn = target.kinesisvideo.describe_stream(StreamName=LEADING)["StreamInfo"]["StreamARN"]
    kv = make_client("kinesisvideo", recorded.kvs.url)
    endpoint = kv.get_data_endpoint(StreamARN=arn, APIName="GET_HLS_STREAMING_SESSION_URL")
    am = make_client("kinesis-video-archived-media", endpoint["DataEndpoint"])
    fragments = recorded.kvs.store.list_fragments(arn, SELECTOR)
    assert len(fragments) == len(keys)
    return Recorded(recorded.kvs, arn, [], fragments, fragments, am)


@pytest.mark.parametrize("mode", ["ON_DEMAND", "LIVE_REPLAY", "LIVE"])
def test_fmp4_audio_keeps_its_offset_when_audio_leads(audio_leads: Recorded, mode: str) -> None:
    """A session starting at a fragment whose audio begins before its video: the fMP4 audio
    is not clamped to time 0 (it used to overlap the next segment and lose a frame)."""
    recorded = audio_leads
    fragments = recorded.fragments
    lead = next(i for i, f in enumerate(fragments) if stored_tracks(recorded, [f])[1] < -0.005)
    chosen = fragments[lead:]
    expected_count, expected_offset = stored_tracks(recorded, chosen)
    assert expected_offset == pytest.approx(-LEAD_MS / 1000, abs=0.022)  # an AAC frame's grid
    args: dict[str, Any] = {"StreamName": LEADING, "PlaybackMode": mode}
    plane = recorded.plane
    if mode == "LIVE":
        # a LIVE session starts at the newest MaxMediaPlaylistFragmentResults fragments;
        # the plane's clock is moved to just after the ingest so they count as recent
        newest = max(f.server_start_ms for f in fragments)
        plane.clock = lambda: newest / 1000 + 2
        args["MaxMediaPlaylistFragmentResults"] = len(chosen)
    else:
        start = dt.datetime.fromtimestamp(chosen[0].producer_start_ms / 1000, dt.UTC)
        end = dt.datetime.fromtimestamp(chosen[-1].producer_start_ms / 1000 + 1, dt.UTC)
        args["HLSFragmentSelector"] = {
            "FragmentSelectorType": SELECTOR,
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
        }
        args["MaxMediaPlaylistFragmentResults"] = len(chosen)
    try:
        url = session_url(recorded, **args)
        count, offset = fmp4_tracks(url)
    finally:
        plane.clock = time.time
    assert count == expected_count
    assert offset == pytest.approx(expected_offset, abs=0.0015)
    if mode == "ON_DEMAND":
        assert ffprobe_frames(url)["audio"] == expected_count


# ---------------------------------------------------------------------------- playlists


def test_master_and_media_playlist_tags(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded, DisplayFragmentTimestamp="ALWAYS"))
    master = fetch(url)
    media = tags(master, "EXT-X-MEDIA")
    assert len(media) == 1 and "TYPE=AUDIO" in media[0] and "TrackNumber=2" in media[0]
    (inf,) = tags(master, "EXT-X-STREAM-INF")
    first = recorded.fragments[0]
    assert f'CODECS="{first.video_codec},mp4a.40.2"' in inf
    assert f"RESOLUTION={first.width}x{first.height}" in inf
    assert 'AUDIO="audio"' in inf and re.search(r"FRAME-RATE=\d+\.\d{3}", inf)
    assert int(re.search(r"BANDWIDTH=(\d+)", inf).group(1)) > 100_000  # type: ignore[union-attr]

    playlists = media_playlists(url)
    assert set(playlists) == {1, 2}
    for track, text in playlists.items():
        assert tags(text, "EXT-X-VERSION") == ["7"]
        assert tags(text, "EXT-X-MEDIA-SEQUENCE") == ["0"]
        assert tags(text, "EXT-X-PLAYLIST-TYPE") == ["VOD"]
        assert "#EXT-X-INDEPENDENT-SEGMENTS" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
        (mapped,) = tags(text, "EXT-X-MAP")
        assert (
            mapped.startswith('URI="getMP4InitFragment.mp4?') and f"TrackNumber={track}" in mapped
        )
        durations = [f.duration_ms / 1000 for f in recorded.fragments]
        assert tags(text, "EXTINF") == [f"{d:.3f}," for d in durations]
        assert tags(text, "EXT-X-TARGETDURATION") == [str(math.ceil(max(durations)))]
        # PRODUCER_TIMESTAMP: producer starts; the default DiscontinuityMode is NEVER.
        stamps = [program_date_time(f.producer_start_ms) for f in recorded.fragments]
        assert tags(text, "EXT-X-PROGRAM-DATE-TIME") == stamps
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamps[0])
        assert "#EXT-X-DISCONTINUITY" not in text
        uris = segments(text)
        assert [re.search(r"FragmentNumber=(\d+)", u).group(1) for u in uris] == [  # type: ignore[union-attr]
            str(i) for i in range(len(recorded.fragments))
        ]


def test_ts_playlists(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded, ContainerFormat="MPEG_TS"))
    master = fetch(url)
    assert "#EXT-X-MEDIA" not in master
    assert 'CODECS="avc1.' in master and "mp4a.40.2" in master and "AUDIO=" not in master
    (text,) = media_playlists(url).values()
    assert tags(text, "EXT-X-VERSION") == ["3"] and "#EXT-X-MAP" not in text
    assert all(u.startswith("getTSFragment.ts?FragmentNumber=") for u in segments(text))
    assert "#EXT-X-PROGRAM-DATE-TIME" not in text  # DisplayFragmentTimestamp defaults to NEVER


@pytest.mark.parametrize(
    ("mode", "selector", "expected"),
    [
        ("ALWAYS", SELECTOR, "all"),
        ("NEVER", SELECTOR, 0),
        ("ON_DISCONTINUITY", SELECTOR, 1),  # only at the gap between the two ingests
        (None, "SERVER_TIMESTAMP", "all"),  # default with server timestamps
        (None, SELECTOR, 0),  # default with producer timestamps
    ],
)
def test_discontinuity_modes(
    recorded: Recorded, mode: str | None, selector: str, expected: int | str
) -> None:
    args = whole_range(recorded)
    args["HLSFragmentSelector"]["FragmentSelectorType"] = selector
    if selector == "SERVER_TIMESTAMP":
        rng = args["HLSFragmentSelector"]["TimestampRange"]
        rng["EndTimestamp"] = dt.datetime.now(dt.UTC)
        rng["StartTimestamp"] = rng["EndTimestamp"] - dt.timedelta(minutes=5)
    if mode is not None:
        args["DiscontinuityMode"] = mode
    text = media_playlists(session_url(recorded, **args))[1]
    count = text.count("#EXT-X-DISCONTINUITY\n")
    # ALWAYS: a marker before every segment, the first one too (as AWS writes it)
    want = len(recorded.fragments) if expected == "all" else expected
    assert count == want
    if expected == "all":
        first_segment = next(ln for ln in text.splitlines() if ln.startswith("#EXTINF"))
        assert text.index("#EXT-X-DISCONTINUITY\n") < text.index(first_segment)
    if expected == 1:
        lines = text.splitlines()
        after = lines[lines.index("#EXT-X-DISCONTINUITY") + 2]
        index = int(re.search(r"FragmentNumber=(\d+)", after).group(1))  # type: ignore[union-attr]
        assert index == len(recorded.first_session)


def test_max_results_keeps_the_oldest_on_demand(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded, MaxMediaPlaylistFragmentResults=2))
    text = media_playlists(url)[1]
    assert len(segments(text)) == 2 and tags(text, "EXT-X-MEDIA-SEQUENCE") == ["0"]


def test_live_replay_adds_fragments_as_time_passes(recorded: Recorded) -> None:
    plane = recorded.plane
    args = whole_range(recorded, PlaybackMode="LIVE_REPLAY", MaxMediaPlaylistFragmentResults=1)
    base = time.time()
    plane.clock = lambda: base
    try:
        url = session_url(recorded, **args)
        text = media_playlists(url)[1]
        assert len(segments(text)) == 1 and tags(text, "EXT-X-MEDIA-SEQUENCE") == ["0"]
        assert "#EXT-X-ENDLIST" not in text and "#EXT-X-PLAYLIST-TYPE" not in text
        first = recorded.fragments[0].duration_ms / 1000
        plane.clock = lambda: base + first + 0.01
        text = media_playlists(url)[1]
        assert tags(text, "EXT-X-MEDIA-SEQUENCE") == ["1"]
        plane.clock = lambda: base + 120  # the end is past and every fragment is out
        text = media_playlists(url)[1]
        assert tags(text, "EXT-X-MEDIA-SEQUENCE") == [str(len(recorded.fragments) - 1)]
        assert text.rstrip().endswith("#EXT-X-ENDLIST")
    finally:
        plane.clock = time.time


async def test_live_playlist_follows_ingest(recorded: Recorded) -> None:
    kvs = recorded.kvs
    stored: dict[str, float] = {}
    remove = kvs.store.add_listener(lambda f: stored.setdefault(f.fragment_number, time.time()))
    with connect(endpoint_url=kvs.url) as tg:
        _, arn = tg.create_storage_channel("live")
        await asyncio.to_thread(
            expect_aws_error, lambda: session_url(recorded, StreamName="live"),
            "ResourceNotFoundException", 404,
        )  # fmt: skip
        task = asyncio.create_task(ingest(tg, "live", seconds=4.5, policy=FAST))
        try:
            await kvs.store.wait_for_fragment(arn, timeout=20)
            url = await asyncio.to_thread(
                session_url, recorded, StreamName="live", MaxMediaPlaylistFragmentResults=2
            )
            seen: dict[int, float] = {}
            sequences: list[int] = []
            async with aiohttp.ClientSession() as http:
                master = await (await http.get(url)).text()
                video = resolve(url, segments(master)[0])
                while True:
                    done = task.done()
                    async with http.get(video) as response:
                        assert response.status == 200
                        text = await response.text()
                    assert "#EXT-X-ENDLIST" not in text and "#EXT-X-PLAYLIST-TYPE" not in text
                    uris = segments(text)
                    assert 1 <= len(uris) <= 2
                    sequences.append(int(tags(text, "EXT-X-MEDIA-SEQUENCE")[0]))
                    for uri in uris:
                        index = int(re.search(r"FragmentNumber=(\d+)", uri).group(1))  # type: ignore[union-attr]
                        seen.setdefault(index, time.time())
                    if done:
                        break
                    # paces the playlist requests within AWS's quota per session
                    await asyncio.sleep(1 / PLAYLIST_CALLS_PER_S)
            sent = len((await task).frames_sent)
        finally:
            remove()
            if not task.done():
                task.cancel()
    await wait_until(  # the fragment the leaving master held is stored a moment later
        lambda: stored_frame_count(kvs, arn) >= sent,
        "every frame sent is stored",
        deadline_s=30,
    )
    fragments = kvs.store.list_fragments(arn)
    assert sequences == sorted(sequences) and sequences[-1] > sequences[0]
    # Every fragment stored while the session ran was listed, in order, none skipped.
    assert sorted(seen) == list(range(len(seen)))
    assert len(seen) >= len(fragments) - 1 >= 3


def expect_aws_error(call: Callable[[], Any], code: str, status: int) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call()
    response: Any = info.value.response
    assert response["Error"]["Code"] == code, response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status


# ---------------------------------------------------------------------------- tokens


def test_tokens_expire_and_are_opaque(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded, Expires=300))
    token = url.split("SessionToken=", 1)[1]
    assert len(token) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert session_url(recorded, **whole_range(recorded)) != url
    assert Http.request("GET", url).status == 200
    plane = recorded.plane
    plane.clock = lambda: time.time() + 301
    try:
        expired = Http.request("GET", url)
    finally:
        plane.clock = time.time
    assert expired.status == 401 and expired.error_code == "NotAuthorizedException"
    assert "expired" in expired.message
    # an expired session is gone for good
    assert Http.request("GET", url).error_code == "NotAuthorizedException"
    unknown = Http.request("GET", url.replace(token, "x" * len(token)))
    assert unknown.status == 401 and unknown.error_code == "NotAuthorizedException"
    missing = Http.request("GET", url.split("?")[0])
    assert missing.status == 400 and missing.error_code == "InvalidArgumentException"


def test_resource_errors(recorded: Recorded) -> None:
    url = session_url(recorded, **whole_range(recorded))
    token = url.split("SessionToken=", 1)[1]
    base = url.rsplit("/", 1)[0]
    n = len(recorded.fragments)
    cases = [
        (f"getMP4MediaFragment.mp4?FragmentNumber={n}&SessionToken={token}&TrackNumber=1",
         404, "ResourceNotFoundException"),
        (f"getMP4MediaFragment.mp4?FragmentNumber=0&SessionToken={token}&TrackNumber=3",
         400, "InvalidArgumentException"),
        (f"getMP4MediaFragment.mp4?FragmentNumber=x&SessionToken={token}&TrackNumber=1",
         400, "InvalidArgumentException"),
        (f"getHLSMediaPlaylist.m3u8?SessionToken={token}", 400, "InvalidArgumentException"),
        (f"getTSFragment.ts?FragmentNumber=0&SessionToken={token}", 400,
         "InvalidArgumentException"),
        (f"nothing.m3u8?SessionToken={token}", 404, "UnknownOperationException"),
    ]  # fmt: skip
    for uri, status, code in cases:
        response = Http.request("GET", f"{base}/{uri}")
        assert (response.status, response.error_code) == (status, code), uri
    good = Http.request("GET", f"{base}/getMP4InitFragment.mp4?SessionToken={token}&TrackNumber=2")
    assert good.status == 200 and good.headers["content-type"] == "video/mp4"
    assert good.body[4:8] == b"ftyp" and b"esds" in good.body


# ---------------------------------------------------------------------------- bad input


def test_session_url_errors(recorded: Recorded) -> None:
    am = recorded.am
    start = dt.datetime.fromtimestamp(recorded.fragments[0].producer_start_ms / 1000, dt.UTC)
    sel = "PRODUCER_TIMESTAMP"

    def call(**kwargs: Any) -> Callable[[], Any]:
        return lambda: am.get_hls_streaming_session_url(**{"StreamName": NAME, **kwargs})

    def rng(start: dt.datetime | None, end: dt.datetime | None) -> dict[str, Any]:
        times = {"StartTimestamp": start, "EndTimestamp": end}
        return {
            "FragmentSelectorType": sel,
            "TimestampRange": {k: v for k, v in times.items() if v is not None},
        }

    hour = dt.timedelta(hours=1)
    bad = [
        (call(PlaybackMode="LIVE", HLSFragmentSelector=rng(start, start + hour)),
         "InvalidArgumentException", 400),
        (call(PlaybackMode="ON_DEMAND", HLSFragmentSelector=rng(start, None)),
         "InvalidArgumentException", 400),
        (call(PlaybackMode="ON_DEMAND"), "InvalidArgumentException", 400),
        (call(PlaybackMode="LIVE_REPLAY", HLSFragmentSelector=rng(None, start)),
         "InvalidArgumentException", 400),
        (call(PlaybackMode="ON_DEMAND", HLSFragmentSelector=rng(start, start + 25 * hour)),
         "InvalidArgumentException", 400),
        (call(PlaybackMode="ON_DEMAND", HLSFragmentSelector=rng(start, start - hour)),
         "InvalidArgumentException", 400),
        (call(PlaybackMode="ON_DEMAND", HLSFragmentSelector=rng(start - 3 * hour,
                                                                start - 2 * hour)),
         "ResourceNotFoundException", 404),
        (lambda: am.get_hls_streaming_session_url(StreamName="no-such-stream"),
         "ResourceNotFoundException", 404),
    ]  # fmt: skip
    for fn, code, status in bad:
        expect_aws_error(fn, code, status)
    loose = make_client("kinesis-video-archived-media", recorded.am.meta.endpoint_url,
                        validate=False)  # fmt: skip
    expect_aws_error(
        lambda: loose.get_hls_streaming_session_url(StreamName=NAME, Expires=299),
        "InvalidArgumentException", 400,
    )  # fmt: skip
    # LIVE once the newest fragment is more than 30 s old
    plane = recorded.plane
    plane.clock = lambda: time.time() + 31 + (time.time() - recorded.results[-1].ended)
    try:
        expect_aws_error(call(), "ResourceNotFoundException", 404)
    finally:
        plane.clock = time.time
    # a stream that retains nothing
    kv = make_client("kinesisvideo", recorded.kvs.url)
    kv.create_stream(StreamName="no-retention", DataRetentionInHours=0)
    expect_aws_error(
        lambda: am.get_hls_streaming_session_url(StreamName="no-retention"),
        "NoDataRetentionException", 400,
    )  # fmt: skip


def test_playlist_calls_are_limited_per_session_as_on_aws(recorded: Recorded) -> None:
    # AWS: 5 calls a second per session to each playlist resource; one more is throttled
    # with ClientLimitExceededException, and the session, other resources and other
    # sessions carry on. The sessions' clock is held still, then moved on a second.
    plane = recorded.plane
    base = time.time()
    plane.clock = lambda: base
    try:
        url = session_url(recorded, **whole_range(recorded))
        other = session_url(recorded, **whole_range(recorded))
        for _ in range(int(PLAYLIST_CALLS_PER_S)):
            master = fetch(url)
        throttled = Http.request("GET", url)
        assert throttled.status == 400
        assert throttled.error_code == "ClientLimitExceededException"
        assert "getHLSMasterPlaylist.m3u8" in throttled.message
        assert fetch(resolve(url, segments(master)[0]))  # the media playlist has its own
        assert fetch(other) == master.replace(token_of(url), token_of(other))
        plane.clock = lambda: base + 1 / PLAYLIST_CALLS_PER_S
        assert fetch(url) == master  # one call a fifth of a second later
        assert Http.request("GET", url).error_code == "ClientLimitExceededException"
    finally:
        plane.clock = time.time


def token_of(url: str) -> str:
    """A session URL's SessionToken."""
    return url.split("SessionToken=", 1)[1]
