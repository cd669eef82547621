"""Relaying the master's video to viewers without decoding or re-encoding it, and mixing
everyone's audio (docs/wire.md, "Storage sessions": the storage session routes the master's
media to viewers and mixes audio; without a master, viewers don't hear each other).

* ``VideoFanout`` takes the master's H.264 access units (``EncodedFrame`` from
  ``passthrough``) and hands them to each viewer's ``RelayedVideoTrack``, which yields them as
  ``av.Packet`` so that aiortc's sender packetizes them as they are (``H264Encoder.pack``).
  A new viewer starts at the next keyframe, and a keyframe is asked of the master when a
  viewer joins or reports picture loss (its PLI is forwarded).
* ``AudioMixer`` keeps, for every listener ("master", each viewer, and "store"), a buffer of
  each other participant's 48 kHz mono samples; ``MixedAudioTrack`` plays a listener's mix
  every 20 ms; ``mix_into`` adds the viewers' audio to the master's frames before they are
  stored, so viewer audio is stored only while the master is connected.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

from kvsnb.local.storage.passthrough import EncodedFrame
from kvsnb.wire import aiortc_compat, webrtc

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_PTIME_S = 0.020
AUDIO_SAMPLES = int(webrtc.OPUS_SAMPLE_RATE * AUDIO_PTIME_S)  # 960 samples per 20 ms
AUDIO_TIME_BASE = fractions.Fraction(1, webrtc.OPUS_SAMPLE_RATE)
MAX_BUFFERED_S = 0.2  # per listener and source; older audio is dropped (latency bound)
VIDEO_QUEUE_FRAMES = 90  # a viewer that falls further behind skips to the next keyframe
IDLE_POLL_S = 0.1  # how often a silent mix checks whether someone joined
MASTER = "master"
STORE = "store"


class RelayedVideoTrack(MediaStreamTrack):
    """A viewer's video: the master's access units as ``av.Packet`` (never decoded)."""

    kind = "video"

    def __init__(self, on_stop: Callable[[RelayedVideoTrack], None]) -> None:
        super().__init__()
        self._queue: asyncio.Queue[EncodedFrame | None] = asyncio.Queue()
        self._on_stop = on_stop
        self._origin: int | None = None
        self.waiting_for_keyframe = True
        self.frames = 0

    def offer(self, frame: EncodedFrame) -> None:
        """Queue a master frame (from a keyframe on; a lagging viewer re-syncs)."""
        if self.readyState != "live":
            return
        if self._queue.qsize() >= VIDEO_QUEUE_FRAMES:
            while not self._queue.empty():
                self._queue.get_nowait()
            self.waiting_for_keyframe = True
        if self.waiting_for_keyframe:
            if not frame.keyframe:
                return
            self.waiting_for_keyframe = False
        self._queue.put_nowait(frame)

    async def recv(self) -> av.Packet:
        """The next access unit as a packet on the 90 kHz clock."""
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        if self._origin is None:
            self._origin = frame.timestamp
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp - self._origin
        packet.time_base = VIDEO_TIME_BASE
        self.frames += 1
        return packet

    def stop(self) -> None:
        """End the track."""
        if self.readyState == "live":
            self._queue.put_nowait(None)
        super().stop()
        self._on_stop(self)


class VideoFanout:
    """Hands the master's video to every viewer track; asks for keyframes for them."""

    def __init__(self) -> None:
        self.tracks: set[RelayedVideoTrack] = set()
        self.request_keyframe: Callable[[], None] | None = None

    def new_track(self) -> RelayedVideoTrack:
        """A track for a new viewer; a keyframe is requested so it starts promptly."""
        track = RelayedVideoTrack(self.tracks.discard)
        self.tracks.add(track)
        self.keyframe_needed()
        return track

    def keyframe_needed(self) -> None:
        """Ask the master for a keyframe (if one is connected)."""
        if self.request_keyframe is not None:
            self.request_keyframe()

    def push(self, frame: EncodedFrame) -> None:
        """Relay one master frame to every viewer."""
        for track in list(self.tracks):
            track.offer(frame)

    def forward_pli(self, sender: Any) -> None:
        """Forward a viewer's PLI/FIR on ``sender`` to the master (a relayed stream has no
        encoder of its own to refresh)."""

        def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.keyframe_needed()

        aiortc_compat.on_rtcp(sender, on_rtcp)


class AudioMixer:
    """Per-listener buffers of every other participant's audio (see the module docstring)."""

    def __init__(self) -> None:
        self._buffers: dict[str, dict[str, deque[np.ndarray]]] = {}
        self.master_present = False
        self.max_samples = int(MAX_BUFFERED_S * webrtc.OPUS_SAMPLE_RATE)

    def add_listener(self, name: str) -> None:
        """Start buffering others' audio for ``name``."""
        self._buffers.setdefault(name, {})

    def remove(self, name: str) -> None:
        """Forget a participant: as listener and as source."""
        self._buffers.pop(name, None)
        for sources in self._buffers.values():
            sources.pop(name, None)

    def push(self, source: str, frame: av.AudioFrame) -> None:
        """Audio from a participant: buffered for every other listener (converted only when
        someone is there to hear it)."""
        samples: np.ndarray | None = None
        for listener, sources in self._buffers.items():
            if listener == source:
                continue
            if listener == STORE and source == MASTER:
                continue  # the master's own frames carry the stored track
            if samples is None:
                samples = webrtc.to_mono(frame)
            buf = sources.setdefault(source, deque())
            buf.append(samples)
            while sum(len(b) for b in buf) > self.max_samples:
                buf.popleft()

    def wants(self, source: str) -> bool:
        """Whether ``source``'s audio is heard by anyone now (``push`` would keep it)."""
        return any(
            listener != source and not (listener == STORE and source == MASTER)
            for listener in self._buffers
        )

    def has_waiting(self, listener: str) -> bool:
        """Whether others' audio is buffered for ``listener``."""
        return any(self._buffers.get(listener, {}).values())

    def has_audience_for(self, listener: str) -> bool:
        """Whether ``listener`` has anyone to hear: the master hears viewers; a viewer hears
        the master and, while the master is there, the other viewers."""
        if listener == MASTER:
            return any(name not in (MASTER, STORE) for name in self._buffers)
        return self.master_present

    def pull(self, listener: str, n: int = AUDIO_SAMPLES) -> np.ndarray:
        """The next ``n`` samples of ``listener``'s mix (int32, not yet clipped)."""
        out = np.zeros(n, dtype=np.int32)
        sources = self._buffers.get(listener, {})
        for source, buf in sources.items():
            chunk = _take(buf, n)
            # without a master, viewers don't hear each other (docs/wire.md)
            if listener not in (MASTER, STORE) and source != MASTER and not self.master_present:
                continue
            out[: len(chunk)] += chunk
        return out

    def mix_into(self, frame: av.AudioFrame) -> av.AudioFrame:
        """The master's frame with the viewers' audio added (what is stored)."""
        if not self.has_waiting(STORE):
            return frame  # no viewer audio waiting: the master's frame as it is
        extra = self.pull(STORE, frame.samples)
        if not extra.any():
            return frame
        data = frame.to_ndarray().astype(np.int32)
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            data += extra[np.newaxis, :]
        else:
            data += np.repeat(extra, channels)[np.newaxis, :]
        mixed = av.AudioFrame.from_ndarray(
            np.clip(data, -32768, 32767).astype(np.int16),
            format=frame.format.name,
            layout=frame.layout.name,
        )
        mixed.sample_rate = frame.sample_rate
        mixed.pts = frame.pts
        mixed.time_base = frame.time_base
        return mixed


def _take(buf: deque[np.ndarray], n: int) -> np.ndarray:
    parts = []
    need = n
    while need and buf:
        head = buf[0]
        if len(head) <= need:
            parts.append(buf.popleft())
            need -= len(head)
        else:
            parts.append(head[:need])
            buf[0] = head[need:]
            need = 0
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class MixedAudioTrack(MediaStreamTrack):
    """What one listener hears: its mix, 20 ms s16 mono frames at 48 kHz, in real time.

    While there is no one to hear (a master without viewers, a viewer without a master) it
    sends nothing, rather than encoding silence 50 times a second for every session."""

    kind = "audio"

    def __init__(self, mixer: AudioMixer, listener: str) -> None:
        super().__init__()
        self.mixer = mixer
        self.listener = listener
        mixer.add_listener(listener)
        self._start: float | None = None
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms of the listener's mix."""
        if self.readyState != "live":
            raise MediaStreamError
        while not self.mixer.has_audience_for(self.listener):
            self._start = None  # pacing restarts when audio flows again
            await asyncio.sleep(IDLE_POLL_S)
            if self.readyState != "live":
                raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic() - self._samples / webrtc.OPUS_SAMPLE_RATE
        else:
            wait = self._start + self._samples / webrtc.OPUS_SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        mix = np.clip(self.mixer.pull(self.listener), -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(mix[np.newaxis, :], format="s16", layout="mono")
        frame.sample_rate = webrtc.OPUS_SAMPLE_RATE
        frame.pts = self._samples
        frame.time_base = AUDIO_TIME_BASE
        self._samples += AUDIO_SAMPLES
        return frame

    def stop(self) -> None:
        """End the track and stop buffering for this listener."""
        super().stop()
        self.mixer.remove(self.listener)
