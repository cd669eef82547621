"""The media a streaming session serves: fMP4 init and media segments and MPEG-TS segments,
remuxed from stored fragments by ``remux`` (never re-encoded), and the two byte-bounded caches
they come from (parsed fragments and finished segments).

Media time 0 of a session is its earliest sample, video or audio (``origin_ms``), so no
sample is clamped and the audio-video offset is kept (docs/design.md, "Local KVS").
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from kvsnb.local.archive import remux
from kvsnb.local.core.errors import ResourceNotFoundException
from kvsnb.local.store.fragments import Fragment, FragmentStore
from kvsnb.wire import webrtc

logger = logging.getLogger(__name__)

MP4_CONTENT_TYPE = "video/mp4"
TS_CONTENT_TYPE = "video/mp2t"
SEGMENT_CACHE_BYTES = 64 * 1024 * 1024
PARSE_CACHE_BYTES = 32 * 1024 * 1024


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


class Segments:
    """Segments of stored fragments, cached: ``parse`` (a fragment's samples), ``origin``
    (media time 0 of a set of fragments), ``mp4_init``, ``mp4_media`` and ``ts``."""

    def __init__(self, store: FragmentStore) -> None:
        self.store = store
        self.segments = ByteLru(SEGMENT_CACHE_BYTES)
        self.parsed = ByteLru(PARSE_CACHE_BYTES)

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

    async def origin(self, fragments: list[Fragment]) -> int:
        """Media time 0: the earliest sample (video or audio) of the earliest fragment."""
        earliest = min(fragments, key=lambda f: f.producer_start_ms)
        parsed = await self.parse(earliest)
        starts = [earliest.producer_start_ms]
        if parsed.video.samples:
            starts.append(parsed.video.samples[0].time)
        if parsed.audio is not None and parsed.audio.samples:
            starts.append(parsed.audio.samples[0].time * 1000 // parsed.audio.sample_rate)
        return min(starts)

    async def mp4_init(self, init: Fragment, track: int) -> bytes:
        """The fMP4 init segment (``ftyp`` + ``moov``) of one track, from the codec private
        data of ``init``."""
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

    async def mp4_media(
        self,
        fragment: Fragment,
        index: int,
        track: int,
        origin_ms: int,
        init: Fragment,
        gaps: tuple[bool, bool] = (False, False),
    ) -> bytes:
        """The fMP4 media segment (``moof`` + ``mdat``) of one fragment and track: sequence
        number ``index + 1``, times from ``origin_ms``, matching the init segment of
        ``init``. ``gaps``: whether a gap in the media comes before and after the fragment
        (its audio then covers the video's span there, ``remux.audio_segment``)."""
        key = (
            "mp4",
            fragment.stream_arn,
            fragment.fragment_number,
            track,
            index,
            origin_ms,
            init.fragment_number,
            gaps,
        )

        async def load() -> bytes:
            parsed = await self.parse(fragment)
            first = await self.parse(init)
            if track == remux.AUDIO_TRACK:
                rate = (
                    first.audio.sample_rate if first.audio is not None else webrtc.OPUS_SAMPLE_RATE
                )
                return await asyncio.to_thread(
                    functools.partial(
                        remux.audio_segment,
                        parsed,
                        index + 1,
                        origin_ms,
                        rate,
                        cover_start=gaps[0],
                        cover_end=gaps[1],
                    )
                )
            return await asyncio.to_thread(
                remux.video_segment, parsed, index + 1, origin_ms, first.video.avcc
            )

        body: bytes = await self.segments.get(key, load)
        return body

    async def ts(self, fragment: Fragment, origin_ms: int) -> bytes:
        """The MPEG-TS segment of one fragment, times from ``origin_ms``."""
        key = ("ts", fragment.stream_arn, fragment.fragment_number, origin_ms)
        path = self.store.resolve(fragment)

        async def load() -> bytes:
            return await asyncio.to_thread(remux.ts_segment, path, origin_ms)

        body: bytes = await self.segments.get(key, load)
        return body
