"""A media file as a KVS ingestion source: ``FileSource`` passes H.264 through when the file
already fits the ingestion rules (``kvsnb.sources.check``), otherwise decodes it so that aiortc
re-encodes it."""

from __future__ import annotations

import asyncio
import fractions
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import av
import av.bitstream
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from kvsnb.sources.check import VIDEO_RULES, check_tracks
from kvsnb.sources.tracks import (
    ANNEXB_FILTER,
    AUDIO_PTIME_S,
    AUDIO_SAMPLE_RATE,
    VIDEO_CLOCK_RATE,
    VIDEO_TIME_BASE,
)

logger = logging.getLogger(__name__)


class _FileTrack(MediaStreamTrack):
    """One stream of a media file, read in the event loop and paced by its timestamps.

    Video is either passed through as Annex B H.264 packets (aiortc packs them as they are)
    or decoded to frames; audio is decoded and resampled to s16 stereo 48 kHz 20 ms frames.
    Each track opens the file on its own. Demuxing or decoding one frame takes well under a
    millisecond, so it is done inline.
    """

    def __init__(
        self, path: Path, kind: Literal["audio", "video"], passthrough: bool, loop: bool
    ) -> None:
        super().__init__()
        self.kind = kind
        self._path = path
        self._passthrough = passthrough
        self._repeat = loop
        self._container: av.container.InputContainer | None = av.open(str(path))
        streams = (
            self._container.streams.video if kind == "video" else self._container.streams.audio
        )
        if not streams:
            self._container.close()
            raise ValueError(f"{path} has no {kind} stream")
        self._stream = streams[0]
        self._bsf: av.bitstream.BitStreamFilterContext | None = None
        if passthrough and self._stream.codec_context.name == "h264":
            self._bsf = av.bitstream.BitStreamFilterContext(ANNEXB_FILTER, self._stream)
        self._resampler = av.AudioResampler(
            format="s16",
            layout="stereo",
            rate=AUDIO_SAMPLE_RATE,
            frame_size=int(AUDIO_SAMPLE_RATE * AUDIO_PTIME_S),
        )
        self._items = self._generate()
        self._t0: float | None = None
        self._audio_samples = 0

    def _generate(self) -> Iterator[tuple[av.VideoFrame | av.AudioFrame | av.Packet, float]]:
        """Yield (item, seconds from the start of playback), looping if asked."""
        offset = 0.0  # seconds added to timestamps after each loop
        while self._container is not None:
            first: float | None = None
            last = 0.0
            for item, t in self._read_once(self._container):
                first = t if first is None else first
                last = max(last, t - first)
                yield item, offset + t - first
            if not self._repeat or first is None or self._container is None:
                return
            rate = self._stream.average_rate if self.kind == "video" else None
            offset += last + (float(1 / rate) if rate else AUDIO_PTIME_S)
            self._container.seek(0)

    def _read_once(
        self, container: av.container.InputContainer
    ) -> Iterator[tuple[av.VideoFrame | av.AudioFrame | av.Packet, float]]:
        if self.kind == "video" and self._passthrough:
            for packet in container.demux(self._stream):
                if packet.size == 0:
                    continue
                for out in self._bsf.filter(packet) if self._bsf is not None else [packet]:
                    if out.pts is not None and out.time_base is not None:
                        yield out, float(out.pts * out.time_base)
            return
        for frame in container.decode(self._stream):
            if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                continue
            if frame.pts is None or frame.time_base is None:
                continue
            t = float(frame.pts * frame.time_base)
            if isinstance(frame, av.AudioFrame):
                for resampled in self._resampler.resample(frame):
                    yield resampled, t
            else:
                yield frame, t

    async def recv(self) -> av.VideoFrame | av.AudioFrame | av.Packet:
        """Return the next frame (or passthrough packet) when it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        try:
            item, t = next(self._items)
        except StopIteration:
            self.stop()
            raise MediaStreamError from None
        if self._t0 is None:
            self._t0 = time.monotonic() - t
        else:
            wait = self._t0 + t - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if isinstance(item, av.AudioFrame):
            item.pts = self._audio_samples
            item.time_base = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
            self._audio_samples += item.samples
        else:
            item.pts = round(t * VIDEO_CLOCK_RATE)
            item.time_base = VIDEO_TIME_BASE
        return item

    def stop(self) -> None:
        """End the track and close its file."""
        super().stop()
        if self._container is not None:
            self._container.close()
            self._container = None


class FileSource:
    """Video and audio tracks read from a media file, paced in real time.

    ``passthrough=None`` decides from ``check_tracks``: the video is passed through (no
    decode, no re-encode: aiortc packs the file's H.264 as it is) when every required video
    rule passes, otherwise decoded so that aiortc encodes it as Constrained Baseline H.264.
    ``True`` forces passthrough (``ValueError`` unless the video is H.264), ``False`` forces
    decoding. Audio is always decoded; aiortc encodes it as Opus. A passed-through stream
    cannot honour keyframe requests (PLI): its keyframes are the file's.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, passthrough: bool | None = None, loop: bool = False
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no media file at {self.path}")
        self.report = check_tracks(self.path, require_audio=False)
        video_ok = all(r.passed for r in self.report.rules if r.rule in VIDEO_RULES and r.required)
        codec = self.report.info.get("video_codec")
        if passthrough is None:
            passthrough = video_ok
        elif passthrough and codec != "h264":
            raise ValueError(f"cannot pass {codec} video through: KVS ingests H.264 only")
        elif passthrough and not video_ok:
            logger.warning("passing %s through although it fails the video rules", self.path)
        self.video: MediaStreamTrack | None = None
        self.audio: MediaStreamTrack | None = None
        self.passthrough = bool(passthrough) and codec is not None
        if codec is not None:
            self.video = _FileTrack(self.path, "video", self.passthrough, loop)
        if self.report.info.get("audio_codec") is not None:
            self.audio = _FileTrack(self.path, "audio", False, loop)
        logger.info(
            "FileSource %s: video %s (%s), audio %s",
            self.path,
            codec,
            "passthrough" if self.passthrough else "decoded",
            self.report.info.get("audio_codec"),
        )

    def stop(self) -> None:
        """Stop both tracks and close the file."""
        for track in (self.video, self.audio):
            if track is not None:
                track.stop()

    def __fspath__(self) -> str:
        """The media file's path: ``check_tracks`` and other path readers accept a source."""
        return str(self.path)

    def __repr__(self) -> str:
        mode = "passthrough" if self.passthrough else "decode"
        return f"FileSource({str(self.path)!r}, {mode}, ok={self.report.ok})"
