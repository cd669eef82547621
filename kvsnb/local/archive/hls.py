"""HLS on stored fragments: GetHLSStreamingSessionURL and the HLS resources under ``/hls/v1/``
of the archived-media endpoint.

The rule: sessions, playback modes, time ranges, defaults and the resources a player fetches
behave as docs/wire.md, "Archived media" (HLS) describes; segments come from ``remux`` and are
never re-encoded. How Local KVS keeps sessions (opaque tokens in memory, at most
``MAX_SESSIONS``) and what it leaves out: docs/design.md, "Local KVS".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kvsnb import webrtc
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
    UnknownOperationException,
    UnsupportedStreamMediaTypeException,
)
from kvsnb.local.store.fragments import SELECTOR_PRODUCER, SELECTOR_SERVER, Fragment, FragmentStore
from kvsnb.times import epoch_ms

logger = logging.getLogger(__name__)

HLS_PREFIX = "/hls/v1/"
MASTER_PLAYLIST = "getHLSMasterPlaylist.m3u8"
MEDIA_PLAYLIST = "getHLSMediaPlaylist.m3u8"
MP4_INIT = "getMP4InitFragment.mp4"
MP4_MEDIA = "getMP4MediaFragment.mp4"
TS_FRAGMENT = "getTSFragment.ts"
PLAYLIST_CONTENT_TYPE = "application/vnd.apple.mpegurl"
MP4_CONTENT_TYPE = "video/mp4"
TS_CONTENT_TYPE = "video/mp2t"

LIVE, LIVE_REPLAY, ON_DEMAND = "LIVE", "LIVE_REPLAY", "ON_DEMAND"
FRAGMENTED_MP4, MPEG_TS = "FRAGMENTED_MP4", "MPEG_TS"
ALWAYS, NEVER, ON_DISCONTINUITY = "ALWAYS", "NEVER", "ON_DISCONTINUITY"
DEFAULT_EXPIRES_S = 300
DEFAULT_LIVE_RESULTS = 5  # LIVE and LIVE_REPLAY (model: MaxMediaPlaylistFragmentResults)
DEFAULT_ON_DEMAND_RESULTS = 1000
LIVE_WINDOW_MS = 30_000  # LIVE needs a fragment within the last 30 s
LIVE_LOOKBACK_MS = 30_000  # server-time slack when querying newly ingested fragments
MAX_RANGE_MS = 24 * 3600 * 1000  # end within 24 h of start
DISCONTINUITY_GAP_MS = 50
LIVE_HISTORY = 1000  # fragments a live session keeps addressable
MAX_SESSIONS = 1000
TOKEN_BYTES = 32
FMP4_VERSION = 7
TS_VERSION = 3
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
    """One fragment of a session: its index (the HLS FragmentNumber), whether a
    discontinuity precedes it, and (LIVE_REPLAY) when it joins the playlist."""

    index: int
    fragment: Fragment
    discontinuity: bool
    release_at: float = 0.0


@dataclass
class HlsSession:
    """An HLS streaming session, addressed by its token."""

    token: str
    stream: Stream
    mode: str
    container: str
    selector: str
    start_ms: int | None
    end_ms: int | None
    discontinuity_mode: str
    display_timestamp: bool
    max_results: int
    created: float
    expires_at: float
    origin_ms: int  # producer ms at media time 0 of the session timeline
    init: Fragment  # the fragment whose codec private data the init segments carry
    entries: list[Entry] = field(default_factory=list)
    discontinuities_dropped: int = 0  # markers before the first kept entry (LIVE)
    longest_ms: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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


def selector_start(fragment: Fragment, selector: str) -> int:
    """A fragment's start in the selector's clock (epoch ms)."""
    if selector == SELECTOR_PRODUCER:
        return fragment.producer_start_ms
    return fragment.server_start_ms


def dedupe_producer(fragments: list[Fragment], keep_newest: bool) -> list[Fragment]:
    """One fragment per producer start time: the largest number (HLS) or the smallest
    (GetClip: "only the oldest ingested collection of fragments are returned")."""
    chosen: dict[int, Fragment] = {}
    for f in fragments:
        old = chosen.get(f.producer_start_ms)
        newer = old is None or int(f.fragment_number) > int(old.fragment_number)
        if old is None or newer == keep_newest:
            chosen[f.producer_start_ms] = f
    return sorted(chosen.values(), key=lambda f: (f.producer_start_ms, int(f.fragment_number)))


def program_date_time(ms: int) -> str:
    """``2023-05-17T13:48:35.994Z`` (HLS PROGRAM-DATE-TIME with milliseconds, UTC)."""
    stamp = dt.datetime.fromtimestamp(ms // 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def require_codec_private(fragment: Fragment) -> None:
    """Raise the AWS error GetClip and the streaming sessions give for a fragment whose video
    cannot be served: no codec private data, or a codec other than H.264."""
    if not fragment.codec_private:
        raise MissingCodecPrivateDataException(
            "No codec private data was found in the video track of the stream."
        )
    if not fragment.video_codec.startswith("avc1"):
        raise UnsupportedStreamMediaTypeException(
            f"The media type {fragment.video_codec} of track 1 is not supported."
        )


class HlsPlane:
    """GetHLSStreamingSessionURL and the HLS resources under ``/hls/v1/``.

    ``clock`` (epoch seconds) decides session expiry, the LIVE 30 s window and LIVE_REPLAY
    release times; tests may replace it to move time.
    """

    def __init__(self, control: ControlPlane, store: FragmentStore, endpoints: Endpoints) -> None:
        self.control = control
        self.store = store
        self.endpoints = endpoints
        self.clock: Callable[[], float] = time.time
        self.sessions: dict[str, HlsSession] = {}
        self.segments = ByteLru(SEGMENT_CACHE_BYTES)
        self.parsed = ByteLru(PARSE_CACHE_BYTES)
        self._archive = ArchivePlane(control, store)

    # ------------------------------------------------------------------ GetHLSStreamingSessionURL

    async def get_hls_streaming_session_url(self, req: dict[str, Any]) -> dict[str, Any]:
        """Create an HLS session and return its master playlist URL (see module doc)."""
        stream = self._archive.stream(req)
        if stream.retention_hours == 0:
            raise NoDataRetentionException(
                f"The stream {stream.name} has no data retention, so it has no media to play."
            )
        mode = req.get("PlaybackMode", LIVE)
        selector_req = req.get("HLSFragmentSelector") or {}
        selector = selector_req.get("FragmentSelectorType", SELECTOR_SERVER)
        start_ms, end_ms = self._check_range(mode, selector_req.get("TimestampRange"))
        default_disc = ALWAYS if selector == SELECTOR_SERVER else NEVER
        default_results = DEFAULT_ON_DEMAND_RESULTS if mode == ON_DEMAND else DEFAULT_LIVE_RESULTS
        now = self.clock()
        self._purge(now)
        if len(self.sessions) >= MAX_SESSIONS:
            raise ClientLimitExceededException(
                "Too many HLS streaming sessions are open in Local KVS; try again later."
            )
        max_results = int(req.get("MaxMediaPlaylistFragmentResults", default_results))
        fragments = await self._initial_fragments(stream, mode, selector, start_ms, end_ms, now)
        if mode == LIVE:
            fragments = fragments[-max_results:]  # start at the live edge
        first = fragments[0]
        require_codec_private(first)
        init = fragments[-1] if mode == LIVE else first
        session = HlsSession(
            token=secrets.token_urlsafe(TOKEN_BYTES),
            stream=stream,
            mode=mode,
            container=req.get("ContainerFormat", FRAGMENTED_MP4),
            selector=selector,
            start_ms=start_ms,
            end_ms=end_ms,
            discontinuity_mode=req.get("DiscontinuityMode", default_disc),
            display_timestamp=req.get("DisplayFragmentTimestamp", NEVER) == ALWAYS,
            max_results=max_results,
            created=now,
            expires_at=now + int(req.get("Expires", DEFAULT_EXPIRES_S)),
            origin_ms=min(f.producer_start_ms for f in fragments),
            init=init,
        )
        self._append(session, fragments)
        self.sessions[session.token] = session
        logger.info(
            "HLS session on %s: %s %s, %d fragment(s), expires in %d s",
            stream.name,
            mode,
            session.container,
            len(session.entries),
            session.expires_at - now,
        )
        url = f"{self.endpoints.media}{HLS_PREFIX}{MASTER_PLAYLIST}?SessionToken={session.token}"
        return {"HLSStreamingSessionURL": url}

    @staticmethod
    def _check_range(mode: str, timestamps: dict[str, Any] | None) -> tuple[int | None, int | None]:
        """The (start, end) ms of the session's range, checked per PlaybackMode."""
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

    def _append(self, session: HlsSession, fragments: list[Fragment]) -> None:
        """Add fragments (in session order) to a session, marking discontinuities and (for
        LIVE_REPLAY) release times. LIVE sessions are trimmed by ``_refresh``; LIVE_REPLAY
        keeps every entry (bounded by its range or its expiry) as unreleased ones wait."""
        limit = session.max_results if session.mode == ON_DEMAND else None
        for fragment in fragments:
            if limit is not None and len(session.entries) >= limit:
                break
            prev = session.entries[-1] if session.entries else None
            index = prev.index + 1 if prev is not None else 0
            disc = prev is not None and self._discontinuous(session, prev.fragment, fragment)
            release = session.created
            if session.mode == LIVE_REPLAY and prev is not None and index >= session.max_results:
                release = max(prev.release_at, session.created) + prev.fragment.duration_ms / 1000
            session.entries.append(Entry(index, fragment, disc, release))
            session.longest_ms = max(session.longest_ms, fragment.duration_ms)

    @staticmethod
    def _trim(session: HlsSession, keep: int) -> None:
        extra = len(session.entries) - keep
        if extra > 0:
            dropped = session.entries[:extra]
            session.discontinuities_dropped += sum(e.discontinuity for e in dropped)
            del session.entries[:extra]

    @staticmethod
    def _discontinuous(session: HlsSession, prev: Fragment, cur: Fragment) -> bool:
        if session.discontinuity_mode == ALWAYS:
            return True
        if session.discontinuity_mode == NEVER:
            return False
        gap = selector_start(cur, session.selector) - (
            selector_start(prev, session.selector) + prev.duration_ms
        )
        return abs(gap) > DISCONTINUITY_GAP_MS

    async def _refresh(self, session: HlsSession) -> None:
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

    def _purge(self, now: float) -> None:
        for token in [t for t, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[token]

    def _session(self, query: Any) -> HlsSession:
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

    # ------------------------------------------------------------------ GET resources

    async def handle_get(self, request: web.Request, path: str) -> web.Response:
        """Serve the HLS resources: playlists, MP4 init/media fragments, TS fragments."""
        if not path.startswith(HLS_PREFIX):
            raise UnknownOperationException(f"No KVS resource at GET {request.path}")
        resource = path[len(HLS_PREFIX) :]
        query = request.query
        handlers: dict[str, Callable[[HlsSession, Any], Awaitable[tuple[bytes, str]]]] = {
            MASTER_PLAYLIST: self._master_playlist,
            MEDIA_PLAYLIST: self._media_playlist,
            MP4_INIT: self._mp4_init,
            MP4_MEDIA: self._mp4_media,
            TS_FRAGMENT: self._ts_fragment,
        }
        handler = handlers.get(resource)
        if handler is None:
            raise UnknownOperationException(f"No KVS resource at GET {request.path}")
        session = self._session(query)
        body, content_type = await handler(session, query)
        return web.Response(body=body, content_type=content_type)

    @staticmethod
    def _track(session: HlsSession, query: Any, *, required: bool) -> int:
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
        if session.has_audio and session.container == FRAGMENTED_MP4:
            allowed.add(remux.AUDIO_TRACK)
        if track not in allowed:
            raise InvalidArgumentException(f"TrackNumber {track} is not valid for this session.")
        return track

    @staticmethod
    def _fragment_index(query: Any) -> int:
        raw = query.get("FragmentNumber")
        if raw is None:
            raise InvalidArgumentException("FragmentNumber must be specified.")
        if not raw.isdigit():
            raise InvalidArgumentException(f"FragmentNumber {raw!r} is not valid.")
        return int(raw)

    @staticmethod
    def _need_container(session: HlsSession, container: str) -> None:
        if session.container != container:
            raise InvalidArgumentException(
                f"This resource is not available in a {session.container} session."
            )

    async def _master_playlist(self, session: HlsSession, query: Any) -> tuple[bytes, str]:
        await self._refresh(session)
        token = session.token
        fragments = [e.fragment for e in session.entries]
        init = session.init
        fps = init.frame_count * 1000 / init.duration_ms if init.duration_ms else 0.0
        bandwidth = max(
            (f.size_bytes * 8 * 1000 // max(f.duration_ms, 1) for f in fragments), default=0
        )
        audio = session.has_audio
        codecs = init.video_codec + (f",{init.audio_codec or 'mp4a.40.2'}" if audio else "")
        fmp4 = session.container == FRAGMENTED_MP4
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{FMP4_VERSION if fmp4 else TS_VERSION}",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ]
        stream_inf = (
            f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS="{codecs}",'
            f"RESOLUTION={init.width}x{init.height},FRAME-RATE={fps:.3f}"
        )
        if fmp4 and audio:
            lines.append(
                '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,'
                f'AUTOSELECT=YES,URI="{MEDIA_PLAYLIST}?SessionToken={token}&TrackNumber=2"'
            )
            stream_inf += ',AUDIO="audio"'
        lines += [stream_inf, f"{MEDIA_PLAYLIST}?SessionToken={token}&TrackNumber=1", ""]
        return "\n".join(lines).encode(), PLAYLIST_CONTENT_TYPE

    def _visible(self, session: HlsSession) -> tuple[list[Entry], bool]:
        """The entries the media playlist shows now, and whether it is complete (ENDLIST)."""
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

    async def _media_playlist(self, session: HlsSession, query: Any) -> tuple[bytes, str]:
        fmp4 = session.container == FRAGMENTED_MP4
        track = self._track(session, query, required=fmp4)
        await self._refresh(session)
        entries, ended = self._visible(session)
        token = session.token
        first = entries[0].index if entries else 0
        target = max(1, math.ceil(session.longest_ms / 1000))
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{FMP4_VERSION if fmp4 else TS_VERSION}",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
        ]
        if session.mode != ON_DEMAND:
            before = session.discontinuities_dropped + sum(
                e.discontinuity for e in session.entries if e.index <= first
            )
            if before:
                lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{before}")
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
        if session.mode == ON_DEMAND:
            lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
        if fmp4:
            lines.append(f'#EXT-X-MAP:URI="{MP4_INIT}?SessionToken={token}&TrackNumber={track}"')
        for i, e in enumerate(entries):
            if i > 0 and e.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if session.display_timestamp:
                start = selector_start(e.fragment, session.selector)
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(start)}")
            lines.append(f"#EXTINF:{e.fragment.duration_ms / 1000:.3f},")
            if fmp4:
                lines.append(
                    f"{MP4_MEDIA}?FragmentNumber={e.index}&SessionToken={token}&TrackNumber={track}"
                )
            else:
                lines.append(f"{TS_FRAGMENT}?FragmentNumber={e.index}&SessionToken={token}")
        if ended:
            lines.append("#EXT-X-ENDLIST")
        lines.append("")
        return "\n".join(lines).encode(), PLAYLIST_CONTENT_TYPE

    async def _parse(self, fragment: Fragment) -> remux.ParsedFragment:
        path = self.store.resolve(fragment)
        key = (fragment.stream_arn, fragment.fragment_number)

        async def load() -> remux.ParsedFragment:
            return await asyncio.to_thread(
                remux.read_fragment, path, fragment.producer_start_ms, fragment.producer_end_ms
            )

        parsed: remux.ParsedFragment = await self.parsed.get(key, load)
        return parsed

    async def _mp4_init(self, session: HlsSession, query: Any) -> tuple[bytes, str]:
        self._need_container(session, FRAGMENTED_MP4)
        track = self._track(session, query, required=True)
        init = session.init
        key = ("init", init.stream_arn, init.fragment_number, track)

        async def load() -> bytes:
            parsed = await self._parse(init)
            if track == remux.AUDIO_TRACK:
                if parsed.audio is None:
                    raise ResourceNotFoundException("The session's media has no audio track.")
                return remux.init_segment(parsed.audio, remux.AUDIO_TRACK)
            return remux.init_segment(parsed.video, remux.VIDEO_TRACK)

        body: bytes = await self.segments.get(key, load)
        return body, MP4_CONTENT_TYPE

    async def _mp4_media(self, session: HlsSession, query: Any) -> tuple[bytes, str]:
        self._need_container(session, FRAGMENTED_MP4)
        track = self._track(session, query, required=True)
        entry = session.entry(self._fragment_index(query))
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
            parsed = await self._parse(fragment)
            if track == remux.AUDIO_TRACK:
                init = await self._parse(session.init)
                rate = init.audio.sample_rate if init.audio is not None else webrtc.OPUS_SAMPLE_RATE
                return await asyncio.to_thread(
                    remux.audio_segment, parsed, entry.index + 1, session.origin_ms, rate
                )
            init_avcc = (await self._parse(session.init)).video.avcc
            return await asyncio.to_thread(
                remux.video_segment, parsed, entry.index + 1, session.origin_ms, init_avcc
            )

        body: bytes = await self.segments.get(key, load)
        return body, MP4_CONTENT_TYPE

    async def _ts_fragment(self, session: HlsSession, query: Any) -> tuple[bytes, str]:
        self._need_container(session, MPEG_TS)
        fragment = session.entry(self._fragment_index(query)).fragment
        key = ("ts", fragment.stream_arn, fragment.fragment_number, session.origin_ms)
        path = self.store.resolve(fragment)

        async def load() -> bytes:
            return await asyncio.to_thread(remux.ts_segment, path, session.origin_ms)

        body: bytes = await self.segments.get(key, load)
        return body, TS_CONTENT_TYPE
