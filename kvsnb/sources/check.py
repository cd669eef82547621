"""Check whether media fits KVS WebRTC ingestion (storage sessions) before sending it.

``check_tracks(source)`` inspects a media file, a ``FileSource``, a ``TestPatternTrack`` or
a ``(TestPatternTrack, ToneTrack)`` pair and applies the rules below, each giving
passed/failed, the value found, what is expected and a plain reason. Sources of the facts:
docs/wire.md "Storage sessions" (offer, requirements, quotas, fragments).

A file is judged *as it would be sent as it is*: the video rules say whether its H.264 can
be passed through without re-encoding (``FileSource`` decides passthrough from them; video
that fails is decoded and aiortc re-encodes it as Constrained Baseline H.264). Audio is
always decoded by ``FileSource`` and encoded as Opus 48 kHz by aiortc, so AAC (or any
decodable codec) passes the audio-codec rule with a note saying it will be transcoded.

Required rules decide ``TrackReport.ok``; advisory rules (``required=False``) are warnings:

=================== ======== =================================================================
rule                required expectation
=================== ======== =================================================================
video_present       yes      a video track (KVS stores video)
video_codec         yes      H.264
h264_profile        yes      Constrained Baseline (offer profile-level-id 42e01f)
h264_level          no       <= 3.1 (the 1f of 42e01f)
packetization       yes      packetization-mode=1 (aiortc always packetizes in mode 1)
resolution          no       <= 1920x1080
frame_rate          no       <= 30 fps
keyframe_interval   yes      <= 20 s between keyframes (fragments are keyframe-aligned, 1-20 s)
bitrate             yes      video + Opus audio <= max_bitrate_bps (1 Mbps ingest quota)
audio_present       yes      an audio track when require_audio (the API reference asks both)
audio_codec         yes      Opus, or decodable audio that the sender transcodes to Opus
audio_sample_rate   no       48 kHz
=================== ======== =================================================================
"""

from __future__ import annotations

import html
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pandas as pd

from kvsnb.sources.tracks import (
    TEST_PATTERN,
    TestPatternTrack,
    ToneTrack,
    webrtc_h264_encoder,
)
from kvsnb.wire import h264, webrtc

logger = logging.getLogger(__name__)

OFFER_PROFILE_LEVEL_ID = "42e01f"  # (inferred) docs/wire.md "Storage sessions": H.264 in the offer
OFFER_PACKETIZATION_MODE = 1  # docs/wire.md: packetization-mode=1 in the offer
MAX_LEVEL_IDC = 0x1F  # level 3.1, the last byte of OFFER_PROFILE_LEVEL_ID
MAX_WIDTH = 1920  # advisory: KVS WebRTC ingestion is described up to 1080p (not confirmed)
MAX_HEIGHT = 1080
MAX_FRAME_RATE = 30.0  # advisory: aiortc's H.264 encoder is configured for at most 30 fps
# docs/wire.md: stored fragments are keyframe-aligned and PutMedia fragments last 1-20 s, so a
# keyframe interval above 20 s cannot make valid fragments. Above 10 s it works, but each
# fragment (and so HLS / GetImages availability) waits that long.
MAX_KEYFRAME_INTERVAL_S = 20.0
LONG_KEYFRAME_INTERVAL_S = 10.0
DEFAULT_MAX_BITRATE_BPS = 1_000_000  # docs/wire.md quotas: ingest 1 Mbps
AIORTC_OPUS_BITRATE_BPS = 96_000  # aiortc's OpusEncoder sets bit_rate 96000
X264_DEFAULT_KEYINT = 250  # aiortc sets no GOP: x264's default keyint applies
MAX_SCAN_SECONDS = 120.0  # how much of a file is demuxed to measure bitrate and keyframes
TRACK_CHECK_SECONDS = 2.0  # how long a TestPatternTrack is encoded to measure it
VIDEO_RULES = frozenset(
    {
        "video_present",
        "video_codec",
        "h264_profile",
        "h264_level",
        "packetization",
        "resolution",
        "frame_rate",
        "keyframe_interval",
        "bitrate",
    }
)


@dataclass(frozen=True, slots=True)
class RuleResult:
    """The outcome of one rule: passed or not, the value found, what is expected, why.

    ``required=False`` marks an advisory rule whose failure is a warning only.
    """

    rule: str
    passed: bool
    value: str
    expected: str
    reason: str
    required: bool = True


@dataclass
class TrackReport:
    """The rules applied to one source. ``ok`` is True when every required rule passed.

    ``info`` holds the measured facts (codecs, profile, sizes, bitrates, keyframe times).
    """

    source: str
    rules: list[RuleResult]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every required rule passed (advisory failures are warnings)."""
        return all(r.passed for r in self.rules if r.required)

    @property
    def failures(self) -> list[RuleResult]:
        """The required rules that failed."""
        return [r for r in self.rules if r.required and not r.passed]

    @property
    def warnings(self) -> list[RuleResult]:
        """The advisory rules that failed."""
        return [r for r in self.rules if not r.required and not r.passed]

    def rule(self, name: str) -> RuleResult:
        """The result of rule ``name``; ``KeyError`` if it was not applied to this source."""
        for r in self.rules:
            if r.rule == name:
                return r
        raise KeyError(f"rule {name!r} was not applied to {self.source}")

    def to_frame(self) -> pd.DataFrame:
        """The rules as a DataFrame: rule, passed, required, value, expected, reason."""
        columns = ["rule", "passed", "required", "value", "expected", "reason"]
        return pd.DataFrame([{c: getattr(r, c) for c in columns} for r in self.rules])

    def __repr__(self) -> str:
        lines = [f"TrackReport({self.source}: {'OK' if self.ok else 'FAILED'})"]
        for r in self.rules:
            mark = "ok  " if r.passed else ("FAIL" if r.required else "warn")
            lines.append(f"  {mark} {r.rule:<18} {r.value:<28} expected {r.expected}: {r.reason}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        status = "OK" if self.ok else "FAILED"
        colour = "#1a7f37" if self.ok else "#cf222e"
        rows = []
        for r in self.rules:
            if r.passed:
                mark, background = "&#10004;", "#dafbe1"
            elif r.required:
                mark, background = "&#10008;", "#ffebe9"
            else:
                mark, background = "!", "#fff8c5"
            cells = "".join(
                f"<td>{html.escape(v)}</td>" for v in (r.rule, r.value, r.expected, r.reason)
            )
            rows.append(f'<tr style="background:{background}"><td>{mark}</td>{cells}</tr>')
        return (
            f"<div><b>{html.escape(self.source)}</b>: "
            f'<span style="color:{colour}"><b>{status}</b></span>'
            "<table><thead><tr><th></th><th>rule</th><th>value</th><th>expected</th>"
            f"<th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )


def _probe_file(path: Path) -> dict[str, Any]:
    """Measure a media file's first video and audio streams by demuxing (no decoding)."""
    info: dict[str, Any] = {"video_codec": None, "audio_codec": None}
    sps: tuple[int, int, int] | None = None
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is not None:
            acc = audio.codec_context
            info["audio_codec"] = acc.name
            info["sample_rate"] = acc.sample_rate
            info["channels"] = acc.channels
            info["audio_decodable"] = _has_decoder(acc.name)
        if video is not None:
            vcc = video.codec_context
            info["video_codec"] = vcc.name
            info["width"], info["height"] = vcc.width, vcc.height
            rate = video.average_rate or video.guessed_rate
            info["fps"] = float(rate) if rate else None
            if vcc.name == "h264":
                sps = h264.sps_header(bytes(vcc.extradata or b""))
        names = {s.index: kind for kind, s in (("video", video), ("audio", audio)) if s}
        sizes = dict.fromkeys(names.values(), 0)
        span: dict[str, list[float]] = {}
        tail = dict.fromkeys(names.values(), 0.0)  # duration of each stream's last packet
        keyframes: list[float] = []
        start: float | None = None
        for packet in container.demux([s for s in (video, audio) if s is not None]):
            if packet.pts is None or packet.size == 0 or packet.time_base is None:
                continue
            kind = names[packet.stream.index]
            t = float(packet.pts * packet.time_base)
            start = t if start is None else start
            if t - start > MAX_SCAN_SECONDS:
                break
            first_last = span.setdefault(kind, [t, t])
            first_last[0], first_last[1] = min(first_last[0], t), max(first_last[1], t)
            sizes[kind] += packet.size
            if packet.duration:
                tail[kind] = float(packet.duration * packet.time_base)
            if kind == "video":
                if packet.is_keyframe:
                    keyframes.append(t)
                if sps is None and info["video_codec"] == "h264":
                    sps = h264.sps_header(bytes(packet))
    fps = info.get("fps")
    if "video" in names.values() and not tail["video"] and fps:
        tail["video"] = 1 / fps
    for kind, (first, last) in span.items():
        duration = last - first + tail[kind]
        info[f"{kind}_duration_s"] = duration
        info[f"{kind}_bitrate_bps"] = sizes[kind] * 8 / duration if duration > 0 else None
    if "video" in span:
        keyframes.sort()
        end = span["video"][1] + tail["video"]
        gaps = [b - a for a, b in itertools.pairwise(keyframes)]
        if keyframes:
            gaps.append(end - keyframes[-1])  # the last fragment runs to the end
        info["keyframes_s"] = keyframes
        info["keyframe_interval_s"] = max(gaps) if gaps else None
        info["scanned_s"] = end - span["video"][0]
    if sps is not None:
        info["profile_idc"], info["constraints"], info["level_idc"] = sps
    return info


def _has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def _probe_pattern(track: TestPatternTrack, tone: ToneTrack | None) -> dict[str, Any]:
    """Encode TRACK_CHECK_SECONDS of the pattern as a kvsnb master does
    (``RealtimeH264Encoder``'s settings)."""
    frames = max(1, round(TRACK_CHECK_SECONDS * track.fps))
    cc = webrtc_h264_encoder(track.width, track.height)
    size = 0
    sps: tuple[int, int, int] | None = None
    for i in range(frames + 1):
        frame = track.render(i, 0) if i < frames else None
        if frame is not None:
            frame.pts, frame.time_base = i, cc.time_base
        for packet in cc.encode(frame):
            size += packet.size
            sps = sps or h264.sps_header(bytes(packet))
    info: dict[str, Any] = {
        "video_codec": "h264",
        "width": track.width,
        "height": track.height,
        "fps": track.fps,
        "video_duration_s": frames / track.fps,
        "video_bitrate_bps": size * 8 / (frames / track.fps),
        "keyframe_interval_s": X264_DEFAULT_KEYINT / track.fps,
        "keyframe_note": (
            f"x264 default: at most every {X264_DEFAULT_KEYINT} frames (aiortc sets no GOP); "
            "scene cuts and keyframe requests (PLI) add more"
        ),
        "encoded": True,
        "audio_codec": None,
    }
    if sps is not None:
        info["profile_idc"], info["constraints"], info["level_idc"] = sps
    if tone is not None:
        info["audio_codec"] = "opus"
        info["sample_rate"] = tone.sample_rate
        info["channels"] = tone.channels
        info["audio_decodable"] = True
    return info


def _describe(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, TestPatternTrack):
        return f"TestPatternTrack {source.width}x{source.height}@{source.fps:g}"
    return type(source).__name__


def check_tracks(
    source: str | os.PathLike[str] | TestPatternTrack | tuple[TestPatternTrack, ToneTrack] | Any,
    *,
    require_audio: bool = True,
    max_bitrate_bps: int = DEFAULT_MAX_BITRATE_BPS,
) -> TrackReport:
    """Apply the ingestion rules (see the module docstring) to ``source`` and report.

    ``source`` is a media file path, a ``FileSource`` (its file), a ``TestPatternTrack``
    (encoded for ``TRACK_CHECK_SECONDS`` as a kvsnb master encodes it, at the bitrate kvsnb
    masters cap video to; it has no audio), a ``(TestPatternTrack, ToneTrack)`` pair,
    ``"testpattern"`` (that pair) or a ``kvsnb.client.ingest.Source``. Files are demuxed, not
    decoded, for at most ``MAX_SCAN_SECONDS``. Raises ``FileNotFoundError`` for a missing
    file, ``TypeError`` for another kind of source and ``av.FFmpegError`` for a file FFmpeg
    cannot open.
    """
    if isinstance(source, str) and source == TEST_PATTERN:
        source = (TestPatternTrack(), ToneTrack())
    elif not isinstance(source, str | os.PathLike | tuple) and hasattr(source, "pattern"):
        # a kvsnb.client.ingest.Source: its stamped pattern (with its audio), or its file
        pattern, file = source.pattern, getattr(source, "file", None)
        audio = getattr(source, "audio", None)
        if pattern is not None:
            audio = audio if isinstance(audio, ToneTrack) else None
            source = (pattern, audio) if audio is not None else pattern
        elif file is not None:
            source = file
    label = _describe(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no media file at {path}")
        info = _probe_file(path)
    elif isinstance(source, TestPatternTrack):
        info = _probe_pattern(source, None)
    elif (
        isinstance(source, tuple)
        and len(source) == 2
        and isinstance(source[0], TestPatternTrack)
        and isinstance(source[1], ToneTrack)
    ):
        info = _probe_pattern(source[0], source[1])
        label = f"{_describe(source[0])} + ToneTrack"
    else:
        raise TypeError(
            "check_tracks takes a file path, a FileSource, a TestPatternTrack or a "
            f"(TestPatternTrack, ToneTrack) pair, not {type(source).__name__}"
        )
    rules = _video_rules(info, max_bitrate_bps) + _audio_rules(info, require_audio)
    report = TrackReport(label, rules, info)
    logger.debug("%r", report)
    return report


def _kbps(bps: float | None) -> str:
    return "unknown" if bps is None else f"{bps / 1000:.0f} kbps"


def _video_rules(info: dict[str, Any], max_bitrate_bps: int) -> list[RuleResult]:
    codec = info.get("video_codec")
    encoded = bool(info.get("encoded"))
    if codec is None:
        return [
            RuleResult(
                "video_present",
                False,
                "no video track",
                "one H.264 video track",
                "KVS storage sessions ingest video: a source without video cannot be stored",
            )
        ]
    rules = [RuleResult("video_present", True, codec, "one H.264 video track", "video found")]
    if codec == "h264":
        rules.append(RuleResult("video_codec", True, "H.264", "H.264", "the codec KVS ingests"))
    else:
        rules.append(
            RuleResult(
                "video_codec",
                False,
                codec,
                "H.264",
                f"KVS storage sessions accept H.264 video only, not {codec}; FileSource "
                "decodes it and aiortc re-encodes it as H.264 (CPU cost, generation loss)",
            )
        )
    profile_idc = info.get("profile_idc")
    if codec == "h264":
        rules.append(_profile_rule(profile_idc, info.get("constraints", 0)))
        level = info.get("level_idc")
        rules.append(
            RuleResult(
                "h264_level",
                level is not None and level <= MAX_LEVEL_IDC,
                "unknown" if level is None else f"{level / 10:g}",
                f"<= {MAX_LEVEL_IDC / 10:g}",
                "within the level the offer declares"
                if level is not None and level <= MAX_LEVEL_IDC
                else f"the offer's profile-level-id {OFFER_PROFILE_LEVEL_ID} declares level "
                f"{MAX_LEVEL_IDC / 10:g} (inferred, docs/wire.md); a higher level may be refused "
                "(aiortc itself labels every stream 3.1 whatever its size)",
                required=False,
            )
        )
    how = (
        "aiortc encodes it and packetizes"
        if encoded or codec != "h264"
        else "aiortc packetizes the file's H.264 (converted to Annex B)"
    )
    rules.append(
        RuleResult(
            "packetization",
            True,
            "mode 1",
            f"packetization-mode={OFFER_PACKETIZATION_MODE}",
            f"{how} in non-interleaved mode 1 (single NAL units, STAP-A, FU-A), as the "
            "storage session's offer asks",
        )
    )
    width, height = info.get("width") or 0, info.get("height") or 0
    fits = max(width, height) <= MAX_WIDTH and min(width, height) <= MAX_HEIGHT
    rules.append(
        RuleResult(
            "resolution",
            fits and width > 0,
            f"{width}x{height}",
            f"<= {MAX_WIDTH}x{MAX_HEIGHT}",
            "within 1080p"
            if fits
            else "above 1080p: KVS WebRTC ingestion is described up to 1080p (advisory: "
            "the storage session's limit is not documented)",
            required=False,
        )
    )
    fps = info.get("fps")
    rules.append(
        RuleResult(
            "frame_rate",
            fps is not None and 0 < fps <= MAX_FRAME_RATE,
            "unknown" if fps is None else f"{fps:.3g} fps",
            f"<= {MAX_FRAME_RATE:g} fps",
            "fine"
            if fps is not None and 0 < fps <= MAX_FRAME_RATE
            else "aiortc's H.264 encoder is set up for at most 30 fps; higher rates cost "
            "bitrate within the 1 Mbps quota (advisory)",
            required=False,
        )
    )
    rules.append(_keyframe_rule(info))
    video_bps = info.get("video_bitrate_bps")
    audio_bps = AIORTC_OPUS_BITRATE_BPS if info.get("audio_codec") else 0
    total = None if video_bps is None else video_bps + audio_bps
    source_of_video = "the target kvsnb masters cap video to" if encoded else "the file's video"
    rules.append(
        RuleResult(
            "bitrate",
            total is not None and total <= max_bitrate_bps,
            f"{_kbps(total)} ({_kbps(video_bps)} video + {_kbps(audio_bps)} Opus)",
            f"<= {_kbps(max_bitrate_bps)}",
            (f"within the ingest quota; video is {source_of_video}")
            if total is not None and total <= max_bitrate_bps
            else f"above the {_kbps(max_bitrate_bps)} ingest quota (docs/wire.md quotas); video "
            f"is {source_of_video}"
            + (", audio is aiortc's Opus at 96 kbps" if audio_bps else "")
            + ("" if encoded else "; FileSource decodes it and aiortc re-encodes it"),
        )
    )
    return rules


def _profile_rule(profile_idc: int | None, constraints: int) -> RuleResult:
    expected = f"Constrained Baseline ({OFFER_PROFILE_LEVEL_ID})"
    if profile_idc is None:
        return RuleResult("h264_profile", False, "unknown", expected, "no SPS found in the stream")
    name = h264.profile_name(profile_idc, constraints)
    value = f"{name} ({profile_idc:02x}{constraints:02x}..)"
    if profile_idc == 66 or constraints & h264.CONSTRAINT_SET1:
        reason = (
            "matches the offer"
            if constraints & h264.CONSTRAINT_SET1
            else "Baseline without constraint_set1: fits only if it uses no FMO, ASO or "
            "redundant slices (x264 and most encoders never do)"
        )
        return RuleResult("h264_profile", True, value, expected, reason)
    return RuleResult(
        "h264_profile",
        False,
        value,
        expected,
        f"{name} profile is not Constrained Baseline: the storage session offers only "
        f"profile-level-id {OFFER_PROFILE_LEVEL_ID} (inferred, docs/wire.md), so {name} H.264 "
        "sent as it is may be refused or fail to decode; FileSource decodes it and aiortc "
        "re-encodes it as Constrained Baseline",
    )


def _keyframe_rule(info: dict[str, Any]) -> RuleResult:
    interval = info.get("keyframe_interval_s")
    expected = f"<= {MAX_KEYFRAME_INTERVAL_S:g} s"
    if interval is None:
        return RuleResult(
            "keyframe_interval", False, "no keyframe", expected, "no keyframe found in the stream"
        )
    value = f"{interval:.2f} s"
    note = info.get("keyframe_note")
    keyframes = info.get("keyframes_s")
    if keyframes is not None and len(keyframes) == 1:
        value = f">= {interval:.2f} s (one keyframe)"
    if interval > MAX_KEYFRAME_INTERVAL_S:
        return RuleResult(
            "keyframe_interval",
            False,
            value,
            expected,
            f"keyframes more than {MAX_KEYFRAME_INTERVAL_S:g} s apart: stored fragments start "
            "at keyframes and last 1-20 s (docs/wire.md); a passed-through file cannot add "
            "keyframes when the storage peer asks (PLI)",
        )
    if interval > LONG_KEYFRAME_INTERVAL_S:
        reason = (
            f"above {LONG_KEYFRAME_INTERVAL_S:g} s: fragments get long, and HLS and GetImages "
            "see the media only once its fragment is stored"
        )
    else:
        reason = "fragments are keyframe-aligned; this interval makes valid fragments"
    if note:
        reason = f"{note}; {reason}"
    return RuleResult("keyframe_interval", True, value, expected, reason)


def _audio_rules(info: dict[str, Any], require_audio: bool) -> list[RuleResult]:
    codec = info.get("audio_codec")
    if codec is None:
        if require_audio:
            return [
                RuleResult(
                    "audio_present",
                    False,
                    "no audio track",
                    "one audio track",
                    "the JoinStorageSession API reference requires both a video (H.264) and "
                    "an audio (Opus) track (docs/wire.md); pass require_audio=False for a "
                    "video-only master, which the service accepts since early 2026",
                )
            ]
        return [
            RuleResult(
                "audio_present",
                True,
                "no audio track",
                "none required (require_audio=False)",
                "video-only ingestion: allowed by the service since early 2026 (the JS SDK "
                "switch), although the API reference asks for both tracks",
            )
        ]
    rules = [RuleResult("audio_present", True, codec, "one audio track", "audio found")]
    if codec == "opus":
        reason = "Opus, what the storage session takes (stored as AAC)"
        if not info.get("encoded"):
            reason += "; FileSource decodes it and aiortc re-encodes it as Opus"
        rules.append(RuleResult("audio_codec", True, "Opus", "Opus", reason))
    elif info.get("audio_decodable"):
        rules.append(
            RuleResult(
                "audio_codec",
                True,
                codec,
                "Opus",
                f"{codec} is not Opus: FileSource decodes it and aiortc sends Opus (the only "
                "audio codec of the offer; KVS stores AAC). Audio is never passed through",
            )
        )
    else:
        rules.append(
            RuleResult(
                "audio_codec",
                False,
                codec,
                "Opus",
                f"no {codec} decoder in this FFmpeg build, so it cannot be transcoded to Opus",
            )
        )
    rate = info.get("sample_rate")
    rules.append(
        RuleResult(
            "audio_sample_rate",
            rate == webrtc.OPUS_SAMPLE_RATE,
            f"{rate} Hz",
            f"{webrtc.OPUS_SAMPLE_RATE} Hz",
            "Opus's native rate"
            if rate == webrtc.OPUS_SAMPLE_RATE
            else f"resampled to {webrtc.OPUS_SAMPLE_RATE} Hz by the sender (advisory)",
            required=False,
        )
    )
    return rules
