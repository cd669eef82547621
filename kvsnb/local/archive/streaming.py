"""What HLS and DASH streaming sessions share: sessions and opaque tokens, fragment selection
per PlaybackMode, and the fMP4 init and media segments (``hls`` and ``dash`` add their
manifests and URL shapes).

The rule: docs/wire.md, "Archived media" (both APIs describe the same selection rules). Media
time 0 is the session's earliest sample, video or audio, so no sample is clamped and the
audio-video offset is kept; sessions live in memory (at most ``MAX_SESSIONS`` per protocol)
and segments are cached in a byte-bounded LRU (docs/design.md, "Local KVS").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kvsnb.local.archive import remux
from kvsnb.local.archive.plane import ArchivePlane
from kvsnb.local.control.plane import ControlPlane, Endpoints, Stream
from kvsnb.local.core.errors import (
    ClientLimitExceededException,
    InvalidArgumentException,
    MissingCodecPrivateDataException,
    NoDataRetentionException,
    NotAuthorizedException,
    ResourceNotFoundException,
    UnsupportedStreamMediaTypeException,
)
from kvsnb.local.store.fragments import SELECTOR_PRODUCER, SELECTOR_SERVER, Fragment, FragmentStore
from kvsnb.wire import webrtc
from kvsnb.wire.times import epoch_ms

logger = logging.getLogger(__name__)

MP4_CONTENT_TYPE = "video/mp4"
# Every streaming resource may be read by a player page on any origin (docs/design.md,
# principle 9); the front's CORS middleware answers the preflights.

LIVE, LIVE_REPLAY, ON_DEMAND = "LIVE", "LIVE_REPLAY", "ON_DEMAND"
ALWAYS, NEVER, ON_DISCONTINUITY = "ALWAYS", "NEVER", "ON_DISCONTINUITY"
DEFAULT_EXPIRES_S = 300
DEFAULT_LIVE_RESULTS = 5  # LIVE and LIVE_REPLAY (model: Max...FragmentResults)
DEFAULT_ON_DEMAND_RESULTS = 1000
LIVE_WINDOW_MS = 30_000  # LIVE needs a fragment within the last 30 s
LIVE_LOOKBACK_MS = 30_000  # server-time slack when querying newly ingested fragments
MAX_RANGE_MS = 24 * 3600 * 1000  # end within 24 h of start
DISCONTINUITY_GAP_MS = 50
LIVE_HISTORY = 1000  # fragments a live session keeps addressable
MAX_SESSIONS = 1000
TOKEN_BYTES = 32
SEGMENT_CACHE_BYTES = 64 * 1024 * 1024
PARSE_CACHE_BYTES = 32 * 1024 * 1024


# ---------------------------------------------------------------------------- caching


class ByteLru:
    """A least-recently-used cache bounded by the total size of its values (bytes or
    anything with a ``size``), with single-flight loading: concurrent ``get`` calls for a
    missing key share one ``load``. Use from one event loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._loading: dict[Hashable, asyncio.Future[Any]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    async def get(self, key: Hashable, load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value of ``key``, or ``await load()`` stored under it."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._loading.pop(key, None)
        future.set_result(value)
        self._put(key, value)
        return value

    def _put(self, key: Hashable, value: Any) -> None:
        size = len(value) if isinstance(value, bytes) else int(getattr(value, "size", 1))
        if size > self.max_bytes:
            return
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def __len__(self) -> int:
        return len(self._items)


# ---------------------------------------------------------------------------- sessions


@dataclass
class Entry:
    """One fragment of a session: its index (the FragmentNumber of segment URLs), whether a
    discontinuity precedes it, and (LIVE_REPLAY) when it joins the manifest."""

    index: int
    fragment: Fragment
    discontinuity: bool
    release_at: float = 0.0


@dataclass
class SessionOptions:
    """What a session URL request asked for, beyond mode and range."""

    container: str = "FRAGMENTED_MP4"
    discontinuity_mode: str = NEVER
    display_timestamp: bool = False
    display_number: bool = False
    max_results: int = DEFAULT_LIVE_RESULTS
    expires_s: int = DEFAULT_EXPIRES_S


@dataclass
class StreamingSession:
    """An HLS or DASH streaming session, addressed by its token."""

    token: str
    stream: Stream
    mode: str
    selector: str
    start_ms: int | None
    end_ms: int | None
    options: SessionOptions
    created: float
    expires_at: float
    origin_ms: int  # producer ms at media time 0 of the session timeline
    init: Fragment  # the fragment whose codec private data the init segments carry
    entries: list[Entry] = field(default_factory=list)
    discontinuities_dropped: int = 0  # markers before the first kept entry (LIVE)
    longest_ms: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def container(self) -> str:
        """FRAGMENTED_MP4 or MPEG_TS."""
        return self.options.container

    @property
    def max_results(self) -> int:
        """How many fragments a manifest or playlist lists at most."""
        return self.options.max_results

    @property
    def has_audio(self) -> bool:
        """True when the session serves an audio track (from its init fragment)."""
        return self.init.has_audio

    def entry(self, index: int) -> Entry:
        """The entry with this session index, or ResourceNotFoundException."""
        first = self.entries[0].index if self.entries else 0
        pos = index - first
        if pos < 0 or pos >= len(self.entries):
            raise ResourceNotFoundException(
                f"Fragment {index} is not part of this streaming session."
            )
        return self.entries[pos]

    def media_start_ms(self, entry: Entry) -> int:
        """Where an entry starts on the session timeline (ms from the origin)."""
        return entry.fragment.producer_start_ms - self.origin_ms


def selector_start(fragment: Fragment, selector: str) -> int:
    """A fragment's start in the selector's clock (epoch ms)."""
    if selector == SELECTOR_PRODUCER:
        return fragment.producer_start_ms
    return fragment.server_start_ms


def dedupe_producer(fragments: list[Fragment], keep_newest: bool) -> list[Fragment]:
    """One fragment per producer start time: the largest number (HLS, DASH) or the smallest
    (GetClip: "only the oldest ingested collection of fragments are returned")."""
    chosen: dict[int, Fragment] = {}
    for f in fragments:
        old = chosen.get(f.producer_start_ms)
        newer = old is None or int(f.fragment_number) > int(old.fragment_number)
        if old is None or newer == keep_newest:
            chosen[f.producer_start_ms] = f
    return sorted(chosen.values(), key=lambda f: (f.producer_start_ms, int(f.fragment_number)))


def iso_ms(ms: int) -> str:
    """``2023-05-17T13:48:35.994Z`` (epoch ms as ISO 8601 with milliseconds, UTC)."""
    stamp = dt.datetime.fromtimestamp(ms // 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def require_codec_private(fragment: Fragment) -> None:
    """The errors AWS gives for media it cannot stream (no codec private data, not H.264)."""
    if not fragment.codec_private:
        raise MissingCodecPrivateDataException(
            "No codec private data was found in the video track of the stream."
        )
    if not fragment.video_codec.startswith("avc1"):
        raise UnsupportedStreamMediaTypeException(
            f"The media type {fragment.video_codec} of track 1 is not supported."
        )


def check_range(mode: str, timestamps: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """The (start, end) ms of a session's range, checked per PlaybackMode."""
    start = end = None
    if timestamps is not None:
        if timestamps.get("StartTimestamp") is not None:
            start = epoch_ms(timestamps["StartTimestamp"])
        if timestamps.get("EndTimestamp") is not None:
            end = epoch_ms(timestamps["EndTimestamp"])
    if mode == LIVE:
        if timestamps is not None:
            raise InvalidArgumentException(
                "TimestampRange must not be set when PlaybackMode is LIVE."
            )
        return None, None
    if start is None:
        raise InvalidArgumentException(
            f"StartTimestamp must be specified when PlaybackMode is {mode}."
        )
    if mode == ON_DEMAND and end is None:
        raise InvalidArgumentException(
            "EndTimestamp must be specified when PlaybackMode is ON_DEMAND."
        )
    if end is not None:
        if end <= start:
            raise InvalidArgumentException("EndTimestamp must be later than StartTimestamp.")
        if end - start > MAX_RANGE_MS:
            raise InvalidArgumentException(
                "EndTimestamp must be within 24 hours of StartTimestamp."
            )
    return start, end


def fragment_index(query: Any) -> int:
    """The session index in a segment URL's ``FragmentNumber``."""
    raw = query.get("FragmentNumber")
    if raw is None:
        raise InvalidArgumentException("FragmentNumber must be specified.")
    if not raw.isdigit():
        raise InvalidArgumentException(f"FragmentNumber {raw!r} is not valid.")
    return int(raw)


class StreamingPlane:
    """Sessions, selection and fMP4 segments for one streaming protocol (``NAME``, "HLS" or
    "DASH"); subclasses add the session-URL operation and their resources.

    ``clock`` (epoch seconds) decides session expiry, the LIVE 30 s window and LIVE_REPLAY
    release times; tests may replace it to move time.
    """

    NAME = "streaming"

    def __init__(self, control: ControlPlane, store: FragmentStore, endpoints: Endpoints) -> None:
        self.control = control
        self.store = store
        self.endpoints = endpoints
        self.clock: Callable[[], float] = time.time
        self.sessions: dict[str, StreamingSession] = {}
        self.segments = ByteLru(SEGMENT_CACHE_BYTES)
        self.parsed = ByteLru(PARSE_CACHE_BYTES)
        self._archive = ArchivePlane(control, store)

    # ------------------------------------------------------------------ creating sessions

    async def open_session(
        self, req: dict[str, Any], selector_req: dict[str, Any] | None, options: SessionOptions
    ) -> StreamingSession:
        """Check a session-URL request (stream, retention, range, limits), select its
        fragments and register a new session (see the module doc)."""
        stream = self._archive.stream(req)
        if stream.retention_hours == 0:
            raise NoDataRetentionException(
                f"The stream {stream.name} has no data retention, so it has no media to play."
            )
        mode = req.get("PlaybackMode", LIVE)
        selector_req = selector_req or {}
        selector = selector_req.get("FragmentSelectorType", SELECTOR_SERVER)
        start_ms, end_ms = check_range(mode, selector_req.get("TimestampRange"))
        now = self.clock()
        self._purge(now)
        if len(self.sessions) >= MAX_SESSIONS:
            raise ClientLimitExceededException(
                f"Too many {self.NAME} streaming sessions are open in Local KVS; try again later."
            )
        fragments = await self._initial_fragments(stream, mode, selector, start_ms, end_ms, now)
        if mode == LIVE:
            fragments = fragments[-options.max_results :]  # start at the live edge
        require_codec_private(fragments[0])
        init = fragments[-1] if mode == LIVE else fragments[0]
        session = StreamingSession(
            token=secrets.token_urlsafe(TOKEN_BYTES),
            stream=stream,
            mode=mode,
            selector=selector,
            start_ms=start_ms,
            end_ms=end_ms,
            options=options,
            created=now,
            expires_at=now + options.expires_s,
            origin_ms=await self._origin(fragments),
            init=init,
        )
        self._append(session, fragments)
        self.sessions[session.token] = session
        logger.info(
            "%s session on %s: %s %s, %d fragment(s), expires in %d s",
            self.NAME,
            stream.name,
            mode,
            session.container,
            len(session.entries),
            session.expires_at - now,
        )
        return session

    async def _origin(self, fragments: list[Fragment]) -> int:
        """Media time 0: the earliest sample (video or audio) of the earliest fragment."""
        earliest = min(fragments, key=lambda f: f.producer_start_ms)
        parsed = await self.parse(earliest)
        starts = [earliest.producer_start_ms]
        if parsed.video.samples:
            starts.append(parsed.video.samples[0].time)
        if parsed.audio is not None and parsed.audio.samples:
            starts.append(parsed.audio.samples[0].time * 1000 // parsed.audio.sample_rate)
        return min(starts)

    async def _initial_fragments(
        self,
        stream: Stream,
        mode: str,
        selector: str,
        start_ms: int | None,
        end_ms: int | None,
        now: float,
    ) -> list[Fragment]:
        now_ms = int(now * 1000)
        if mode == LIVE:
            recent = await asyncio.to_thread(
                self.store.list_fragments, stream.arn, SELECTOR_SERVER, now_ms - LIVE_WINDOW_MS
            )
            recent.sort(key=lambda f: int(f.fragment_number))
            if not recent:
                raise ResourceNotFoundException(
                    f"No fragments were found in the stream {stream.name} in the last 30 "
                    "seconds for a LIVE session."
                )
            return recent
        found = await asyncio.to_thread(
            self.store.list_fragments, stream.arn, selector, start_ms, end_ms
        )
        if selector == SELECTOR_PRODUCER:
            found = dedupe_producer(found, keep_newest=True)
        if not found:
            raise ResourceNotFoundException(
                f"No fragments were found in the stream {stream.name} for the requested time range."
            )
        return found

    def _append(self, session: StreamingSession, fragments: list[Fragment]) -> None:
        """Add fragments (in session order) to a session, marking discontinuities and (for
        LIVE_REPLAY) release times. LIVE sessions are trimmed by ``refresh``; LIVE_REPLAY
        keeps every entry (bounded by its range or its expiry) as unreleased ones wait."""
        limit = session.max_results if session.mode == ON_DEMAND else None
        for fragment in fragments:
            if limit is not None and len(session.entries) >= limit:
                break
            prev = session.entries[-1] if session.entries else None
            index = prev.index + 1 if prev is not None else 0
            disc = self._discontinuous(session, prev.fragment if prev else None, fragment)
            release = session.created
            if session.mode == LIVE_REPLAY and prev is not None and index >= session.max_results:
                release = max(prev.release_at, session.created) + prev.fragment.duration_ms / 1000
            session.entries.append(Entry(index, fragment, disc, release))
            session.longest_ms = max(session.longest_ms, fragment.duration_ms)

    @staticmethod
    def _trim(session: StreamingSession, keep: int) -> None:
        extra = len(session.entries) - keep
        if extra > 0:
            dropped = session.entries[:extra]
            session.discontinuities_dropped += sum(e.discontinuity for e in dropped)
            del session.entries[:extra]

    @staticmethod
    def _discontinuous(session: StreamingSession, prev: Fragment | None, cur: Fragment) -> bool:
        """ALWAYS: every fragment, the first too (AWS writes a marker before the first
        segment); NEVER: none; ON_DISCONTINUITY: a gap or overlap over 50 ms."""
        mode = session.options.discontinuity_mode
        if mode == ALWAYS:
            return True
        if mode == NEVER or prev is None:
            return False
        gap = selector_start(cur, session.selector) - (
            selector_start(prev, session.selector) + prev.duration_ms
        )
        return abs(gap) > DISCONTINUITY_GAP_MS

    async def refresh(self, session: StreamingSession) -> None:
        """LIVE / LIVE_REPLAY: add the fragments stored since the session's newest one."""
        if session.mode == ON_DEMAND:
            return
        async with session.lock:
            newest = session.entries[-1].fragment
            if session.mode == LIVE:
                found = await asyncio.to_thread(
                    self.store.list_fragments,
                    session.stream.arn,
                    SELECTOR_SERVER,
                    newest.server_start_ms - LIVE_LOOKBACK_MS,
                )
                # Ingestion order; never a fragment older than the newest listed (the model).
                fresh = sorted(
                    (f for f in found if int(f.fragment_number) > int(newest.fragment_number)),
                    key=lambda f: int(f.fragment_number),
                )
                if fresh:
                    self._append(session, fresh)
                    self._trim(session, LIVE_HISTORY)
                return
            newest_key = (selector_start(newest, session.selector), int(newest.fragment_number))
            found = await asyncio.to_thread(
                self.store.list_fragments,
                session.stream.arn,
                session.selector,
                newest_key[0],
                session.end_ms,
            )
            if session.selector == SELECTOR_PRODUCER:
                found = dedupe_producer(found, keep_newest=True)
                fresh = [f for f in found if f.producer_start_ms > newest_key[0]]
            else:
                fresh = [
                    f
                    for f in found
                    if (selector_start(f, session.selector), int(f.fragment_number)) > newest_key
                ]
            if fresh:
                self._append(session, fresh)

    def visible(self, session: StreamingSession) -> tuple[list[Entry], bool]:
        """The entries a manifest shows now, and whether the session is complete."""
        if session.mode == ON_DEMAND:
            return list(session.entries), True
        if session.mode == LIVE:
            return session.entries[-session.max_results :], False
        now = self.clock()
        released = [e for e in session.entries if e.release_at <= now]
        ended = (
            session.end_ms is not None
            and session.end_ms < now * 1000
            and len(released) == len(session.entries)
        )
        return released[-session.max_results :], ended

    def _purge(self, now: float) -> None:
        for token in [t for t, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[token]

    def session(self, query: Any) -> StreamingSession:
        """The live session named by a request's ``SessionToken`` (AWS's errors otherwise)."""
        token = query.get("SessionToken")
        if not token:
            raise InvalidArgumentException("SessionToken must be specified.")
        session = self.sessions.get(token)
        if session is None:
            raise NotAuthorizedException("The session token is not valid.")
        if self.clock() >= session.expires_at:
            self.sessions.pop(token, None)
            raise NotAuthorizedException("The session token has expired.")
        return session

    # ------------------------------------------------------------------ segments

    @staticmethod
    def track(session: StreamingSession, query: Any, *, required: bool) -> int:
        """The ``TrackNumber`` of a request, checked against the session's tracks."""
        raw = query.get("TrackNumber")
        if raw is None:
            if required:
                raise InvalidArgumentException("TrackNumber must be specified.")
            return remux.VIDEO_TRACK
        try:
            track = int(raw)
        except ValueError as exc:
            raise InvalidArgumentException(f"TrackNumber {raw!r} is not valid.") from exc
        allowed = {remux.VIDEO_TRACK}
        if session.has_audio and session.container == "FRAGMENTED_MP4":
            allowed.add(remux.AUDIO_TRACK)
        if track not in allowed:
            raise InvalidArgumentException(f"TrackNumber {track} is not valid for this session.")
        return track

    async def parse(self, fragment: Fragment) -> remux.ParsedFragment:
        """A stored fragment's samples (cached)."""
        path = self.store.resolve(fragment)
        key = (fragment.stream_arn, fragment.fragment_number)

        async def load() -> remux.ParsedFragment:
            return await asyncio.to_thread(
                remux.read_fragment, path, fragment.producer_start_ms, fragment.producer_end_ms
            )

        parsed: remux.ParsedFragment = await self.parsed.get(key, load)
        return parsed

    async def mp4_init(self, session: StreamingSession, track: int) -> bytes:
        """The fMP4 init segment (``ftyp`` + ``moov``) of one track of a session."""
        init = session.init
        key = ("init", init.stream_arn, init.fragment_number, track)

        async def load() -> bytes:
            parsed = await self.parse(init)
            if track == remux.AUDIO_TRACK:
                if parsed.audio is None:
                    raise ResourceNotFoundException("The session's media has no audio track.")
                return remux.init_segment(parsed.audio, remux.AUDIO_TRACK)
            return remux.init_segment(parsed.video, remux.VIDEO_TRACK)

        body: bytes = await self.segments.get(key, load)
        return body

    async def mp4_media(self, session: StreamingSession, entry: Entry, track: int) -> bytes:
        """The fMP4 media segment (``moof`` + ``mdat``) of one entry and track."""
        fragment = entry.fragment
        key = (
            "mp4",
            fragment.stream_arn,
            fragment.fragment_number,
            track,
            entry.index,
            session.origin_ms,
            session.init.fragment_number,
        )

        async def load() -> bytes:
            parsed = await self.parse(fragment)
            init = await self.parse(session.init)
            if track == remux.AUDIO_TRACK:
                rate = init.audio.sample_rate if init.audio is not None else webrtc.OPUS_SAMPLE_RATE
                return await asyncio.to_thread(
                    remux.audio_segment, parsed, entry.index + 1, session.origin_ms, rate
                )
            return await asyncio.to_thread(
                remux.video_segment, parsed, entry.index + 1, session.origin_ms, init.video.avcc
            )

        body: bytes = await self.segments.get(key, load)
        return body

    @staticmethod
    def respond(body: bytes, content_type: str) -> web.Response:
        """A resource response (readable from any origin)."""
        return web.Response(body=body, content_type=content_type)  # CORS: front/cors.py
