"""Streaming sessions (HLS, DASH): the registry of open sessions and their opaque tokens,
expiry, and keeping LIVE and LIVE_REPLAY sessions up to date with the store.

The rule: docs/wire.md, "Archived media". Which fragments a session covers is ``selection``'s
(pure); this module lists them from the store and keeps them per session. Sessions live in
memory, at most ``MAX_SESSIONS`` per protocol (docs/design.md, "Local KVS").
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvsnb.local.archive import remux, selection
from kvsnb.local.archive.segments import Segments
from kvsnb.local.archive.selection import LIVE, LIVE_REPLAY, NEVER, ON_DEMAND, Entry
from kvsnb.local.control.plane import ControlPlane, Stream
from kvsnb.local.core.errors import (
    ClientLimitExceededException,
    InvalidArgumentException,
    NoDataRetentionException,
    NotAuthorizedException,
    ResourceNotFoundException,
)
from kvsnb.local.core.limits import TokenBucket
from kvsnb.local.store.fragments import SELECTOR_SERVER, Fragment, FragmentStore

logger = logging.getLogger(__name__)

DEFAULT_EXPIRES_S = 300
DEFAULT_LIVE_RESULTS = 5  # LIVE and LIVE_REPLAY (model: Max...FragmentResults)
DEFAULT_ON_DEMAND_RESULTS = 1000
MAX_SESSIONS = 1000
TOKEN_BYTES = 32
# AWS's quota on each playlist resource (GetHLSMasterPlaylist, GetHLSMediaPlaylist,
# GetDASHManifest): calls a second per session; one more is ClientLimitExceededException.
# (The fragment resources' 20 a second per session is not enforced: see docs/wire.md.)
PLAYLIST_CALLS_PER_S = 5.0
THROTTLED = (
    "Kinesis Video Streams has throttled the request because you have exceeded the limit of "
    "{rate:g} {resource} calls a second for this streaming session. Try making the call later."
)


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
    calls: dict[str, TokenBucket] = field(default_factory=dict)  # per playlist resource

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

    def gapless_start_ms(self, entry: Entry) -> int:
        """Where an entry starts on the session's timeline without gaps (ms from the origin,
        ``selection.timeline_shift``): what DASH presents."""
        return self.media_start_ms(entry) - entry.shift_ms

    def gaps(self, entry: Entry) -> tuple[bool, bool]:
        """Whether a gap (or overlap) in the media comes before and after an entry: more than
        ``selection.DISCONTINUITY_GAP_MS`` on the producer clock to the entry before and
        after it in the session (none known after the newest)."""
        pos = entry.index - (self.entries[0].index if self.entries else 0)
        before = self.entries[pos - 1] if pos > 0 else None
        after = self.entries[pos + 1] if pos + 1 < len(self.entries) else None
        return (
            before is not None and selection.is_gap(before.fragment, entry.fragment),
            after is not None and selection.is_gap(entry.fragment, after.fragment),
        )

    def append(self, fragments: list[Fragment]) -> None:
        """Add fragments (in session order) as entries (``selection.extend``)."""
        added = selection.extend(
            self.entries,
            fragments,
            mode=self.mode,
            selector=self.selector,
            discontinuity_mode=self.options.discontinuity_mode,
            max_results=self.max_results,
            created=self.created,
        )
        self.entries += added
        self.longest_ms = max([self.longest_ms, *(e.fragment.duration_ms for e in added)])

    def trim(self, keep: int) -> None:
        """Keep the newest ``keep`` entries, counting the discontinuities dropped."""
        extra = len(self.entries) - keep
        if extra > 0:
            self.discontinuities_dropped += sum(e.discontinuity for e in self.entries[:extra])
            del self.entries[:extra]


def fragment_index(query: Any) -> int:
    """The session index in a segment URL's ``FragmentNumber``."""
    raw = query.get("FragmentNumber")
    if raw is None:
        raise InvalidArgumentException("FragmentNumber must be specified.")
    if not raw.isdigit():
        raise InvalidArgumentException(f"FragmentNumber {raw!r} is not valid.")
    return int(raw)


def track_number(session: StreamingSession, query: Any, *, required: bool) -> int:
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


class SessionRegistry:
    """The open sessions of one streaming protocol (``protocol``, "HLS" or "DASH").

    ``clock`` (epoch seconds) decides session expiry, the LIVE 30 s window and LIVE_REPLAY
    release times.
    """

    def __init__(
        self,
        protocol: str,
        control: ControlPlane,
        store: FragmentStore,
        segments: Segments,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.protocol = protocol
        self.control = control
        self.store = store
        self.segments = segments
        self.clock = clock
        self.sessions: dict[str, StreamingSession] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    async def open(
        self, req: dict[str, Any], selector_req: dict[str, Any] | None, options: SessionOptions
    ) -> StreamingSession:
        """Check a session-URL request (stream, retention, range, limits), select its
        fragments and register a new session."""
        stream = self.control.stream_of(req, exclusive=True)
        if stream.retention_hours == 0:
            raise NoDataRetentionException(
                f"The stream {stream.name} has no data retention, so it has no media to play."
            )
        mode = req.get("PlaybackMode", LIVE)
        selector_req = selector_req or {}
        selector = selector_req.get("FragmentSelectorType", SELECTOR_SERVER)
        start_ms, end_ms = selection.check_range(mode, selector_req.get("TimestampRange"))
        now = self.clock()
        self._purge(now)
        if len(self.sessions) >= MAX_SESSIONS:
            raise ClientLimitExceededException(
                f"Too many {self.protocol} streaming sessions are open in Local KVS; "
                "try again later."
            )
        fragments = await self._initial_fragments(stream, mode, selector, start_ms, end_ms, now)
        if mode == LIVE:
            fragments = fragments[-options.max_results :]  # start at the live edge
        selection.require_codec_private(fragments[0])
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
            origin_ms=await self.segments.origin(fragments),
            init=fragments[-1] if mode == LIVE else fragments[0],
        )
        session.append(fragments)
        self.sessions[session.token] = session
        logger.info(
            "%s session on %s: %s %s, %d fragment(s), expires in %d s",
            self.protocol,
            stream.name,
            mode,
            session.container,
            len(session.entries),
            session.expires_at - now,
        )
        return session

    async def _initial_fragments(
        self,
        stream: Stream,
        mode: str,
        selector: str,
        start_ms: int | None,
        end_ms: int | None,
        now: float,
    ) -> list[Fragment]:
        if mode == LIVE:
            since = int(now * 1000) - selection.LIVE_WINDOW_MS
            recent = await asyncio.to_thread(
                self.store.list_fragments, stream.arn, SELECTOR_SERVER, since
            )
            return selection.live_fragments(recent, stream.name)
        found = await asyncio.to_thread(
            self.store.list_fragments, stream.arn, selector, start_ms, end_ms
        )
        return selection.range_fragments(found, selector, stream.name)

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
                    newest.server_start_ms - selection.LIVE_LOOKBACK_MS,
                )
                fresh = selection.newer_live(found, newest)
                if fresh:
                    session.append(fresh)
                    session.trim(selection.LIVE_HISTORY)
                return
            found = await asyncio.to_thread(
                self.store.list_fragments,
                session.stream.arn,
                session.selector,
                selection.selector_start(newest, session.selector),
                session.end_ms,
            )
            fresh = selection.newer_in_range(found, newest, session.selector)
            if fresh:
                session.append(fresh)

    def visible(self, session: StreamingSession) -> tuple[list[Entry], bool]:
        """The entries a manifest shows now, and whether the session is complete."""
        now = self.clock() if session.mode == LIVE_REPLAY else 0.0
        return selection.visible(
            session.entries, session.mode, session.max_results, session.end_ms, now
        )

    def _purge(self, now: float) -> None:
        for token in [t for t, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[token]

    def get(self, query: Any, playlist: str | None = None) -> StreamingSession:
        """The live session named by a request's ``SessionToken`` (AWS's errors otherwise);
        ``playlist`` names a playlist resource, whose calls are limited per session
        (``PLAYLIST_CALLS_PER_S``)."""
        token = query.get("SessionToken")
        if not token:
            raise InvalidArgumentException("SessionToken must be specified.")
        session = self.sessions.get(token)
        if session is None:
            raise NotAuthorizedException("The session token is not valid.")
        if self.clock() >= session.expires_at:
            self.sessions.pop(token, None)
            raise NotAuthorizedException("The session token has expired.")
        if playlist is not None:
            bucket = session.calls.get(playlist)
            if bucket is None:  # on the sessions' clock, which tests move as they move time
                bucket = session.calls[playlist] = TokenBucket(PLAYLIST_CALLS_PER_S, self.clock)
            if not bucket.take():
                raise ClientLimitExceededException(
                    THROTTLED.format(rate=PLAYLIST_CALLS_PER_S, resource=playlist)
                )
        return session
