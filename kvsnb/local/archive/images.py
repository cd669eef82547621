"""GetImages on stored fragments: sampled frames decoded on demand, scaled, JPEG/PNG encoded.

The rule: sampling, sizes, pages, NextToken, NO_MEDIA/MEDIA_ERROR entries and errors behave as
docs/wire.md, "Archived media" (GetImages) describes, including the two points the model leaves
open (one of Width/Height alone, the default sampling interval). Video is decoded only here
(docs/design.md, principle 3): each sample is planned onto the fragment that covers it and
each fragment's samples are one task for the decode processes (``render``), which decode
each GOP once from its keyframe to its last sample. A paged request's next pages are planned
ahead while the client reads this one, whole fragments at a time: when a page or read-ahead
window ends inside a fragment, the fragment's later samples join its task, so no fragment's
samples are split over two tasks (two processes would decode the same GOP). See
docs/design.md, "Local KVS".
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvsnb.local.archive.plane import decode_offset
from kvsnb.local.archive.render import (
    ERROR_MEDIA,
    ERROR_NO_MEDIA,
    DecodePool,
    EncodeSpec,
    FragmentTask,
    TaskResult,
    shared_pool,
)
from kvsnb.local.control.plane import ControlPlane
from kvsnb.local.core.errors import (
    InvalidArgumentException,
    NoDataRetentionException,
    ResourceNotFoundException,
)
from kvsnb.local.core.tokens import encode_token
from kvsnb.local.store.fragments import SELECTOR_SERVER, Fragment, FragmentStore
from kvsnb.wire.times import epoch_ms

logger = logging.getLogger(__name__)

PAGE_SIZE = 25  # images per response (API reference, MaxResults)
MIN_SAMPLING_INTERVAL_MS = 200  # API reference, SamplingInterval
DEFAULT_SAMPLING_INTERVAL_MS = 3000  # inferred: the model has no default; AWS examples use 3000
MAX_RANGE_MS = 300_000  # API reference, EndTimestamp: at most 300 s after StartTimestamp
JPEG_QUALITY_KEY = "JPEGQuality"  # API reference, FormatConfig: the only key
DEFAULT_JPEG_QUALITY = 80
MIN_JPEG_QUALITY, MAX_JPEG_QUALITY = 1, 100
NO_FRAGMENTS_MESSAGE = "No fragments found"  # docs/wire.md "Archived media", GetImages
SIZE_MESSAGE = "Height and width for the images need to be provided or none."  # boto3#3900
FRAGMENT_LOOKBACK_MS = 120_000  # a fragment starting this long before Start may still cover it
READ_AHEAD_PAGES = 2  # pages of a paged request planned beyond the one asked for
PLANS_KEPT = 2  # paged requests whose planned pages are kept


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


# ---------------------------------------------------------------------------- planning


class ImageRenderer:
    """Plans sampled times onto stored fragments and has each fragment's samples rendered
    by the decode pool (``render.DecodePool``), one task per fragment."""

    def __init__(self, store: FragmentStore, pool: DecodePool | None = None) -> None:
        self.store = store
        self.pool = pool or shared_pool()
        self._lock = threading.Lock()
        self._generation = 0
        self.frames_decoded = 0  # frames decoded so far (tests and benchmarks read it)
        self.tasks_submitted = 0  # tasks handed to the decode pool so far (one per fragment)

    def clear_caches(self) -> None:
        """Make the decode processes drop their cached fragments and decoders (before the
        next task): a benchmark's cold start, or a fragment file changed under them."""
        with self._lock:
            self._generation += 1

    def plan(
        self, request: ImageRequest, fragments: Sequence[Fragment], slots: Sequence[int]
    ) -> tuple[dict[int, str], list[FragmentTask]]:
        """Sampled times ``slots`` onto ``fragments`` (sorted by the selector's start):
        the errors known at once (NO_MEDIA where no fragment covers a time) and one task per
        covering fragment."""
        server = request.selector == SELECTOR_SERVER
        starts = [f.server_start_ms if server else f.producer_start_ms for f in fragments]
        spec = EncodeSpec(request.image_format, request.quality, request.width, request.height)
        errors: dict[int, str] = {}
        grouped: dict[str, tuple[Fragment, list[tuple[int, int]]]] = {}
        for slot in slots:
            t = request.sample_ms(slot)
            fragment = _covering(fragments, starts, t)
            if fragment is None:
                errors[slot] = ERROR_NO_MEDIA
                continue
            target = fragment.producer_start_ms + (t - fragment.server_start_ms) if server else t
            entry = grouped.setdefault(fragment.fragment_number, (fragment, []))
            entry[1].append((slot, target))
        with self._lock:
            generation = self._generation
        tasks = [
            FragmentTask(str(self.store.resolve(f)), tuple(samples), spec, generation)
            for f, samples in grouped.values()
        ]
        return errors, tasks

    def submit(self, task: FragmentTask) -> concurrent.futures.Future[TaskResult]:
        """Queue a task on the decode pool (decoded frames are counted when it is done)."""
        with self._lock:
            self.tasks_submitted += 1
        future = self.pool.submit(task)
        future.add_done_callback(self._count)
        return future

    def _count(self, future: concurrent.futures.Future[TaskResult]) -> None:
        if not future.cancelled() and future.exception() is None:
            with self._lock:
                self.frames_decoded += future.result().decoded


def _entry(
    request: ImageRequest, slot: int, images: dict[int, str], errors: dict[int, str]
) -> dict[str, Any]:
    """One ``Images`` entry: the time, and the image or the error (MEDIA_ERROR if neither)."""
    entry: dict[str, Any] = {"TimeStamp": request.sample_ms(slot) / 1000}
    if slot in images:
        entry["ImageContent"] = images[slot]
    else:
        entry["Error"] = errors.get(slot, ERROR_MEDIA)
    return entry


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


# ---------------------------------------------------------------------------- plane


@dataclass(eq=False)
class _Plan:
    """The sampled times of one paged request handed to the decode pool so far."""

    pending: dict[int, concurrent.futures.Future[TaskResult]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    def planned(self, slot: int) -> bool:
        return slot in self.pending or slot in self.errors

    def forget(self, slots: Sequence[int]) -> None:
        """Drop what belongs to a page once served (asked again, it is planned afresh)."""
        for slot in slots:
            self.pending.pop(slot, None)
            self.errors.pop(slot, None)


class ImagesPlane:
    """GetImages over the fragment store (see the module docstring for the rules)."""

    def __init__(self, control: ControlPlane, store: FragmentStore) -> None:
        self.control = control
        self.store = store
        self.renderer = ImageRenderer(store)
        self._plans: OrderedDict[str, _Plan] = OrderedDict()  # by the request's token state

    async def get_images(self, req: dict[str, Any]) -> dict[str, Any]:
        """GetImages: one entry per sampled time, at most 25 per page, NextToken for more."""
        stream = self.control.stream_of(req, exclusive=True)
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
        plan = self._plan_of(request, fresh=offset == 0)
        slots = range(offset, offset + count)
        missing = [s for s in slots if not plan.planned(s)]
        if missing:
            await self._plan_slots(request, plan, missing, page_asked=True)
        more = offset + count < total
        if more:
            end = min(total, offset + count + READ_AHEAD_PAGES * page)
            await self._read_ahead(request, plan, range(offset + count, end))
        images = await self._collect(request, plan, slots)
        plan.forget(slots)
        token = encode_token({**request.token_state(), "offset": offset + count})
        return {"Images": images, "NextToken": token if more else None}

    def _plan_of(self, request: ImageRequest, *, fresh: bool) -> _Plan:
        """The request's plan: a new one for its first page, else the one its earlier pages
        made (what they planned ahead is complete, so still true)."""
        key = json.dumps(request.token_state(), sort_keys=True)
        plan = self._plans.pop(key, None)
        if plan is None or fresh:
            plan = _Plan()
        self._plans[key] = plan
        while len(self._plans) > PLANS_KEPT:
            self._plans.popitem(last=False)
        return plan

    async def _plan_slots(
        self, request: ImageRequest, plan: _Plan, slots: Sequence[int], *, page_asked: bool
    ) -> None:
        """Hand ``slots`` to the decode pool. For the page asked for,
        ``ResourceNotFoundException`` when the request's whole range has no fragment."""
        first, last = request.sample_ms(slots[0]), request.sample_ms(slots[-1])
        fragments = await self._fragments(request, first, last)
        if page_asked and not fragments:
            whole = (request.start_ms, request.end_ms)
            if (first, last) == whole or not await self._fragments(request, *whole):
                raise ResourceNotFoundException(NO_FRAGMENTS_MESSAGE)
        slots = [*slots, *self._rest_of_fragment(request, plan, fragments, slots[-1])]
        errors, tasks = self.renderer.plan(request, fragments, slots)
        plan.errors.update(errors)
        for task in tasks:
            future = self.renderer.submit(task)
            for slot, _ in task.samples:
                plan.pending[slot] = future

    def _rest_of_fragment(
        self, request: ImageRequest, plan: _Plan, fragments: Sequence[Fragment], last: int
    ) -> list[int]:
        """The sampled times after slot ``last`` that the fragment covering ``last`` also
        covers, not planned yet: they go in that fragment's task. Only as far as read-ahead
        may go (before the latest stored fragment's start, so the plan cannot change)."""
        server = request.selector == SELECTOR_SERVER
        starts = [f.server_start_ms if server else f.producer_start_ms for f in fragments]
        fragment = _covering(fragments, starts, request.sample_ms(last))
        latest = self.store.latest_fragment(request.stream_arn)
        if fragment is None or latest is None:
            return []
        start = fragment.server_start_ms if server else fragment.producer_start_ms
        limit = min(
            start + fragment.duration_ms,
            latest.server_start_ms if server else latest.producer_start_ms,
        )
        rest: list[int] = []
        slot = last + 1
        while (
            slot < request.sample_count
            and request.sample_ms(slot) < limit
            and not plan.planned(slot)
        ):
            rest.append(slot)
            slot += 1
        return rest

    async def _read_ahead(self, request: ImageRequest, plan: _Plan, slots: range) -> None:
        """Plan the next pages while the client reads this one, as far as their range is
        complete (a later fragment is already stored, so waiting cannot change them)."""
        latest = self.store.latest_fragment(request.stream_arn)
        if latest is None:
            return
        server = request.selector == SELECTOR_SERVER
        latest_start = latest.server_start_ms if server else latest.producer_start_ms
        ahead = [s for s in slots if not plan.planned(s) and request.sample_ms(s) < latest_start]
        if ahead:
            await self._plan_slots(request, plan, ahead, page_asked=False)

    @staticmethod
    async def _collect(request: ImageRequest, plan: _Plan, slots: range) -> list[dict[str, Any]]:
        """The page's entries, once the tasks rendering them are done."""
        futures = {id(f): f for s in slots if (f := plan.pending.get(s)) is not None}
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures.values()))
        images: dict[int, str] = {}
        errors = dict(plan.errors)
        for result in results:
            images.update(result.images)
            errors.update(result.errors)
        return [_entry(request, slot, images, errors) for slot in slots]

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
