"""Reading KVS MPEG-DASH sessions (AWS or Local KVS): the manifest, segments and decoded
frames, as ``hls`` reads HLS.

``DashReader`` opens any ``DASHStreamingSessionURL`` (the MPD), takes the video
AdaptationSet's ``SegmentTemplate`` + ``SegmentTimeline`` (the shape KVS writes: one ``S`` per
fragment, ``$Number$`` counting from ``startNumber``), and yields decoded video frames with
their timestamps: the fragment's timestamp from the ``kvs:ts`` attribute (sessions created
with ``DisplayFragmentTimestamp=ALWAYS``; epoch ms) plus the frame's offset in its segment,
else ``None``. A ``dynamic`` manifest (LIVE, LIVE_REPLAY) is followed: reloaded every
``minimumUpdatePeriod`` and new segments read as they appear. ``segments_table`` lists the
segments read (number, media start and duration, timestamp, the ``kvs:fn`` fragment number).

The manifest's timeline is not the real one: KVS "adjusts the media timeline in the manifest
file to enable playback of media with discontinuities" (GetDASHStreamingSessionURL,
DisplayFragmentTimestamp), so across a gap ``start_s`` runs on without it while ``kvs:ts``,
and with it each frame's timestamp, keeps the real time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin

import pandas as pd

from kvsnb.client.target import Target
from kvsnb.playback.hls import HlsFrame, decode_segment, frames_table, http_get
from kvsnb.playback.sessions import PlaylistError, session_url

MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"
KVS_TS = "ts"  # local names of KVS's attributes on S (any namespace)
KVS_FN = "fn"
DEFAULT_UPDATE_S = 1.0
_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?"
                       r"(?:(\d+(?:\.\d+)?)S)?)?$")  # fmt: skip


class ManifestError(PlaylistError):
    """An MPD that is not a usable KVS DASH manifest."""


@dataclass(frozen=True)
class DashSegment:
    """One media segment of the video Representation."""

    uri: str
    init_uri: str
    number: int
    start_s: float  # media time (timeline t / timescale; gaps closed, see the module doc)
    duration_s: float
    timestamp: dt.datetime | None = None  # kvs:ts
    fragment_number: str | None = None  # kvs:fn


@dataclass
class Manifest:
    """A parsed MPD: whether it is dynamic, its update period and the video segments."""

    url: str
    dynamic: bool
    update_s: float
    segments: list[DashSegment]


def parse_duration(text: str | None) -> float | None:
    """An xs:duration (``PT1.5S``, ``P1DT2H``) in seconds."""
    if not text:
        return None
    match = _DURATION.match(text.strip())
    if match is None:
        raise ManifestError(f"not a duration: {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _kvs_attr(element: ET.Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if key == name or key.endswith("}" + name):
            return value
    return None


def parse_manifest(text: str, url: str) -> Manifest:
    """Parse a KVS MPD (URIs made absolute); only the video AdaptationSet is read."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ManifestError(f"not XML: {exc}") from exc
    if root.tag != f"{MPD_NS}MPD":
        raise ManifestError("not an MPD (no urn:mpeg:dash:schema:mpd:2011 MPD root)")
    dynamic = root.get("type") == "dynamic"
    update_s = parse_duration(root.get("minimumUpdatePeriod")) or DEFAULT_UPDATE_S
    video = None
    for aset in root.iter(f"{MPD_NS}AdaptationSet"):
        reps = aset.findall(f"{MPD_NS}Representation")
        mime = aset.get("mimeType") or (reps[0].get("mimeType") if reps else None) or ""
        if aset.get("contentType") == "video" or mime.startswith("video/"):
            video = aset
            break
    if video is None:
        raise ManifestError("MPD has no video AdaptationSet")
    template = next(video.iter(f"{MPD_NS}SegmentTemplate"), None)
    if template is None or template.find(f"{MPD_NS}SegmentTimeline") is None:
        raise ManifestError("video AdaptationSet has no SegmentTemplate with a SegmentTimeline")
    rep = video.find(f"{MPD_NS}Representation")
    rep_id = rep.get("id", "") if rep is not None else ""
    scale = float(template.get("timescale", "1"))
    init = (template.get("initialization") or "").replace("$RepresentationID$", rep_id)
    media = (template.get("media") or "").replace("$RepresentationID$", rep_id)
    if "$Number$" not in media:
        raise ManifestError("SegmentTemplate media has no $Number$")
    number = int(template.get("startNumber", "1"))
    t = 0
    segments: list[DashSegment] = []
    timeline = template.find(f"{MPD_NS}SegmentTimeline")
    assert timeline is not None
    for s in timeline.findall(f"{MPD_NS}S"):
        t = int(s.get("t", t))
        d = int(s.get("d", "0"))
        ts = _kvs_attr(s, KVS_TS)
        stamp = dt.datetime.fromtimestamp(int(ts) / 1000, dt.UTC) if ts else None
        for _ in range(int(s.get("r", "0")) + 1):
            uri = urljoin(url, media.replace("$Number$", str(number)).replace("$Time$", str(t)))
            segments.append(
                DashSegment(
                    uri, urljoin(url, init), number, t / scale, d / scale, stamp,
                    _kvs_attr(s, KVS_FN),
                )
            )  # fmt: skip
            number += 1
            t += d
    return Manifest(url, dynamic, update_s, segments)


@dataclass
class DashReader:
    """Reads a DASH session (see the module docstring).

    ``fetch`` gets a URL's bytes (``http_get`` by default; runs in a worker thread).
    """

    url: str
    fetch: Callable[[str], bytes] = http_get
    segments_read: list[DashSegment] = field(default_factory=list)
    _init_cache: dict[str, bytes] = field(default_factory=dict, repr=False)

    async def _get(self, url: str) -> bytes:
        return await asyncio.to_thread(self.fetch, url)

    async def manifest(self) -> Manifest:
        """The manifest as it stands now."""
        return parse_manifest((await self._get(self.url)).decode(), self.url)

    async def segment_frames(self, segment: DashSegment) -> list[HlsFrame]:
        """Decode one segment's frames, timestamped (``sequence`` = the segment number)."""
        if segment.init_uri not in self._init_cache:
            self._init_cache[segment.init_uri] = await self._get(segment.init_uri)
        data = await self._get(segment.uri)
        decoded = await asyncio.to_thread(decode_segment, data, self._init_cache[segment.init_uri])
        self.segments_read.append(segment)
        if not decoded:
            return []
        first_pts = decoded[0][0]
        out = []
        for pts, key, frame in decoded:
            stamp = None
            if segment.timestamp is not None:
                stamp = pd.Timestamp(segment.timestamp) + pd.Timedelta(seconds=pts - first_pts)
            out.append(HlsFrame(stamp, pts, segment.number, key, frame))
        return out

    async def frames(
        self, *, follow: bool = True, max_seconds: float | None = None
    ) -> AsyncIterator[HlsFrame]:
        """Every video frame of the session in order. A dynamic manifest is followed until
        it turns static, ``max_seconds`` of wall time pass, or the consumer stops iterating;
        ``follow=False`` reads only what the manifest lists now."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        next_number: int | None = None
        while True:
            mpd = await self.manifest()
            for seg in mpd.segments:
                if next_number is not None and seg.number < next_number:
                    continue
                for f in await self.segment_frames(seg):
                    yield f
                next_number = seg.number + 1
            if not mpd.dynamic or not follow:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.sleep(mpd.update_s)

    def segments_table(self) -> pd.DataFrame:
        """The segments read so far: number, start_s, duration_s, timestamp,
        fragment_number."""
        columns = ["number", "start_s", "duration_s", "timestamp", "fragment_number"]
        rows = [
            {
                "number": s.number,
                "start_s": s.start_s,
                "duration_s": s.duration_s,
                "timestamp": pd.Timestamp(s.timestamp) if s.timestamp else pd.NaT,
                "fragment_number": s.fragment_number,
            }
            for s in self.segments_read
        ]
        return pd.DataFrame(rows, columns=columns)

    async def to_frame(self, **kwargs: bool | float | None) -> pd.DataFrame:
        """All frames (see ``frames``) as a DataFrame: timestamp, pts_s, sequence, keyframe,
        frame (PyAV)."""
        return await frames_table(self.frames(**kwargs))  # type: ignore[arg-type]


def dash_session_url(
    target: Target,
    stream: str,
    *,
    mode: str = "ON_DEMAND",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    selector: str = "SERVER_TIMESTAMP",
    display_timestamps: bool = True,
    display_numbers: bool = True,
    expires: int = 300,
    max_results: int | None = None,
) -> str:
    """GetDASHStreamingSessionURL at the stream's data endpoint (ranges and the URL returned
    as ``hls_session_url``)."""
    options: dict[str, object] = {
        "DisplayFragmentTimestamp": "ALWAYS" if display_timestamps else "NEVER",
        "DisplayFragmentNumber": "ALWAYS" if display_numbers else "NEVER",
    }
    if max_results is not None:
        options["MaxManifestFragmentResults"] = max_results
    return session_url(
        target,
        stream,
        "DASH",
        mode=mode,
        start=start,
        end=end,
        selector=selector,
        expires=expires,
        options=options,
    )
