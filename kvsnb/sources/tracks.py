"""Media sources as aiortc tracks: stamped test pattern, tone with time marks, file, camera.

- ``TestPatternTrack`` produces a moving, colourful YUV 4:2:0 picture whose top band carries a
  ``Stamp`` (see ``kvsnb.sources.stamp``): the wall-clock capture time in ms and the frame
  index. It is paced in real time and logs every frame it hands to the sender.
- ``ToneTrack`` produces a sine tone with a *time mark* at every whole second of its capture
  clock: for ``MARK_DURATION_S`` the tone switches (phase-continuously) to
  ``MARK_FREQUENCY_HZ``. ``find_tone_marks`` finds the mark onsets in decoded audio, so the
  stored audio can be lined up with wall-clock time like the stamped video.
- ``FileSource`` plays a media file. Its video is passed through without re-encoding when it
  already fits KVS ingestion (``kvsnb.sources.check``), otherwise decoded (aiortc re-encodes
  it). Its audio is always decoded (aiortc encodes Opus).
- ``CameraSource`` opens a V4L2 camera through aiortc's ``MediaPlayer``.
- ``make_test_file`` writes a real media file (stamped pattern + tone) with PyAV.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import av
import av.bitstream
import numpy as np
import numpy.typing as npt
import pandas as pd
from aiortc.codecs.h264 import H264Encoder
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from kvsnb.errors import KvsnbError
from kvsnb.sources.stamp import Stamp, draw_stamp_yuv420p
from kvsnb.wire import webrtc

logger = logging.getLogger(__name__)

DEFAULT_WIDTH = 640
DEFAULT_HEIGHT = 480
DEFAULT_FPS = 30.0
TEST_PATTERN = "testpattern"  # the name of the stamped test pattern as a source
# kvsnb masters cap the H.264 encoder here, so that video plus aiortc's 96 kbps Opus stays
# under the 1 Mbps ingest quota of storage sessions (docs/wire.md, "Quotas").
MASTER_VIDEO_BITRATE_BPS = 850_000
REALTIME_PRESET = "veryfast"  # x264's preset for a master's live H.264 (aiortc uses "medium")
BITRATE_SLACK = 0.1  # a new target beyond this fraction of the encoder's makes a new encoder
VIDEO_CLOCK_RATE = 90_000  # RTP clock of H.264 (RFC 6184)
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
INDEX_MODULUS = 1 << 24  # frame indexes wrap here (the stamp carries 24 bits)

AUDIO_SAMPLE_RATE = webrtc.OPUS_SAMPLE_RATE
AUDIO_PTIME_S = 0.020  # 20 ms frames, like aiortc's AudioStreamTrack
TONE_FREQUENCY_HZ = 440.0
TONE_AMPLITUDE = 0.5  # of full scale
MARK_FREQUENCY_HZ = 2_000.0
MARK_DURATION_S = 0.050
MARK_WINDOW_S = 0.004  # moving-average window of the mark detector (nulls every 250 Hz)

DEFAULT_CAMERA = "/dev/video0"
V4L2_MAJOR = 81  # Linux character-device major number of Video4Linux
ANNEXB_FILTER = "h264_mp4toannexb"
SINE_LUT = (128 + 100 * np.sin(np.arange(256) * (2 * np.pi / 256))).astype(np.uint8)
TEST_FILE_AUDIO_CODECS = {".mp4": "aac", ".m4v": "aac", ".mov": "aac"}  # else Opus
AUDIO_FRAME_SIZES = {"aac": 1024, "libopus": 960, "opus": 960}


class FrameRecord(NamedTuple):
    """One video frame handed to the sender."""

    frame_index: int
    capture_ms: int
    pts: int
    monotonic_s: float


class AudioRecord(NamedTuple):
    """One audio frame handed to the sender; ``capture_ms`` is that of its first sample."""

    pts: int
    capture_ms: float
    samples: int
    marks: int
    monotonic_s: float


class CameraNotFoundError(KvsnbError, FileNotFoundError):
    """No camera device at the given path."""


# -- test pattern --------------------------------------------------------------------------


class _Pattern:
    """Moving colour pattern for one frame size, rendered straight into YUV 4:2:0 planes."""

    def __init__(self, width: int, height: int) -> None:
        if width < 64 or height < 48 or width % 2 or height % 2:
            raise ValueError(
                f"test pattern needs an even size of at least 64x48, got {width}x{height}"
            )
        self.width = width
        self.height = height
        x = np.arange(width)
        y = np.arange(height)
        self._x_phase = (x * 512 // width).astype(np.int64)
        self._y_phase = (y * 384 // height).astype(np.int64)
        self._diagonal = ((x[None, :] + y[:, None]) * 768 // (width + height)).astype(np.uint8)
        cx = np.arange(width // 2)
        cy = np.arange(height // 2)
        self._cx_phase = (cx * 256 // (width // 2)).astype(np.int64)
        self._cy_phase = (cy * 256 // (height // 2)).astype(np.int64)
        self._box = max(8, (min(width, height) // 6) & ~1)

    def render(self, index: int, stamp: Stamp) -> av.VideoFrame:
        """The frame ``index`` of the pattern with ``stamp`` in its band, as yuv420p."""
        w, h = self.width, self.height
        t = index
        buffer = np.empty(w * h * 3 // 2, dtype=np.uint8)
        y = buffer[: w * h].reshape(h, w)
        u = buffer[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
        v = buffer[w * h * 5 // 4 :].reshape(h // 2, w // 2)
        across = SINE_LUT[(self._x_phase + 2 * t) & 255] // 3
        down = SINE_LUT[(self._y_phase - t) & 255] // 3
        np.add(across[None, :], down[:, None], out=y)
        y += SINE_LUT[(self._diagonal + np.uint8((3 * t) & 255)) & 255] // 3
        u[:] = SINE_LUT[(self._cx_phase + 2 * t) & 255][None, :]
        v[:] = SINE_LUT[(self._cy_phase - 2 * t + 64) & 255][:, None]
        # a bright box bouncing around the picture below the band
        box = self._box
        top_min = h // 8 + 2
        span_x, span_y = w - box, h - box - top_min
        bx = _bounce(4 * t, span_x) & ~1
        by = (top_min + _bounce(3 * t, span_y)) & ~1
        y[by : by + box, bx : bx + box] = 210
        u[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 60
        v[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 200
        draw_stamp_yuv420p(y, u, v, stamp)
        return av.VideoFrame.from_ndarray(buffer.reshape(h * 3 // 2, w), format="yuv420p")


def _bounce(position: int, span: int) -> int:
    if span <= 0:
        return 0
    phase = position % (2 * span)
    return phase if phase < span else 2 * span - phase


class TestPatternTrack(VideoStreamTrack):
    """A video track of a moving test pattern carrying a ``Stamp`` in every frame.

    Each frame's capture time is the wall clock (``clock()``, ``time.time`` by default) in
    epoch ms when ``recv`` produces it; its index counts from ``start_index`` (mod 2**24).
    Frames carry ``pts`` on the 90 kHz clock (time base 1/90000) taken from that same
    capture reading (capture ms since the first frame × 90, kept increasing), so the RTP
    timestamps and thus the producer timestamps a storage session derives from them follow
    the capture times exactly, not an ideal ``n / fps`` schedule the pacing lags behind under
    load. Frames are paced in real time at ``fps`` from the first ``recv``. Every frame is
    logged in ``sent`` (see ``frames_df``) and passed to ``on_frame``. After ``max_frames``
    frames the track ends.
    """

    __test__ = False
    kind = "video"

    def __init__(
        self,
        width: int = DEFAULT_WIDTH,
        height: int = DEFAULT_HEIGHT,
        fps: float = DEFAULT_FPS,
        *,
        max_frames: int | None = None,
        on_frame: Callable[[Stamp], None] | None = None,
        start_index: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self._pattern = _Pattern(width, height)
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.max_frames = max_frames
        self.on_frame = on_frame
        self._clock = clock
        self._start_index = start_index
        self._count = 0
        self._t0: float | None = None
        self._capture0_ms: int | None = None
        self.sent: list[FrameRecord] = []

    def render(self, index: int, capture_ms: int) -> av.VideoFrame:
        """Render frame ``index`` stamped with ``capture_ms``, without pacing or logging.

        The frame's pts is that of its position ``index`` on the 90 kHz clock.
        """
        frame = self._pattern.render(index, Stamp(capture_ms, index % INDEX_MODULUS))
        frame.pts = round(index * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        return frame

    async def recv(self) -> av.VideoFrame:
        """Wait until the next frame is due, then return it stamped with the current time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self.max_frames is not None and self._count >= self.max_frames:
            self.stop()
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            wait = self._t0 + self._count / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        n = self._count
        index = (self._start_index + n) % INDEX_MODULUS
        capture_ms = int(self._clock() * 1000)
        stamp = Stamp(capture_ms, index)
        frame = self._pattern.render(index, stamp)
        if self._capture0_ms is None:
            self._capture0_ms = capture_ms
        pts = (capture_ms - self._capture0_ms) * VIDEO_CLOCK_RATE // 1000
        frame.pts = pts if not self.sent or pts > self.sent[-1].pts else self.sent[-1].pts + 1
        frame.time_base = VIDEO_TIME_BASE
        self._count += 1
        self.sent.append(FrameRecord(index, capture_ms, frame.pts, time.monotonic()))
        if self.on_frame is not None:
            try:
                self.on_frame(stamp)
            except Exception:
                logger.exception("TestPatternTrack on_frame callback failed for %s", stamp)
        return frame

    def latest_frame(self, fmt: str = "rgb24") -> np.ndarray | None:
        """The last frame sent, as a numpy array (rendered again: the pattern is a function
        of the index and the stamp), or ``None`` before the first."""
        if not self.sent:
            return None
        last = self.sent[-1]
        return self.render(last.frame_index, last.capture_ms).to_ndarray(format=fmt)

    def frames_df(self) -> pd.DataFrame:
        """The frames sent so far: frame_index, capture_ms, pts, monotonic_s, capture_time."""
        df = pd.DataFrame(self.sent, columns=list(FrameRecord._fields))
        df["capture_time"] = pd.to_datetime(df["capture_ms"], unit="ms", utc=True)
        return df


# -- tone ----------------------------------------------------------------------------------


class ToneGenerator:
    """Phase-continuous sine tone with a mark at each whole second of a capture clock.

    ``start_time`` is the capture time (epoch seconds) of sample 0; sample ``n`` is captured
    at ``start_time + n / sample_rate``. While the fractional part of that time is below
    ``mark_duration`` the tone plays ``mark_frequency`` instead of ``frequency``.
    """

    def __init__(
        self,
        start_time: float,
        *,
        sample_rate: int = AUDIO_SAMPLE_RATE,
        frequency: float = TONE_FREQUENCY_HZ,
        mark_frequency: float = MARK_FREQUENCY_HZ,
        mark_duration: float = MARK_DURATION_S,
        amplitude: float = TONE_AMPLITUDE,
    ) -> None:
        if not 0 < mark_duration < 1:
            raise ValueError(f"mark_duration must be within (0, 1) s, got {mark_duration}")
        if not 0 < amplitude <= 1:
            raise ValueError(f"amplitude must be within (0, 1], got {amplitude}")
        self.start_second = math.floor(start_time)
        self.start_fraction = start_time - self.start_second
        self.sample_rate = sample_rate
        self.frequency = frequency
        self.mark_frequency = mark_frequency
        self.mark_duration = mark_duration
        self.amplitude = amplitude
        self.position = 0
        self._phase = 0.0

    def next(self, count: int) -> tuple[npt.NDArray[np.float64], int]:
        """The next ``count`` samples in [-1, 1] and how many marks start among them."""
        n = self.position + np.arange(count)
        in_second = (self.start_fraction + n / self.sample_rate) % 1.0
        marked = in_second < self.mark_duration
        step = np.where(marked, self.mark_frequency, self.frequency) * (
            2 * np.pi / self.sample_rate
        )
        phase = self._phase + np.cumsum(step) - step
        self._phase = float((phase[-1] + step[-1]) % (2 * np.pi)) if count else self._phase
        previous = (self.start_fraction + (n - 1) / self.sample_rate) % 1.0 < self.mark_duration
        starts = int(np.count_nonzero(marked & ~previous))
        self.position += count
        return self.amplitude * np.sin(phase), starts


class ToneTrack(MediaStreamTrack):
    """An audio track of a sine tone with a time mark at every whole second of capture time.

    s16 frames of ``AUDIO_PTIME_S`` (20 ms), mono or stereo, paced in real time. Sample 0 is
    captured at ``clock()`` when the first frame is produced; the capture clock then advances
    with the samples. At each whole epoch second the tone switches to ``mark_frequency`` for
    ``mark_duration`` seconds: ``find_tone_marks`` finds those onsets in decoded audio.
    Frames are logged in ``sent`` (see ``frames_df``); after ``max_frames`` the track ends.
    """

    kind = "audio"

    def __init__(
        self,
        frequency: float = TONE_FREQUENCY_HZ,
        sample_rate: int = AUDIO_SAMPLE_RATE,
        channels: Literal[1, 2] = 1,
        *,
        mark_frequency: float = MARK_FREQUENCY_HZ,
        mark_duration: float = MARK_DURATION_S,
        amplitude: float = TONE_AMPLITUDE,
        max_frames: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if sample_rate * AUDIO_PTIME_S != int(sample_rate * AUDIO_PTIME_S):
            raise ValueError(f"sample_rate {sample_rate} does not divide into 20 ms frames")
        self.frequency = frequency
        self.sample_rate = sample_rate
        self.channels = channels
        self.mark_frequency = mark_frequency
        self.mark_duration = mark_duration
        self.amplitude = amplitude
        self.max_frames = max_frames
        self.samples_per_frame = int(sample_rate * AUDIO_PTIME_S)
        self._clock = clock
        self._generator: ToneGenerator | None = None
        self._t0 = 0.0
        self.start_time: float | None = None
        self.sent: list[AudioRecord] = []

    async def recv(self) -> av.AudioFrame:
        """Wait until the next 20 ms frame is due, then return it."""
        if self.readyState != "live":
            raise MediaStreamError
        if self.max_frames is not None and len(self.sent) >= self.max_frames:
            self.stop()
            raise MediaStreamError
        if self._generator is None:
            self._t0 = time.monotonic()
            self.start_time = self._clock()
            self._generator = ToneGenerator(
                self.start_time,
                sample_rate=self.sample_rate,
                frequency=self.frequency,
                mark_frequency=self.mark_frequency,
                mark_duration=self.mark_duration,
                amplitude=self.amplitude,
            )
        else:
            wait = self._t0 + self._generator.position / self.sample_rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        generator = self._generator
        pts = generator.position
        samples, marks = generator.next(self.samples_per_frame)
        pcm = np.round(samples * 32767).astype(np.int16)
        if self.channels == 2:
            pcm = np.repeat(pcm, 2)
        frame = av.AudioFrame.from_ndarray(
            pcm.reshape(1, -1), format="s16", layout="mono" if self.channels == 1 else "stereo"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        assert self.start_time is not None
        capture_ms = (self.start_time + pts / self.sample_rate) * 1000
        self.sent.append(
            AudioRecord(pts, capture_ms, self.samples_per_frame, marks, time.monotonic())
        )
        return frame

    def frames_df(self) -> pd.DataFrame:
        """The frames sent so far: pts, capture_ms (first sample), samples, marks (onsets
        within the frame) and monotonic_s."""
        return pd.DataFrame(self.sent, columns=list(AudioRecord._fields))


def find_tone_marks(
    samples: npt.NDArray[Any],
    sample_rate: int,
    *,
    mark_frequency: float = MARK_FREQUENCY_HZ,
    mark_duration: float = MARK_DURATION_S,
) -> list[float]:
    """Onsets, in seconds from the first sample, of the tone marks in decoded audio.

    ``samples`` is mono (n,) or planar (channels, n), integer or float. The detector
    demodulates at ``mark_frequency``, smooths over ``MARK_WINDOW_S`` (a centred moving
    average) and reports where the envelope rises through half of the marks' level,
    interpolated between samples. A mark already under way at the first sample, or shorter
    than half of ``mark_duration``, is ignored. Returns ``[]`` for silence or no marks.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"expected (n,) or (channels, n) samples, got shape {x.shape}")
    window = max(1, round(sample_rate * MARK_WINDOW_S))
    if x.size < 2 * window:
        return []
    x = x - x.mean()
    rms = float(np.sqrt(np.mean(x * x)))
    if rms == 0.0:
        return []
    n = np.arange(x.size)
    baseband = x * np.exp(-2j * np.pi * mark_frequency / sample_rate * n)
    cumulative = np.concatenate([[0], np.cumsum(baseband)])
    half = window // 2
    lo = np.clip(n - half, 0, x.size)
    hi = np.clip(n - half + window, 0, x.size)
    envelope = np.abs(cumulative[hi] - cumulative[lo]) / window
    rough = envelope > 0.35 * rms  # a mark's envelope is ~0.71 rms when it replaces the tone
    if not rough.any():
        return []
    threshold = float(np.median(envelope[rough])) / 2
    above = envelope > threshold
    rises = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    falls = np.flatnonzero(~above[1:] & above[:-1]) + 1
    onsets: list[float] = []
    for rise in rises:
        later = falls[falls > rise]
        end = int(later[0]) if later.size else x.size
        if end - rise < mark_duration * sample_rate / 2:
            continue
        e0, e1 = envelope[rise - 1], envelope[rise]
        fraction = (threshold - e0) / (e1 - e0) if e1 != e0 else 0.0
        onsets.append(float((rise - 1 + fraction) / sample_rate))
    return onsets


# -- camera --------------------------------------------------------------------------------


class CameraSource:
    """A V4L2 camera (Linux) as a video track, through aiortc's ``MediaPlayer``.

    Raises ``CameraNotFoundError`` when ``device`` is not a V4L2 device. The camera
    delivers raw frames; aiortc encodes them.
    """

    def __init__(
        self,
        device: str = DEFAULT_CAMERA,
        *,
        width: int = DEFAULT_WIDTH,
        height: int = DEFAULT_HEIGHT,
        fps: int = int(DEFAULT_FPS),
    ) -> None:
        if not self.available(device):
            raise CameraNotFoundError(f"no V4L2 camera at {device}")
        self.device = device
        self._player = MediaPlayer(
            device,
            format="v4l2",
            options={"video_size": f"{width}x{height}", "framerate": str(fps)},
        )
        self.video: MediaStreamTrack | None = self._player.video
        self.audio: MediaStreamTrack | None = None

    @staticmethod
    def available(device: str = DEFAULT_CAMERA) -> bool:
        """Whether ``device`` is a Video4Linux character device (major number 81)."""
        try:
            st = os.stat(device)
        except OSError:
            return False
        return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == V4L2_MAJOR

    def stop(self) -> None:
        """Stop the camera track."""
        if self.video is not None:
            self.video.stop()


# -- test files ----------------------------------------------------------------------------


def webrtc_h264_encoder(
    width: int,
    height: int,
    bitrate: int = MASTER_VIDEO_BITRATE_BPS,
    *,
    fps: int = 30,
    gop: int | None = None,
) -> av.VideoCodecContext:
    """A libx264 encoder set up as a kvsnb master's (``RealtimeH264Encoder``): aiortc's
    ``H264Encoder`` settings (Baseline, level 3.1, zerolatency, time base 1/fps) with x264's
    ``REALTIME_PRESET``; ``gop`` fixes the keyframe interval (aiortc sets none)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.bit_rate = bitrate
    encoder.framerate = fractions.Fraction(fps, 1)
    encoder.time_base = fractions.Fraction(1, fps)
    encoder.options = {"level": "31", "tune": "zerolatency", "preset": REALTIME_PRESET}
    encoder.profile = "Baseline"
    if gop is not None:
        encoder.gop_size = gop
    return encoder


class RealtimeH264Encoder(H264Encoder):
    """aiortc's ``H264Encoder`` (its packetizing, bitrate and keyframe handling) on a libx264
    set up by ``webrtc_h264_encoder``: x264's ``REALTIME_PRESET`` instead of its default
    ("medium"), as a real-time encoder must be. At 640x480 a frame takes ~4 ms instead of
    ~9.5 (30 fps: 0.12 cores instead of 0.28) at the same bitrate. A kvsnb master sends its
    H.264 with it."""

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
        codec = self.codec
        rate = (codec.bit_rate or 0) if codec is not None else 0
        if (
            codec is None
            or frame.width != codec.width
            or frame.height != codec.height
            or not rate
            or abs(self.target_bitrate - rate) / rate > BITRATE_SLACK
        ):  # as aiortc's own: a new encoder for a new size, or a target moved by > 10 %
            self.buffer_data = b""
            self.buffer_pts = None
            self.codec = webrtc_h264_encoder(frame.width, frame.height, self.target_bitrate)
        return super()._encode_frame(frame, force_keyframe)


def make_test_file(
    path: str | os.PathLike[str],
    seconds: float = 2.0,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    fps: int = int(DEFAULT_FPS),
    codec: Literal["h264", "vp8"] = "h264",
    profile: Literal["baseline", "main", "high"] = "baseline",
    audio: bool = True,
    bitrate: int = 500_000,
    gop: int = 30,
    *,
    audio_codec: str | None = None,
    start_ms: int | None = None,
) -> Path:
    """Write a real media file: the stamped test pattern and, if ``audio``, the marked tone.

    The container follows the suffix (``.mkv``, ``.mp4``, ``.webm``, ...). Video is libx264
    with the given x264 ``profile`` (preset veryfast, so "main"/"high" really use CABAC and
    B-frames) or libvpx for ``codec="vp8"``, at ``bitrate`` bits/s with a keyframe every
    ``gop`` frames. Audio is mono 48 kHz, AAC for MP4/MOV and Opus otherwise unless
    ``audio_codec`` names a PyAV encoder. Frame ``i`` is stamped with index ``i`` and
    capture time ``start_ms + i * 1000 / fps`` (``start_ms`` defaults to now); the tone's
    marks fall on the whole seconds of the same clock. Returns the path.
    """
    out = Path(path)
    start_ms = int(time.time() * 1000) if start_ms is None else start_ms
    frames = round(seconds * fps)
    if codec == "h264":
        encoder = "libx264"
        options = {
            "profile": profile,
            "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
    elif codec == "vp8":
        encoder = "libvpx"
        options = {"deadline": "realtime", "cpu-used": "8", "kf-min-dist": str(gop)}
    else:
        raise ValueError(f"codec must be 'h264' or 'vp8', got {codec!r}")
    pattern = _Pattern(width, height)
    with av.open(str(out), mode="w") as container:
        video = container.add_stream(encoder, rate=fps)
        assert isinstance(video, av.VideoStream)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.bit_rate = bitrate
        video.codec_context.gop_size = gop
        video.codec_context.options = options
        audio_stream: av.AudioStream | None = None
        tone = None
        resampler = None
        if audio:
            name = audio_codec or TEST_FILE_AUDIO_CODECS.get(out.suffix.lower(), "libopus")
            added = container.add_stream(name, rate=AUDIO_SAMPLE_RATE)
            if not isinstance(added, av.AudioStream):
                raise ValueError(f"{name} is not an audio encoder")
            audio_stream = added
            audio_stream.layout = "mono"
            formats = audio_stream.codec_context.codec.audio_formats
            tone = ToneGenerator(start_ms / 1000)
            resampler = av.AudioResampler(
                format=formats[0].name if formats else "s16",
                layout="mono",
                rate=AUDIO_SAMPLE_RATE,
                frame_size=AUDIO_FRAME_SIZES.get(name, 1024),
            )
        chunk = int(AUDIO_SAMPLE_RATE * AUDIO_PTIME_S)
        for i in range(frames):
            frame = pattern.render(i, Stamp(start_ms + round(i * 1000 / fps), i % INDEX_MODULUS))
            frame.pts = i
            frame.time_base = fractions.Fraction(1, fps)
            container.mux(video.encode(frame))
            if audio_stream is not None and tone is not None and resampler is not None:
                due = round((i + 1) * AUDIO_SAMPLE_RATE / fps)
                while tone.position < due:
                    pts = tone.position
                    samples, _ = tone.next(chunk)
                    pcm = np.round(samples * 32767).astype(np.int16).reshape(1, -1)
                    raw = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
                    raw.sample_rate = AUDIO_SAMPLE_RATE
                    raw.pts = pts
                    raw.time_base = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
                    for converted in resampler.resample(raw):
                        container.mux(audio_stream.encode(converted))
        container.mux(video.encode(None))
        if audio_stream is not None and resampler is not None:
            for converted in resampler.resample(None):
                container.mux(audio_stream.encode(converted))
            container.mux(audio_stream.encode(None))
    logger.debug(
        "wrote %s: %d frames %dx%d@%d %s/%s", out, frames, width, height, fps, codec, profile
    )
    return out
