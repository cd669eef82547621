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

from kvsnb.wire.ebml import (
    CLUSTER,
    EBML,
    SEGMENT,
    TAGS,
    read_vint,
    tags_element,
)

logger = logging.getLogger(__name__)

MKV_TIME_BASE = Fraction(1, 1000)
TAG_FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"
VIDEO_CODEC_ID = "V_MPEG4/ISO/AVC"
AUDIO_CODEC_ID = "A_AAC"
READ_CHUNK_BYTES = 1 << 20

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


def with_tags(data: bytes, head: dict[str, str], tail: dict[str, str] | None = None) -> bytes:
    """A stored fragment file with its Tags element replaced by ``head`` (before the
    Clusters) and, with ``tail``, a second Tags element after them: the layout of a GetMedia
    chunk, whose continuation token follows the fragment (docs/wire.md, "GetMedia")."""
    pos = 0
    tags_at: tuple[int, int] | None = None
    first_cluster = len(data)
    while pos < len(data):
        element_id, body, _ = read_vint(data, pos, keep_marker=True)
        size, body, unknown = read_vint(data, body, keep_marker=False)
        if element_id == SEGMENT:
            pos = body
            continue
        if element_id == CLUSTER:
            first_cluster = pos
            break
        if unknown:
            raise ValueError(f"unknown-size element 0x{element_id:x} before the Clusters")
        if element_id == TAGS:
            tags_at = (pos, body + size)
        elif element_id != EBML and pos == 0:
            raise ValueError("not a Matroska fragment")
        pos = body + size
    if tags_at is None:
        tags_at = (first_cluster, first_cluster)
    out = data[: tags_at[0]] + tags_element(head) + data[tags_at[1] :]
    return out + tags_element(tail) if tail else out
