"""What a session receives from the storage session: the video frames (with, for stamped
media, the stamp read back, so master → viewer latency can be measured) and the audio mix."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
import pandas as pd
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from kvsnb.sources.stamp import Stamp, StampError, read_stamp_frame
from kvsnb.wire import webrtc

logger = logging.getLogger(__name__)


@dataclass
class ReceivedFrame:
    """A video frame received from the storage session, with its receive time and, for
    stamped media, the stamp read back (``None`` otherwise)."""

    received_at: float  # epoch s
    frame: av.VideoFrame
    stamp: Stamp | None


class ReceivedMedia:
    """What a session receives from the storage session: video frames (the last
    ``keep_frames`` kept, with a row per frame in ``rows``) and audio (the last
    ``keep_audio_s`` seconds, mono 48 kHz)."""

    def __init__(self, keep_frames: int = 150, keep_audio_s: float = 30.0) -> None:
        self.frames: deque[ReceivedFrame] = deque(maxlen=keep_frames)
        self.rows: list[tuple[float, int | None, int | None]] = []
        self._audio: deque[np.ndarray] = deque()
        self._audio_len = 0
        self.audio_started_at: float | None = None
        self.keep_audio = int(keep_audio_s * webrtc.OPUS_SAMPLE_RATE)
        self.audio_frames = 0
        self._frame_listeners: list[Callable[[ReceivedFrame], None]] = []

    def on_frame(self, listener: Callable[[ReceivedFrame], None]) -> None:
        """Call ``listener(received)`` on the event loop for each video frame as it arrives
        (a listener that raises is logged and kept)."""
        self._frame_listeners.append(listener)

    async def pump(self, track: MediaStreamTrack) -> None:
        """Read a remote track until it ends."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.time()
                if isinstance(frame, av.VideoFrame):
                    stamp = try_read_stamp_frame(frame)
                    received = ReceivedFrame(now, frame, stamp)
                    self.frames.append(received)
                    for listener in list(self._frame_listeners):
                        try:
                            listener(received)
                        except Exception:
                            logger.exception("a received-frame listener failed")
                    self.rows.append(
                        (now, stamp.index if stamp else None, stamp.capture_ms if stamp else None)
                    )
                elif isinstance(frame, av.AudioFrame):
                    self._add_audio(frame, now)

    def _add_audio(self, frame: av.AudioFrame, now: float) -> None:
        mono = webrtc.to_mono(frame)
        if self.audio_started_at is None:
            self.audio_started_at = now - frame.samples / webrtc.OPUS_SAMPLE_RATE
        self._audio.append(mono)
        self._audio_len += len(mono)
        self.audio_frames += 1
        while self._audio_len - len(self._audio[0]) > self.keep_audio:
            self._audio_len -= len(self._audio.popleft())

    def audio(self) -> np.ndarray:
        """The audio kept so far, mono int16 at 48 kHz."""
        return np.concatenate(list(self._audio)) if self._audio else np.zeros(0, np.int16)

    def rate(self, window_s: float = 1.0) -> float:
        """Video frames received per second over the last ``window_s`` seconds."""
        now = time.time()
        n = 0
        for received_at, _, _ in reversed(self.rows):
            if now - received_at > window_s:
                break
            n += 1
        return n / window_s

    def latest_frame(self, fmt: str = "rgb24") -> np.ndarray | None:
        """The latest video frame as a numpy array, if any."""
        return self.frames[-1].frame.to_ndarray(format=fmt) if self.frames else None

    def frames_df(self) -> pd.DataFrame:
        """One row per video frame received: receive time, and for stamped media the frame
        index, capture time and capture → receive latency (ms)."""
        df = pd.DataFrame(self.rows, columns=["received_at", "frame_index", "capture_ms"])
        df["latency_ms"] = df["received_at"] * 1000 - df["capture_ms"]
        return df


def try_read_stamp_frame(frame: av.VideoFrame) -> Stamp | None:
    """The stamp of a decoded frame, or ``None`` when it has none."""
    try:
        return read_stamp_frame(frame)
    except StampError:
        return None
