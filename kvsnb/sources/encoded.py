"""Media encoded elsewhere (a browser's WebCodecs encoder, another process) as aiortc tracks,
sent undecoded; and the small framing such media travels in.

aiortc's ``RTCRtpSender`` packs an ``av.Packet`` returned by a track's ``recv()`` as it is
(``H264Encoder.pack`` splits the Annex B access unit into NAL units for RTP; ``OpusEncoder.pack``
sends the packet whole), taking the RTP timestamp from the packet's ``pts``/``time_base``. So:

- ``EncodedVideoTrack`` is fed H.264 access units (Annex B) and yields them as packets: the
  storage session stores the very bytes fed, never re-encoded. A keyframe request (the
  storage session's PLI, or frames dropped) is passed on to ``on_keyframe_request``
  listeners, so the encoder upstream can honour it.
- ``EncodedAudioTrack`` is fed Opus packets (48 kHz) and yields them as packets.
- ``JpegVideoTrack`` and ``PcmAudioTrack`` are the fallbacks where the producer cannot
  encode H.264 or Opus: JPEG pictures (decoded here, then aiortc encodes H.264) and PCM
  (s16le mono 48 kHz, cut into 20 ms frames, then aiortc encodes Opus).

Every track takes its timestamps from the producer's capture times (``timestamp_us``) relative
to the first item it sends, kept increasing. Feed on the event loop the track's consumer runs
on. Items fed before the sender asks for the first one are kept only from the newest
keyframe on (video) or for ``AUDIO_BACKLOG`` packets (audio), so a session that connects late
starts live (video: from a keyframe at most ``LIVE_START_S`` old, else the next one asked
for). Each track counts what it was fed, sent and dropped in ``stats()``.

The framing (``pack_chunk`` / ``parse_chunk``) is one message per item: a 10-byte header
(kind, flags, capture time in epoch µs, big-endian) then the payload; two control kinds
(``KIND_INFO``: JSON saying what a producer sends; ``KIND_KEYFRAME_REQUEST``) travel the same
way. ``kvsnb/widgets/browser_media.js`` reads and writes it in the page. ``JpegEncoder`` is
the way back: decoded frames as JPEG pictures for a page to draw.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import av
import numpy as np
import pandas as pd
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

from kvsnb.errors import KvsnbError
from kvsnb.sources.tracks import AUDIO_PTIME_S, AUDIO_SAMPLE_RATE, VIDEO_CLOCK_RATE, VIDEO_TIME_BASE
from kvsnb.wire import aiortc_compat, h264

logger = logging.getLogger(__name__)

KIND_H264 = 1  # an H.264 access unit, Annex B (start codes), SPS/PPS in front of each IDR
KIND_OPUS = 2  # one Opus packet, 48 kHz
KIND_JPEG = 3  # one JPEG picture
KIND_PCM = 4  # PCM, s16le mono 48 kHz
KIND_INFO = 16  # control: UTF-8 JSON, what the producer sends ({"video": "h264", ...})
KIND_KEYFRAME_REQUEST = 17  # control: the consumer wants a keyframe (empty payload)
KIND_NAMES: dict[int, str] = {
    KIND_H264: "h264",
    KIND_OPUS: "opus",
    KIND_JPEG: "jpeg",
    KIND_PCM: "pcm",
    KIND_INFO: "info",
    KIND_KEYFRAME_REQUEST: "keyframe_request",
}
FLAG_KEY = 0x01  # the chunk is a keyframe (an IDR access unit)
HEADER = struct.Struct(">BBQ")  # kind, flags, capture time (epoch µs)

VIDEO_BACKLOG = 90  # access units held while the sender is slower; beyond: drop to a keyframe
AUDIO_BACKLOG = 25  # Opus packets or 20 ms PCM frames held (0.5 s); beyond: the oldest dropped
JPEG_BACKLOG = 3  # pictures held; beyond: the oldest dropped (each is whole)
LIVE_START_S = 0.5  # the first frame sent: a queued keyframe at most this much behind the newest
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
PCM_FRAME_SAMPLES = int(AUDIO_SAMPLE_RATE * AUDIO_PTIME_S)


class ChunkError(KvsnbError, ValueError):
    """A framed chunk that cannot be read (too short, unknown kind) or media that is not what
    its track takes (not Annex B H.264, odd PCM length)."""


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """One framed media item: ``kind`` (``KIND_*``), ``key`` (a keyframe), ``timestamp_us``
    (capture time, epoch µs) and ``data`` (the payload)."""

    kind: int
    key: bool
    timestamp_us: int
    data: bytes

    @property
    def kind_name(self) -> str:
        """``"h264"``, ``"opus"``, ``"jpeg"``, ``"pcm"``, ``"info"`` or
        ``"keyframe_request"``."""
        return KIND_NAMES[self.kind]

    def json(self) -> Any:
        """The payload of a ``KIND_INFO`` chunk, parsed; ``ChunkError`` when it is not JSON."""
        try:
            return json.loads(self.data.decode("utf-8"))
        except ValueError as exc:
            raise ChunkError(f"an info chunk holds JSON: {exc}") from exc


def pack_chunk(kind: int, data: bytes, timestamp_us: int, key: bool = False) -> bytes:
    """Frame one media item: the 10-byte header (kind, flags, epoch µs) and ``data``."""
    if kind not in KIND_NAMES:
        raise ChunkError(f"unknown chunk kind {kind}")
    return HEADER.pack(kind, FLAG_KEY if key else 0, timestamp_us) + bytes(data)


def parse_chunk(message: bytes) -> EncodedChunk:
    """Read one framed media item; ``ChunkError`` when it is shorter than its header or of
    an unknown kind."""
    if len(message) < HEADER.size:
        raise ChunkError(f"a chunk needs {HEADER.size} header bytes, got {len(message)}")
    kind, flags, timestamp_us = HEADER.unpack_from(message)
    if kind not in KIND_NAMES:
        raise ChunkError(f"unknown chunk kind {kind}")
    return EncodedChunk(kind, bool(flags & FLAG_KEY), timestamp_us, bytes(message[HEADER.size :]))


@dataclass(frozen=True, slots=True)
class SentItem:
    """One item a track handed to the sender: its ``index`` in feeding order, capture time,
    the ``pts`` it was sent with, its size and whether it was a keyframe."""

    index: int
    timestamp_us: int
    pts: int
    size: int
    key: bool
    monotonic_s: float


T = TypeVar("T")


class _FedTrack(MediaStreamTrack, Generic[T]):
    """A track whose items are fed by a producer and taken by ``recv()`` in order."""

    def __init__(self, clock_rate: int) -> None:
        super().__init__()
        self._items: deque[tuple[int, T, int, bool, int]] = deque()  # index, item, µs, key, size
        self._ready = asyncio.Event()
        self._clock_rate = clock_rate
        self._t0_us: int | None = None
        self._last_pts = -1
        self.fed = 0
        self.dropped = 0
        self.sent: list[SentItem] = []

    def _put(self, item: T, timestamp_us: int, key: bool, size: int) -> None:
        if self.readyState != "live":
            return
        self._items.append((self.fed, item, timestamp_us, key, size))
        self.fed += 1
        self._ready.set()

    def _pts(self, timestamp_us: int) -> int:
        if self._t0_us is None:
            self._t0_us = timestamp_us
        pts = round((timestamp_us - self._t0_us) * self._clock_rate / 1_000_000)
        pts = max(pts, self._last_pts + 1)
        self._last_pts = pts
        return pts

    async def _next(self) -> tuple[int, T, int, bool, int]:
        while not self._items:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        return self._items.popleft()

    def _record(self, index: int, timestamp_us: int, pts: int, size: int, key: bool) -> None:
        self.sent.append(SentItem(index, timestamp_us, pts, size, key, time.monotonic()))

    def stats(self) -> dict[str, int]:
        """Items ``fed``, ``sent`` (to the sender), ``dropped`` and ``queued`` so far."""
        return {
            "fed": self.fed,
            "sent": len(self.sent),
            "dropped": self.dropped,
            "queued": len(self._items),
        }

    def sent_df(self) -> pd.DataFrame:
        """One row per item handed to the sender (see ``SentItem``)."""
        return pd.DataFrame(self.sent, columns=list(SentItem.__dataclass_fields__))

    def stop(self) -> None:
        """End the track: ``recv()`` raises ``MediaStreamError``; later items are ignored."""
        super().stop()
        self._items.clear()
        self._ready.set()


class EncodedVideoTrack(_FedTrack[bytes]):
    """A video track fed H.264 access units (Annex B) that the sender packs unchanged.

    ``feed(data, timestamp_us, key)`` takes one access unit (``key=None``: read from its NAL
    units); ``ChunkError`` when it is not Annex B. Frames before the first keyframe are
    dropped; while the sender falls behind by more than ``backlog`` frames, the queue is
    emptied and frames are dropped until the next keyframe. Each drop asks for a keyframe.
    ``request_keyframe()`` calls every ``on_keyframe_request`` listener (at most once per
    ``keyframe_interval_s``); connect it to the encoder that feeds the track. Sending starts
    live: at the sender's first ``recv()`` the queue is kept from its newest keyframe if that
    is within ``live_start_s`` of the newest frame, else emptied and a keyframe asked for.
    """

    kind = "video"

    def __init__(
        self,
        *,
        backlog: int = VIDEO_BACKLOG,
        keyframe_interval_s: float = 0.2,
        live_start_s: float = LIVE_START_S,
    ) -> None:
        super().__init__(VIDEO_CLOCK_RATE)
        self.backlog = backlog
        self.live_start_s = live_start_s
        self.keyframe_interval_s = keyframe_interval_s
        self.keyframe_requests = 0
        self._listeners: list[Callable[[], None]] = []
        self._need_key = True
        self._started = False
        self._last_request = -1e9

    def on_keyframe_request(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever a keyframe is wanted (PLI or frames dropped)."""
        self._listeners.append(listener)

    def request_keyframe(self) -> None:
        """Ask the producer for a keyframe (rate-limited to one per ``keyframe_interval_s``)."""
        now = time.monotonic()
        if now - self._last_request < self.keyframe_interval_s:
            return
        self._last_request = now
        self.keyframe_requests += 1
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                logger.exception("keyframe request listener failed")

    def feed(self, data: bytes, timestamp_us: int, key: bool | None = None) -> None:
        """Queue one H.264 access unit (Annex B) captured at ``timestamp_us`` (epoch µs)."""
        if not data.startswith(b"\x00\x00\x01") and not data.startswith(b"\x00\x00\x00\x01"):
            raise ChunkError("an H.264 access unit in Annex B starts with a start code")
        if key is None:
            key = h264.is_keyframe(data)
        if self._need_key and not key:
            self.fed += 1
            self.dropped += 1
            self.request_keyframe()
            return
        self._need_key = False
        if len(self._items) >= self.backlog:
            self.dropped += len(self._items)
            self._items.clear()
            if not key:
                self._need_key = True
                self.fed += 1
                self.dropped += 1
                self.request_keyframe()
                return
        self._put(bytes(data), timestamp_us, key, len(data))

    def _start_live(self) -> None:
        """Before the first frame goes out: start at the newest keyframe queued if it is at
        most ``live_start_s`` older than the newest frame, else drop the queue and wait for
        a keyframe asked for now (frames captured before the session connected are stale)."""
        if not self._items:
            return
        newest_us = self._items[-1][2]
        keys = [i for i, entry in enumerate(self._items) if entry[3]]
        if keys and newest_us - self._items[keys[-1]][2] <= self.live_start_s * 1_000_000:
            for _ in range(keys[-1]):
                self._items.popleft()
                self.dropped += 1
            return
        self.dropped += len(self._items)
        self._items.clear()
        self._need_key = True
        self.request_keyframe()

    def feed_chunk(self, chunk: EncodedChunk) -> None:
        """``feed`` a parsed ``KIND_H264`` chunk."""
        if chunk.kind != KIND_H264:
            raise ChunkError(f"an H.264 track takes h264 chunks, not {chunk.kind_name}")
        self.feed(chunk.data, chunk.timestamp_us, chunk.key)

    async def recv(self) -> av.Packet:
        """The next access unit as an ``av.Packet`` (90 kHz ``pts``). On the first call the
        stale frames queued are dropped (see the class docstring), so sending starts live."""
        if not self._started:
            self._started = True
            self._start_live()
        index, data, timestamp_us, key, size = await self._next()
        packet = av.Packet(data)
        packet.pts = packet.dts = self._pts(timestamp_us)
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = key
        self._record(index, timestamp_us, int(packet.pts), size, key)
        return packet


class EncodedAudioTrack(_FedTrack[bytes]):
    """An audio track fed Opus packets (48 kHz) that the sender packs unchanged. At most
    ``backlog`` packets wait; beyond, the oldest is dropped."""

    kind = "audio"

    def __init__(self, *, backlog: int = AUDIO_BACKLOG) -> None:
        super().__init__(AUDIO_SAMPLE_RATE)
        self.backlog = backlog

    def feed(self, data: bytes, timestamp_us: int) -> None:
        """Queue one Opus packet captured at ``timestamp_us`` (epoch µs)."""
        if not data:
            raise ChunkError("an empty Opus packet")
        if len(self._items) >= self.backlog:
            self._items.popleft()
            self.dropped += 1
        self._put(bytes(data), timestamp_us, False, len(data))

    def feed_chunk(self, chunk: EncodedChunk) -> None:
        """``feed`` a parsed ``KIND_OPUS`` chunk."""
        if chunk.kind != KIND_OPUS:
            raise ChunkError(f"an Opus track takes opus chunks, not {chunk.kind_name}")
        self.feed(chunk.data, chunk.timestamp_us)

    async def recv(self) -> av.Packet:
        """The next Opus packet as an ``av.Packet`` (``pts`` in 48 kHz samples)."""
        index, data, timestamp_us, key, size = await self._next()
        packet = av.Packet(data)
        packet.pts = packet.dts = self._pts(timestamp_us)
        packet.time_base = AUDIO_TIME_BASE
        self._record(index, timestamp_us, int(packet.pts), size, key)
        return packet


class JpegVideoTrack(_FedTrack[bytes]):
    """A video track fed JPEG pictures, decoded here to frames that aiortc encodes as
    H.264 (the fallback for a producer without an H.264 encoder). At most ``backlog``
    pictures wait; beyond, the oldest is dropped. A picture that does not decode is logged
    and skipped."""

    kind = "video"

    def __init__(self, *, backlog: int = JPEG_BACKLOG) -> None:
        super().__init__(VIDEO_CLOCK_RATE)
        self.backlog = backlog
        self._decoder = av.CodecContext.create("mjpeg", "r")
        self.undecodable = 0

    def feed(self, data: bytes, timestamp_us: int) -> None:
        """Queue one JPEG picture captured at ``timestamp_us`` (epoch µs)."""
        if not data.startswith(b"\xff\xd8"):
            raise ChunkError("a JPEG picture starts with FF D8")
        if len(self._items) >= self.backlog:
            self._items.popleft()
            self.dropped += 1
        self._put(bytes(data), timestamp_us, True, len(data))

    def feed_chunk(self, chunk: EncodedChunk) -> None:
        """``feed`` a parsed ``KIND_JPEG`` chunk."""
        if chunk.kind != KIND_JPEG:
            raise ChunkError(f"a JPEG track takes jpeg chunks, not {chunk.kind_name}")
        self.feed(chunk.data, chunk.timestamp_us)

    async def recv(self) -> av.VideoFrame:
        """The next picture as a yuv420p ``av.VideoFrame`` (90 kHz ``pts``)."""
        while True:
            index, data, timestamp_us, key, size = await self._next()
            try:
                frames = self._decoder.decode(av.Packet(data))
            except av.FFmpegError as exc:
                logger.warning("skipping a JPEG picture that does not decode: %s", exc)
                frames = []
            if not frames:
                self.undecodable += 1
                continue
            frame = frames[-1]
            assert isinstance(frame, av.VideoFrame)
            out = frame.reformat(format="yuv420p")
            out.pts = self._pts(timestamp_us)
            out.time_base = VIDEO_TIME_BASE
            self._record(index, timestamp_us, int(out.pts), size, key)
            return out


class PcmAudioTrack(_FedTrack[np.ndarray]):
    """An audio track fed PCM (s16le mono 48 kHz, any length), sent as 20 ms frames that
    aiortc encodes as Opus. At most ``backlog`` frames wait; beyond, the oldest is dropped."""

    kind = "audio"

    def __init__(self, *, backlog: int = AUDIO_BACKLOG) -> None:
        super().__init__(AUDIO_SAMPLE_RATE)
        self.backlog = backlog
        self._pending = np.zeros(0, np.int16)
        self._pending_us: int | None = None

    def feed(self, data: bytes, timestamp_us: int) -> None:
        """Queue PCM samples whose first was captured at ``timestamp_us`` (epoch µs)."""
        if len(data) % 2:
            raise ChunkError(f"s16le PCM has an even byte count, got {len(data)}")
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
        if self._pending_us is None or not len(self._pending):
            self._pending_us = timestamp_us
        self._pending = np.concatenate([self._pending, samples])
        while len(self._pending) >= PCM_FRAME_SAMPLES:
            frame, self._pending = (
                self._pending[:PCM_FRAME_SAMPLES],
                self._pending[PCM_FRAME_SAMPLES:],
            )
            if len(self._items) >= self.backlog:
                self._items.popleft()
                self.dropped += 1
            self._put(frame, self._pending_us, False, frame.nbytes)
            self._pending_us += PCM_FRAME_SAMPLES * 1_000_000 // AUDIO_SAMPLE_RATE

    def feed_chunk(self, chunk: EncodedChunk) -> None:
        """``feed`` a parsed ``KIND_PCM`` chunk."""
        if chunk.kind != KIND_PCM:
            raise ChunkError(f"a PCM track takes pcm chunks, not {chunk.kind_name}")
        self.feed(chunk.data, chunk.timestamp_us)

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms as an s16 mono ``av.AudioFrame`` (``pts`` in 48 kHz samples)."""
        index, samples, timestamp_us, key, size = await self._next()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = self._pts(timestamp_us)
        frame.time_base = AUDIO_TIME_BASE
        self._record(index, timestamp_us, int(frame.pts), size, key)
        return frame


class JpegEncoder:
    """Decoded video frames as JPEG pictures (FFmpeg's ``mjpeg`` encoder; ``quality`` is its
    ``qscale``, 2 best .. 31 worst), for a page to draw. The encoder is made again when the
    frame size changes. Not thread-safe: one caller at a time (a thread of its own is fine)."""

    def __init__(self, quality: int = 5) -> None:
        self.quality = quality
        self._encoder: av.VideoCodecContext | None = None

    def encode(self, frame: av.VideoFrame) -> bytes:
        """One JPEG picture of ``frame``."""
        encoder = self._encoder
        if encoder is None or (encoder.width, encoder.height) != (frame.width, frame.height):
            created = av.CodecContext.create("mjpeg", "w")
            assert isinstance(created, av.VideoCodecContext)
            created.width, created.height = frame.width, frame.height
            created.pix_fmt = "yuvj420p"
            created.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
            created.options = {"qscale": str(self.quality)}
            created.flags |= av.codec.context.Flags.qscale
            created.global_quality = self.quality * 118  # FF_QP2LAMBDA
            encoder = self._encoder = created
        out = frame.reformat(format="yuvj420p")
        out.pts = None
        return b"".join(bytes(p) for p in encoder.encode(out))


def forward_keyframe_requests(sender: RTCRtpSender, track: EncodedVideoTrack) -> None:
    """Pass the keyframe requests the sender receives (RTCP PLI and FIR: the storage session
    asks on its fragment schedule) on to ``track.request_keyframe()``: aiortc honours them
    only for frames it encodes itself. Call once per sender (each peer connection of a
    session has its own)."""

    def on_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            track.request_keyframe()

    aiortc_compat.on_rtcp(sender, on_rtcp)


def track_for(kind: str) -> Any:
    """A new track for chunks of ``kind`` (``"h264"``, ``"opus"``, ``"jpeg"``, ``"pcm"``)."""
    tracks: dict[str, Callable[[], Any]] = {
        "h264": EncodedVideoTrack,
        "opus": EncodedAudioTrack,
        "jpeg": JpegVideoTrack,
        "pcm": PcmAudioTrack,
    }
    if kind not in tracks:
        raise ChunkError(f"no track takes {kind!r} chunks (h264, opus, jpeg or pcm)")
    return tracks[kind]()


def h264_access_units(
    frames: Iterable[av.VideoFrame], *, fps: float = 30.0, gop: int = 30, bitrate: int = 600_000
) -> Iterator[tuple[bytes, bool]]:
    """Encode ``frames`` (any size, even) with libx264 as a browser's WebCodecs encoder does
    for WebRTC (Constrained Baseline, no B-frames, zero latency, Annex B with SPS/PPS in front
    of each keyframe, a keyframe every ``gop`` frames and at each frame whose ``pict_type`` is
    ``I``): yields ``(access unit, keyframe)``, one per frame. For feeding
    ``EncodedVideoTrack`` from Python, tests and benchmarks."""
    encoder: av.VideoCodecContext | None = None
    for n, frame in enumerate(frames):
        if encoder is None:
            encoder = av.CodecContext.create("libx264", "w")
            assert isinstance(encoder, av.VideoCodecContext)
            encoder.width, encoder.height = frame.width, frame.height
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
            encoder.framerate = fractions.Fraction(fps).limit_denominator(1001)
            encoder.bit_rate = bitrate
            encoder.profile = "Baseline"
            encoder.options = {"tune": "zerolatency", "level": "31", "g": str(gop), "bf": "0"}
        out = frame.reformat(format="yuv420p")
        out.pts = round(n * VIDEO_CLOCK_RATE / fps)
        out.time_base = encoder.time_base
        wanted = n % gop == 0 or frame.pict_type == av.video.frame.PictureType.I
        out.pict_type = av.video.frame.PictureType.I if wanted else av.video.frame.PictureType.NONE
        for packet in encoder.encode(out):
            data = bytes(packet)
            yield data, h264.is_keyframe(data)
    if encoder is not None:
        for packet in encoder.encode(None):
            data = bytes(packet)
            yield data, h264.is_keyframe(data)
