"""The kinesis-video-media plane: PutMedia (``POST /putMedia``, a streaming MKV upload answered
with JSON acknowledgements while it goes on) and GetMedia (``POST /getMedia``, MKV chunks that
follow the stream), as docs/wire.md, "PutMedia" and "GetMedia" describe.

The rule: fragments are stored through the same FragmentStore as WebRTC ones, so every
archived-media API reads them; bad input gets AWS's ERROR acknowledgement or HTTP error and
what was persisted before stays. Local KVS stores H.264 (track 1, avcC codec private data) and
AAC only: another codec gets ERROR 4006 (AWS would store it). The signature covers the
headers only (sign with ``X-Amz-Content-SHA256: UNSIGNED-PAYLOAD``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kvsnb.local.control.plane import ControlPlane, Stream
from kvsnb.local.core import protocol
from kvsnb.local.core.errors import (
    InvalidArgumentException,
    ResourceNotFoundException,
)
from kvsnb.local.store.fragments import Fragment, FragmentMeta, FragmentStore
from kvsnb.local.store.mkv import (
    AUDIO_CODEC_ID,
    TAG_FRAGMENT_NUMBER,
    TAG_PRODUCER_TIMESTAMP,
    TAG_SERVER_TIMESTAMP,
    VIDEO_CODEC_ID,
    AudioTrackConfig,
    FragmentWriter,
    timestamp_tag,
    with_tags,
)
from kvsnb.wire.ebml import (
    Block,
    ClusterEnd,
    ClusterStart,
    ClusterTimecode,
    HeaderEvent,
    MkvError,
    ParseEvent,
    PushParser,
    StreamHeader,
)
from kvsnb.wire.h264 import parse_sps

logger = logging.getLogger(__name__)

PLANE = "stream-media"
PUT_MEDIA_PATH = "/putMedia"
GET_MEDIA_PATH = "/getMedia"
AAC_CODEC_STRING = "mp4a.40.2"
MKV_CONTENT_TYPE = "video/webm"
READ_CHUNK_BYTES = 1 << 20
GET_MEDIA_BATCH = 50
FALLBACK_FRAME_INTERVAL_MS = 33

# GetMedia tags (the model's documentation of GetMediaOutput.Payload).
TAG_GM_FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_GM_SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
TAG_GM_PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
TAG_GM_MILLIS_BEHIND_NOW = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"
TAG_GM_CONTINUATION_TOKEN = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"

# PutMedia acknowledgement error ids (PutMedia API reference).
STREAM_READ_ERROR = (4000, "STREAM_READ_ERROR")
MAX_FRAGMENT_SIZE_REACHED = (4001, "MAX_FRAGMENT_SIZE_REACHED")
MAX_FRAGMENT_DURATION_REACHED = (4002, "MAX_FRAGMENT_DURATION_REACHED")
MAX_CONNECTION_DURATION_REACHED = (4003, "MAX_CONNECTION_DURATION_REACHED")
FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS = (4004, "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS")
INVALID_MKV_DATA = (4006, "INVALID_MKV_DATA")
STREAM_NOT_ACTIVE = (4008, "STREAM_NOT_ACTIVE")
TRACK_NUMBER_MISMATCH = (4010, "TRACK_NUMBER_MISMATCH")
FRAMES_MISSING_FOR_TRACK = (4011, "FRAMES_MISSING_FOR_TRACK")
MORE_THAN_ALLOWED_TRACKS_FOUND = (4012, "MORE_THAN_ALLOWED_TRACKS_FOUND")
INTERNAL_ERROR = (5000, "INTERNAL_ERROR")
ARCHIVAL_ERROR = (5001, "ARCHIVAL_ERROR")

Authorize = Callable[[web.Request, bytes], Awaitable[None]]


@dataclass
class MediaOptions:
    """Limits of the media plane (AWS's by default; tests shorten the timers)."""

    max_fragment_bytes: int = 50 * 1024 * 1024
    max_fragment_duration_ms: int = 10_000
    max_tracks: int = 3
    max_connection_s: float | None = None  # AWS ends a PutMedia connection at some point
    idle_ack_interval_s: float = 3.0  # (inferred) AWS sends IDLE "periodically"
    idle_timeout_s: float = 30.0
    get_media_idle_s: float = 10.0  # (inferred)


class PutMediaFailure(Exception):
    """A PutMedia input problem, answered with an ERROR acknowledgement (the service side;
    the client's ``kvsnb.putmedia.PutMediaError`` is what a producer sees)."""

    def __init__(self, error: tuple[int, str], message: str) -> None:
        super().__init__(message)
        self.error_id, self.error_code = error


@dataclass
class _Fragment:
    """A fragment (MKV Cluster) being received."""

    server_ms: int
    first_byte: int
    timecode_ms: int | None = None
    number: str | None = None
    producer_start_ms: int = 0
    frames: list[tuple[int, int, bool, bytes]] = field(default_factory=list)  # track, ms, key, data
    last_ms: int | None = None
    size: int = 0

    def ack(self, event: str) -> dict[str, Any]:
        """An acknowledgement about this fragment."""
        out: dict[str, Any] = {"EventType": event}
        if self.timecode_ms is not None:
            out["FragmentTimecode"] = self.timecode_ms
        if self.number is not None:
            out["FragmentNumber"] = self.number
        return out


class MediaPlane:
    """PutMedia and GetMedia over the fragment store (see the module docstring)."""

    def __init__(
        self, control: ControlPlane, store: FragmentStore, options: MediaOptions | None = None
    ) -> None:
        self.control = control
        self.store = store
        self.options = options or MediaOptions()
        self.streaming_routes: dict[str, Callable[[web.Request, Authorize], Awaitable[Any]]] = {
            PUT_MEDIA_PATH: self._tracked(self.put_media),
            GET_MEDIA_PATH: self._tracked(self.get_media),
        }
        self._active: set[asyncio.Task[Any]] = set()

    def _tracked(
        self, handler: Callable[[web.Request, Authorize], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request, Authorize], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request, authorize: Authorize) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self._active.add(task)
            try:
                return await handler(request, authorize)
            finally:
                self._active.discard(task)

        return run

    async def close(self) -> None:
        """End every PutMedia and GetMedia in progress (Local KVS is stopping); fragments
        already received are stored first."""
        tasks = list(self._active)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # ------------------------------------------------------------------ PutMedia

    async def put_media(self, request: web.Request, authorize: Authorize) -> web.StreamResponse:
        """PutMedia: read the MKV body as it arrives and answer acknowledgements."""
        await authorize(request, b"")
        headers = request.headers
        stream = self.control.stream_of(
            {
                "StreamName": headers.get("x-amzn-stream-name"),
                "StreamARN": headers.get("x-amzn-stream-arn"),
            },
            exclusive=True,
        )
        kind = headers.get("x-amzn-fragment-timecode-type")
        if kind not in ("ABSOLUTE", "RELATIVE"):
            raise InvalidArgumentException(
                f"x-amzn-fragment-timecode-type {kind!r} is not valid: ABSOLUTE or RELATIVE."
            )
        raw_start = headers.get("x-amzn-producer-start-timestamp")
        start_ms = 0
        if raw_start is not None:
            try:
                start_ms = round(float(raw_start) * 1000)
            except ValueError:
                raise InvalidArgumentException(
                    f"x-amzn-producer-start-timestamp {raw_start!r} is not a timestamp."
                ) from None
        elif kind == "RELATIVE":
            raise InvalidArgumentException(
                "x-amzn-producer-start-timestamp is required with RELATIVE timecodes."
            )
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        session = _PutMediaSession(self, stream, kind == "RELATIVE", start_ms, response)
        await session.run(request.content)
        return response

    def store_fragment(self, stream: Stream, header: StreamHeader, frag: _Fragment) -> Fragment:
        """Write a received fragment in the stored layout, one Cluster at its producer start
        with its frames as received, and store it durably (blocking)."""
        video = header.tracks[0]
        audio = next((t for t in header.tracks[1:] if t.kind == "audio"), None)
        width, height, codec = video.width, video.height, "avc1"
        try:
            sps = _avcc_sps(video.codec_private)
            info = parse_sps(sps)
            width, height, codec = info.width, info.height, info.codec_string
        except (ValueError, IndexError):
            logger.warning("PutMedia: codec private data of %s has no readable SPS", stream.name)
        assert frag.number is not None
        tags = {
            TAG_FRAGMENT_NUMBER: frag.number,
            TAG_SERVER_TIMESTAMP: timestamp_tag(frag.server_ms),
            TAG_PRODUCER_TIMESTAMP: timestamp_tag(frag.producer_start_ms),
        }
        audio_config = (
            AudioTrackConfig(
                audio.codec_private,
                int(audio.sample_rate),
                "mono" if audio.channels == 1 else "stereo",
            )
            if audio is not None
            else None
        )
        writer = FragmentWriter(
            avcc=video.codec_private,
            width=width,
            height=height,
            tags=tags,
            audio=audio_config,
            timecode_ms=frag.producer_start_ms,
        )
        video_ms = [ms for track, ms, _, _ in frag.frames if track == video.number]
        audio_ms = [ms for track, ms, _, _ in frag.frames if audio and track == audio.number]
        keyframes: list[int] = []
        audio_index = 0
        for track, ms, key, data in frag.frames:
            if track == video.number:
                writer.write_video(data, ms, key)
                if key:
                    keyframes.append(ms - frag.producer_start_ms)
            elif audio is not None and track == audio.number:
                nxt = audio_ms[audio_index + 1] if audio_index + 1 < len(audio_ms) else None
                default = round(1024 * 1000 / audio.sample_rate) if audio.sample_rate else 21
                writer.write_audio(data, ms, (nxt - ms) if nxt is not None else default)
                audio_index += 1
        data = writer.finish()
        interval = video_ms[-1] - video_ms[-2] if len(video_ms) > 1 else FALLBACK_FRAME_INTERVAL_MS
        meta = FragmentMeta(
            producer_start_ms=frag.producer_start_ms,
            server_start_ms=frag.server_ms,
            duration_ms=max(1, video_ms[-1] + interval - frag.producer_start_ms),
            width=width,
            height=height,
            frame_count=len(video_ms),
            keyframe_offsets_ms=tuple(keyframes),
            codec_private=bool(video.codec_private),
            has_audio=bool(audio_ms),
            audio_frame_count=len(audio_ms),
            video_codec=codec,
            audio_codec=AAC_CODEC_STRING if audio is not None else None,
        )
        self.control.stream(arn=stream.arn)  # ResourceNotFoundException: deleted meanwhile
        return self.store.put_fragment(stream.arn, frag.number, data, meta)

    # ------------------------------------------------------------------ GetMedia

    async def get_media(self, request: web.Request, authorize: Authorize) -> web.StreamResponse:
        """GetMedia: the stream's chunks from the StartSelector on, following the stream."""
        body = await request.read()
        await authorize(request, body)
        route = protocol.routes()[(PLANE, GET_MEDIA_PATH)]
        req = protocol.parse_input(route, body)
        stream = self.control.stream_of(req, exclusive=True)
        cursor = await asyncio.to_thread(self._start_cursor, stream, req["StartSelector"])
        response = web.StreamResponse(status=200, headers={"Content-Type": MKV_CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await self._follow(stream, cursor, response)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            logger.debug("GetMedia reader of %s went away", stream.name)
        return response

    def _start_cursor(self, stream: Stream, selector: dict[str, Any]) -> str | None:
        """The fragment number after which GetMedia starts (None: from the first)."""
        kind = selector["StartSelectorType"]
        if kind == "EARLIEST":
            return None
        if kind == "NOW":
            latest = self.store.latest_fragment(stream.arn)
            return latest.fragment_number if latest is not None else "0"
        if kind in ("FRAGMENT_NUMBER", "CONTINUATION_TOKEN"):
            member = "AfterFragmentNumber" if kind == "FRAGMENT_NUMBER" else "ContinuationToken"
            number = selector.get(member)
            if number is None:
                raise InvalidArgumentException(f"{member} is required with {kind}.")
            if not number.isdigit() or not self.store.get_fragments(stream.arn, [number]):
                raise ResourceNotFoundException(
                    f"Fragment {number} was not found in stream {stream.name}."
                )
            return str(number)
        start = selector.get("StartTimestamp")
        if start is None:
            raise InvalidArgumentException(f"StartTimestamp is required with {kind}.")
        first = self.store.fragment_at(stream.arn, kind, round(start.timestamp() * 1000))
        if first is None:
            latest = self.store.latest_fragment(stream.arn)
            return latest.fragment_number if latest is not None else "0"
        return str(int(first.fragment_number) - 1).rjust(len(first.fragment_number), "0")

    async def _follow(
        self, stream: Stream, cursor: str | None, response: web.StreamResponse
    ) -> None:
        while True:
            batch = await asyncio.to_thread(
                self.store.fragments_after, stream.arn, cursor, GET_MEDIA_BATCH
            )
            if not batch:
                try:
                    await self.store.wait_for_fragment(
                        stream.arn,
                        after_number=cursor if cursor is not None else "0",
                        timeout=self.options.get_media_idle_s,
                    )
                except TimeoutError:
                    return
                continue
            latest = batch[-1]
            for fragment in batch:
                chunk = await asyncio.to_thread(self._chunk, fragment, latest)
                await response.write(chunk)
                cursor = fragment.fragment_number

    def _chunk(self, fragment: Fragment, latest: Fragment) -> bytes:
        data = self.store.resolve(fragment).read_bytes()
        newest = self.store.latest_fragment(fragment.stream_arn) or latest
        behind = max(0, newest.server_start_ms - fragment.server_start_ms)
        head = {
            TAG_GM_FRAGMENT_NUMBER: fragment.fragment_number,
            TAG_GM_SERVER_TIMESTAMP: timestamp_tag(fragment.server_start_ms),
            TAG_GM_PRODUCER_TIMESTAMP: timestamp_tag(fragment.producer_start_ms),
        }
        tail = {
            TAG_GM_MILLIS_BEHIND_NOW: str(behind),
            TAG_GM_CONTINUATION_TOKEN: fragment.fragment_number,
        }
        return with_tags(data, head, tail)


def _avcc_sps(avcc: bytes) -> bytes:
    """The first SPS of an AVCDecoderConfigurationRecord."""
    if len(avcc) < 8 or avcc[0] != 1 or not avcc[5] & 0x1F:
        raise ValueError("not an avcC record")
    size = int.from_bytes(avcc[6:8], "big")
    return avcc[8 : 8 + size]


class _PutMediaSession:
    """One PutMedia request: parse, check, acknowledge, store (see the module docstring)."""

    def __init__(
        self,
        plane: MediaPlane,
        stream: Stream,
        relative: bool,
        start_ms: int,
        response: web.StreamResponse,
    ) -> None:
        self.plane = plane
        self.options = plane.options
        self.stream = stream
        self.relative = relative
        self.start_ms = start_ms
        self.response = response
        self.parser = PushParser(max_element_bytes=self.options.max_fragment_bytes)
        self.header: StreamHeader | None = None
        self.current: _Fragment | None = None
        self.previous_last_ms: int | None = None
        self.acks: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.to_store: asyncio.Queue[tuple[StreamHeader, _Fragment] | None] = asyncio.Queue(2)
        self.failed = False
        self.store_broken = False
        self.client_gone = False

    async def run(self, content: Any) -> None:
        writer = asyncio.create_task(self._write_acks())
        storer = asyncio.create_task(self._store_fragments())
        try:
            await self._read(content)
        except PutMediaFailure as err:
            self._error(err)
        except Exception:
            logger.exception("PutMedia into %s failed", self.stream.name)
            self._error(PutMediaFailure(INTERNAL_ERROR, "internal error"))
        finally:
            await self.to_store.put(None)
            with contextlib.suppress(Exception):
                await storer
            self.acks.put_nowait(None)
            with contextlib.suppress(Exception):
                await writer
        if not self.client_gone:
            with contextlib.suppress(ConnectionResetError):
                await self.response.write_eof()

    def _error(self, err: PutMediaFailure) -> None:
        self.failed = True
        logger.info("PutMedia into %s: %s (%s)", self.stream.name, err, err.error_code)
        ack: dict[str, Any] = (
            self.current.ack("ERROR") if self.current is not None else {"EventType": "ERROR"}
        )
        ack["ErrorId"] = err.error_id
        ack["ErrorCode"] = err.error_code
        self.acks.put_nowait(ack)

    async def _write_acks(self) -> None:
        while (ack := await self.acks.get()) is not None:
            if self.client_gone:
                continue
            try:
                await self.response.write(json.dumps(ack).encode() + b"\n")
            except (ConnectionResetError, RuntimeError):
                self.client_gone = True

    async def _store_fragments(self) -> None:
        while (item := await self.to_store.get()) is not None:
            header, frag = item
            if self.store_broken:
                continue
            try:
                await asyncio.to_thread(self.plane.store_fragment, self.stream, header, frag)
            except ResourceNotFoundException:
                self.store_broken = True
                self._error(PutMediaFailure(STREAM_NOT_ACTIVE, "the stream was deleted"))
                continue
            except Exception:
                logger.exception("PutMedia: storing a fragment of %s failed", self.stream.name)
                self.store_broken = True
                self._error(PutMediaFailure(ARCHIVAL_ERROR, "the fragment could not be stored"))
                continue
            self.acks.put_nowait(frag.ack("PERSISTED"))

    async def _read(self, content: Any) -> None:
        idle_since = time.monotonic()
        began = time.monotonic()
        while not self.failed:
            limit = self.options.max_connection_s
            if limit is not None and time.monotonic() - began > limit:
                raise PutMediaFailure(MAX_CONNECTION_DURATION_REACHED, "connection too long")
            try:
                chunk = await asyncio.wait_for(
                    content.readany(), timeout=self.options.idle_ack_interval_s
                )
            except TimeoutError:
                if time.monotonic() - idle_since >= self.options.idle_timeout_s:
                    return
                self.acks.put_nowait({"EventType": "IDLE"})
                continue
            except Exception as exc:  # the client broke the upload off
                raise PutMediaFailure(STREAM_READ_ERROR, f"reading the body failed: {exc}") from exc
            if not chunk:
                try:
                    events = self.parser.end()
                except MkvError as exc:
                    raise PutMediaFailure(INVALID_MKV_DATA, str(exc)) from exc
                await self._events(events)
                return
            idle_since = time.monotonic()
            try:
                events = self.parser.feed(chunk)
            except MkvError as exc:
                raise PutMediaFailure(INVALID_MKV_DATA, str(exc)) from exc
            await self._events(events)
            if self.current is not None:
                size = self.parser.bytes_in - self.current.first_byte
                if size > self.options.max_fragment_bytes:
                    raise PutMediaFailure(MAX_FRAGMENT_SIZE_REACHED, f"fragment over {size} bytes")

    async def _events(self, events: list[ParseEvent]) -> None:
        for event in events:
            if isinstance(event, HeaderEvent):
                self.header = self._check_header(event.header)
            elif isinstance(event, ClusterStart):
                if self.header is None:
                    raise PutMediaFailure(INVALID_MKV_DATA, "a Cluster before the Tracks")
                self.current = _Fragment(round(time.time() * 1000), self.parser.bytes_in)
            elif isinstance(event, ClusterTimecode):
                await self._timecode(event.timecode)
            elif isinstance(event, Block):
                self._block(event)
            elif isinstance(event, ClusterEnd):
                await self._cluster_end()

    def _check_header(self, header: StreamHeader) -> StreamHeader:
        tracks = header.tracks
        if len(tracks) > self.options.max_tracks:
            raise PutMediaFailure(MORE_THAN_ALLOWED_TRACKS_FOUND, f"{len(tracks)} tracks")
        if not tracks or tracks[0].codec_id != VIDEO_CODEC_ID or not tracks[0].codec_private:
            raise PutMediaFailure(
                INVALID_MKV_DATA,
                f"Local KVS stores H.264 ({VIDEO_CODEC_ID} with codec private data) as track 1",
            )
        for track in tracks[1:]:
            if track.codec_id != AUDIO_CODEC_ID:
                raise PutMediaFailure(
                    INVALID_MKV_DATA,
                    f"Local KVS stores {AUDIO_CODEC_ID} audio only, not {track.codec_id}",
                )
        return StreamHeader(header.timecode_scale_ns, list(tracks))

    def _ms(self, timecode: int) -> int:
        assert self.header is not None
        ms = round(timecode * self.header.timecode_scale_ns / 1_000_000)
        return ms + self.start_ms if self.relative else ms

    async def _timecode(self, timecode: int) -> None:
        frag = self.current
        if frag is None or self.header is None:
            raise PutMediaFailure(INVALID_MKV_DATA, "a Timecode outside a Cluster")
        frag.timecode_ms = round(timecode * self.header.timecode_scale_ns / 1_000_000)
        frag.producer_start_ms = self._ms(timecode)
        frag.number = await asyncio.to_thread(self.plane.store.reserve_fragment_number)
        self.acks.put_nowait(frag.ack("BUFFERING"))

    def _block(self, block: Block) -> None:
        frag, header = self.current, self.header
        if frag is None or header is None or frag.timecode_ms is None:
            raise PutMediaFailure(INVALID_MKV_DATA, "a block before its Cluster's Timecode")
        if all(t.number != block.track for t in header.tracks):
            raise PutMediaFailure(TRACK_NUMBER_MISMATCH, f"block of track {block.track}")
        assert header is not None
        cluster_tc = frag.producer_start_ms
        ms = cluster_tc + round(block.relative_timecode * header.timecode_scale_ns / 1_000_000)
        if not frag.frames and self.previous_last_ms is not None and ms < self.previous_last_ms:
            raise PutMediaFailure(
                FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                f"fragment starts at {ms} ms, before the previous one's last frame",
            )
        if ms - frag.producer_start_ms > self.options.max_fragment_duration_ms:
            raise PutMediaFailure(MAX_FRAGMENT_DURATION_REACHED, "fragment too long")
        frag.size += len(block.data)
        if frag.size > self.options.max_fragment_bytes:
            raise PutMediaFailure(MAX_FRAGMENT_SIZE_REACHED, f"fragment over {frag.size} bytes")
        frag.frames.append((block.track, ms, block.keyframe, block.data))
        frag.last_ms = ms if frag.last_ms is None else max(frag.last_ms, ms)

    async def _cluster_end(self) -> None:
        frag, header, self.current = self.current, self.header, None
        if frag is None or header is None:
            return
        if frag.timecode_ms is None:
            raise PutMediaFailure(INVALID_MKV_DATA, "a Cluster without a Timecode")
        present = {track for track, _, _, _ in frag.frames}
        missing = [t.number for t in header.tracks if t.number not in present]
        if missing:
            self.current = frag
            raise PutMediaFailure(FRAMES_MISSING_FOR_TRACK, f"no frames for track {missing[0]}")
        self.previous_last_ms = frag.last_ms
        self.acks.put_nowait(frag.ack("RECEIVED"))
        if self.stream.retention_hours > 0:
            await self.to_store.put((header, frag))
