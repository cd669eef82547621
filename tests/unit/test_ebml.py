"""The Matroska push parser that PutMedia runs on arriving bytes: any split of the input
gives the same events; unknown-size Segments and Clusters, BlockGroups, skipped elements;
input that is not Matroska; GetMedia bodies cut into chunks."""

from __future__ import annotations

from kvsnb.wire import ebml
from kvsnb.wire.ebml import (
    Block,
    ClusterEnd,
    ClusterStart,
    ClusterTimecode,
    HeaderEvent,
    MkvError,
    PushParser,
)

TRACK = ebml.TrackSpec(1, "V_MPEG4/ISO/AVC", b"\x01\x42\xc0\x1e", "video", 320, 240)
AUDIO = ebml.TrackSpec(2, "A_AAC", b"\x11\x90", "audio", sample_rate=48000.0, channels=1)


def _frames(start: int) -> list[ebml.Frame]:
    return [
        ebml.Frame(1, start, True, b"key" * 10),
        ebml.Frame(2, start + 10, True, b"aac"),
        ebml.Frame(1, start + 33, False, b"delta" * 5),
    ]


def _events(data: bytes, step: int) -> list[object]:
    parser = PushParser()
    out: list[object] = []
    for i in range(0, len(data), step):
        out += parser.feed(data[i : i + step])
    return out + parser.end()


def test_any_split_gives_the_same_events() -> None:
    body = ebml.stream_start([TRACK, AUDIO])
    body += ebml.tags_element({"A": "b"})  # skipped
    body += ebml.cluster(0, _frames(0)) + ebml.cluster(2000, _frames(2000))
    whole = _events(body, len(body))
    assert [type(e) for e in whole] == [
        HeaderEvent,
        *(ClusterStart, ClusterTimecode, Block, Block, Block, ClusterEnd) * 2,
    ]
    header = whole[0]
    assert isinstance(header, HeaderEvent)
    assert header.header.tracks == [TRACK, AUDIO]
    blocks = [e for e in whole if isinstance(e, Block)]
    assert [(b.track, b.relative_timecode, b.keyframe) for b in blocks[:3]] == [
        (1, 0, True),
        (2, 10, True),
        (1, 33, False),
    ]
    for step in (1, 7, 64):
        assert _events(body, step) == whole


def test_a_known_size_cluster_ends_when_its_last_byte_arrives() -> None:
    parser = PushParser()
    events = parser.feed(ebml.stream_start([TRACK]) + ebml.cluster(0, _frames(0)[:1]))
    assert isinstance(events[-1], ClusterEnd)


def test_unknown_size_clusters_end_at_the_next_cluster_and_at_the_end() -> None:
    def open_cluster(timecode: int) -> bytes:
        body = ebml.uint_element(ebml.TIMECODE, timecode)
        body += ebml.simple_block(1, 0, True, b"frame")
        return ebml.encode_id(ebml.CLUSTER) + ebml.UNKNOWN_SIZE + body

    body = ebml.stream_start([TRACK]) + open_cluster(0) + open_cluster(1000)
    parser = PushParser()
    events = parser.feed(body)
    assert [type(e) for e in events].count(ClusterEnd) == 1  # the second is still open
    assert [type(e) for e in parser.end()] == [ClusterEnd]


def test_block_groups_carry_the_keyframe_flag() -> None:
    block = ebml.simple_block(1, 5, False, b"x")[2:]  # a Block has a SimpleBlock's payload
    group = ebml.element(
        ebml.BLOCK_GROUP, ebml.element(ebml.BLOCK, block) + ebml.uint_element(0xFB, 1)
    )
    cluster = ebml.element(ebml.CLUSTER, ebml.uint_element(ebml.TIMECODE, 0) + group)
    events = PushParser().feed(ebml.stream_start([TRACK]) + cluster)
    blocks = [e for e in events if isinstance(e, Block)]
    assert [(b.relative_timecode, b.keyframe, b.data) for b in blocks] == [(5, False, b"x")]


def test_input_that_is_not_matroska_is_refused() -> None:
    for bad in (b"GIF89a....", b"\x00\x00\x00\x18ftypmp42"):
        try:
            PushParser().feed(bad)
        except MkvError as exc:
            assert "not Matroska" in str(exc)
        else:
            raise AssertionError("accepted")


def test_an_oversized_block_is_refused_before_it_is_buffered() -> None:
    parser = PushParser(max_element_bytes=1000)
    header = ebml.encode_id(ebml.SIMPLE_BLOCK) + ebml.encode_size(10_000)
    cluster_head = ebml.encode_id(ebml.CLUSTER) + ebml.UNKNOWN_SIZE
    try:
        parser.feed(ebml.stream_start([TRACK]) + cluster_head + header)
    except MkvError as exc:
        assert "over the limit" in str(exc)
    else:
        raise AssertionError("accepted")


def test_split_segments_cuts_a_getmedia_body_into_chunks() -> None:
    one = ebml.stream_start([TRACK]) + ebml.cluster(0, _frames(0)) + ebml.tags_element({"T": "1"})
    two = ebml.stream_start([TRACK]) + ebml.cluster(2000, _frames(2000))
    chunks, used = ebml.split_segments(one + two)
    assert chunks == [one] and used == len(one)  # the second is complete only at the end
    chunks, used = ebml.split_segments(one[:-3])
    assert chunks == [] and used == 0
    assert ebml.read_segment_tags(one + two) == [{"T": "1"}, {}]


def test_input_ending_inside_a_known_size_cluster_is_an_error() -> None:
    body = ebml.stream_start([TRACK]) + ebml.cluster(0, _frames(0))
    parser = PushParser()
    parser.feed(body[:-5])
    try:
        parser.end()
    except MkvError as exc:
        assert "ended inside a Cluster" in str(exc)
    else:
        raise AssertionError("accepted")
