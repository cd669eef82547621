"""EBML and Matroska at the byte level, shared by the client half and Local KVS.

What the PutMedia wire needs, and nothing more: variable-size integers, element writing
(the producer side: an EBML header, one live Segment with Info and Tracks, then one Cluster
per fragment, the layout the KVS producer SDKs send), an incremental push parser (the
service side: bytes in as they arrive, header / tracks / cluster / block events out), and a
reader of the ``AWS_KINESISVIDEO_*`` tags of each Segment in a GetMedia or
GetMediaForFragmentList body.

Wire source: docs/wire.md "Storage sessions" (PutMedia rules for fragments) and the PutMedia
API reference (one MKV cluster = one fragment; track 1 ``V_MPEG4/ISO/AVC``, track 2
``A_AAC``, codec private data present).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

# Element ids (Matroska specification).
EBML = 0x1A45DFA3
EBML_VERSION = 0x4286
EBML_READ_VERSION = 0x42F7
EBML_MAX_ID_LENGTH = 0x42F2
EBML_MAX_SIZE_LENGTH = 0x42F3
DOC_TYPE = 0x4282
DOC_TYPE_VERSION = 0x4287
DOC_TYPE_READ_VERSION = 0x4285
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
AUDIO = 0xE1
SAMPLING_FREQUENCY = 0xB5
CHANNELS = 0x9F
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
REFERENCE_BLOCK = 0xFB
CUES = 0x1C53BB6B
CHAPTERS = 0x1043A770
ATTACHMENTS = 0x1941A469
TAGS = 0x1254C367
TAG = 0x7373
TARGETS = 0x63C0
SIMPLE_TAG = 0x67C8
TAG_NAME = 0x45A3
TAG_STRING = 0x4487

LEVEL1_IDS = frozenset({SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, CHAPTERS, ATTACHMENTS, TAGS})
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"  # an 8-byte all-ones size
DEFAULT_TIMECODE_SCALE_NS = 1_000_000
TRACK_TYPE_VIDEO = 1
TRACK_TYPE_AUDIO = 2
MAX_HEADER_ELEMENT_BYTES = 1 << 20  # EBML header, Info, Tracks, a BlockGroup's header part
_MASTER_TAG_IDS = frozenset({SEGMENT, TAGS, TAG, SIMPLE_TAG})


class MkvError(ValueError):
    """The bytes are not Matroska as PutMedia takes it (the message says what is wrong)."""


# ---------------------------------------------------------------------------- integers


def read_vint(data: bytes | bytearray, pos: int, *, keep_marker: bool) -> tuple[int, int, bool]:
    """Read an EBML variable-size integer at ``pos``: (value, next position, unknown size).

    ``keep_marker`` reads an element id (the length marker stays in the value). Raises
    ``IndexError`` when the bytes end inside the integer and ``MkvError`` for a bad one.
    """
    first = data[pos]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8:
        raise MkvError(f"bad EBML variable-size integer at byte {pos}")
    if pos + length > len(data):
        raise IndexError("truncated variable-size integer")
    value = first if keep_marker else first & (mask - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, pos + length, unknown


def encode_size(size: int) -> bytes:
    """An element data size as the shortest EBML variable-size integer."""
    for length in range(1, 9):
        if size < (1 << (7 * length)) - 1:
            return (size | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(f"element too large: {size} bytes")


def encode_id(element_id: int) -> bytes:
    """An element id as written (its length marker is part of the value)."""
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


# ---------------------------------------------------------------------------- writing


def element(element_id: int, payload: bytes) -> bytes:
    """One element with a known size."""
    return encode_id(element_id) + encode_size(len(payload)) + payload


def uint_element(element_id: int, value: int) -> bytes:
    """An unsigned-integer element in the fewest bytes."""
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def string_element(element_id: int, value: str) -> bytes:
    """A string (UTF-8) element."""
    return element(element_id, value.encode())


def float_element(element_id: int, value: float) -> bytes:
    """A float element (8 bytes, big-endian)."""
    return element(element_id, struct.pack(">d", value))


@dataclass(frozen=True)
class TrackSpec:
    """One Matroska track: number, codec id and private data, picture size or audio format."""

    number: int
    codec_id: str
    codec_private: bytes = b""
    kind: Literal["video", "audio"] = "video"
    width: int = 0
    height: int = 0
    sample_rate: float = 0.0
    channels: int = 0

    def to_bytes(self) -> bytes:
        """The TrackEntry element."""
        body = uint_element(TRACK_NUMBER, self.number) + uint_element(TRACK_UID, self.number)
        body += uint_element(
            TRACK_TYPE, TRACK_TYPE_VIDEO if self.kind == "video" else TRACK_TYPE_AUDIO
        )
        body += string_element(CODEC_ID, self.codec_id)
        if self.codec_private:
            body += element(CODEC_PRIVATE, self.codec_private)
        if self.kind == "video":
            body += element(
                VIDEO,
                uint_element(PIXEL_WIDTH, self.width) + uint_element(PIXEL_HEIGHT, self.height),
            )
        else:
            body += element(
                AUDIO,
                float_element(SAMPLING_FREQUENCY, self.sample_rate)
                + uint_element(CHANNELS, self.channels),
            )
        return element(TRACK_ENTRY, body)


def ebml_header() -> bytes:
    """The EBML header of a Matroska file."""
    return element(
        EBML,
        uint_element(EBML_VERSION, 1)
        + uint_element(EBML_READ_VERSION, 1)
        + uint_element(EBML_MAX_ID_LENGTH, 4)
        + uint_element(EBML_MAX_SIZE_LENGTH, 8)
        + string_element(DOC_TYPE, "matroska")
        + uint_element(DOC_TYPE_VERSION, 4)
        + uint_element(DOC_TYPE_READ_VERSION, 2),
    )


def stream_start(
    tracks: Sequence[TrackSpec],
    *,
    timecode_scale_ns: int = DEFAULT_TIMECODE_SCALE_NS,
    app: str = "kvsnb",
) -> bytes:
    """What a producer sends first: EBML header, a live (unknown-size) Segment, Info, Tracks."""
    info = (
        uint_element(TIMECODE_SCALE, timecode_scale_ns)
        + string_element(MUXING_APP, app)
        + string_element(WRITING_APP, app)
    )
    return (
        ebml_header()
        + encode_id(SEGMENT)
        + UNKNOWN_SIZE
        + element(INFO, info)
        + element(TRACKS, b"".join(t.to_bytes() for t in tracks))
    )


def simple_block(track: int, relative_timecode: int, keyframe: bool, data: bytes) -> bytes:
    """A SimpleBlock (no lacing); ``relative_timecode`` is from the cluster's timecode."""
    if not -32768 <= relative_timecode <= 32767:
        raise ValueError(f"block timecode {relative_timecode} does not fit in 16 bits")
    head = encode_size(track) + struct.pack(">hB", relative_timecode, 0x80 if keyframe else 0)
    return element(SIMPLE_BLOCK, head + data)


@dataclass(frozen=True)
class Frame:
    """One frame of a track at an absolute timecode (in TimecodeScale units)."""

    track: int
    timecode: int
    keyframe: bool
    data: bytes


def cluster(timecode: int, frames: Sequence[Frame]) -> bytes:
    """One Cluster (a PutMedia fragment) of known size holding ``frames`` in order."""
    body = uint_element(TIMECODE, timecode)
    body += b"".join(
        simple_block(f.track, f.timecode - timecode, f.keyframe, f.data) for f in frames
    )
    return element(CLUSTER, body)


def tags_element(tags: dict[str, str]) -> bytes:
    """A Tags element holding one Tag with a SimpleTag per name → string."""
    simple = b"".join(
        element(SIMPLE_TAG, string_element(TAG_NAME, k) + string_element(TAG_STRING, v))
        for k, v in tags.items()
    )
    return element(TAGS, element(TAG, element(TARGETS, b"") + simple))


# ---------------------------------------------------------------------------- reading


def iter_children(
    data: bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """The (id, payload) of each known-size element in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        try:
            element_id, body, _ = read_vint(data, pos, keep_marker=True)
            size, body, unknown = read_vint(data, body, keep_marker=False)
        except IndexError:
            raise MkvError("element header truncated") from None
        if unknown or body + size > end:
            raise MkvError(f"element 0x{element_id:x} overruns its parent")
        yield element_id, data[body : body + size]
        pos = body + size


def read_uint(payload: bytes) -> int:
    """An unsigned-integer element's value."""
    return int.from_bytes(payload, "big") if payload else 0


def read_float(payload: bytes) -> float:
    """A float element's value (4 or 8 bytes)."""
    if len(payload) == 4:
        return float(struct.unpack(">f", payload)[0])
    if len(payload) == 8:
        return float(struct.unpack(">d", payload)[0])
    if not payload:
        return 0.0
    raise MkvError(f"float element of {len(payload)} bytes")


def parse_tracks(payload: bytes) -> list[TrackSpec]:
    """The TrackEntries of a Tracks element's payload."""
    tracks = []
    for element_id, entry in iter_children(payload):
        if element_id != TRACK_ENTRY:
            continue
        number, codec, private, kind = 0, "", b"", "video"
        width = height = channels = 0
        rate = 0.0
        for cid, value in iter_children(entry):
            if cid == TRACK_NUMBER:
                number = read_uint(value)
            elif cid == CODEC_ID:
                codec = value.decode("ascii", "replace").rstrip("\x00")
            elif cid == CODEC_PRIVATE:
                private = value
            elif cid == TRACK_TYPE:
                kind = "audio" if read_uint(value) == TRACK_TYPE_AUDIO else "video"
            elif cid == VIDEO:
                for vid, v in iter_children(value):
                    if vid == PIXEL_WIDTH:
                        width = read_uint(v)
                    elif vid == PIXEL_HEIGHT:
                        height = read_uint(v)
            elif cid == AUDIO:
                for aid, v in iter_children(value):
                    if aid == SAMPLING_FREQUENCY:
                        rate = read_float(v)
                    elif aid == CHANNELS:
                        channels = read_uint(v)
        if number <= 0:
            raise MkvError("a TrackEntry has no TrackNumber")
        tracks.append(
            TrackSpec(number, codec, private, kind, width, height, rate, channels)  # type: ignore[arg-type]
        )
    return tracks


def parse_block(payload: bytes) -> tuple[int, int, int, bytes]:
    """A (Simple)Block's track number, relative timecode, flags and frame data (no lacing)."""
    try:
        track, pos, _ = read_vint(payload, 0, keep_marker=False)
    except IndexError:
        raise MkvError("block truncated") from None
    if pos + 3 > len(payload):
        raise MkvError("block truncated")
    relative, flags = struct.unpack_from(">hB", payload, pos)
    if flags & 0x06:
        raise MkvError("laced blocks are not supported")
    return track, relative, flags, payload[pos + 3 :]


# ---------------------------------------------------------------------------- push parser


@dataclass
class StreamHeader:
    """What the parser learnt from a Segment's Info and Tracks."""

    timecode_scale_ns: int = DEFAULT_TIMECODE_SCALE_NS
    tracks: list[TrackSpec] = field(default_factory=list)


@dataclass(frozen=True)
class ClusterStart:
    """A Cluster began (its first byte arrived)."""


@dataclass(frozen=True)
class ClusterTimecode:
    """The Cluster's timecode (TimecodeScale units)."""

    timecode: int


@dataclass(frozen=True)
class Block:
    """One frame: track, timecode relative to the cluster, keyframe flag, data."""

    track: int
    relative_timecode: int
    keyframe: bool
    data: bytes


@dataclass(frozen=True)
class ClusterEnd:
    """The Cluster is complete."""


@dataclass(frozen=True)
class HeaderEvent:
    """A Segment's Tracks arrived (a new Segment may bring new ones)."""

    header: StreamHeader


ParseEvent = HeaderEvent | ClusterStart | ClusterTimecode | Block | ClusterEnd


class PushParser:
    """Incremental Matroska parser: ``feed(bytes)`` returns the events the bytes complete.

    Understands known- and unknown-size Segments and Clusters, SimpleBlocks and BlockGroups,
    and skips every other element without holding it in memory. ``end()`` closes an open
    unknown-size Cluster at the end of the input. A leaf element larger than
    ``max_element_bytes`` raises ``MkvError`` before it is buffered.
    """

    def __init__(self, *, max_element_bytes: int = 64 << 20) -> None:
        self.max_element_bytes = max_element_bytes
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._skip = 0  # bytes of an ignored element still to drop
        self._stack: list[tuple[int, int | None]] = []  # open masters: (id, end offset)
        self._started = False
        self._header = StreamHeader()
        self.bytes_in = 0

    @property
    def in_cluster(self) -> bool:
        """True while a Cluster is open."""
        return any(eid == CLUSTER for eid, _ in self._stack)

    def feed(self, data: bytes) -> list[ParseEvent]:
        """Parse what ``data`` completes; raises ``MkvError`` for input that is not MKV."""
        self.bytes_in += len(data)
        if self._skip:
            drop = min(self._skip, len(data))
            self._skip -= drop
            self._offset += drop
            data = data[drop:]
        self._buf += data
        events: list[ParseEvent] = []
        pos = 0
        try:
            pos = self._parse(events)
        finally:
            del self._buf[:pos]
            self._offset += pos
        if not self._skip:
            self._close_known(self._offset, events)  # a known-size Cluster just completed
        return events

    def end(self) -> list[ParseEvent]:
        """The input ended: close an open unknown-size Cluster. Raises ``MkvError`` when the
        input stopped inside an element (a known-size Cluster or a block cut short)."""
        events: list[ParseEvent] = []
        cut = (
            self._buf
            or self._skip
            or any(
                end is not None and end > self._offset for eid, end in self._stack if eid == CLUSTER
            )
        )
        if cut and self.in_cluster:
            self._stack.clear()
            raise MkvError("the body ended inside a Cluster")
        if self.in_cluster:
            events.append(ClusterEnd())
        self._stack.clear()
        return events

    def _close_known(self, at: int, events: list[ParseEvent]) -> None:
        while self._stack and self._stack[-1][1] is not None and self._stack[-1][1] <= at:
            element_id, _ = self._stack.pop()
            if element_id == CLUSTER:
                events.append(ClusterEnd())

    def _close_for(self, element_id: int, events: list[ParseEvent]) -> None:
        """An element that cannot live in an open unknown-size master closes it."""
        while self._stack and self._stack[-1][1] is None:
            open_id = self._stack[-1][0]
            closes = (open_id == CLUSTER and (element_id in LEVEL1_IDS or element_id == EBML)) or (
                open_id == SEGMENT and element_id == EBML
            )
            if not closes:
                break
            self._stack.pop()
            if open_id == CLUSTER:
                events.append(ClusterEnd())

    def _parse(self, events: list[ParseEvent]) -> int:
        buf = self._buf
        pos = 0
        while pos < len(buf):
            here = self._offset + pos
            self._close_known(here, events)
            if not self._started and len(buf) - pos >= 4 and buf[pos : pos + 4] != encode_id(EBML):
                raise MkvError("the body does not start with an EBML header: not Matroska")
            try:
                element_id, body, _ = read_vint(buf, pos, keep_marker=True)
                size, body, unknown = read_vint(buf, body, keep_marker=False)
            except IndexError:
                return pos  # wait for the rest of the header
            self._close_for(element_id, events)
            body_at = self._offset + body
            if element_id == SEGMENT or (element_id == CLUSTER):
                if element_id == CLUSTER:
                    if not any(e == SEGMENT for e, _ in self._stack):
                        raise MkvError("a Cluster outside a Segment")
                    events.append(ClusterStart())
                elif not self._started:
                    raise MkvError("a Segment before the EBML header")
                self._stack.append((element_id, None if unknown else body_at + size))
                pos = body
                continue
            if unknown:
                raise MkvError(f"element 0x{element_id:x} of unknown size")
            if element_id == BLOCK_GROUP and size > self.max_element_bytes:
                raise MkvError(f"a block of {size} bytes is over the limit")
            wanted = element_id in (EBML, INFO, TRACKS, TIMECODE, SIMPLE_BLOCK, BLOCK_GROUP)
            if not wanted:
                available = len(buf) - body
                if size > available:
                    self._skip = size - available
                    return len(buf)
                pos = body + size
                continue
            if element_id in (EBML, INFO, TRACKS) and size > MAX_HEADER_ELEMENT_BYTES:
                raise MkvError(f"element 0x{element_id:x} of {size} bytes is too large")
            if size > self.max_element_bytes:
                raise MkvError(f"a block of {size} bytes is over the limit")
            if len(buf) - body < size:
                return pos  # wait for the whole element
            payload = bytes(buf[body : body + size])
            pos = body + size
            self._element(element_id, payload, events)
        return pos

    def _element(self, element_id: int, payload: bytes, events: list[ParseEvent]) -> None:
        if element_id == EBML:
            doc = next((v for i, v in iter_children(payload) if i == DOC_TYPE), b"matroska")
            if doc.rstrip(b"\x00") not in (b"matroska", b"webm"):
                raise MkvError(f"DocType {doc!r} is not matroska")
            self._started = True
            self._header = StreamHeader()
        elif element_id == INFO:
            for cid, value in iter_children(payload):
                if cid == TIMECODE_SCALE:
                    self._header.timecode_scale_ns = read_uint(value) or DEFAULT_TIMECODE_SCALE_NS
        elif element_id == TRACKS:
            self._header.tracks = parse_tracks(payload)
            events.append(HeaderEvent(self._header))
        elif not self.in_cluster:
            raise MkvError(f"element 0x{element_id:x} outside a Cluster")
        elif element_id == TIMECODE:
            events.append(ClusterTimecode(read_uint(payload)))
        elif element_id == SIMPLE_BLOCK:
            track, relative, flags, data = parse_block(payload)
            events.append(Block(track, relative, bool(flags & 0x80), data))
        elif element_id == BLOCK_GROUP:
            block: tuple[int, int, int, bytes] | None = None
            referenced = False
            for cid, value in iter_children(payload):
                if cid == BLOCK:
                    block = parse_block(value)
                elif cid == REFERENCE_BLOCK:
                    referenced = True
            if block is not None:
                events.append(Block(block[0], block[1], not referenced, block[3]))


def read_segment_tags(data: bytes) -> list[dict[str, str]]:
    """The SimpleTag name → string pairs of each Segment in a Matroska byte string.

    Understands unknown-size Segments and Clusters (the KVS layout) and Tags elements both
    before and after a Segment's Clusters (GetMedia puts its continuation token after them).
    """
    segments: list[dict[str, str]] = []
    pos = 0
    end = len(data)
    stack_unknown: list[int] = []  # ids of unknown-size masters we are inside
    pending_name: str | None = None
    while pos < end:
        element_id, body, _ = read_vint(data, pos, keep_marker=True)
        size, body, unknown = read_vint(data, body, keep_marker=False)
        if element_id == EBML:
            stack_unknown.clear()
            pos = body + size
            continue
        if element_id == SEGMENT:
            segments.append({})
            stack_unknown = [SEGMENT] if unknown else []
            pos = body
            continue
        if element_id in LEVEL1_IDS and stack_unknown and stack_unknown[-1] == CLUSTER:
            stack_unknown.pop()
        if element_id == CLUSTER and unknown:
            stack_unknown.append(CLUSTER)
            pos = body
            continue
        if element_id in _MASTER_TAG_IDS:
            pos = body  # descend
            continue
        if element_id == TAG_NAME:
            pending_name = data[body : body + size].decode("utf-8", "replace")
        elif element_id == TAG_STRING and pending_name is not None and segments:
            segments[-1][pending_name] = data[body : body + size].decode("utf-8", "replace")
            pending_name = None
        if unknown:
            raise ValueError(f"unknown-size element 0x{element_id:x} at {pos}")
        pos = body + size
    return segments


def split_segments(data: bytes | bytearray) -> tuple[list[bytes], int]:
    """Cut a GetMedia body into its chunks (EBML header + one live Segment each).

    Returns the complete chunks and how many bytes they span; the rest is an unfinished
    chunk (complete once the next EBML header or the end of the body arrives). Walks the
    elements, so media bytes that happen to look like an EBML id never cut a chunk.
    """
    chunks: list[bytes] = []
    start = pos = 0
    in_segment = False
    while pos < len(data):
        try:
            element_id, body, _ = read_vint(data, pos, keep_marker=True)
            size, body, unknown = read_vint(data, body, keep_marker=False)
        except IndexError:
            break
        if element_id == EBML:
            if in_segment:
                chunks.append(bytes(data[start:pos]))
                start = pos
                in_segment = False
            if body + size > len(data):
                break
            pos = body + size
            continue
        if element_id == SEGMENT or (element_id == CLUSTER and unknown):
            in_segment = True
            pos = body
            continue
        if unknown:
            raise MkvError(f"element 0x{element_id:x} of unknown size")
        if body + size > len(data):
            break
        pos = body + size
    return chunks, start
