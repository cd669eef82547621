"""H.264 bitstream helpers and the Matroska layout of stored fragments.

A stored fragment is exactly the chunk GetMediaForFragmentList returns for it: an EBML header
and one unknown-size Segment with Info, Tracks (1 ``V_MPEG4/ISO/AVC`` with an avcC, 2
``A_AAC``), the three ``AWS_KINESISVIDEO_*`` tags and the Clusters, block times in producer
epoch ms (docs/wire.md, "Archived media" and "Storage sessions"). Unknown-size segments let
ffmpeg read a concatenation of fragments straight through (docs/design.md, "Local KVS").
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

MKV_TIME_BASE = Fraction(1, 1000)
TAG_FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"
VIDEO_CODEC_ID = "V_MPEG4/ISO/AVC"
AUDIO_CODEC_ID = "A_AAC"
READ_CHUNK_BYTES = 1 << 20

# EBML element ids used by the tag reader.
_ID_EBML = 0x1A45DFA3
_ID_SEGMENT = 0x18538067
_ID_CLUSTER = 0x1F43B675
_ID_TAGS = 0x1254C367
_ID_TAG = 0x7373
_ID_SIMPLE_TAG = 0x67C8
_ID_TAG_NAME = 0x45A3
_ID_TAG_STRING = 0x4487
_LEVEL1_IDS = frozenset(
    {0x114D9B74, 0x1549A966, 0x1654AE6B, _ID_CLUSTER, 0x1C53BB6B, _ID_TAGS, 0x1941A469}
)
_MASTER_IDS = frozenset({_ID_SEGMENT, _ID_TAGS, _ID_TAG, _ID_SIMPLE_TAG})

_template_lock = threading.Lock()
_templates: dict[str, Any] = {}


# ---------------------------------------------------------------------------- writing


def _template_stream(codec: str) -> Any:
    """A never-opened PyAV stream of ``codec`` used only as a template for output streams.

    ``add_stream_from_template`` creates a stream whose codec context is marked as
    initialised, so PyAV never opens an encoder for it: the packets are muxed as given.
    """
    with _template_lock:
        stream = _templates.get(codec)
        if stream is None:
            holder = _templates.get("_container")
            if holder is None:
                holder = av.open(io.BytesIO(), "w", format="matroska")
                _templates["_container"] = holder
            stream = holder.add_stream(codec)
            _templates[codec] = stream
        return stream


def timestamp_tag(epoch_ms: int) -> str:
    """Epoch seconds with millisecond precision, as KVS writes its timestamp tags."""
    return f"{epoch_ms // 1000}.{epoch_ms % 1000:03d}"


@dataclass(frozen=True, slots=True)
class AudioTrackConfig:
    """AAC track parameters: codec private (AudioSpecificConfig), rate and channels."""

    extradata: bytes
    sample_rate: int
    layout: str


class FragmentWriter:
    """Writes one fragment as a live Matroska segment into memory, packet by packet.

    Video packets are length-prefixed H.264 access units with ``pts`` in producer epoch
    ms; audio packets are raw AAC frames. ``finish()`` returns the file bytes. Not
    thread-safe: the recorder drives one writer from its worker thread.
    """

    def __init__(
        self,
        *,
        avcc: bytes,
        width: int,
        height: int,
        tags: dict[str, str],
        audio: AudioTrackConfig | None,
    ) -> None:
        self._buffer = io.BytesIO()
        self._container: Any = av.open(self._buffer, "w", format="matroska", options={"live": "1"})
        self._container.metadata.update(tags)
        video = self._container.add_stream_from_template(_template_stream("h264"), opaque=True)
        ctx = video.codec_context
        ctx.extradata = avcc
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        video.time_base = MKV_TIME_BASE
        self._video = video
        self._audio: Any = None
        if audio is not None:
            stream = self._container.add_stream_from_template(_template_stream("aac"), opaque=True)
            actx = stream.codec_context
            actx.extradata = audio.extradata
            actx.sample_rate = audio.sample_rate
            actx.layout = audio.layout
            actx.format = "fltp"
            stream.time_base = MKV_TIME_BASE
            self._audio = stream

    @property
    def has_audio_track(self) -> bool:
        """True when the file carries an A_AAC track."""
        return self._audio is not None

    def write_video(self, data: bytes, pts_ms: int, keyframe: bool) -> None:
        """Mux one length-prefixed access unit at ``pts_ms`` (strictly increasing)."""
        packet = av.Packet(data)
        packet.pts = packet.dts = pts_ms
        packet.time_base = MKV_TIME_BASE
        packet.is_keyframe = keyframe
        packet.stream = self._video
        self._container.mux_one(packet)

    def write_audio(self, data: bytes, pts_ms: int, duration_ms: int) -> None:
        """Mux one raw AAC frame at ``pts_ms`` (non-decreasing)."""
        if self._audio is None:
            raise RuntimeError("fragment has no audio track")
        packet = av.Packet(data)
        packet.pts = packet.dts = pts_ms
        packet.duration = duration_ms
        packet.time_base = MKV_TIME_BASE
        packet.is_keyframe = True
        packet.stream = self._audio
        self._container.mux_one(packet)

    def finish(self) -> bytes:
        """Close the container and return the fragment file's bytes."""
        self._container.close()
        return self._buffer.getvalue()


# ---------------------------------------------------------------------------- reading


def iter_fragment_list_body(
    paths: Iterable[Path], chunk_bytes: int = READ_CHUNK_BYTES
) -> Iterator[bytes]:
    """Stream the GetMediaForFragmentList body: the fragment files concatenated in order.

    Each stored file already is one EBML header + live Segment with its own fragment
    tags (see the module docstring), so the body needs no remuxing.
    Wire source: docs/wire.md "Archived media" (GetMediaForFragmentList → MKV with tags).
    """
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk


def build_fragment_list_body(paths: Iterable[Path]) -> bytes:
    """The whole GetMediaForFragmentList body as bytes (see ``iter_fragment_list_body``)."""
    return b"".join(iter_fragment_list_body(paths))


def _read_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int, bool]:
    """Read an EBML variable-size integer: (value, new position, all-ones/unknown)."""
    first = data[pos]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8:
        raise ValueError(f"bad EBML vint at {pos}")
    value = first if keep_marker else first & (mask - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, pos + length, unknown


def read_segment_tags(data: bytes) -> list[dict[str, str]]:
    """The SimpleTag name → string pairs of each Segment in a Matroska byte string.

    A small EBML walker that understands unknown-size Segments and Clusters (the KVS
    layout); used to check GetMediaForFragmentList bodies.
    """
    segments: list[dict[str, str]] = []
    pos = 0
    end = len(data)
    stack_unknown: list[int] = []  # ids of unknown-size masters we are inside
    pending_name: str | None = None
    while pos < end:
        element_id, body, _ = _read_vint(data, pos, keep_marker=True)
        size, body, unknown = _read_vint(data, body, keep_marker=False)
        if element_id == _ID_EBML:
            stack_unknown.clear()
            pos = body + size
            continue
        if element_id == _ID_SEGMENT:
            segments.append({})
            stack_unknown = [_ID_SEGMENT] if unknown else []
            pos = body
            continue
        if element_id in _LEVEL1_IDS and stack_unknown and stack_unknown[-1] == _ID_CLUSTER:
            stack_unknown.pop()
        if element_id == _ID_CLUSTER and unknown:
            stack_unknown.append(_ID_CLUSTER)
            pos = body
            continue
        if element_id in _MASTER_IDS:
            pos = body  # descend
            continue
        if element_id == _ID_TAG_NAME:
            pending_name = data[body : body + size].decode("utf-8", "replace")
        elif element_id == _ID_TAG_STRING and pending_name is not None and segments:
            segments[-1][pending_name] = data[body : body + size].decode("utf-8", "replace")
            pending_name = None
        if unknown:
            raise ValueError(f"unknown-size element 0x{element_id:x} at {pos}")
        pos = body + size
    return segments
