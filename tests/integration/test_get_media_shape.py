"""GetMedia and GetMediaForFragmentList in the shape AWS streams them: each fragment one
chunk (EBML header, live Segment) with its tags, then exactly one Cluster holding the fragment's
frames in time order, byte for byte as they were put (docs/wire.md, "GetMedia", "Shape of a
chunk"). The body is read with the few lines of EBML below, not with kvsnb's reader, for a
PutMedia stream and for fragments recorded from WebRTC."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig
from kvsnb.local.media.plane import MediaOptions
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.local.store.mkv import AudioTrackConfig, FragmentWriter
from kvsnb.playback import get_media, iter_chunks, list_fragments, open_media, start_selector
from kvsnb.putmedia import file_fragments, plan_file, put_media
from kvsnb.sources.tracks import make_test_file
from kvsnb.wire.h264 import split_annexb, to_length_prefixed
from tests.conftest import ingest_frames, stored_delivery
from tests.unit.test_recorder import Camera, feed

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
START_MS = round(START.timestamp() * 1000)
FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
GET_MEDIA_HEAD = [
    FRAGMENT_NUMBER,
    "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
    "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
]
GET_MEDIA_TAIL = ["AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", "AWS_KINESISVIDEO_CONTINUATION_TOKEN"]
LIST_HEAD = [
    FRAGMENT_NUMBER,
    "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP",
    "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP",
]

# ---------------------------------------------------------------------------- a small reader

EBML_ID, SEGMENT_ID, CLUSTER_ID, TAGS_ID, TIMECODE_ID = (
    0x1A45DFA3,
    0x18538067,
    0x1F43B675,
    0x1254C367,
    0xE7,
)
SIMPLE_BLOCK_ID, BLOCK_GROUP_ID, BLOCK_ID = 0xA3, 0xA0, 0xA1
TAG_MASTERS = {TAGS_ID, 0x7373, 0x67C8}  # Tags, Tag, SimpleTag
TAG_NAME_ID, TAG_STRING_ID = 0x45A3, 0x4487
ENDS_A_CLUSTER = {EBML_ID, CLUSTER_ID, TAGS_ID}


def vint(data: bytes, pos: int, marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-size integer: (value, next position, all ones = unknown size)."""
    length = 1
    while not data[pos] & (0x80 >> (length - 1)):
        length += 1
    value = data[pos] if marker else data[pos] & ((0x80 >> (length - 1)) - 1)
    for byte in data[pos + 1 : pos + length]:
        value = (value << 8) | byte
    return value, pos + length, not marker and value == (1 << (7 * length)) - 1


def header(data: bytes, pos: int) -> tuple[int, int, int, bool]:
    """An element's id, payload position, payload size and whether the size is unknown."""
    element_id, pos, _ = vint(data, pos, True)
    size, pos, unknown = vint(data, pos, False)
    return element_id, pos, size, unknown


@dataclass
class ShapeCluster:
    """One Cluster: its timecode and (track, timecode relative to it, keyframe, data) each."""

    timecode: int
    blocks: list[tuple[int, int, bool, bytes]] = field(default_factory=list)


@dataclass
class Chunk:
    """One EBML-header-and-Segment chunk: its Tags and Clusters, in the order they came."""

    parts: list[ShapeCluster | list[tuple[str, str]]] = field(default_factory=list)

    @property
    def clusters(self) -> list[ShapeCluster]:
        """The Clusters."""
        return [p for p in self.parts if isinstance(p, ShapeCluster)]


def read_tags(data: bytes, pos: int, end: int, out: list[tuple[str, str]]) -> None:
    """Collect the (TagName, TagString) pairs under a Tags element."""
    name = ""
    while pos < end:
        element_id, body, size, _ = header(data, pos)
        if element_id in TAG_MASTERS:
            read_tags(data, body, body + size, out)
        elif element_id == TAG_NAME_ID:
            name = data[body : body + size].decode()
        elif element_id == TAG_STRING_ID:
            out.append((name, data[body : body + size].decode()))
        pos = body + size


def block(payload: bytes) -> tuple[int, int, bool, bytes]:
    """A (Simple)Block without lacing: track, relative timecode, keyframe flag, frame."""
    track, pos, _ = vint(payload, 0, False)
    relative, flags = struct.unpack_from(">hB", payload, pos)
    return track, relative, bool(flags & 0x80), payload[pos + 3 :]


def read_body(data: bytes) -> list[Chunk]:
    """Every chunk of a GetMedia or GetMediaForFragmentList body."""
    chunks: list[Chunk] = []
    pos = 0
    while pos < len(data):
        element_id, body, size, unknown = header(data, pos)
        if element_id == EBML_ID:
            chunks.append(Chunk())
        elif element_id == SEGMENT_ID:
            pos = body  # live Segment: its children follow
            continue
        elif element_id == TAGS_ID:
            tags: list[tuple[str, str]] = []
            read_tags(data, body, body + size, tags)
            chunks[-1].parts.append(tags)
        elif element_id == CLUSTER_ID:
            cluster = ShapeCluster(-1)
            chunks[-1].parts.append(cluster)
            end = len(data) if unknown else body + size
            pos = body
            while pos < end:
                child, cbody, csize, _ = header(data, pos)
                if unknown and child in ENDS_A_CLUSTER:
                    break
                if child == TIMECODE_ID:
                    cluster.timecode = int.from_bytes(data[cbody : cbody + csize], "big")
                elif child == SIMPLE_BLOCK_ID:
                    cluster.blocks.append(block(data[cbody : cbody + csize]))
                elif child == BLOCK_GROUP_ID:
                    group = cbody
                    while group < cbody + csize:
                        gid, gbody, gsize, _ = header(data, group)
                        if gid == BLOCK_ID:
                            cluster.blocks.append(block(data[gbody : gbody + gsize]))
                        group = gbody + gsize
                pos = cbody + csize
            continue
        pos = body + size
    return chunks


# ---------------------------------------------------------------------------- checks


def check_shape(chunks: list[Chunk], head: list[str], tail: list[str]) -> None:
    """Each chunk: Tags with ``head`` (and nothing else AWS_), one Cluster, Tags with ``tail``."""
    for chunk in chunks:
        kinds = ["cluster" if isinstance(p, ShapeCluster) else "tags" for p in chunk.parts]
        assert kinds == ["tags", "cluster"] + (["tags"] if tail else []), kinds
        before = chunk.parts[0]
        assert isinstance(before, list) and [n for n, _ in before] == head
        if tail:
            after = chunk.parts[2]
            assert isinstance(after, list) and [n for n, _ in after] == tail


def tag(chunk: Chunk, name: str) -> str:
    """The value of a tag of the chunk."""
    return next(v for p in chunk.parts if isinstance(p, list) for n, v in p if n == name)


def in_time_order(cluster: ShapeCluster) -> bool:
    """Video and audio blocks interleaved by time."""
    times = [relative for _, relative, _, _ in cluster.blocks]
    return times == sorted(times)


def by_track(cluster: ShapeCluster) -> dict[int, list[tuple[int, bool, bytes]]]:
    """The blocks of each track in order: (absolute timecode, keyframe, data)."""
    out: dict[int, list[tuple[int, bool, bytes]]] = {}
    for track, relative, key, data in cluster.blocks:
        out.setdefault(track, []).append((cluster.timecode + relative, key, data))
    return out


def whole_get_media(target: Target, stream: str, count: int) -> bytes:
    """GetMedia from EARLIEST until ``count`` chunks have come."""
    payload = open_media(target, stream, start_selector("EARLIEST"))
    return b"".join(c.data for c in iter_chunks(payload, max_chunks=count))


# ---------------------------------------------------------------------------- PutMedia


@pytest.fixture
def media_kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    """A Local KVS whose GetMedia ends soon after the last fragment."""
    config = LocalKvsConfig(
        data_dir=tmp_path / "data", extra={"media": MediaOptions(get_media_idle_s=1.0)}
    )
    with LocalKvs(config) as kvs:
        yield kvs


async def _body(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_put_media_fragments_come_back_one_cluster_each(
    media_kvs: LocalKvs, tmp_path: Path
) -> None:
    media = make_test_file(
        tmp_path / "p.mp4", seconds=6.0, width=320, height=240, fps=30, gop=30, start_ms=0
    )
    body = list(file_fragments(plan_file(media)))  # header + one Cluster per 2 s fragment
    put = read_body(b"".join(body))[0].clusters
    assert len(put) == 3
    with connect(endpoint_url=media_kvs.url) as target:
        target.kinesisvideo.create_stream(StreamName="cam", DataRetentionInHours=24)
        asyncio.run(put_media(target, "cam", _body(body), producer_start=START))
        numbers = list(list_fragments(target, "cam")["fragment_number"])
        assert len(numbers) == len(put)
        served = {
            "GetMedia": (read_body(whole_get_media(target, "cam", 3)), GET_MEDIA_HEAD),
            "GetMediaForFragmentList": (read_body(get_media(target, "cam", numbers)), LIST_HEAD),
        }
    for api, (chunks, head) in served.items():
        check_shape(chunks, head, GET_MEDIA_TAIL if api == "GetMedia" else [])
        assert [tag(c, FRAGMENT_NUMBER) for c in chunks] == numbers, api
        for chunk, sent in zip(chunks, put, strict=True):
            (cluster,) = chunk.clusters
            # RELATIVE upload: the producer timestamp is the start plus the cluster timecode
            producer_ms = round(float(tag(chunk, head[2])) * 1000)
            assert producer_ms == START_MS + sent.timecode
            assert cluster.timecode == producer_ms, api
            assert in_time_order(cluster), api
            shifted = ShapeCluster(sent.timecode + START_MS, sent.blocks)
            assert by_track(cluster) == by_track(shifted), api  # frames byte for byte


# ---------------------------------------------------------------------------- WebRTC


async def test_recorded_fragments_come_back_one_cluster_each(kvs: LocalKvs) -> None:
    """Fragments the storage session's recorder writes (its real writer and store, fed
    known H.264 access units and audio) are served as one Cluster each with those bytes."""
    with connect(endpoint_url=kvs.url) as target:
        _, stream_arn = target.create_storage_channel("recorded")
        store = kvs.planes["stream-media"].store
        camera = Camera(gop=30)
        sent: list[bytes] = []
        original_next = camera.next

        def next_frame() -> Any:
            frame = original_next()
            sent.append(to_length_prefixed(split_annexb(frame.data)))
            return frame

        camera.next = next_frame  # type: ignore[method-assign]
        recorder = FragmentRecorder(store, stream_arn, fragment_duration_s=1.0)
        feed(recorder, camera, 3.0)
        fragments = await recorder.close()
        assert len(fragments) >= 3
        numbers = [f.fragment_number for f in fragments]
        body = await asyncio.to_thread(get_media, target, stream_arn, numbers)
        following = await asyncio.to_thread(whole_get_media, target, stream_arn, len(numbers))
    for chunks, head, tail in (
        (read_body(body), LIST_HEAD, []),
        (read_body(following), GET_MEDIA_HEAD, GET_MEDIA_TAIL),
    ):
        check_shape(chunks, head, tail)
        assert [tag(c, FRAGMENT_NUMBER) for c in chunks] == numbers
        video: list[bytes] = []
        for chunk, fragment in zip(chunks, fragments, strict=True):
            (cluster,) = chunk.clusters
            assert cluster.timecode == fragment.producer_start_ms
            assert in_time_order(cluster)
            tracks = by_track(cluster)
            assert tracks[1][0][1], "a fragment starts at a keyframe"
            assert len(tracks[2]) == fragment.audio_frame_count > 0
            video += [data for _, _, data in tracks[1]]
        assert video == sent  # every access unit, byte for byte


async def test_webrtc_master_stream_comes_back_one_cluster_per_fragment(kvs: LocalKvs) -> None:
    with connect(endpoint_url=kvs.url) as target:
        _, stream_arn = target.create_storage_channel("master")
        result = await ingest_frames(target, "master", 75)
        delivery = await stored_delivery(target, stream_arn, result.frames_sent)
        assert delivery.complete, delivery
        listed = await asyncio.to_thread(list_fragments, target, stream_arn)
        numbers = list(listed["fragment_number"])
        body = await asyncio.to_thread(get_media, target, stream_arn, numbers)
        following = await asyncio.to_thread(whole_get_media, target, stream_arn, len(numbers))
    assert len(numbers) >= 2
    list_chunks, media_chunks = read_body(body), read_body(following)
    check_shape(list_chunks, LIST_HEAD, [])
    check_shape(media_chunks, GET_MEDIA_HEAD, GET_MEDIA_TAIL)
    for listed_chunk, media_chunk in zip(list_chunks, media_chunks, strict=True):
        assert tag(media_chunk, FRAGMENT_NUMBER) == tag(listed_chunk, FRAGMENT_NUMBER)
        (a,), (b,) = listed_chunk.clusters, media_chunk.clusters
        producer_ms = round(float(tag(listed_chunk, LIST_HEAD[2])) * 1000)
        assert a.timecode == b.timecode == producer_ms
        assert in_time_order(a) and a.blocks == b.blocks  # both APIs serve the same bytes
        assert by_track(a)[1][0][1], "a fragment starts at a keyframe"


# ---------------------------------------------------------------------------- the writer


def test_writer_interleaves_tracks_by_time_keeping_each_tracks_order() -> None:
    """Audio added late goes between the video frames of its time; video keeps decode order
    (a B-frame's time is below its predecessor's); over ~32 s a second Cluster starts."""
    writer = FragmentWriter(
        avcc=b"\x01avcc",
        width=64,
        height=48,
        tags={FRAGMENT_NUMBER: "1"},
        audio=AudioTrackConfig(b"\x11\x90", 48_000, "stereo"),
        timecode_ms=START_MS,
    )
    for ms, name in ((0, b"I"), (66, b"P"), (33, b"B"), (40_000, b"late I")):
        writer.write_video(name, START_MS + ms, name.endswith(b"I"))
    for ms, name in ((-5, b"a0"), (20, b"a1"), (50, b"a2")):
        writer.write_audio(name, START_MS + ms, 21)
    (chunk,) = read_body(writer.finish())
    first, second = chunk.clusters
    assert first.timecode == START_MS and second.timecode == START_MS + 40_000
    assert [(track, rel, data) for track, rel, _, data in first.blocks] == [
        (2, -5, b"a0"),
        (1, 0, b"I"),
        (2, 20, b"a1"),
        (2, 50, b"a2"),
        (1, 66, b"P"),
        (1, 33, b"B"),
    ]
    assert second.blocks == [(1, 0, True, b"late I")]
