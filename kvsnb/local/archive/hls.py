"""HLS on stored fragments: GetHLSStreamingSessionURL and the HLS resources under ``/hls/v1/``
of the archived-media endpoint.

The rule: sessions, playback modes, time ranges, defaults and the resources a player fetches
behave as docs/wire.md, "Archived media" (HLS) describes; segments come from ``remux`` and are
never re-encoded. The plane is composed of what it shares with DASH: fragment selection
(``selection``), the session registry (``sessions``) and the segments (``segments``). How
Local KVS keeps sessions (opaque tokens in memory, at most ``MAX_SESSIONS``) and what it
leaves out: docs/design.md, "Local KVS".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kvsnb.local.archive.segments import MP4_CONTENT_TYPE, TS_CONTENT_TYPE, Segments
from kvsnb.local.archive.selection import ALWAYS, NEVER, ON_DEMAND, iso_ms, selector_start
from kvsnb.local.archive.sessions import (
    DEFAULT_EXPIRES_S,
    DEFAULT_LIVE_RESULTS,
    DEFAULT_ON_DEMAND_RESULTS,
    SessionOptions,
    SessionRegistry,
    StreamingSession,
    fragment_index,
    track_number,
)
from kvsnb.local.control.plane import ControlPlane, Endpoints
from kvsnb.local.core.errors import InvalidArgumentException, UnknownOperationException
from kvsnb.local.store.fragments import SELECTOR_SERVER, FragmentStore

logger = logging.getLogger(__name__)

HLS_PREFIX = "/hls/v1/"
MASTER_PLAYLIST = "getHLSMasterPlaylist.m3u8"
MEDIA_PLAYLIST = "getHLSMediaPlaylist.m3u8"
MP4_INIT = "getMP4InitFragment.mp4"
MP4_MEDIA = "getMP4MediaFragment.mp4"
TS_FRAGMENT = "getTSFragment.ts"
PLAYLIST_CONTENT_TYPE = "application/vnd.apple.mpegurl"
FRAGMENTED_MP4, MPEG_TS = "FRAGMENTED_MP4", "MPEG_TS"
FMP4_VERSION = 7
TS_VERSION = 3
program_date_time = iso_ms  # ``#EXT-X-PROGRAM-DATE-TIME`` value


class HlsPlane:
    """GetHLSStreamingSessionURL and the HLS resources under ``/hls/v1/``.

    ``clock`` (epoch seconds) decides session expiry, the LIVE 30 s window and LIVE_REPLAY
    release times; tests may replace it to move time.
    """

    GET_PREFIX = HLS_PREFIX

    def __init__(self, control: ControlPlane, store: FragmentStore, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.clock: Callable[[], float] = time.time
        self.segments = Segments(store)
        self.sessions = SessionRegistry("HLS", control, store, self.segments, lambda: self.clock())

    async def get_hls_streaming_session_url(self, req: dict[str, Any]) -> dict[str, Any]:
        """Create an HLS session and return its master playlist URL (see module doc)."""
        mode = req.get("PlaybackMode", "LIVE")
        selector_req = req.get("HLSFragmentSelector") or {}
        selector = selector_req.get("FragmentSelectorType", SELECTOR_SERVER)
        default_results = DEFAULT_ON_DEMAND_RESULTS if mode == ON_DEMAND else DEFAULT_LIVE_RESULTS
        options = SessionOptions(
            container=req.get("ContainerFormat", FRAGMENTED_MP4),
            discontinuity_mode=req.get(
                "DiscontinuityMode", ALWAYS if selector == SELECTOR_SERVER else NEVER
            ),
            display_timestamp=req.get("DisplayFragmentTimestamp", NEVER) == ALWAYS,
            max_results=int(req.get("MaxMediaPlaylistFragmentResults", default_results)),
            expires_s=int(req.get("Expires", DEFAULT_EXPIRES_S)),
        )
        session = await self.sessions.open(req, selector_req, options)
        base = self.endpoints.archived_media
        url = f"{base}{HLS_PREFIX}{MASTER_PLAYLIST}?SessionToken={session.token}"
        return {"HLSStreamingSessionURL": url}

    # ------------------------------------------------------------------ GET resources

    async def handle_get(self, request: web.Request, path: str) -> web.Response:
        """Serve the HLS resources: playlists, MP4 init/media fragments, TS fragments."""
        if not path.startswith(HLS_PREFIX):
            raise UnknownOperationException(f"No KVS resource at GET {request.path}")
        resource = path[len(HLS_PREFIX) :]
        query = request.query
        handlers: dict[str, Callable[[StreamingSession, Any], Awaitable[tuple[bytes, str]]]] = {
            MASTER_PLAYLIST: self._master_playlist,
            MEDIA_PLAYLIST: self._media_playlist,
            MP4_INIT: self._mp4_init,
            MP4_MEDIA: self._mp4_media,
            TS_FRAGMENT: self._ts_fragment,
        }
        handler = handlers.get(resource)
        if handler is None:
            raise UnknownOperationException(f"No KVS resource at GET {request.path}")
        playlist = resource if resource in (MASTER_PLAYLIST, MEDIA_PLAYLIST) else None
        session = self.sessions.get(query, playlist)
        body, content_type = await handler(session, query)
        return web.Response(body=body, content_type=content_type)  # CORS: front/cors.py

    @staticmethod
    def _need_container(session: StreamingSession, container: str) -> None:
        if session.container != container:
            raise InvalidArgumentException(
                f"This resource is not available in a {session.container} session."
            )

    async def _master_playlist(self, session: StreamingSession, query: Any) -> tuple[bytes, str]:
        await self.sessions.refresh(session)
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

    async def _media_playlist(self, session: StreamingSession, query: Any) -> tuple[bytes, str]:
        fmp4 = session.container == FRAGMENTED_MP4
        track = track_number(session, query, required=fmp4)
        await self.sessions.refresh(session)
        entries, ended = self.sessions.visible(session)
        token = session.token
        first = entries[0].index if entries else 0
        target = max(1, math.ceil(session.longest_ms / 1000))
        # ALWAYS: AWS writes a marker before the first segment too; otherwise the first
        # segment's marker (if any) is counted in DISCONTINUITY-SEQUENCE instead.
        lead = session.options.discontinuity_mode == ALWAYS
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{FMP4_VERSION if fmp4 else TS_VERSION}",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
        ]
        if session.mode != ON_DEMAND:
            before = session.discontinuities_dropped + sum(
                e.discontinuity
                for e in session.entries
                if e.index < first or (e.index == first and not lead)
            )
            if before:
                lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{before}")
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
        if session.mode == ON_DEMAND:
            lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
        if fmp4:
            lines.append(f'#EXT-X-MAP:URI="{MP4_INIT}?SessionToken={token}&TrackNumber={track}"')
        for i, e in enumerate(entries):
            if e.discontinuity and (i > 0 or lead):
                lines.append("#EXT-X-DISCONTINUITY")
            if session.options.display_timestamp:
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

    async def _mp4_init(self, session: StreamingSession, query: Any) -> tuple[bytes, str]:
        self._need_container(session, FRAGMENTED_MP4)
        track = track_number(session, query, required=True)
        return await self.segments.mp4_init(session.init, track), MP4_CONTENT_TYPE

    async def _mp4_media(self, session: StreamingSession, query: Any) -> tuple[bytes, str]:
        self._need_container(session, FRAGMENTED_MP4)
        track = track_number(session, query, required=True)
        entry = session.entry(fragment_index(query))
        body = await self.segments.mp4_media(
            entry.fragment, entry.index, track, session.origin_ms, session.init,
            session.gaps(entry),
        )  # fmt: skip
        return body, MP4_CONTENT_TYPE

    async def _ts_fragment(self, session: StreamingSession, query: Any) -> tuple[bytes, str]:
        self._need_container(session, MPEG_TS)
        fragment = session.entry(fragment_index(query)).fragment
        return await self.segments.ts(fragment, session.origin_ms), TS_CONTENT_TYPE
