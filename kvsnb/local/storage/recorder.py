"""Cut a received H.264 (+ Opus) stream into durable, keyframe-aligned KVS fragments.

``FragmentRecorder`` takes passthrough H.264 access units (never decoded, docs/design.md,
principle 3) and 48 kHz Opus audio, as packets (decoded on its thread, in batches) or as
decoded frames, encodes the audio to AAC and hands each fragment,
in the Matroska of ``store.mkv``, to ``FragmentStore``. The rule: a fragment starts at a
keyframe whose SPS/PPS are known and ends at the first keyframe after ``fragment_duration_s``,
which the recorder asks for (``request_keyframe``, wired to PLI); docs/wire.md, "Storage
sessions". ``add_video``/``add_audio``/``add_opus`` only enqueue; ``request_keyframe`` and
``on_fragment`` are called on the event loop that created the recorder. Timeline, audio
placement and threads: docs/design.md, "Local KVS".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av

from kvsnb.local.storage.passthrough import EncodedFrame, OpusDecoder, OpusPacket
from kvsnb.local.store.fragments import Fragment, FragmentMeta, FragmentStore
from kvsnb.local.store.mkv import (
    TAG_FRAGMENT_NUMBER,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
    AudioTrackConfig,
    FragmentWriter,
    timestamp_tag,
)
from kvsnb.wire import h264, webrtc
from kvsnb.wire.h264 import (
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    SpsInfo,
    build_avcc,
    parse_sps,
    split_annexb,
    to_length_prefixed,
)

logger = logging.getLogger(__name__)

DEFAULT_FRAGMENT_DURATION_S = 2.0
KEYFRAME_RETRY_MS = 1000
AUDIO_GRACE_MS = 1000
AUDIO_LAYOUT = "stereo"
AAC_BIT_RATE = 96_000
AAC_CODER = "fast"  # FFmpeg's default "twoloop" costs twice the CPU for a recorder's audio
OPUS_BATCH_PACKETS = 10  # Opus packets queued on the loop go to the thread at most 200 ms late
AAC_CODEC_STRING = "mp4a.40.2"
AUDIO_GAP_TOLERANCE_SAMPLES = 480  # 10 ms
AUDIO_MAX_FILL_SAMPLES = 5 * webrtc.OPUS_SAMPLE_RATE
FALLBACK_FRAME_INTERVAL_MS = 33
MAX_FRAGMENT_WARN_MS = 20_000  # PutMedia's fragment limit (docs/wire.md "Storage sessions")


@dataclass(slots=True)
class RecorderStats:
    """Counters of one recorder (snapshots via ``FragmentRecorder.stats``)."""

    frames_in: int = 0
    frames_stored: int = 0
    dropped_before_keyframe: int = 0
    fragments: int = 0
    keyframe_requests: int = 0
    audio_frames_in: int = 0
    audio_frames_dropped: int = 0
    audio_packets_stored: int = 0
    audio_silence_samples: int = 0
    errors: int = 0


@dataclass(slots=True)
class _OpenFragment:
    number: str
    writer: FragmentWriter
    start_ms: int
    server_start_ms: int
    sps: SpsInfo
    frame_count: int = 0
    keyframe_offsets: list[int] = field(default_factory=list)
    last_pts_ms: int = 0
    last_interval_ms: int = 0
    end_ms: int | None = None
    audio_packets: int = 0
    last_audio_ms: int = -(2**62)


class FragmentRecorder:
    """Records one master's media of one stream into fragments (see the module docstring).

    ``request_keyframe()`` is called when the recorder needs a keyframe; ``on_fragment``
    (optional) with each stored ``Fragment``. ``close()`` stores the partial fragment.
    """

    def __init__(
        self,
        store: FragmentStore,
        stream_arn: str,
        *,
        fragment_duration_s: float = DEFAULT_FRAGMENT_DURATION_S,
        request_keyframe: Callable[[], None] | None = None,
        audio: bool = True,
        on_fragment: Callable[[Fragment], None] | None = None,
    ) -> None:
        if fragment_duration_s <= 0:
            raise ValueError("fragment_duration_s must be positive")
        self.store = store
        self.stream_arn = stream_arn
        self.fragment_duration_ms = round(fragment_duration_s * 1000)
        self.audio = audio
        self._request_keyframe = request_keyframe
        self._on_fragment = on_fragment
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kvsnb-recorder"
        )
        self._closed = False
        self._opus_pending: list[OpusPacket] = []  # event-loop side, handed over in batches
        self._opus_decoder: OpusDecoder | None = None  # recorder-thread side
        self._closing: asyncio.Future[list[Fragment]] | None = None
        self._stats = RecorderStats()
        self.fragments: list[Fragment] = []
        # worker-thread state
        self._sps: bytes | None = None
        self._pps: bytes | None = None
        self._sps_info: SpsInfo | None = None
        self._avcc: bytes | None = None
        self._current: _OpenFragment | None = None
        self._sealing: _OpenFragment | None = None
        self._opened = 0
        self._video_anchor: tuple[int, float] | None = None  # (timestamp, producer ms)
        self._last_video_ms: int | None = None
        self._last_request_ms: int | None = None
        self._encoder: Any = None
        self._resampler: Any = None
        self._audio_config: AudioTrackConfig | None = None
        self._audio_anchor_ms: float | None = None
        self._audio_first_pos: float | None = None
        self._samples_fed = 0
        self._encoded_samples = 0
        if audio:
            self._submit(self._open_audio_encoder)

    # ------------------------------------------------------------------ public API

    @property
    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats)

    def add_video(self, frame: EncodedFrame) -> None:
        """Queue one H.264 access unit (Annex B) for recording. Never blocks."""
        if self._closed:
            logger.debug("video frame after close ignored")
            return
        self._flush_opus()
        self._submit(self._on_video, frame)

    def add_audio(
        self, frame: object, producer_time: float, arrival_time: float | None = None
    ) -> None:
        """Queue one decoded audio frame (48 kHz) whose first sample is at ``producer_time``.

        ``frame`` must be an ``av.AudioFrame`` (what an aiortc audio track's ``recv()``
        returns; typed loosely for that reason, TypeError otherwise). ``producer_time`` is
        epoch seconds (``RtpClock.producer_time(frame.pts, ...)`` for an aiortc track). The
        recorder takes ownership of ``frame``. Ignored with ``audio=False``.
        """
        if not isinstance(frame, av.AudioFrame):
            raise TypeError(f"add_audio needs an av.AudioFrame, got {type(frame).__name__}")
        if self._closed or not self.audio:
            return
        self._flush_opus()
        self._submit(self._on_audio, frame, producer_time)

    def add_opus(self, packet: OpusPacket) -> None:
        """Queue one Opus packet as received. Packets are handed to the recorder's thread in
        batches (with the next video frame, or every ``OPUS_BATCH_PACKETS``), where they are
        decoded and encoded like ``add_audio``'s frames: the event loop does no audio work.
        While a cut fragment waits for the end of its audio, each packet goes at once.
        Ignored with ``audio=False``."""
        if self._closed or not self.audio:
            return
        self._opus_pending.append(packet)
        # _sealing belongs to the recorder's thread: read here as a hint only (a stale read
        # just batches one packet more or less)
        if len(self._opus_pending) >= OPUS_BATCH_PACKETS or self._sealing is not None:
            self._flush_opus()

    async def drain(self) -> None:
        """Wait until everything queued so far has been processed."""
        self._flush_opus()
        await asyncio.wrap_future(self._executor.submit(lambda: None))

    @property
    def closed(self) -> bool:
        """True once ``close()`` has finished: everything stored (the partial fragment
        included) and the recorder's worker thread let go."""
        return self._closing is not None and self._closing.done()

    async def close(self) -> list[Fragment]:
        """Store what is left (the partial fragment included) and stop; idempotent.

        Returns every fragment this recorder stored.
        """
        if self._closing is None:
            self._flush_opus()
            self._closed = True
            loop = asyncio.get_running_loop()
            self._closing = loop.create_future()
            try:
                await asyncio.wrap_future(self._executor.submit(self._guarded, self._on_close))
            finally:
                self._executor.shutdown(wait=False)
                self._closing.set_result(list(self.fragments))
        return await asyncio.shield(self._closing)

    # ------------------------------------------------------------------ plumbing

    def _flush_opus(self) -> None:
        if self._opus_pending:
            batch, self._opus_pending = self._opus_pending, []
            self._submit(self._on_opus, batch)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._executor.submit(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self._stats.errors += 1
            logger.exception("recorder for %s failed in %s", self.stream_arn, fn.__name__)

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            fn(*args)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _ask_keyframe(self, now_ms: int) -> None:
        if self._last_request_ms is not None and now_ms - self._last_request_ms < KEYFRAME_RETRY_MS:
            return
        self._last_request_ms = now_ms
        self._stats.keyframe_requests += 1
        if self._request_keyframe is not None:
            self._call_on_loop(self._request_keyframe)

    # ------------------------------------------------------------------ video

    def _on_video(self, frame: EncodedFrame) -> None:
        self._stats.frames_in += 1
        nals = split_annexb(frame.data)
        keyframe = False
        for nal in nals:
            kind = h264.nal_type(nal)
            if kind == NAL_IDR:
                keyframe = True
            elif kind == NAL_SPS and nal != self._sps:
                self._sps, self._sps_info, self._avcc = nal, parse_sps(nal), None
            elif kind == NAL_PPS and nal != self._pps:
                self._pps, self._avcc = nal, None
        if self._video_anchor is None:
            self._video_anchor = (frame.timestamp, frame.producer_time * 1000.0)
        ts0, ms0 = self._video_anchor
        pts_ms = round(ms0 + (frame.timestamp - ts0) * 1000.0 / frame.clock_rate)
        if self._last_video_ms is not None and pts_ms <= self._last_video_ms:
            pts_ms = self._last_video_ms + 1
        can_start = keyframe and self._sps is not None and self._pps is not None
        current = self._current
        if current is None:
            if not can_start:
                self._stats.dropped_before_keyframe += 1
                self._ask_keyframe(pts_ms)
                return
            current = self._open_fragment(pts_ms, frame.arrival_time)
        else:
            elapsed = pts_ms - current.start_ms
            if can_start and elapsed >= self.fragment_duration_ms:
                self._seal(current, pts_ms)
                current = self._open_fragment(pts_ms, frame.arrival_time)
            elif elapsed >= self.fragment_duration_ms:
                self._ask_keyframe(pts_ms)
                if elapsed >= MAX_FRAGMENT_WARN_MS and current.frame_count % 300 == 0:
                    logger.warning("no keyframe for %d ms in %s", elapsed, self.stream_arn)
        current.writer.write_video(to_length_prefixed(nals), pts_ms, keyframe)
        if current.frame_count:
            current.last_interval_ms = pts_ms - current.last_pts_ms
        current.frame_count += 1
        current.last_pts_ms = pts_ms
        if keyframe:
            current.keyframe_offsets.append(pts_ms - current.start_ms)
        self._last_video_ms = pts_ms
        sealing = self._sealing
        if sealing is not None and sealing.end_ms is not None:
            if not self.audio or pts_ms - sealing.end_ms >= AUDIO_GRACE_MS:
                self._finalize_sealing()

    def _open_fragment(self, start_ms: int, arrival_time: float) -> _OpenFragment:
        assert self._sps is not None and self._pps is not None and self._sps_info is not None
        if self._avcc is None:
            self._avcc = build_avcc([self._sps], [self._pps])
        number = self.store.reserve_fragment_number()
        server_ms = round(arrival_time * 1000)
        tags = {
            TAG_FRAGMENT_NUMBER: number,
            TAG_SERVER_TIMESTAMP: timestamp_tag(server_ms),
            TAG_PRODUCER_TIMESTAMP: timestamp_tag(start_ms),
        }
        writer = FragmentWriter(
            avcc=self._avcc,
            width=self._sps_info.width,
            height=self._sps_info.height,
            tags=tags,
            audio=self._audio_config if self.audio else None,
            timecode_ms=start_ms,
        )
        self._opened += 1
        self._last_request_ms = None
        fragment = _OpenFragment(
            number=number,
            writer=writer,
            start_ms=start_ms,
            server_start_ms=server_ms,
            sps=self._sps_info,
        )
        self._current = fragment
        return fragment

    def _seal(self, fragment: _OpenFragment, end_ms: int) -> None:
        """Close the fragment's video at ``end_ms``; store it once its audio is complete."""
        if self._sealing is not None:
            self._finalize_sealing()
        fragment.end_ms = end_ms
        self._current = None
        self._sealing = fragment
        if not self.audio:
            self._finalize_sealing()

    def _finalize_sealing(self) -> None:
        fragment, self._sealing = self._sealing, None
        if fragment is not None:
            self._store(fragment)

    def _store(self, fragment: _OpenFragment) -> None:
        data = fragment.writer.finish()
        if fragment.end_ms is not None:
            duration = fragment.end_ms - fragment.start_ms
        else:
            interval = fragment.last_interval_ms or FALLBACK_FRAME_INTERVAL_MS
            duration = fragment.last_pts_ms - fragment.start_ms + interval
        meta = FragmentMeta(
            producer_start_ms=fragment.start_ms,
            server_start_ms=fragment.server_start_ms,
            duration_ms=duration,
            width=fragment.sps.width,
            height=fragment.sps.height,
            frame_count=fragment.frame_count,
            keyframe_offsets_ms=tuple(fragment.keyframe_offsets),
            codec_private=True,
            has_audio=fragment.audio_packets > 0,
            audio_frame_count=fragment.audio_packets,
            video_codec=fragment.sps.codec_string,
            audio_codec=AAC_CODEC_STRING if fragment.writer.has_audio_track else None,
        )
        stored = self.store.put_fragment(self.stream_arn, fragment.number, data, meta)
        self._stats.frames_stored += fragment.frame_count
        self._stats.audio_packets_stored += fragment.audio_packets
        self._stats.fragments += 1
        self.fragments.append(stored)
        if self._on_fragment is not None:
            self._call_on_loop(self._on_fragment, stored)

    # ------------------------------------------------------------------ audio

    def _open_audio_encoder(self) -> None:
        encoder = av.CodecContext.create("aac", "w")
        encoder.sample_rate = webrtc.OPUS_SAMPLE_RATE
        encoder.layout = AUDIO_LAYOUT
        encoder.format = "fltp"
        encoder.bit_rate = AAC_BIT_RATE
        encoder.options = {"aac_coder": AAC_CODER}
        encoder.time_base = Fraction(1, webrtc.OPUS_SAMPLE_RATE)
        encoder.open()
        self._encoder = encoder
        self._resampler = av.AudioResampler(
            format="fltp",
            layout=AUDIO_LAYOUT,
            rate=webrtc.OPUS_SAMPLE_RATE,
            frame_size=encoder.frame_size,
        )
        self._audio_config = AudioTrackConfig(
            extradata=bytes(encoder.extradata or b""),
            sample_rate=webrtc.OPUS_SAMPLE_RATE,
            layout=AUDIO_LAYOUT,
        )

    def _on_opus(self, batch: list[OpusPacket]) -> None:
        if self._opus_decoder is None:
            self._opus_decoder = OpusDecoder()
        for packet in batch:
            for frame, producer in self._opus_decoder.decode(packet):
                self._on_audio(frame, producer)

    def _on_audio(self, frame: av.AudioFrame, producer_time: float) -> None:
        self._stats.audio_frames_in += 1
        rate = frame.sample_rate or webrtc.OPUS_SAMPLE_RATE
        if frame.pts is not None and frame.time_base is not None:
            position = float(frame.pts * frame.time_base) * webrtc.OPUS_SAMPLE_RATE
        else:
            position = producer_time * webrtc.OPUS_SAMPLE_RATE
        if self._audio_anchor_ms is None or self._audio_first_pos is None:
            self._audio_anchor_ms = producer_time * 1000.0
            self._audio_first_pos = position
        gap = round(position - self._audio_first_pos) - self._samples_fed
        if gap > AUDIO_MAX_FILL_SAMPLES:
            # A long silence: move the anchor instead of synthesising minutes of zeros.
            self._audio_first_pos += gap
            self._audio_anchor_ms += gap * 1000.0 / webrtc.OPUS_SAMPLE_RATE
        elif gap > AUDIO_GAP_TOLERANCE_SAMPLES:
            silence = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=gap)
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            silence.sample_rate = rate
            self._stats.audio_silence_samples += gap
            self._encode_audio(silence)
        elif gap < -AUDIO_GAP_TOLERANCE_SAMPLES:
            self._stats.audio_frames_dropped += 1
            return
        self._encode_audio(frame)

    def _encode_audio(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            frame.pts = None
            self._samples_fed += frame.samples
        for chunk in self._resampler.resample(frame):
            self._encode_chunk(chunk)
        if frame is None:
            self._encode_chunk(None)

    def _encode_chunk(self, chunk: av.AudioFrame | None) -> None:
        if chunk is not None:
            chunk.pts = self._encoded_samples
            self._encoded_samples += chunk.samples
        for packet in self._encoder.encode(chunk):
            self._route_audio(packet)

    def _route_audio(self, packet: av.Packet) -> None:
        assert self._audio_anchor_ms is not None
        pts = packet.pts or 0
        t_ms = round(self._audio_anchor_ms + pts * 1000.0 / webrtc.OPUS_SAMPLE_RATE)
        duration_ms = round((packet.duration or 1024) * 1000.0 / webrtc.OPUS_SAMPLE_RATE)
        sealing, current = self._sealing, self._current
        target: _OpenFragment | None
        if sealing is not None and sealing.end_ms is not None and t_ms < sealing.end_ms:
            target = sealing
        elif current is not None and (t_ms >= current.start_ms or self._opened > 1):
            target = current  # late audio of an already stored period is kept, not lost
        else:
            target = None
        if target is None:
            self._stats.audio_frames_dropped += 1
        else:
            t_ms = max(t_ms, target.last_audio_ms)
            target.writer.write_audio(bytes(packet), t_ms, duration_ms)
            target.last_audio_ms = t_ms
            target.audio_packets += 1
        # A cut fragment is stored once the encoder has put out the packet that reaches its
        # end: every packet that starts before the cut is in it, so each fragment's audio
        # starts at or after its keyframe, as its video does (audio that led the video into
        # the next fragment left holes at segment joins where players place each segment
        # after the last: Chromium's HLS player stalled for good at one)
        if sealing is not None and sealing.end_ms is not None:
            if t_ms + duration_ms >= sealing.end_ms:
                self._finalize_sealing()

    # ------------------------------------------------------------------ close

    def _on_close(self) -> None:
        if self.audio and self._encoder is not None and self._audio_anchor_ms is not None:
            self._encode_audio(None)
        self._finalize_sealing()
        current, self._current = self._current, None
        if current is not None:
            self._store(current)
        logger.info("recorder for %s closed: %s", self.stream_arn, self._stats)
