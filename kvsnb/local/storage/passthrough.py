"""Receive a remote H.264 track from aiortc as encoded access units, never decoded
(docs/design.md, principle 3).

``enable_passthrough`` (call it from the ``"track"`` event, before the receiver starts; it
raises when the receiver already started) makes that track's ``recv()`` return
``EncodedFrame`` objects instead of ``av.VideoFrame``; other receivers keep aiortc's
decoders. ``direct_video`` and ``direct_audio_packets`` hand frames to a callback instead.
Each works on the one receiver it is given, through ``kvsnb.wire.aiortc_compat`` (nothing in
aiortc is patched at import time).
``RtpClock`` maps RTP time to the producer's wall clock from RTCP sender reports (RFC 3550
6.4.1), and to arrival time until the first one. See docs/design.md, "Local KVS".
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtcpSrPacket, RtpPacket
from aiortc.utils import uint16_add

from kvsnb.wire import aiortc_compat, h264, webrtc

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
AUDIO_TIME_BASE = Fraction(1, webrtc.OPUS_SAMPLE_RATE)
NTP_EPOCH_OFFSET_S = 2_208_988_800
CLOCK_SOURCE_SR = "rtcp-sr"
CLOCK_SOURCE_ARRIVAL = "first-arrival"
H264_CODEC_NAME = "H264"

_registry: weakref.WeakKeyDictionary[Any, _Registration] = weakref.WeakKeyDictionary()
_pending_tasks: set[asyncio.Task[Any]] = set()


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One received H.264 access unit, exactly as depacketised (never decoded).

    ``data`` is Annex B (start codes), ``rtp_timestamp`` the 32-bit timestamp on the wire,
    ``timestamp`` the same unwrapped, in 90 kHz ticks since the track's first frame.
    ``producer_time`` and ``arrival_time`` are epoch seconds (producer clock via RTCP SR or
    first-arrival anchoring, see ``clock_source``; server wall clock when the access unit
    was complete).
    """

    data: bytes
    rtp_timestamp: int
    timestamp: int
    keyframe: bool
    producer_time: float
    arrival_time: float
    clock_source: str = CLOCK_SOURCE_ARRIVAL
    clock_rate: int = VIDEO_CLOCK_RATE


def ntp_to_epoch(ntp: int) -> float:
    """64-bit NTP timestamp → epoch seconds."""
    return (ntp >> 32) - NTP_EPOCH_OFFSET_S + (ntp & 0xFFFFFFFF) / 2**32


class RtpClock:
    """Maps a receiver's RTP timestamps to producer wall-clock time (epoch seconds).

    Uses the latest RTCP Sender Report of the media SSRC when one has been received
    (RFC 3550 6.4.1), else first-arrival anchoring. Works for any receiver (video or
    audio): pass the unwrapped timestamps aiortc gives (``JitterFrame.timestamp``, or an
    audio frame's ``pts``). Thread-safe for one writer of SRs and readers in other threads.
    """

    def __init__(self, receiver: Any, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._receiver_ref = weakref.ref(receiver)
        self._sr: tuple[int, float] | None = None  # (raw RTP timestamp, NTP epoch s)
        self._anchor: tuple[int, float] | None = None  # (unwrapped ts, arrival epoch s)
        self.sender_reports = 0

        def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                self.on_sender_report(
                    packet.ssrc,
                    packet.sender_info.ntp_timestamp,
                    packet.sender_info.rtp_timestamp,
                )

        aiortc_compat.on_rtcp(receiver, on_rtcp)

    def on_sender_report(self, ssrc: int, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """Record a Sender Report (ignored when it comes from an RTX SSRC)."""
        receiver = self._receiver_ref()
        if receiver is not None and ssrc in aiortc_compat.rtx_ssrcs(receiver):
            return
        self._sr = (rtp_timestamp & 0xFFFFFFFF, ntp_to_epoch(ntp_timestamp))
        self.sender_reports += 1

    def raw_rtp(self, timestamp: int) -> int:
        """The 32-bit wire RTP timestamp of an unwrapped aiortc timestamp."""
        receiver = self._receiver_ref()
        origin = aiortc_compat.timestamp_origin(receiver) if receiver is not None else None
        return (timestamp + (origin or 0)) & 0xFFFFFFFF

    def producer_time(self, timestamp: int, arrival_time: float) -> tuple[float, str]:
        """(producer epoch seconds, clock source) of an unwrapped timestamp."""
        if self._anchor is None:
            self._anchor = (timestamp, arrival_time)
        sr = self._sr
        if sr is not None:
            delta = ((self.raw_rtp(timestamp) - sr[0] + 2**31) % 2**32) - 2**31
            return sr[1] + delta / self.clock_rate, CLOCK_SOURCE_SR
        anchor_ts, anchor_time = self._anchor
        return anchor_time + (timestamp - anchor_ts) / self.clock_rate, CLOCK_SOURCE_ARRIVAL


@dataclass(slots=True)
class _Registration:
    clock: RtpClock
    frames: int = 0
    keyframes: int = 0


def _encoded_frame(registration: _Registration, encoded_frame: Any) -> EncodedFrame:
    """The ``EncodedFrame`` of one reassembled access unit (timestamp already unwrapped)."""
    arrival = time.time()
    data = bytes(encoded_frame.data)
    ts = int(encoded_frame.timestamp)
    clock = registration.clock
    producer, source = clock.producer_time(ts, arrival)
    keyframe = h264.is_keyframe(data)
    registration.frames += 1
    registration.keyframes += keyframe
    return EncodedFrame(
        data=data,
        rtp_timestamp=clock.raw_rtp(ts),
        timestamp=ts,
        keyframe=keyframe,
        producer_time=producer,
        arrival_time=arrival,
        clock_source=source,
    )


class _DirectQueue:
    """Takes the place of an ``RTCRtpReceiver``'s decoder queue, so that each reassembled
    frame goes to ``sink`` at once, on the event loop that received it: no hop to aiortc's
    decoder thread and back through an asyncio queue (two thread switches and a task per
    frame, most of a storage session's CPU). aiortc's decoder thread still starts; it waits
    here until the receiver stops and then ends the track as usual."""

    def __init__(self, sink: Callable[[Any], None], with_codec: bool = False) -> None:
        self._sink = sink
        self._with_codec = with_codec
        self._stopped = threading.Event()

    def put(self, item: Any) -> None:
        """A reassembled ``(codec, frame)`` for the sink (with the codec when asked), or
        ``None``: the receiver stopped."""
        if item is None:
            self._stopped.set()
            return
        codec, encoded_frame = item
        try:
            if self._with_codec:
                self._sink((codec, encoded_frame))
            else:
                self._sink(encoded_frame)
        except Exception:
            logger.exception("direct media sink failed; frame dropped")

    def get(self, *args: Any, **kwargs: Any) -> None:
        """aiortc's decoder thread: wait until the receiver stops, then end the track."""
        self._stopped.wait()


def direct_video(receiver: Any, sink: Callable[[EncodedFrame], None]) -> RtpClock:
    """Hand a video receiver's H.264 access units to ``sink`` as ``EncodedFrame``s, on the
    event loop, as they complete (marker bit), never decoded. Call from the ``"track"``
    event. The track itself yields nothing until it ends."""
    if receiver.track is None or receiver.track.kind != "video":
        raise ValueError("direct video applies to video receivers only")
    if aiortc_compat.receiver_started(receiver):
        raise RuntimeError("the receiver already started: register its sink in the track event")
    registration = _Registration(clock=RtpClock(receiver, VIDEO_CLOCK_RATE))
    aiortc_compat.set_jitter_buffer(receiver, MarkerJitterBuffer(capacity=512, is_video=True))
    # No receive-side bandwidth estimation (REMB): a recorder does not steer the sender's
    # bitrate (the 1 Mbps quota is the master's to keep), and it costs Python per packet.
    aiortc_compat.disable_bandwidth_estimation(receiver)
    aiortc_compat.take_frames(
        receiver, _DirectQueue(lambda jf: sink(_encoded_frame(registration, jf)))
    )
    return registration.clock


@dataclass(frozen=True, slots=True)
class OpusPacket:
    """One Opus packet as received: its payload, its unwrapped 48 kHz RTP timestamp, the
    producer's wall-clock time of its first sample and its arrival (epoch seconds)."""

    data: bytes
    timestamp: int
    producer_time: float
    arrival_time: float


class OpusDecoder:
    """Opus packets → 48 kHz s16 stereo ``av.AudioFrame``s (pts on the packet's timestamp,
    time base 1/48000), each with the producer time of its first sample. An undecodable
    packet gives no frame."""

    def __init__(self) -> None:
        self._context = av.CodecContext.create("libopus", "r")
        self._context.format = "s16"
        self._context.layout = "stereo"
        self._context.sample_rate = webrtc.OPUS_SAMPLE_RATE

    def decode(self, packet: OpusPacket) -> list[tuple[av.AudioFrame, float]]:
        """The frames of one packet (usually one), each with its producer time."""
        raw = av.Packet(packet.data)
        raw.pts = packet.timestamp
        raw.time_base = AUDIO_TIME_BASE
        try:
            frames: list[av.AudioFrame] = self._context.decode(raw)
        except av.FFmpegError as exc:
            logger.debug("Opus packet not decodable: %s", exc)
            return []
        rate = webrtc.OPUS_SAMPLE_RATE
        return [
            (f, packet.producer_time + ((f.pts or packet.timestamp) - packet.timestamp) / rate)
            for f in frames
        ]


def direct_audio_packets(receiver: Any, sink: Callable[[OpusPacket], None]) -> RtpClock:
    """Hand an audio receiver's Opus packets to ``sink`` as ``OpusPacket``s, on the event
    loop, as each arrives (no playout buffer: ``ImmediateAudioJitterBuffer``), undecoded.
    Call from the ``"track"`` event."""
    if receiver.track is None or receiver.track.kind != "audio":
        raise ValueError("direct audio applies to audio receivers only")
    if aiortc_compat.receiver_started(receiver):
        raise RuntimeError("the receiver already started: register its sink in the track event")
    clock = RtpClock(receiver, webrtc.OPUS_SAMPLE_RATE)

    def deliver(encoded_frame: Any) -> None:
        arrival = time.time()
        timestamp = int(encoded_frame.timestamp)
        producer, _ = clock.producer_time(timestamp, arrival)
        sink(OpusPacket(bytes(encoded_frame.data), timestamp, producer, arrival))

    aiortc_compat.set_jitter_buffer(receiver, ImmediateAudioJitterBuffer())
    aiortc_compat.take_frames(receiver, _DirectQueue(deliver))
    return clock


def direct_audio(receiver: Any, sink: Callable[[Any, float, float], None]) -> RtpClock:
    """Decode an audio receiver's Opus on the event loop as each packet arrives
    (``direct_audio_packets``) and hand ``sink(frame, producer_time, arrival_time)`` the
    s16 stereo 48 kHz frame. Call from the ``"track"`` event."""
    decoder = OpusDecoder()

    def decode(packet: OpusPacket) -> None:
        for frame, producer in decoder.decode(packet):
            sink(frame, producer, packet.arrival_time)

    return direct_audio_packets(receiver, decode)


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, which also completes a frame at its RTP marker bit.

    aiortc's buffer hands out frame N only when the first packet of frame N+1 arrives: one
    frame interval of extra latency, and the last frame before a master hangs up is never
    delivered. For H.264 the marker bit is set on the last packet of an access unit (RFC
    6184 5.1), so a frame whose packets are all present from the buffer's origin up to the
    marked one is complete at once. Anything else falls back to aiortc's rule.
    """

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        if frame is None and packet.marker:
            origin = aiortc_compat.jitter_origin(self)
            if origin is not None:
                frame = self._complete_at(packet, origin)
        return pli_flag, frame

    def _complete_at(self, last: RtpPacket, origin: int) -> JitterFrame | None:
        count = uint16_add(last.sequence_number, -origin) + 1
        if count > self.capacity:
            return None
        packets = []
        for i in range(count):
            p = aiortc_compat.jitter_packet(self, origin + i)
            if p is None or p.timestamp != last.timestamp:
                return None
            packets.append(p)
        frame = JitterFrame(
            data=b"".join(aiortc_compat.packet_data(p) for p in packets),
            timestamp=last.timestamp,
        )
        self.remove(count)
        return frame


class ImmediateAudioJitterBuffer(JitterBuffer):
    """An audio jitter buffer that hands out each packet as soon as it arrives.

    aiortc's audio buffer holds back 4 packets (80 ms of Opus) to smooth playout. A
    recorder plays nothing out: it needs every packet, in order, as early as possible, and
    the recorder's own timeline (sample counts, silence for gaps) absorbs jitter. A packet
    older than the last one handed out is dropped (Opus frames are independent)."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._last is not None and uint16_add(packet.sequence_number, -self._last) >= 0x8000:
            return False, None  # late or duplicate
        self._last = packet.sequence_number
        return False, JitterFrame(
            data=aiortc_compat.packet_data(packet), timestamp=packet.timestamp
        )


def enable_immediate_audio(receiver: Any) -> None:
    """Give an audio receiver the ``ImmediateAudioJitterBuffer`` (before media flows)."""
    if receiver.track is None or receiver.track.kind != "audio":
        raise ValueError("immediate audio applies to audio receivers only")
    aiortc_compat.set_jitter_buffer(receiver, ImmediateAudioJitterBuffer())


def enable_passthrough(receiver: Any) -> RtpClock:
    """Make a video ``RTCRtpReceiver``'s track yield ``EncodedFrame`` instead of frames.

    Call before the receiver starts (the ``"track"`` event is the right place); calling it
    again returns the same clock. Each H.264 access unit goes to the track's queue on the
    event loop as it completes (marker bit); a frame of another codec is decoded as aiortc
    would. Returns the receiver's ``RtpClock``. Raises ValueError for a non-video receiver
    and RuntimeError when it is too late.
    """
    track = receiver.track
    if track is None or track.kind != "video":
        raise ValueError("passthrough applies to video receivers only")
    existing = _registry.get(receiver)
    if existing is not None:
        return existing.clock
    if aiortc_compat.receiver_started(receiver):
        raise RuntimeError("the receiver already started: enable passthrough in the track event")
    registration = _Registration(clock=RtpClock(receiver, VIDEO_CLOCK_RATE))
    queue = aiortc_compat.track_queue(track)
    decoders: dict[str, Any] = {}

    def deliver(item: tuple[Any, Any]) -> None:
        codec, encoded_frame = item
        if codec.name == H264_CODEC_NAME:
            queue.put_nowait(_encoded_frame(registration, encoded_frame))
            return
        if codec.name not in decoders:
            logger.warning("passthrough receiver got %s; decoding it as usual", codec.name)
            decoders[codec.name] = get_decoder(codec)
        for frame in decoders[codec.name].decode(encoded_frame):
            queue.put_nowait(frame)

    aiortc_compat.set_jitter_buffer(receiver, MarkerJitterBuffer(capacity=512, is_video=True))
    aiortc_compat.take_frames(receiver, _DirectQueue(deliver, with_codec=True))
    _registry[receiver] = registration
    return registration.clock


def is_passthrough(receiver: Any) -> bool:
    """True when ``enable_passthrough`` was applied to this receiver."""
    return receiver in _registry


def passthrough_stats(receiver: Any) -> dict[str, int]:
    """Counters of a passthrough receiver: frames and keyframes handed to its track."""
    registration = _registry.get(receiver)
    if registration is None:
        return {"frames": 0, "keyframes": 0, "sender_reports": 0}
    return {
        "frames": registration.frames,
        "keyframes": registration.keyframes,
        "sender_reports": registration.clock.sender_reports,
    }


def receiver_for_track(pc: Any, track: Any) -> Any:
    """The RTCRtpReceiver of ``pc`` that carries ``track`` (from the ``"track"`` event)."""
    for receiver in pc.getReceivers():
        if receiver.track is track:
            return receiver
    raise LookupError("track does not belong to this peer connection")


def media_ssrc(receiver: Any) -> int | None:
    """The SSRC of the media stream (never the RTX one) a receiver is getting.

    From the remote description's ``ssrc-group:FID`` (media, rtx) when signalled, else the
    most recently active source that is not a known RTX SSRC.
    """
    rtx = aiortc_compat.rtx_ssrcs(receiver)
    if rtx:
        return next(iter(rtx.values()))
    sources = sorted(receiver.getSynchronizationSources(), key=lambda s: s.timestamp)
    for source in reversed(sources):
        if source.source not in rtx:
            return int(source.source)
    return None


async def send_pli(receiver: Any) -> bool:
    """Send an RTCP PLI for the receiver's media SSRC; False when no SSRC is known yet."""
    ssrc = media_ssrc(receiver)
    if ssrc is None:
        logger.debug("no media SSRC yet: PLI not sent")
        return False
    await aiortc_compat.send_pli(receiver, ssrc)
    return True


def request_keyframe(receiver: Any) -> None:
    """Ask the remote sender for a keyframe (PLI) without waiting. Event-loop thread only."""
    coro: Coroutine[Any, Any, bool] = send_pli(receiver)
    task = asyncio.get_running_loop().create_task(coro)
    _pending_tasks.add(task)
    task.add_done_callback(_pending_tasks.discard)


def keyframe_requester(receiver: Any) -> Callable[[], None]:
    """A ``request_keyframe`` callback for ``FragmentRecorder`` bound to this receiver."""

    def request() -> None:
        request_keyframe(receiver)

    return request
