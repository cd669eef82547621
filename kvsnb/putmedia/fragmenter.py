"""The file producer: turns a media file into the producer's Matroska for PutMedia.

H.264 and AAC are passed through (no decoding); anything else is transcoded (H.264 with a
keyframe every 2 s, AAC), with a note saying so. One MKV cluster per fragment, cut at a video
keyframe at least 2 s after the previous cut and at most 10 s apart.

Wire source: the PutMedia API reference (one MKV cluster per fragment of at most 10 s and
50 MB).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av

from kvsnb.errors import KvsnbError
from kvsnb.wire import ebml
from kvsnb.wire.h264 import NAL_AUD, NAL_PPS, NAL_SPS, build_avcc, split_annexb, to_length_prefixed

logger = logging.getLogger(__name__)

FRAGMENT_TARGET_MS = 2000
MAX_FRAGMENT_MS = 10_000
TRANSCODE_GOP_S = 2.0
VIDEO_TRACK = 1
AUDIO_TRACK = 2
AUDIO_LATE_MS = 1000  # how long a cut waits for audio that belongs before it


@dataclass
class FilePlan:
    """How a file goes in: passthrough or transcode per track, and its duration."""

    path: Path
    video_passthrough: bool
    audio: Literal["passthrough", "transcode", "none"]
    duration_s: float
    notes: list[str] = field(default_factory=list)


def plan_file(path: str | Path) -> FilePlan:
    """Look at a file (demuxing only) and decide what can pass through unchanged.

    H.264 passes through when its timestamps increase in decode order (no B-frames) and its
    keyframes are at most 10 s apart (a fragment's limit); AAC passes through; everything
    else is transcoded.
    """
    path = Path(path)
    notes: list[str] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise KvsnbError(f"{path} has no video stream")
        vs = container.streams.video[0]
        ast = container.streams.audio[0] if container.streams.audio else None
        video_ok = vs.codec_context.name == "h264"
        if not video_ok:
            notes.append(f"video {vs.codec_context.name} is transcoded to H.264")
        last_pts: int | None = None
        last_key: float | None = None
        end_s = 0.0
        streams = [vs] if ast is None else [vs, ast]
        for packet in container.demux(*streams):
            if packet.pts is None or packet.time_base is None:
                continue
            t = float(packet.pts * packet.time_base)
            end_s = max(end_s, t)
            if packet.stream.type != "video" or not video_ok:
                continue
            if last_pts is not None and packet.pts <= last_pts:
                video_ok = False
                notes.append("H.264 with B-frames is transcoded (PutMedia needs decode order)")
            last_pts = packet.pts
            if packet.is_keyframe:
                if last_key is not None and (t - last_key) * 1000 > MAX_FRAGMENT_MS:
                    video_ok = False
                    notes.append("keyframes more than 10 s apart: video is transcoded")
                last_key = t
        audio: Literal["passthrough", "transcode", "none"] = "none"
        if ast is not None:
            audio = "passthrough" if ast.codec_context.name == "aac" else "transcode"
            if audio == "transcode":
                notes.append(f"audio {ast.codec_context.name} is transcoded to AAC")
    return FilePlan(path, video_ok, audio, end_s, notes)


@dataclass
class _Packet:
    track: int
    ms: int
    keyframe: bool
    data: bytes


class _Fragmenter:
    """Cuts timed frames into clusters at video keyframes ≥ 2 s apart; audio goes to the
    cluster its timestamp falls in (late audio for a closed cluster is dropped)."""

    def __init__(self) -> None:
        self.video: list[_Packet] = []
        self.audio: list[_Packet] = []
        self.start_ms: int | None = None
        self.cut_ms: int | None = None
        self.closed_until: int | None = None
        self.dropped_audio = 0

    def add(self, packet: _Packet) -> Iterator[bytes]:
        if packet.track == VIDEO_TRACK:
            if self.start_ms is None:
                if not packet.keyframe:
                    return
                self.start_ms = packet.ms
            elif (
                packet.keyframe
                and self.cut_ms is None
                and packet.ms - self.start_ms >= FRAGMENT_TARGET_MS
            ):
                self.cut_ms = packet.ms
            self.video.append(packet)
        else:
            if self.closed_until is not None and packet.ms < self.closed_until:
                self.dropped_audio += 1
                return
            self.audio.append(packet)
        if self.cut_ms is not None:
            newest_audio = self.audio[-1].ms if self.audio else None
            newest_video = self.video[-1].ms
            if (newest_audio is not None and newest_audio >= self.cut_ms) or (
                newest_video - self.cut_ms >= AUDIO_LATE_MS
            ):
                yield self._emit(self.cut_ms)

    def _emit(self, until: int | None) -> bytes:
        assert self.start_ms is not None
        start = self.start_ms

        def take(packets: list[_Packet]) -> tuple[list[_Packet], list[_Packet]]:
            inside = [p for p in packets if p.ms >= start and (until is None or p.ms < until)]
            rest = [p for p in packets if until is not None and p.ms >= until]
            return inside, rest

        video, self.video = take(self.video)
        audio, self.audio = take(self.audio)
        frames = sorted(video + audio, key=lambda p: (p.ms, p.track))
        self.closed_until = until
        self.start_ms = until
        self.cut_ms = None
        if self.video and until is not None:  # the next cut may already be waiting
            later = [p for p in self.video if p.keyframe and p.ms - until >= FRAGMENT_TARGET_MS]
            self.cut_ms = later[0].ms if later else None
        return ebml.cluster(start, [ebml.Frame(p.track, p.ms, p.keyframe, p.data) for p in frames])

    def finish(self) -> Iterator[bytes]:
        if self.start_ms is not None and self.video:
            yield self._emit(None)


def _ms(value: Any, time_base: Any) -> int:
    return round(float(value * time_base) * 1000)


def _avcc_from_annexb(nals: list[bytes]) -> bytes | None:
    sps = [n for n in nals if n and n[0] & 0x1F == NAL_SPS]
    pps = [n for n in nals if n and n[0] & 0x1F == NAL_PPS]
    return build_avcc(sps[:1], pps[:1]) if sps and pps else None


def file_fragments(
    plan: FilePlan, *, progress: Callable[[float], None] | None = None
) -> Iterator[bytes]:
    """The producer's Matroska for a planned file: header, then one cluster per fragment.

    Timecodes are milliseconds from the file's first video keyframe (use RELATIVE with a
    producer start timestamp). ``progress`` gets the media seconds done.
    """
    with av.open(str(plan.path)) as container:
        vs = container.streams.video[0]
        ast = container.streams.audio[0] if plan.audio != "none" else None
        video_packets = _video_source(container, vs, plan)
        audio_packets = _audio_source(container, ast, plan) if ast is not None else None
        first: _Packet | None = None
        avcc: bytes | None = None
        pending: list[_Packet] = []
        fragmenter = _Fragmenter()
        origin: int | None = None
        header_sent = False
        for packet, extradata in _merge(container, vs, ast, video_packets, audio_packets):
            if avcc is None and packet.track == VIDEO_TRACK:
                avcc = extradata
            if not header_sent:
                pending.append(packet)
                if avcc is None:
                    continue
                tracks = [
                    ebml.TrackSpec(
                        VIDEO_TRACK, "V_MPEG4/ISO/AVC", avcc, "video", vs.width, vs.height
                    )
                ]
                if ast is not None:
                    tracks.append(_audio_track(ast, plan, audio_packets))
                yield ebml.stream_start(tracks)
                header_sent = True
                todo, pending = pending, []
            else:
                todo = [packet]
            for p in todo:
                if first is None and p.track == VIDEO_TRACK and p.keyframe:
                    first = p
                    origin = p.ms
                if origin is None:
                    continue
                p.ms -= origin
                if p.ms < 0:
                    continue
                for cluster in fragmenter.add(p):
                    if progress is not None:
                        progress((fragmenter.start_ms or 0) / 1000)
                    yield cluster
        yield from fragmenter.finish()
        if progress is not None:
            progress(plan.duration_s)
        if fragmenter.dropped_audio:
            logger.info("dropped %d late audio packets at fragment cuts", fragmenter.dropped_audio)


def _audio_track(ast: Any, plan: FilePlan, source: Any) -> ebml.TrackSpec:
    ctx = ast.codec_context
    if plan.audio == "passthrough":
        return ebml.TrackSpec(
            AUDIO_TRACK, "A_AAC", bytes(ctx.extradata or b""), "audio",
            sample_rate=float(ctx.sample_rate), channels=ctx.channels,
        )  # fmt: skip
    encoder = source.encoder  # transcoding: the encoder's AudioSpecificConfig
    return ebml.TrackSpec(
        AUDIO_TRACK, "A_AAC", bytes(encoder.extradata or b""), "audio",
        sample_rate=float(encoder.sample_rate), channels=encoder.layout.nb_channels,
    )  # fmt: skip


class _VideoSource:
    """Video packets as (length-prefixed data, ms, keyframe) plus the avcC record."""

    def __init__(self, vs: Any, plan: FilePlan) -> None:
        self.vs = vs
        self.passthrough = plan.video_passthrough
        extradata = bytes(vs.codec_context.extradata or b"")
        self.avcc: bytes | None = None
        self.annexb = True
        if self.passthrough and extradata[:1] == b"\x01" and len(extradata) > 4:
            if extradata[4] & 3 == 3:
                self.avcc = extradata
                self.annexb = False
            else:
                self.passthrough = False
                plan.notes.append("H.264 with short NAL lengths is transcoded")
        self.encoder: Any = None
        if not self.passthrough:
            rate: Any = vs.average_rate or vs.guessed_rate or 30
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width = vs.codec_context.width
            encoder.height = vs.codec_context.height
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = Fraction(1, 1000)
            encoder.framerate = rate
            encoder.options = {
                "preset": "veryfast",
                "bf": "0",
                "g": str(max(1, round(float(rate) * TRANSCODE_GOP_S))),
                "keyint_min": str(max(1, round(float(rate) * TRANSCODE_GOP_S))),
                "sc_threshold": "0",
            }
            self.encoder = encoder

    def packets(self, packet: Any) -> Iterator[_Packet]:
        if packet.pts is None:
            return
        if self.passthrough:
            yield from self._wrap(
                bytes(packet), _ms(packet.pts, packet.time_base), packet.is_keyframe
            )
            return
        for frame in packet.decode():
            frame.pts = _ms(frame.pts, frame.time_base) if frame.pts is not None else None
            frame.time_base = Fraction(1, 1000)
            for out in self.encoder.encode(frame.reformat(format="yuv420p")):
                yield from self._wrap(bytes(out), int(out.pts), out.is_keyframe)

    def flush(self) -> Iterator[_Packet]:
        if self.encoder is not None:
            for out in self.encoder.encode(None):
                yield from self._wrap(bytes(out), int(out.pts), out.is_keyframe)

    def _wrap(self, data: bytes, ms: int, keyframe: bool) -> Iterator[_Packet]:
        if self.annexb:
            nals = split_annexb(data)
            if self.avcc is None:
                self.avcc = _avcc_from_annexb(nals)
            nals = [n for n in nals if n[0] & 0x1F not in (NAL_AUD, NAL_SPS, NAL_PPS)]
            if not nals:
                return
            data = to_length_prefixed(nals)
        yield _Packet(VIDEO_TRACK, ms, keyframe, data)


class _AudioSource:
    """Audio packets as raw AAC frames (passed through or encoded)."""

    def __init__(self, ast: Any, plan: FilePlan) -> None:
        self.passthrough = plan.audio == "passthrough"
        self.encoder: Any = None
        self.resampler: Any = None
        if not self.passthrough:
            rate = ast.codec_context.sample_rate or 48000
            encoder = av.CodecContext.create("aac", "w")
            encoder.sample_rate = rate
            encoder.layout = "stereo"
            encoder.format = "fltp"
            encoder.time_base = Fraction(1, rate)
            encoder.open()
            self.encoder = encoder
            self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)

    def packets(self, packet: Any) -> Iterator[_Packet]:
        if packet.pts is None:
            return
        if self.passthrough:
            yield _Packet(AUDIO_TRACK, _ms(packet.pts, packet.time_base), True, bytes(packet))
            return
        for frame in packet.decode():
            for chunk in self.resampler.resample(frame):
                yield from self._encode(chunk)

    def _encode(self, frame: Any) -> Iterator[_Packet]:
        for out in self.encoder.encode(frame):
            if out.pts is not None:
                yield _Packet(AUDIO_TRACK, _ms(out.pts, out.time_base), True, bytes(out))

    def flush(self) -> Iterator[_Packet]:
        if self.encoder is not None:
            yield from self._encode(None)


def _video_source(container: Any, vs: Any, plan: FilePlan) -> _VideoSource:
    return _VideoSource(vs, plan)


def _audio_source(container: Any, ast: Any, plan: FilePlan) -> _AudioSource:
    return _AudioSource(ast, plan)


def _merge(
    container: Any,
    vs: Any,
    ast: Any,
    video: _VideoSource,
    audio: _AudioSource | None,
) -> Iterator[tuple[_Packet, bytes | None]]:
    streams = [vs] if ast is None else [vs, ast]
    for packet in container.demux(*streams):
        if packet.stream.index == vs.index:
            for p in video.packets(packet):
                yield p, video.avcc
        elif audio is not None:
            for p in audio.packets(packet):
                yield p, video.avcc
    for p in video.flush():
        yield p, video.avcc
    if audio is not None:
        for p in audio.flush():
            yield p, video.avcc
