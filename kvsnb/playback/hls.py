"""Reading KVS HLS sessions (AWS or Local KVS): playlists, segments and decoded frames.

``HlsReader`` opens any ``HLSStreamingSessionURL`` (the master playlist), picks the video
rendition, and yields decoded video frames with their timestamps: from
``#EXT-X-PROGRAM-DATE-TIME`` (the fragment's timestamp, when the session was created with
``DisplayFragmentTimestamp=ALWAYS``) plus the frame's offset in its segment, else the
presentation time. fMP4 (``#EXT-X-MAP`` init + ``moof/mdat`` segments) and MPEG-TS both
work. A LIVE playlist is followed: it is reloaded about every half target duration and new
segments are read as they appear (docs/wire.md, "Archived media").

The playlist parser reads only the tags KVS writes; it is small and strict enough to say
what is wrong with a playlist it cannot use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin

import av
import numpy as np
import pandas as pd

from kvsnb.client.target import Target
from kvsnb.client.trust import ssl_context
from kvsnb.playback.sessions import PlaylistError, session_url
from kvsnb.playback.sessions import stored_range as stored_range  # re-exported

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 20.0
MAX_SEGMENT_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class Segment:
    """One media segment of a media playlist."""

    uri: str
    duration: float
    sequence: int
    program_date_time: dt.datetime | None = None
    discontinuity: bool = False
    init_uri: str | None = None


@dataclass
class MediaPlaylist:
    """A parsed media playlist."""

    url: str
    target_duration: float
    media_sequence: int
    segments: list[Segment]
    endlist: bool
    playlist_type: str | None
    version: int | None


@dataclass(frozen=True)
class Variant:
    """A variant stream of a master playlist, with its audio rendition if any."""

    uri: str
    attributes: dict[str, str]
    audio_uri: str | None


def _attributes(text: str) -> dict[str, str]:
    """Parse an attribute list (``KEY=value,KEY="quoted, value"``)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip()
        i = eq + 1
        if i < len(text) and text[i] == '"':
            end = text.index('"', i + 1)
            out[key] = text[i + 1 : end]
            i = end + 1
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            out[key] = text[i:end]
            i = end
        if i < len(text) and text[i] == ",":
            i += 1
    return out


def parse_master(text: str, url: str) -> list[Variant]:
    """The variants of a master playlist (URIs made absolute)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("not an M3U8 playlist (no #EXTM3U)")
    audio: dict[str, str] = {}
    for ln in lines:
        if ln.startswith("#EXT-X-MEDIA:"):
            a = _attributes(ln.split(":", 1)[1])
            if a.get("TYPE") == "AUDIO" and "URI" in a:
                audio[a.get("GROUP-ID", "")] = urljoin(url, a["URI"])
    variants = []
    for i, ln in enumerate(lines):
        if ln.startswith("#EXT-X-STREAM-INF:"):
            attrs = _attributes(ln.split(":", 1)[1])
            uri = next((u for u in lines[i + 1 :] if not u.startswith("#")), None)
            if uri is None:
                raise PlaylistError("#EXT-X-STREAM-INF without a URI")
            variants.append(Variant(urljoin(url, uri), attrs, audio.get(attrs.get("AUDIO", ""))))
    if not variants:
        raise PlaylistError("master playlist has no #EXT-X-STREAM-INF")
    return variants


def _parse_pdt(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_media(text: str, url: str) -> MediaPlaylist:
    """Parse a media playlist (URIs made absolute)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("not an M3U8 playlist (no #EXTM3U)")
    target = None
    sequence = 0
    endlist = False
    ptype = None
    version = None
    segments: list[Segment] = []
    duration: float | None = None
    pdt: dt.datetime | None = None
    disc = False
    init: str | None = None
    for ln in lines[1:]:
        tag, _, value = ln.partition(":")
        if tag == "#EXT-X-TARGETDURATION":
            target = float(value)
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            sequence = int(value)
        elif tag == "#EXT-X-ENDLIST":
            endlist = True
        elif tag == "#EXT-X-PLAYLIST-TYPE":
            ptype = value
        elif tag == "#EXT-X-VERSION":
            version = int(value)
        elif tag == "#EXT-X-MAP":
            init = urljoin(url, _attributes(value)["URI"])
        elif tag == "#EXTINF":
            duration = float(value.split(",", 1)[0])
        elif tag == "#EXT-X-PROGRAM-DATE-TIME":
            pdt = _parse_pdt(value)
        elif tag == "#EXT-X-DISCONTINUITY":
            disc = True
        elif not ln.startswith("#"):
            if duration is None:
                raise PlaylistError(f"segment {ln} without #EXTINF")
            segments.append(
                Segment(urljoin(url, ln), duration, sequence + len(segments), pdt, disc, init)
            )
            duration, pdt, disc = None, None, False
    if target is None:
        raise PlaylistError("media playlist has no #EXT-X-TARGETDURATION")
    return MediaPlaylist(url, target, sequence, segments, endlist, ptype, version)


def http_get(url: str, timeout: float = HTTP_TIMEOUT_S) -> bytes:
    """GET a URL (https verified against the CA ``kvsnb.client.trust`` holds for it, if any); raises
    ``urllib.error.HTTPError`` (with the body's AWS error) on failure."""
    with urllib.request.urlopen(url, timeout=timeout, context=ssl_context(url)) as resp:
        return bytes(resp.read(MAX_SEGMENT_BYTES))


@dataclass(frozen=True)
class HlsFrame:
    """A decoded video frame from HLS: wall-clock timestamp (from PROGRAM-DATE-TIME when the
    playlist has it, else ``None``), presentation time in seconds, the segment's media
    sequence number, whether it is a keyframe, and the PyAV frame."""

    timestamp: pd.Timestamp | None
    pts_s: float
    sequence: int
    keyframe: bool
    frame: av.VideoFrame

    def to_ndarray(self, fmt: str = "rgb24") -> np.ndarray:
        """The pixels as a numpy array (H, W, 3 for rgb24)."""
        return self.frame.to_ndarray(format=fmt)


def decode_segment(
    data: bytes, init: bytes | None = None
) -> list[tuple[float, bool, av.VideoFrame]]:
    """Decode the video frames of one segment (fMP4 with its init segment, or TS)."""
    out = []
    with av.open(io.BytesIO((init or b"") + data), mode="r") as container:
        if not container.streams.video:
            return []
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.pts is None or frame.time_base is None:
                pts = float("nan")
            else:
                pts = float(frame.pts * frame.time_base)
            out.append((pts, bool(frame.key_frame), frame))
    return out


@dataclass
class HlsReader:
    """Reads an HLS session (see the module docstring).

    ``fetch`` gets a URL's bytes (``http_get`` by default; runs in a worker thread).
    """

    url: str
    fetch: Callable[[str], bytes] = http_get
    variant: Variant | None = None
    segments_read: list[Segment] = field(default_factory=list)
    _init_cache: dict[str, bytes] = field(default_factory=dict, repr=False)

    async def _get(self, url: str) -> bytes:
        return await asyncio.to_thread(self.fetch, url)

    async def open(self) -> Variant:
        """Fetch the master playlist and choose the (first) video variant."""
        text = (await self._get(self.url)).decode()
        self.variant = parse_master(text, self.url)[0]
        return self.variant

    async def playlist(self) -> MediaPlaylist:
        """The current video media playlist."""
        if self.variant is None:
            await self.open()
        assert self.variant is not None
        text = (await self._get(self.variant.uri)).decode()
        return parse_media(text, self.variant.uri)

    async def segment_frames(self, segment: Segment) -> list[HlsFrame]:
        """Decode one segment's frames, timestamped."""
        init = None
        if segment.init_uri is not None:
            if segment.init_uri not in self._init_cache:
                self._init_cache[segment.init_uri] = await self._get(segment.init_uri)
            init = self._init_cache[segment.init_uri]
        data = await self._get(segment.uri)
        decoded = await asyncio.to_thread(decode_segment, data, init)
        self.segments_read.append(segment)
        if not decoded:
            return []
        first_pts = decoded[0][0]
        out = []
        for pts, key, frame in decoded:
            stamp = None
            if segment.program_date_time is not None:
                stamp = pd.Timestamp(segment.program_date_time) + pd.Timedelta(
                    seconds=pts - first_pts
                )
            out.append(HlsFrame(stamp, pts, segment.sequence, key, frame))
        return out

    async def frames(
        self, *, follow: bool = True, max_seconds: float | None = None
    ) -> AsyncIterator[HlsFrame]:
        """Every video frame of the session in order. A LIVE playlist is followed until it
        ends, ``max_seconds`` of wall time pass, or the consumer stops iterating;
        ``follow=False`` reads only what the playlist lists now."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        next_seq: int | None = None
        while True:
            pl = await self.playlist()
            for seg in pl.segments:
                if next_seq is not None and seg.sequence < next_seq:
                    continue
                for f in await self.segment_frames(seg):
                    yield f
                next_seq = seg.sequence + 1
            if pl.endlist or not follow:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.sleep(max(0.05, pl.target_duration / 2))

    async def to_frame(self, **kwargs: bool | float | None) -> pd.DataFrame:
        """All frames (see ``frames``) as a DataFrame: timestamp, pts_s, sequence, keyframe,
        frame (PyAV)."""
        return await frames_table(self.frames(**kwargs))  # type: ignore[arg-type]


async def frames_table(frames: AsyncIterator[HlsFrame]) -> pd.DataFrame:
    """Frames read from HLS or DASH segments as a DataFrame: timestamp, pts_s, sequence,
    keyframe, frame (PyAV)."""
    rows = [
        {
            "timestamp": f.timestamp,
            "pts_s": f.pts_s,
            "sequence": f.sequence,
            "keyframe": f.keyframe,
            "frame": f.frame,
        }
        async for f in frames
    ]
    return pd.DataFrame(rows, columns=["timestamp", "pts_s", "sequence", "keyframe", "frame"])


def hls_session_url(
    target: Target,
    stream: str,
    *,
    mode: str = "ON_DEMAND",
    container: str = "FRAGMENTED_MP4",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    selector: str = "SERVER_TIMESTAMP",
    display_timestamps: bool = True,
    expires: int = 300,
    max_results: int | None = None,
) -> str:
    """GetHLSStreamingSessionURL at the stream's data endpoint.

    ON_DEMAND and LIVE_REPLAY need a range; without ``start``/``end`` the whole stored range
    of the stream is used (from ListFragments, by ``selector``). The URL is the one this
    process reaches (``Target.direct_url``); ``Target.public`` gives a browser's."""
    options: dict[str, object] = {
        "ContainerFormat": container,
        "DisplayFragmentTimestamp": "ALWAYS" if display_timestamps else "NEVER",
    }
    if max_results is not None:
        options["MaxMediaPlaylistFragmentResults"] = max_results
    return session_url(
        target,
        stream,
        "HLS",
        mode=mode,
        start=start,
        end=end,
        selector=selector,
        expires=expires,
        options=options,
    )
