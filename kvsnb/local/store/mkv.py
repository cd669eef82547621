"""The Matroska layout of stored fragments, written with kvsnb's own EBML writer.

A stored fragment is exactly the chunk GetMediaForFragmentList returns for it, in the shape
AWS streams GetMedia (docs/wire.md, "GetMedia", "Shape of a chunk"): an EBML header and one
unknown-size Segment with Info (TimecodeScale 1 ms), Tracks (1 ``V_MPEG4/ISO/AVC`` with an
avcC, 2 ``A_AAC``), the three ``AWS_KINESISVIDEO_*`` tags and then one known-size Cluster
holding every frame of the fragment as SimpleBlocks, video and audio interleaved by time. The
Cluster's timecode is the fragment's producer start in epoch ms, so block times stay producer
epoch ms (docs/wire.md, "Archived media" and "Storage sessions"). Only a fragment whose frames
span more than a block timecode reaches (about 32 s from the Cluster's) gets a second Cluster.
Unknown-size segments let ffmpeg read a concatenation of fragments straight through
(docs/design.md, "Local KVS"). Files written before this layout (several Clusters per
fragment, muxed by FFmpeg) are read and served as they are.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kvsnb.wire.ebml import (
    CLUSTER,
    EBML,
    INFO,
    MUXING_APP,
    SEGMENT,
    TAGS,
    TIMECODE,
    TIMECODE_SCALE,
    TRACKS,
    UNKNOWN_SIZE,
    WRITING_APP,
    TrackSpec,
    ebml_header,
    element,
    encode_id,
    encode_size,
    read_vint,
    simple_block,
    string_element,
    tags_element,
    uint_element,
)

logger = logging.getLogger(__name__)

TAG_FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"
VIDEO_CODEC_ID = "V_MPEG4/ISO/AVC"
AUDIO_CODEC_ID = "A_AAC"
READ_CHUNK_BYTES = 1 << 20
VIDEO_TRACK = 1
AUDIO_TRACK = 2
TIMECODE_SCALE_NS = 1_000_000  # block times in ms
APP = "kvsnb Local KVS"
_BLOCK_MIN, _BLOCK_MAX = -(1 << 15), (1 << 15) - 1  # a block's timecode, relative to its Cluster


# ---------------------------------------------------------------------------- writing


def timestamp_tag(epoch_ms: int) -> str:
    """Epoch seconds with millisecond precision, as KVS writes its timestamp tags."""
    return f"{epoch_ms // 1000}.{epoch_ms % 1000:03d}"


@dataclass(frozen=True, slots=True)
class AudioTrackConfig:
    """AAC track parameters: codec private (AudioSpecificConfig), rate and channels."""

    extradata: bytes
    sample_rate: int
    layout: str

    @property
    def channels(self) -> int:
        """1 for a mono layout, else 2."""
        return 1 if self.layout == "mono" else 2


class FragmentWriter:
    """Collects one fragment's frames and writes it in the stored layout (module docstring).

    Video frames are length-prefixed H.264 access units and audio frames raw AAC frames, each
    at a time in producer epoch ms; ``timecode_ms`` (the fragment's producer start) is the
    Cluster's timecode. The frames are kept in memory until ``finish()`` returns the file's
    bytes: the Cluster's size goes before its blocks. Not thread-safe: the recorder drives one
    writer from its worker thread.
    """

    def __init__(
        self,
        *,
        avcc: bytes,
        width: int,
        height: int,
        tags: dict[str, str],
        audio: AudioTrackConfig | None,
        timecode_ms: int,
    ) -> None:
        tracks = [TrackSpec(VIDEO_TRACK, VIDEO_CODEC_ID, avcc, "video", width, height)]
        if audio is not None:
            tracks.append(
                TrackSpec(
                    AUDIO_TRACK,
                    AUDIO_CODEC_ID,
                    audio.extradata,
                    "audio",
                    sample_rate=float(audio.sample_rate),
                    channels=audio.channels,
                )
            )
        info = (
            uint_element(TIMECODE_SCALE, TIMECODE_SCALE_NS)
            + string_element(MUXING_APP, APP)
            + string_element(WRITING_APP, APP)
        )
        self._head = (
            ebml_header()
            + encode_id(SEGMENT)
            + UNKNOWN_SIZE
            + element(INFO, info)
            + element(TRACKS, b"".join(t.to_bytes() for t in tracks))
            + tags_element(tags)
        )
        self._has_audio = audio is not None
        self.timecode_ms = timecode_ms
        self._frames: list[tuple[int, int, bool, bytes]] = []  # ms, track, keyframe, data
        self._sorted = True

    @property
    def has_audio_track(self) -> bool:
        """True when the file carries an A_AAC track."""
        return self._has_audio

    def _add(self, pts_ms: int, track: int, keyframe: bool, data: bytes) -> None:
        frames = self._frames
        if frames and pts_ms < frames[-1][0]:
            self._sorted = False
        frames.append((pts_ms, track, keyframe, data))

    def write_video(self, data: bytes, pts_ms: int, keyframe: bool) -> None:
        """Add one length-prefixed access unit at ``pts_ms`` (strictly increasing)."""
        self._add(pts_ms, VIDEO_TRACK, keyframe, data)

    def write_audio(self, data: bytes, pts_ms: int, duration_ms: int) -> None:
        """Add one raw AAC frame at ``pts_ms`` (non-decreasing). Every AAC frame lasts its
        1024 samples, so ``duration_ms`` is implied by the track and not written."""
        if not self._has_audio:
            raise RuntimeError("fragment has no audio track")
        self._add(pts_ms, AUDIO_TRACK, True, data)

    def finish(self) -> bytes:
        """The fragment file's bytes: the head, then the Cluster of every frame, video and
        audio interleaved by time (each track in the order its frames were added)."""
        frames: Iterable[tuple[int, int, bool, bytes]] = self._frames
        if not self._sorted:
            # Interleave the tracks by time; each keeps its own order (decode order for video).
            tracks = [[f for f in self._frames if f[1] == t] for t in (VIDEO_TRACK, AUDIO_TRACK)]
            frames = heapq.merge(*tracks, key=lambda f: f[0])
        parts = [self._head]
        timecode = self.timecode_ms
        blocks: list[bytes] = []
        for ms, track, keyframe, data in frames:
            relative = ms - timecode
            if not _BLOCK_MIN <= relative <= _BLOCK_MAX:
                # Only a fragment spanning over ~32 s gets here: continue in a new Cluster.
                if blocks:
                    parts.append(_cluster(timecode, blocks))
                    blocks = []
                timecode, relative = ms, 0
            blocks.append(simple_block(track, relative, keyframe, data))
        parts.append(_cluster(timecode, blocks))
        self._frames = []
        return b"".join(parts)


def _cluster(timecode: int, blocks: list[bytes]) -> bytes:
    """A known-size Cluster of ``blocks`` (already-encoded SimpleBlocks) at ``timecode``."""
    body_size = sum(len(b) for b in blocks)
    timecode_element = uint_element(TIMECODE, timecode)
    size = len(timecode_element) + body_size
    return b"".join([encode_id(CLUSTER), encode_size(size), timecode_element, *blocks])


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
