"""Remux stored Matroska fragments for HLS (fMP4, MPEG-TS), DASH (fMP4) and GetClip (MP4),
never re-encoding (docs/design.md, principle 3).

The rule: every output runs on one session timeline whose origin is the first fragment's
producer start, so segments continue one another whatever order a player fetches them in;
the input has no B-frames (WebRTC H.264), so decode order is presentation order. All of it is
blocking CPU work on bytes: call it through ``asyncio.to_thread``. What players receive:
docs/wire.md, "Archived media"; how each container is built: docs/design.md, "Local KVS".
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from kvsnb.wire import h264

logger = logging.getLogger(__name__)

VIDEO_TRACK = 1
AUDIO_TRACK = 2
VIDEO_TIMESCALE = 90_000
MS_TIME_BASE = Fraction(1, 1000)
AAC_FRAME_SAMPLES = 1024
DEFAULT_FRAME_MS = 33  # a last video frame's duration when the fragment end is unknown
TS_PTS_OFFSET_MS = 1400  # keep TS PTS above the PCR start, as ffmpeg's muxdelay does
# Stored fragments carry every codec parameter in their Tracks header, so skip ffmpeg's
# stream probing (which decodes frames): opening a fragment drops from ~5 ms to ~1 ms.
READ_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
TS_OPTIONS = {"mpegts_flags": "initial_discontinuity", "mpegts_copyts": "1"}
# trun sample flags (ISO/IEC 14496-12 8.8.3.1): sample_depends_on and sample_is_non_sync.
SYNC_SAMPLE_FLAGS = 0x02000000
NON_SYNC_SAMPLE_FLAGS = 0x01010000
TRUN_FLAGS = 0x000701  # data-offset, sample-duration, sample-size, sample-flags present
TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
LANGUAGE_UND = 0x55C4  # ISO-639-2 "und", packed
UNITY_MATRIX = (0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
AAC_OBJECT_TYPE_MPEG4 = 0x40  # esds objectTypeIndication: MPEG-4 audio
AUDIO_STREAM_TYPE = 0x15  # esds streamType 5 (audio) << 2 | upStream 0 | reserved 1


class RemuxError(Exception):
    """A stored fragment cannot be remuxed (no video track, no codec private data)."""


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Sample:
    """One access unit (H.264, length-prefixed NAL units) or AAC frame."""

    time: int  # producer epoch ms (video) or producer time in samples (audio)
    data: bytes
    keyframe: bool


@dataclass(frozen=True, slots=True)
class VideoTrack:
    """The H.264 track of a fragment: avcC, picture size and samples (times in epoch ms)."""

    avcc: bytes
    width: int
    height: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class AudioTrack:
    """The AAC track of a fragment: AudioSpecificConfig, rate, channels and samples.

    Sample times are in samples since the epoch (producer clock), snapped to whole AAC
    frames within the fragment so durations are exactly ``AAC_FRAME_SAMPLES``.
    """

    config: bytes
    sample_rate: int
    channels: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class ParsedFragment:
    """A stored fragment's tracks, read from its Matroska file."""

    start_ms: int  # producer start
    end_ms: int  # producer time just after the last frame
    video: VideoTrack
    audio: AudioTrack | None

    @property
    def size(self) -> int:
        """Bytes of media (sum of sample sizes), a cache weight."""
        total = sum(len(s.data) for s in self.video.samples)
        if self.audio is not None:
            total += sum(len(s.data) for s in self.audio.samples)
        return total


def read_fragment(path: Path, start_ms: int, end_ms: int) -> ParsedFragment:
    """Read a stored fragment's samples (no decoding). ``start_ms``/``end_ms`` are the
    fragment's producer start and end from the index (they bound the last frame's duration).
    """
    with _open(path) as container:
        video_stream = next((s for s in container.streams if s.type == "video"), None)
        audio_stream = next((s for s in container.streams if s.type == "audio"), None)
        if video_stream is None:
            raise RemuxError(f"{path.name}: no video track")
        avcc = bytes(video_stream.codec_context.extradata or b"")
        if not avcc:
            raise RemuxError(f"{path.name}: no codec private data on the video track")
        video: list[Sample] = []
        audio_raw: list[tuple[int, bytes]] = []
        for packet in container.demux():
            if packet.size == 0 or packet.pts is None:
                continue
            pts_ms = int(packet.pts * packet.time_base * 1000)
            if packet.stream.type == "video":
                video.append(Sample(pts_ms, bytes(packet), bool(packet.is_keyframe)))
            elif packet.stream.type == "audio":
                audio_raw.append((pts_ms, bytes(packet)))
        audio: AudioTrack | None = None
        if audio_stream is not None:
            ctx: Any = audio_stream.codec_context
            rate = int(ctx.sample_rate)
            audio = AudioTrack(
                config=bytes(ctx.extradata or b""),
                sample_rate=rate,
                channels=int(ctx.layout.nb_channels),
                samples=_snap_audio(audio_raw, rate),
            )
    video.sort(key=lambda s: s.time)
    vctx: Any = video_stream.codec_context
    return ParsedFragment(
        start_ms=start_ms,
        end_ms=end_ms,
        video=VideoTrack(avcc, int(vctx.width), int(vctx.height), tuple(video)),
        audio=audio,
    )


def _open(path: Path) -> Any:
    """Open a stored fragment for demuxing, without probing (see ``READ_OPTIONS``)."""
    return av.open(str(path), format="matroska", options=dict(READ_OPTIONS))


def _snap_audio(frames: Sequence[tuple[int, bytes]], rate: int) -> tuple[Sample, ...]:
    """AAC frames with times in samples: each frame follows the previous one by exactly
    ``AAC_FRAME_SAMPLES`` unless its ms timestamp says there is a real gap (> half a frame),
    undoing the rounding of the 1 ms Matroska timestamps."""
    out: list[Sample] = []
    expected: int | None = None
    for pts_ms, data in sorted(frames, key=lambda f: f[0]):
        exact = round(pts_ms * rate / 1000)
        if expected is not None and abs(exact - expected) <= AAC_FRAME_SAMPLES // 2:
            exact = expected
        out.append(Sample(exact, data, True))
        expected = exact + AAC_FRAME_SAMPLES
    return tuple(out)


# ---------------------------------------------------------------------------- boxes


def box(kind: bytes, *payload: bytes) -> bytes:
    """An ISO BMFF box: 32-bit size, 4-char type, payload."""
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    """An ISO BMFF full box (version and 24-bit flags before the payload)."""
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _matrix() -> bytes:
    return struct.pack(">9I", *UNITY_MATRIX)


def _descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 descriptor (ISO/IEC 14496-1 8.3.3) with a 4-byte expandable length."""
    n = len(payload)
    size = bytes(
        [0x80 | ((n >> 21) & 0x7F), 0x80 | ((n >> 14) & 0x7F), 0x80 | ((n >> 7) & 0x7F), n & 0x7F]
    )
    return bytes([tag]) + size + payload


def _esds(config: bytes, track_id: int) -> bytes:
    decoder_config = _descriptor(
        0x04,
        bytes([AAC_OBJECT_TYPE_MPEG4, AUDIO_STREAM_TYPE])
        + (0).to_bytes(3, "big")  # bufferSizeDB
        + struct.pack(">II", 0, 0)  # maxBitrate, avgBitrate (unknown)
        + _descriptor(0x05, config),
    )
    es = _descriptor(
        0x03, struct.pack(">HB", track_id, 0) + decoder_config + _descriptor(0x06, b"\x02")
    )
    return full_box(b"esds", 0, 0, es)


def _sample_entry_video(track: VideoTrack) -> bytes:
    return box(
        b"avc1",
        bytes(6) + struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(16),  # pre_defined, reserved, pre_defined[3]
        struct.pack(">HH", track.width, track.height),
        struct.pack(">II", 0x00480000, 0x00480000),  # 72 dpi
        bytes(4) + struct.pack(">H", 1),  # reserved, frame_count
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
        box(b"avcC", track.avcc),
    )


def _sample_entry_audio(track: AudioTrack, track_id: int) -> bytes:
    return box(
        b"mp4a",
        bytes(6) + struct.pack(">H", 1),
        bytes(8),  # reserved (version, revision, vendor)
        struct.pack(">HHHH", track.channels, 16, 0, 0),
        struct.pack(">I", track.sample_rate << 16),
        _esds(track.config, track_id),
    )


def init_segment(track: VideoTrack | AudioTrack, track_id: int) -> bytes:
    """``ftyp`` + ``moov`` for one track (the HLS ``EXT-X-MAP`` resource)."""
    is_video = isinstance(track, VideoTrack)
    timescale = VIDEO_TIMESCALE if is_video else track.sample_rate  # type: ignore[union-attr]
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"cmfc", b"mp41")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),  # creation, modification, timescale, duration
        struct.pack(">IH", 0x00010000, 0x0100) + bytes(10),  # rate, volume, reserved
        _matrix(),
        bytes(24),
        struct.pack(">I", track_id + 1),
    )
    if isinstance(track, VideoTrack):
        width, height, volume = track.width, track.height, 0
        handler, name = b"vide", b"VideoHandler\x00"
        media_header = full_box(b"vmhd", 0, 1, bytes(8))
        entry = _sample_entry_video(track)
    else:
        width, height, volume = 0, 0, 0x0100
        handler, name = b"soun", b"SoundHandler\x00"
        media_header = full_box(b"smhd", 0, 0, bytes(4))
        entry = _sample_entry_audio(track, track_id)
    tkhd = full_box(
        b"tkhd",
        0,
        3,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),
        bytes(8),
        struct.pack(">hhhH", 0, 0, volume, 0),
        _matrix(),
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, LANGUAGE_UND, 0))
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name)
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
        full_box(b"stts", 0, 0, bytes(4)),
        full_box(b"stsc", 0, 0, bytes(4)),
        full_box(b"stsz", 0, 0, bytes(8)),
        full_box(b"stco", 0, 0, bytes(4)),
    )
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl)))
    mvex = box(b"mvex", full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0)))
    return ftyp + box(b"moov", mvhd, trak, mvex)


def _moof_mdat(
    sequence: int, track_id: int, base_time: int, entries: Sequence[tuple[int, bytes, int]]
) -> bytes:
    """``moof`` + ``mdat`` for samples given as (duration, data, flags)."""
    rows = b"".join(struct.pack(">III", d, len(data), flags) for d, data, flags in entries)

    def moof(data_offset: int) -> bytes:
        trun = full_box(b"trun", 0, TRUN_FLAGS, struct.pack(">Ii", len(entries), data_offset), rows)
        traf = box(
            b"traf",
            full_box(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id)),
            full_box(b"tfdt", 1, 0, struct.pack(">Q", max(0, base_time))),
            trun,
        )
        return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), traf)

    size = len(moof(0))
    return moof(size + 8) + box(b"mdat", *(data for _, data, _ in entries))


def video_segment(
    fragment: ParsedFragment, sequence: int, origin_ms: int, init_avcc: bytes | None = None
) -> bytes:
    """The video ``moof`` + ``mdat`` of one fragment on a session timeline starting at
    ``origin_ms`` (producer epoch ms). When the fragment's avcC differs from the one in the
    session's init segment (``init_avcc``), its SPS/PPS are sent in band before its first
    sample so a decoder follows the change."""
    samples = fragment.video.samples
    if not samples:
        raise RemuxError("fragment has no video frames")
    entries: list[tuple[int, bytes, int]] = []
    for i, s in enumerate(samples):
        nxt = samples[i + 1].time if i + 1 < len(samples) else fragment.end_ms
        duration_ms = nxt - s.time if nxt > s.time else DEFAULT_FRAME_MS
        data = s.data
        if i == 0 and init_avcc is not None and init_avcc != fragment.video.avcc:
            data = h264.avcc_parameter_sets(fragment.video.avcc) + data
        flags = SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS
        entries.append((duration_ms * VIDEO_TIMESCALE // 1000, data, flags))
    base = (samples[0].time - origin_ms) * VIDEO_TIMESCALE // 1000
    return _moof_mdat(sequence, VIDEO_TRACK, base, entries)


def audio_segment(
    fragment: ParsedFragment,
    sequence: int,
    origin_ms: int,
    sample_rate: int,
    *,
    cover_start: bool = False,
    cover_end: bool = False,
) -> bytes:
    """The audio ``moof`` + ``mdat`` of one fragment (see ``video_segment``). A fragment
    without an audio track gives a ``moof`` with no samples at the fragment's start, so the
    audio playlist keeps one segment per fragment. ``sample_rate`` is the init segment's.

    Beside a gap in the media the audio must cover the video's span, or a player that
    closes the gap (DASH's timeline, hls.js at a discontinuity) holds a hole of a few ms in
    its audio buffer there, and hls.js never ends a stream whose audio buffer has a hole
    ahead. ``cover_start`` (a gap before the fragment): audio that starts after the first
    video frame starts at it, its first frame lasting that much longer; ``cover_end`` (a gap
    after): audio that ends before the video's end lasts to it. No sample is moved or
    dropped: only the first and last frame durations grow, by less than a frame."""
    track = fragment.audio
    rate = track.sample_rate if track is not None else sample_rate
    origin = origin_ms * rate // 1000
    samples = track.samples if track is not None else ()
    first = samples[0].time if samples else fragment.start_ms * rate // 1000
    durations = [AAC_FRAME_SAMPLES] * len(samples)
    video = fragment.video.samples
    if samples and video:
        video_start = video[0].time * rate // 1000
        video_end = fragment.end_ms * rate // 1000
        if cover_start and first > video_start:
            durations[0] += first - video_start
            first = video_start
        audio_end = samples[-1].time + AAC_FRAME_SAMPLES
        if cover_end and audio_end < video_end:
            durations[-1] += video_end - audio_end
    entries = [(d, s.data, SYNC_SAMPLE_FLAGS) for d, s in zip(durations, samples, strict=True)]
    return _moof_mdat(sequence, AUDIO_TRACK, first - origin, entries)


# ---------------------------------------------------------------------------- PyAV muxing


def ts_segment(path: Path, origin_ms: int) -> bytes:
    """One MPEG-TS segment holding a stored fragment's video and audio (see module doc)."""
    buffer = io.BytesIO()
    with _open(path) as source:
        out: Any = av.open(buffer, "w", format="mpegts", options=dict(TS_OPTIONS))
        try:
            streams = {
                s.index: out.add_stream_from_template(s)
                for s in source.streams
                if s.type in ("video", "audio")
            }
            for packet in source.demux():
                if packet.size == 0 or packet.pts is None or packet.stream.index not in streams:
                    continue
                pts_ms = int(packet.pts * packet.time_base * 1000)
                packet.time_base = MS_TIME_BASE
                packet.pts = packet.dts = pts_ms - origin_ms + TS_PTS_OFFSET_MS
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        finally:
            out.close()
    return buffer.getvalue()


def clip_mp4(template: Path, fragments: Sequence[ParsedFragment]) -> bytes:
    """An ordinary MP4 (``moov`` after ``mdat``) of the fragments' video and audio in order,
    timestamps from 0 at the earliest sample. Track parameters come from the stored file
    ``template`` (the first fragment); overlapping samples (a later fragment starting
    before the previous one ended) are dropped so timestamps strictly increase."""
    if not fragments:
        raise RemuxError("no fragments")
    origin_ms = min(
        [f.video.samples[0].time for f in fragments if f.video.samples]
        + [
            f.audio.samples[0].time * 1000 // f.audio.sample_rate
            for f in fragments
            if f.audio is not None and f.audio.samples
        ]
    )
    buffer = io.BytesIO()
    with _open(template) as first:
        out: Any = av.open(buffer, "w", format="mp4")
        try:
            video_in = next(s for s in first.streams if s.type == "video")
            audio_in = next((s for s in first.streams if s.type == "audio"), None)
            video = out.add_stream_from_template(video_in)
            audio = None if audio_in is None else out.add_stream_from_template(audio_in)
            packets: list[tuple[Fraction, Any]] = []
            last_video = last_audio = -1
            for fragment in fragments:
                samples = fragment.video.samples
                for i, s in enumerate(samples):
                    t = s.time - origin_ms
                    if t <= last_video:
                        continue
                    last_video = t
                    nxt = samples[i + 1].time if i + 1 < len(samples) else fragment.end_ms
                    packet = av.Packet(s.data)
                    packet.time_base = MS_TIME_BASE
                    packet.pts = packet.dts = t
                    packet.duration = nxt - s.time if nxt > s.time else DEFAULT_FRAME_MS
                    packet.is_keyframe = s.keyframe
                    packet.stream = video
                    packets.append((t * MS_TIME_BASE, packet))
                if audio is None or fragment.audio is None:
                    continue
                rate = fragment.audio.sample_rate
                base = Fraction(1, rate)
                for s in fragment.audio.samples:
                    t = s.time - origin_ms * rate // 1000
                    if t <= last_audio:
                        continue
                    last_audio = t
                    packet = av.Packet(s.data)
                    packet.time_base = base
                    packet.pts = packet.dts = t
                    packet.duration = AAC_FRAME_SAMPLES
                    packet.is_keyframe = True
                    packet.stream = audio
                    packets.append((t * base, packet))
            if not packets:
                raise RemuxError("the fragments hold no frames")
            packets.sort(key=lambda p: p[0])
            for _, packet in packets:
                out.mux(packet)
        finally:
            out.close()
    return buffer.getvalue()
