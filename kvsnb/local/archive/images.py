"""GetImages on stored fragments: sampled frames decoded on demand, scaled, JPEG/PNG encoded.

The rule: sampling, sizes, pages, NextToken, NO_MEDIA/MEDIA_ERROR entries and errors behave as
docs/wire.md, "Archived media" (GetImages) describes, including the two points the model leaves
open (one of Width/Height alone, the default sampling interval). Video is decoded only here
(docs/design.md, principle 3), each GOP once from its keyframe to the last sample that needs
it; the decoding plan and its caches are in docs/design.md, "Local KVS".
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import concurrent.futures
import io
import itertools
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from PIL import Image  # Pillow: a dependency of matplotlib, itself a kvsnb dependency

from kvsnb.local.archive.plane import ArchivePlane, decode_offset
from kvsnb.local.control.plane import ControlPlane
from kvsnb.local.core.errors import (
    InvalidArgumentException,
    NoDataRetentionException,
    ResourceNotFoundException,
)
from kvsnb.local.core.tokens import encode_token
from kvsnb.local.store.fragments import SELECTOR_SERVER, Fragment, FragmentStore
from kvsnb.times import epoch_ms

logger = logging.getLogger(__name__)

PAGE_SIZE = 25  # images per response (API reference, MaxResults)
MIN_SAMPLING_INTERVAL_MS = 200  # API reference, SamplingInterval
DEFAULT_SAMPLING_INTERVAL_MS = 3000  # inferred: the model has no default; AWS examples use 3000
MAX_RANGE_MS = 300_000  # API reference, EndTimestamp: at most 300 s after StartTimestamp
JPEG_QUALITY_KEY = "JPEGQuality"  # API reference, FormatConfig: the only key
DEFAULT_JPEG_QUALITY = 80
MIN_JPEG_QUALITY, MAX_JPEG_QUALITY = 1, 100
FORMAT_JPEG, FORMAT_PNG = "JPEG", "PNG"
PNG_COMPRESS_LEVEL = 1  # lossless either way; level 1 is the fastest zlib setting
ERROR_NO_MEDIA = "NO_MEDIA"
ERROR_MEDIA = "MEDIA_ERROR"
NO_FRAGMENTS_MESSAGE = "No fragments found"  # docs/wire.md "Archived media", GetImages
SIZE_MESSAGE = "Height and width for the images need to be provided or none."  # boto3#3900
FRAGMENT_LOOKBACK_MS = 120_000  # a fragment starting this long before Start may still cover it
WORKERS = max(2, os.cpu_count() or 2)
DECODER_CACHE_SIZE = 4
MEDIA_CACHE_SIZE = 8
STORED_FORMAT = "matroska"  # mkv.py: every stored fragment is one Matroska file
DEMUX_OPTIONS = {"probesize": "32", "analyzeduration": "0"}  # tracks come from the header

_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide pool that runs GOP decodes (shared by every Local KVS)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=WORKERS, thread_name_prefix="kvsnb-images"
            )
        return _pool


# ---------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A validated GetImages request (times in epoch ms)."""

    stream_arn: str
    selector: str
    start_ms: int
    end_ms: int
    interval_ms: int
    image_format: str
    quality: int
    width: int | None
    height: int | None

    @property
    def sample_count(self) -> int:
        """Number of sampled times: Start, Start + interval, ... up to End inclusive."""
        return (self.end_ms - self.start_ms) // self.interval_ms + 1

    def sample_ms(self, k: int) -> int:
        """The k-th sampled time."""
        return self.start_ms + k * self.interval_ms

    def token_state(self) -> dict[str, Any]:
        """What a NextToken of this request is tied to (JSON-able)."""
        return {
            "op": "GetImages",
            "stream": self.stream_arn,
            "kind": self.selector,
            "start": self.start_ms,
            "end": self.end_ms,
            "interval": self.interval_ms,
            "format": self.image_format,
            "quality": self.quality,
            "width": self.width,
            "height": self.height,
        }


def parse_jpeg_quality(config: dict[str, str] | None) -> int:
    """The JPEG quality of a FormatConfig (``InvalidArgumentException`` when malformed)."""
    if not config:
        return DEFAULT_JPEG_QUALITY
    unknown = sorted(set(config) - {JPEG_QUALITY_KEY})
    if unknown:
        raise InvalidArgumentException(
            f"FormatConfig key {unknown[0]} is not supported; the only key is {JPEG_QUALITY_KEY}."
        )
    raw = config[JPEG_QUALITY_KEY]
    value = int(raw) if raw.strip().isdigit() else -1
    if not MIN_JPEG_QUALITY <= value <= MAX_JPEG_QUALITY:
        raise InvalidArgumentException(
            f"{JPEG_QUALITY_KEY} must be an integer from {MIN_JPEG_QUALITY} to "
            f"{MAX_JPEG_QUALITY}; got {raw!r}."
        )
    return value


def parse_request(req: dict[str, Any], stream_arn: str) -> ImageRequest:
    """Check the rules the model cannot express and return the request in ms."""
    width, height = req.get("WidthPixels"), req.get("HeightPixels")
    if (width is None) != (height is None):
        raise InvalidArgumentException(SIZE_MESSAGE)
    interval = req.get("SamplingInterval")
    interval = DEFAULT_SAMPLING_INTERVAL_MS if interval is None else int(interval)
    if interval < MIN_SAMPLING_INTERVAL_MS:
        raise InvalidArgumentException(
            f"SamplingInterval must be at least {MIN_SAMPLING_INTERVAL_MS} ms; got {interval}."
        )
    start, end = epoch_ms(req["StartTimestamp"]), epoch_ms(req["EndTimestamp"])
    if end < start:
        raise InvalidArgumentException(
            "The EndTimestamp must be after or equal to the StartTimestamp."
        )
    if end - start > MAX_RANGE_MS:
        raise InvalidArgumentException(
            f"The time range between StartTimestamp and EndTimestamp must be at most "
            f"{MAX_RANGE_MS // 1000} seconds."
        )
    return ImageRequest(
        stream_arn=stream_arn,
        selector=req["ImageSelectorType"],
        start_ms=start,
        end_ms=end,
        interval_ms=interval,
        image_format=req["Format"],
        quality=parse_jpeg_quality(req.get("FormatConfig")),
        width=None if width is None else int(width),
        height=None if height is None else int(height),
    )


# ---------------------------------------------------------------------------- media


class MediaError(Exception):
    """A fragment cannot give an image (unreadable, no video track, undecodable)."""


@dataclass(frozen=True, slots=True)
class FragmentMedia:
    """The demuxed video packets of one fragment file, in decode order."""

    path: Path
    extradata: bytes | None
    data: tuple[bytes, ...]
    pts: tuple[int, ...]  # producer epoch ms
    keyframes: tuple[int, ...]  # packet indices of keyframes, ascending
    monotonic: bool  # pts strictly increasing in decode order (no reordering)

    def frame_at(self, t_ms: int) -> int | None:
        """Index of the frame shown at producer time ``t_ms`` (last pts ≤ t), or None."""
        if self.monotonic:
            i = bisect.bisect_right(self.pts, t_ms) - 1
            return i if i >= 0 else None
        best: int | None = None
        for i, p in enumerate(self.pts):
            if p <= t_ms and (best is None or p > self.pts[best]):
                best = i
        return best

    def keyframe_before(self, index: int) -> int | None:
        """The last keyframe at or before packet ``index``, or None."""
        k = bisect.bisect_right(self.keyframes, index) - 1
        return self.keyframes[k] if k >= 0 else None


def load_media(path: Path) -> FragmentMedia:
    """Demux a stored fragment's video track (no decoding). ``MediaError`` if impossible."""
    try:
        with av.open(str(path), "r", format=STORED_FORMAT, options=DEMUX_OPTIONS) as container:
            if not container.streams.video:
                raise MediaError(f"{path.name} has no video track")
            stream = container.streams.video[0]
            extradata = stream.codec_context.extradata
            data: list[bytes] = []
            pts: list[int] = []
            keys: list[int] = []
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                if packet.is_keyframe:
                    keys.append(len(data))
                data.append(bytes(packet))
                pts.append(int(packet.pts * packet.time_base * 1000))
    except av.FFmpegError as exc:
        raise MediaError(f"cannot read {path.name}: {exc}") from exc
    monotonic = all(a < b for a, b in itertools.pairwise(pts))
    return FragmentMedia(
        path=path,
        extradata=None if extradata is None else bytes(extradata),
        data=tuple(data),
        pts=tuple(pts),
        keyframes=tuple(keys),
        monotonic=monotonic,
    )


@dataclass(slots=True)
class _Decoder:
    """An H.264 decoder positioned after packet ``position`` of one fragment's GOP."""

    path: Path
    keyframe: int
    position: int
    context: Any
    last: Any = None  # the last av.VideoFrame output

    @classmethod
    def open(cls, media: FragmentMedia, keyframe: int) -> _Decoder:
        ctx = av.CodecContext.create("h264", "r")
        if media.extradata:
            ctx.extradata = media.extradata
        ctx.thread_count = 1  # parallelism comes from decoding GOPs side by side
        return cls(media.path, keyframe, keyframe - 1, ctx)


@dataclass(slots=True)
class _Run:
    """The samples that decode from one keyframe of one fragment."""

    media: FragmentMedia
    keyframe: int
    wanted: dict[int, list[int]] = field(default_factory=dict)  # packet index → page slots

    @property
    def last(self) -> int:
        return max(self.wanted)


class ImageRenderer:
    """Decodes, scales and encodes sampled frames of stored fragments (thread-safe).

    Keeps small LRU caches of demuxed fragments and of decoders left mid-GOP.
    """

    def __init__(self, store: FragmentStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._media: OrderedDict[Path, FragmentMedia] = OrderedDict()
        self._decoders: OrderedDict[tuple[Path, int], _Decoder] = OrderedDict()
        self.frames_decoded = 0  # frames decoded so far (tests and benchmarks read it)

    # ------------------------------------------------------------------ caches

    def media(self, fragment: Fragment) -> FragmentMedia:
        """The demuxed packets of a fragment (cached)."""
        path = self.store.resolve(fragment)
        with self._lock:
            found = self._media.get(path)
            if found is not None:
                self._media.move_to_end(path)
                return found
        media = load_media(path)
        with self._lock:
            self._media[path] = media
            while len(self._media) > MEDIA_CACHE_SIZE:
                self._media.popitem(last=False)
        return media

    def _take_decoder(self, run: _Run, first: int) -> _Decoder:
        key = (run.media.path, run.keyframe)
        with self._lock:
            decoder = self._decoders.pop(key, None)
        if decoder is not None and decoder.position <= first:
            return decoder
        return _Decoder.open(run.media, run.keyframe)

    def _keep_decoder(self, decoder: _Decoder) -> None:
        with self._lock:
            self._decoders[(decoder.path, decoder.keyframe)] = decoder
            while len(self._decoders) > DECODER_CACHE_SIZE:
                self._decoders.popitem(last=False)

    # ------------------------------------------------------------------ rendering

    def render(
        self, request: ImageRequest, fragments: Sequence[Fragment], offset: int, count: int
    ) -> list[dict[str, Any]]:
        """The ``Images`` entries of sampled times ``offset`` .. ``offset + count - 1``.

        ``fragments`` are the stream's fragments around the range, sorted by the
        selector's start time. Blocking (decoding); runs GOPs in parallel.
        """
        times = [request.sample_ms(k) for k in range(offset, offset + count)]
        results: list[dict[str, Any]] = [{"TimeStamp": t / 1000} for t in times]
        server = request.selector == SELECTOR_SERVER
        starts = [f.server_start_ms if server else f.producer_start_ms for f in fragments]
        covering = [_covering(fragments, starts, t) for t in times]
        loaded = self._load_all({f.fragment_number: f for f in covering if f is not None})
        runs: dict[tuple[Path, int], _Run] = {}
        for slot, t in enumerate(times):
            fragment = covering[slot]
            if fragment is None:
                results[slot]["Error"] = ERROR_NO_MEDIA
                continue
            target = fragment.producer_start_ms + (t - fragment.server_start_ms) if server else t
            media = loaded[fragment.fragment_number]
            if media is None:
                results[slot]["Error"] = ERROR_MEDIA
                continue
            if not media.pts:
                results[slot]["Error"] = ERROR_MEDIA  # the fragment holds no video frame
                continue
            index = media.frame_at(target)
            if index is None:
                results[slot]["Error"] = ERROR_NO_MEDIA
                continue
            keyframe = media.keyframe_before(index)
            if keyframe is None:
                results[slot]["Error"] = ERROR_MEDIA  # no keyframe to start decoding from
                continue
            run = runs.setdefault((media.path, keyframe), _Run(media, keyframe))
            run.wanted.setdefault(index, []).append(slot)
        ordered = sorted(runs.values(), key=lambda r: r.last - r.keyframe, reverse=True)
        if len(ordered) == 1:
            self._decode_run(ordered[0], request, results)
        elif ordered:
            pool = _executor()
            futures = [pool.submit(self._decode_run, r, request, results) for r in ordered]
            for future in futures:
                future.result()
        return results

    def _load_all(self, fragments: dict[str, Fragment]) -> dict[str, FragmentMedia | None]:
        """Demux the fragments in parallel; None for those that cannot be read."""

        def load(fragment: Fragment) -> FragmentMedia | None:
            try:
                return self.media(fragment)
            except (MediaError, OSError) as exc:
                logger.warning("GetImages: %s", exc)
                return None

        if len(fragments) <= 1:
            return {n: load(f) for n, f in fragments.items()}
        return dict(zip(fragments, _executor().map(load, fragments.values()), strict=True))

    def _decode_run(self, run: _Run, request: ImageRequest, results: list[dict[str, Any]]) -> None:
        """Decode one GOP from its keyframe up to its last wanted frame, encoding each."""
        media = run.media
        targets = sorted(run.wanted)
        decoder = self._take_decoder(run, targets[0])
        wanted_pts = {media.pts[i]: run.wanted[i] for i in targets}
        done: set[int] = set()
        decoded = 0

        def emit(frame: Any) -> None:
            slots = wanted_pts.get(frame.pts)
            if slots is None or frame.pts in done:
                return
            done.add(frame.pts)
            content = encode_image(frame, request)
            for slot in slots:
                results[slot]["ImageContent"] = content

        try:
            if decoder.last is not None and decoder.last.pts in wanted_pts:
                emit(decoder.last)
            flushed = False
            for target in targets:
                while media.pts[target] not in done and not flushed:
                    if decoder.position + 1 < len(media.data):
                        decoder.position += 1
                        packet = av.Packet(media.data[decoder.position])
                        packet.pts = media.pts[decoder.position]
                        frames = decoder.context.decode(packet)
                    else:
                        frames = decoder.context.decode(None)
                        flushed = True
                    for frame in frames:
                        decoded += 1
                        decoder.last = frame
                        emit(frame)
            if not flushed:
                self._keep_decoder(decoder)
        except (av.FFmpegError, ValueError) as exc:
            logger.warning("GetImages: decoding %s failed: %s", media.path.name, exc)
        with self._lock:
            self.frames_decoded += decoded
        for index in targets:
            for slot in run.wanted[index]:
                if "ImageContent" not in results[slot]:
                    results[slot]["Error"] = ERROR_MEDIA


def _covering(fragments: Sequence[Fragment], starts: Sequence[int], t: int) -> Fragment | None:
    """The fragment whose [start, start + duration) holds ``t`` (latest start wins)."""
    i = bisect.bisect_right(starts, t) - 1
    while i >= 0:
        fragment = fragments[i]
        if t < starts[i] + fragment.duration_ms:
            return fragment
        if starts[i] + FRAGMENT_LOOKBACK_MS < t:
            break
        i -= 1
    return None


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a prefetch's outcome so an unused failure is not reported as unhandled."""
    if not task.cancelled():
        task.exception()


def encode_image(frame: Any, request: ImageRequest) -> str:
    """Scale a decoded frame as asked and encode it: base64 of the JPEG or PNG bytes."""
    if request.width is not None and request.height is not None:
        rgb = frame.reformat(width=request.width, height=request.height, format="rgb24")
    else:
        rgb = frame.reformat(format="rgb24")
    image = Image.fromarray(rgb.to_ndarray(), "RGB")
    buffer = io.BytesIO()
    if request.image_format == FORMAT_PNG:
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, "JPEG", quality=request.quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------- plane


class ImagesPlane:
    """GetImages over the fragment store (see the module docstring for the rules)."""

    def __init__(self, control: ControlPlane, store: FragmentStore) -> None:
        self.control = control
        self.store = store
        self._streams = ArchivePlane(control, store)
        self.renderer = ImageRenderer(store)
        # the next page of the last paged request, rendered ahead (at most one page held)
        self._prefetched: tuple[tuple[str, int, int], asyncio.Future[Any]] | None = None

    async def get_images(self, req: dict[str, Any]) -> dict[str, Any]:
        """GetImages: one entry per sampled time, at most 25 per page, NextToken for more."""
        stream = self._streams.stream(req)
        request = parse_request(req, stream.arn)
        if stream.retention_hours <= 0:
            raise NoDataRetentionException(
                f"The stream {stream.name} has no data retention, so it has no images."
            )
        offset = decode_offset(req.get("NextToken"), request.token_state())
        total = request.sample_count
        if offset >= total:
            raise InvalidArgumentException("NextToken is not valid.")
        page = min(PAGE_SIZE, int(req.get("MaxResults") or PAGE_SIZE))
        count = min(page, total - offset)
        key = (json.dumps(request.token_state(), sort_keys=True), offset, count)
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == key:
            images = await asyncio.shield(prefetched[1])
        else:
            images = await self._page(request, offset, count)
        more = offset + count < total
        if more:
            self._prefetch(request, offset + count, min(page, total - offset - count))
        token = encode_token({**request.token_state(), "offset": offset + count})
        return {"Images": images, "NextToken": token if more else None}

    async def _page(self, request: ImageRequest, offset: int, count: int) -> list[dict[str, Any]]:
        """The Images entries of one page (``ResourceNotFoundException`` if the whole range
        has no fragment)."""
        first, last = request.sample_ms(offset), request.sample_ms(offset + count - 1)
        fragments = await self._fragments(request, first, last)
        if not fragments and (first, last) != (request.start_ms, request.end_ms):
            if not await self._fragments(request, request.start_ms, request.end_ms):
                raise ResourceNotFoundException(NO_FRAGMENTS_MESSAGE)
        elif not fragments:
            raise ResourceNotFoundException(NO_FRAGMENTS_MESSAGE)
        return await asyncio.to_thread(self.renderer.render, request, fragments, offset, count)

    def _prefetch(self, request: ImageRequest, offset: int, count: int) -> None:
        """Start rendering the next page while the client reads this one, when its range is
        complete (a later fragment is already stored, so waiting cannot change the page)."""
        latest = self.store.latest_fragment(request.stream_arn)
        if latest is None:
            return
        server = request.selector == SELECTOR_SERVER
        latest_start = latest.server_start_ms if server else latest.producer_start_ms
        if latest_start <= request.sample_ms(offset + count - 1):
            return
        key = (json.dumps(request.token_state(), sort_keys=True), offset, count)
        task = asyncio.ensure_future(self._page(request, offset, count))
        task.add_done_callback(_consume)
        self._prefetched = (key, task)

    async def _fragments(self, request: ImageRequest, start_ms: int, end_ms: int) -> list[Fragment]:
        """The stream's fragments that overlap [start_ms, end_ms] by the request's selector,
        with the earlier ones that may cover it, sorted by start."""
        fragments = await asyncio.to_thread(
            self.store.list_fragments,
            request.stream_arn,
            request.selector,
            start_ms - FRAGMENT_LOOKBACK_MS,
            end_ms,
        )
        server = request.selector == SELECTOR_SERVER
        if any(
            (f.server_start_ms if server else f.producer_start_ms) + f.duration_ms > start_ms
            for f in fragments
        ):
            return fragments
        return []
