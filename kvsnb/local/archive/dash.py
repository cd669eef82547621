"""MPEG-DASH on stored fragments: GetDASHStreamingSessionURL and the DASH resources under
``/dash/v1/`` of the archived-media endpoint.

Wire source: docs/wire.md "Archived media" and the botocore model's documentation of
GetDASHStreamingSessionURL, DASHFragmentSelector and their members (quoted where a rule is
applied). The plane is composed of what it shares with HLS: fragment selection per
PlaybackMode (``selection``), sessions and tokens (``sessions``) and the fMP4 segments
(``segments``); MaxManifestFragmentResults is a session's ``max_results``.

Resources (the model: GetDASHManifest, GetMP4InitFragment, GetMP4MediaFragment)
    ``getDASHManifest.mpd?SessionToken=T`` (the URL GetDASHStreamingSessionURL returns),
    ``getMP4InitFragment.mp4?TrackNumber=N&SessionToken=T`` and
    ``getMP4MediaFragment.mp4?FragmentNumber=K&TrackNumber=N&SessionToken=T``, relative to the
    manifest. The manifest has one Period with a video AdaptationSet (TrackNumber 1) and, when
    the media has audio, an audio one (TrackNumber 2), each with one Representation whose
    ``SegmentTemplate`` names those resources (``$Number$`` = K, the fragment's index in the
    session) over a ``SegmentTimeline`` with one ``S`` per fragment (``t`` and ``d`` in ms on
    the session's timeline without gaps, below). **(inferred)**: the exact attribute set AWS
    writes; the resource names and query parameters are the model's.

Gaps
    "MPEG-DASH compatible media players do not properly handle gaps in the media timeline.
    Kinesis Video Streams adjusts the media timeline in the manifest file to enable playback
    of media with discontinuities" [model: DisplayFragmentTimestamp]. DASH has no
    DiscontinuityMode: across a gap or overlap of more than 50 ms between fragments (producer
    clock) the presentation continues where the previous fragment ended, in the one Period
    (``selection.timeline_shift``; why not a Period per recording: docs/wire.md, "DASH across
    a gap"). The media segments' ``tfdt`` are on the same timeline, so
    ``mediaPresentationDuration`` is the media's duration and ``kvs:ts`` keeps each
    fragment's real time.

Manifest per PlaybackMode
    * ``ON_DEMAND``: ``type="static"`` with ``mediaPresentationDuration``; a
      ``presentationTimeOffset`` makes the presentation start at 0.
    * ``LIVE`` and ``LIVE_REPLAY``: ``type="dynamic"`` with ``minimumUpdatePeriod`` of 1 s
      (the model: "We recommend that the media player retrieve a new manifest on a one-second
      interval"), ``availabilityStartTime`` such that each listed segment is available, a
      ``timeShiftBufferDepth`` that keeps them available now (from the first listed fragment
      to now), a ``suggestedPresentationDelay`` of two target durations, and a ``UTCTiming``
      element carrying the server's clock (so players need no outside time server).
      LIVE_REPLAY releases fragments as HLS does, and its ``availabilityStartTime`` stays
      put: the fragments first listed are available when the session is created, each later
      one once its duration has elapsed after the one before. A LIVE_REPLAY session whose
      range has ended, every fragment released, becomes ``static`` once a player at the
      suggested delay has reached the end of the newest fragment (dash.js ends the stream at
      what it holds when the type changes), on the same timeline (no
      ``presentationTimeOffset``, ``mediaPresentationDuration`` up to the end of the newest
      fragment), so a player that played it live plays on to its end.

``DisplayFragmentTimestamp=ALWAYS`` adds ``kvs:ts`` to each ``S`` (the fragment's start in
the selector's clock, epoch ms) and ``DisplayFragmentNumber=ALWAYS`` adds ``kvs:fn`` (the KVS
fragment number), both in the namespace ``KVS_NAMESPACE`` **(inferred URI)**.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import quoteattr

from aiohttp import web

from kvsnb.local.archive import remux
from kvsnb.local.archive.segments import MP4_CONTENT_TYPE, Segments
from kvsnb.local.archive.selection import (
    ALWAYS,
    LIVE_REPLAY,
    NEVER,
    ON_DEMAND,
    Entry,
    iso_ms,
    selector_start,
)
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
from kvsnb.local.core.errors import UnknownOperationException
from kvsnb.local.store.fragments import FragmentStore

logger = logging.getLogger(__name__)

DASH_PREFIX = "/dash/v1/"
MANIFEST = "getDASHManifest.mpd"
MP4_INIT = "getMP4InitFragment.mp4"
MP4_MEDIA = "getMP4MediaFragment.mp4"
MPD_CONTENT_TYPE = "application/dash+xml"
MPD_NAMESPACE = "urn:mpeg:dash:schema:mpd:2011"
KVS_NAMESPACE = "https://kinesisvideo.amazonaws.com/dash"  # (inferred)
LIVE_PROFILE = "urn:mpeg:dash:profile:isoff-live:2011"
UTC_DIRECT = "urn:mpeg:dash:utc:direct:2014"
MINIMUM_UPDATE_PERIOD_S = 1
PRESENTATION_DELAY_TARGETS = 3  # suggestedPresentationDelay in target durations, as HLS
DEFAULT_AUDIO_CODEC = "mp4a.40.2"


def duration(ms: int) -> str:
    """An xs:duration in seconds with milliseconds (``PT12.345S``)."""
    return f"PT{ms / 1000:.3f}S"


class DashPlane:
    """GetDASHStreamingSessionURL and the DASH resources under ``/dash/v1/``.

    ``clock`` (epoch seconds) decides session expiry, the LIVE 30 s window, LIVE_REPLAY
    release times and the manifest's times; tests may replace it to move time.
    """

    GET_PREFIX = DASH_PREFIX

    def __init__(self, control: ControlPlane, store: FragmentStore, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.clock: Callable[[], float] = time.time
        self.segments = Segments(store)
        self.sessions = SessionRegistry("DASH", control, store, self.segments, lambda: self.clock())

    async def get_dash_streaming_session_url(self, req: dict[str, Any]) -> dict[str, Any]:
        """Create a DASH session and return its manifest URL (see module doc)."""
        mode = req.get("PlaybackMode", "LIVE")
        default_results = DEFAULT_ON_DEMAND_RESULTS if mode == ON_DEMAND else DEFAULT_LIVE_RESULTS
        options = SessionOptions(
            discontinuity_mode=NEVER,
            display_timestamp=req.get("DisplayFragmentTimestamp", NEVER) == ALWAYS,
            display_number=req.get("DisplayFragmentNumber", NEVER) == ALWAYS,
            max_results=int(req.get("MaxManifestFragmentResults", default_results)),
            expires_s=int(req.get("Expires", DEFAULT_EXPIRES_S)),
        )
        session = await self.sessions.open(req, req.get("DASHFragmentSelector"), options)
        url = f"{self.endpoints.archived_media}{DASH_PREFIX}{MANIFEST}?SessionToken={session.token}"
        return {"DASHStreamingSessionURL": url}

    async def handle_get(self, request: web.Request, path: str) -> web.Response:
        """Serve the DASH resources: the manifest and the MP4 init and media fragments."""
        if not path.startswith(DASH_PREFIX):
            raise UnknownOperationException(f"No KVS resource at GET {request.path}")
        resource = path[len(DASH_PREFIX) :]
        if resource not in (MANIFEST, MP4_INIT, MP4_MEDIA):
            raise UnknownOperationException(f"No KVS resource at GET {request.path}")
        query = request.query
        session = self.sessions.get(query, resource if resource == MANIFEST else None)
        if resource == MANIFEST:
            await self.sessions.refresh(session)
            return _respond(self.manifest(session).encode(), MPD_CONTENT_TYPE)
        track = track_number(session, query, required=True)
        if resource == MP4_INIT:
            return _respond(await self.segments.mp4_init(session.init, track), MP4_CONTENT_TYPE)
        entry = session.entry(fragment_index(query))
        body = await self.segments.mp4_media(  # on the gap-free timeline, as the manifest
            entry.fragment, entry.index, track, session.origin_ms + entry.shift_ms, session.init,
            session.gaps(entry),
        )  # fmt: skip
        return _respond(body, MP4_CONTENT_TYPE)

    # ------------------------------------------------------------------ the manifest

    def manifest(self, session: StreamingSession) -> str:
        """The MPD of a session as it stands now (see module doc)."""
        entries, ended = self.sessions.visible(session)
        now_ms = int(self.clock() * 1000)
        first_t = session.gapless_start_ms(entries[0]) if entries else 0
        last_end = (
            session.gapless_start_ms(entries[-1]) + entries[-1].fragment.duration_ms
            if entries
            else 0
        )
        target_s = max(1, math.ceil(session.longest_ms / 1000))
        delay_ms = PRESENTATION_DELAY_TARGETS * target_s * 1000
        available_ms = self._availability_start(session, entries)
        # LIVE_REPLAY turns static once a player refreshing the manifest has listed and
        # fetched the newest fragment: dash.js ends the stream at what it holds then
        fetched = available_ms + last_end + (MINIMUM_UPDATE_PERIOD_S + target_s) * 1000 <= now_ms
        static = session.mode == ON_DEMAND or (session.mode == LIVE_REPLAY and ended and fetched)
        attrs = {
            "xmlns": MPD_NAMESPACE,
            "xmlns:kvs": KVS_NAMESPACE,
            "profiles": LIVE_PROFILE,
            "minBufferTime": duration(min(2, target_s) * 1000),
            "maxSegmentDuration": duration(session.longest_ms),
        }
        # ON_DEMAND presents its fragments from 0; LIVE_REPLAY keeps its live timeline
        offset = first_t if session.mode == ON_DEMAND else 0
        if static:
            attrs["type"] = "static"
            attrs["mediaPresentationDuration"] = duration(last_end - offset)
        else:
            attrs["type"] = "dynamic"
            attrs["availabilityStartTime"] = iso_ms(available_ms)
            attrs["publishTime"] = iso_ms(now_ms)
            attrs["minimumUpdatePeriod"] = duration(MINIMUM_UPDATE_PERIOD_S * 1000)
            depth_ms = _shift_buffer_ms(now_ms - available_ms, first_t, last_end)
            attrs["timeShiftBufferDepth"] = duration(depth_ms)
            attrs["suggestedPresentationDelay"] = duration(delay_ms)
        lines = ['<?xml version="1.0" encoding="UTF-8"?>', f"<MPD {_attrs(attrs)}>"]
        lines.append('  <Period id="0" start="PT0S">')
        init = session.init
        fps = init.frame_count * 1000 / init.duration_ms if init.duration_ms else 0.0
        bandwidth = max(
            (e.fragment.size_bytes * 8 * 1000 // max(e.fragment.duration_ms, 1) for e in entries),
            default=0,
        )
        video = {
            "id": str(remux.VIDEO_TRACK),
            "mimeType": MP4_CONTENT_TYPE,
            "codecs": init.video_codec,
            "bandwidth": str(bandwidth),
            "width": str(init.width),
            "height": str(init.height),
            "frameRate": f"{fps:.3f}".rstrip("0").rstrip("."),
        }
        sets = [("video", video)]
        if session.has_audio:
            audio = {
                "id": str(remux.AUDIO_TRACK),
                "mimeType": "audio/mp4",
                "codecs": init.audio_codec or DEFAULT_AUDIO_CODEC,
                "bandwidth": "64000",
            }
            sets.append(("audio", audio))
        for content, representation in sets:
            track = int(representation["id"])
            lines.append(
                f'    <AdaptationSet contentType="{content}" segmentAlignment="true" '
                'startWithSAP="1">'
            )
            lines.append(f"      <Representation {_attrs(representation)}>")
            template = {
                "timescale": "1000",
                "initialization": f"{MP4_INIT}?TrackNumber={track}&SessionToken={session.token}",
                "media": (
                    f"{MP4_MEDIA}?FragmentNumber=$Number$&TrackNumber={track}"
                    f"&SessionToken={session.token}"
                ),
                "startNumber": str(entries[0].index if entries else 0),
            }
            if static and session.mode == ON_DEMAND:
                template["presentationTimeOffset"] = str(offset)
            lines.append(f"        <SegmentTemplate {_attrs(template)}>")
            lines.append("          <SegmentTimeline>")
            lines += [f"            <S {_attrs(self._s(session, e))}/>" for e in entries]
            lines.append("          </SegmentTimeline>")
            lines.append("        </SegmentTemplate>")
            lines.append("      </Representation>")
            lines.append("    </AdaptationSet>")
        lines.append("  </Period>")
        if not static:
            lines.append(f'  <UTCTiming schemeIdUri="{UTC_DIRECT}" value="{iso_ms(now_ms)}"/>')
        lines.append("</MPD>")
        lines.append("")
        return "\n".join(lines)

    @staticmethod
    def _s(session: StreamingSession, entry: Entry) -> dict[str, str]:
        s = {"t": str(session.gapless_start_ms(entry)), "d": str(entry.fragment.duration_ms)}
        if session.options.display_timestamp:
            s["kvs:ts"] = str(selector_start(entry.fragment, session.selector))
        if session.options.display_number:
            s["kvs:fn"] = entry.fragment.fragment_number
        return s

    @staticmethod
    def _availability_start(session: StreamingSession, entries: list[Entry]) -> int:
        """Wall-clock ms of media time 0. LIVE: the origin moved by the gaps closed before the
        newest listed segment, so that segment's media time maps to its producer time (which
        is capture time, so a listed segment ended before now). LIVE_REPLAY: the session's
        creation time less the end of the last fragment listed at creation (the first
        ``max_results``), the same in every manifest: each fragment released after those is
        available once its duration has elapsed after the previous one."""
        if not entries:
            return session.origin_ms
        if session.mode != LIVE_REPLAY:
            return session.origin_ms + entries[-1].shift_ms
        anchor = session.entries[min(session.max_results, len(session.entries)) - 1]
        end = session.gapless_start_ms(anchor) + anchor.fragment.duration_ms
        return int(session.created * 1000) - end


def _shift_buffer_ms(now_t: int, first_t: int, last_end: int) -> int:
    """The ``timeShiftBufferDepth`` (ms) that keeps every listed segment available now.

    A segment of a dynamic MPD is available until ``availabilityStartTime`` + its end + the
    depth, so the depth reaches back from now (``now_t``, on the media timeline) to the first
    listed segment, not only over the listed media: the newest segment ends before now (it is
    listed once stored), and a depth of only the listed media put the oldest segments out of
    the MPD's own window. With one fragment listed and the next not yet, that was every
    segment; dash.js then anchored its clock to the newest segment's end, for the session,
    and requested each segment ~1.2 s late (at 1 s fragments)."""
    return max(now_t - first_t, last_end - first_t, 1000)


def _respond(body: bytes, content_type: str) -> web.Response:
    return web.Response(body=body, content_type=content_type)  # CORS: front/cors.py


def _attrs(values: dict[str, str]) -> str:
    return " ".join(f"{k}={quoteattr(v)}" for k, v in values.items())
