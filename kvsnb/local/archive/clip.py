"""GetClip: an MP4 of the stored fragments in a time range, remuxed (never re-encoded) by
``remux``, with the selection rules HLS uses (docs/wire.md, "Archived media")."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from kvsnb.local.archive import remux
from kvsnb.local.archive.segments import MP4_CONTENT_TYPE
from kvsnb.local.archive.selection import MAX_RANGE_MS, dedupe_producer, require_codec_private
from kvsnb.local.control.plane import ControlPlane
from kvsnb.local.core.errors import (
    InvalidArgumentException,
    NoDataRetentionException,
    ResourceNotFoundException,
)
from kvsnb.local.core.responses import RawResponse
from kvsnb.local.store.fragments import SELECTOR_PRODUCER, Fragment, FragmentStore
from kvsnb.wire.times import epoch_ms

logger = logging.getLogger(__name__)

CLIP_MAX_FRAGMENTS = 200  # model, GetClip Payload: "the first 100 MB or the first 200
CLIP_MAX_BYTES = 100 * 1024 * 1024  # fragments from the specified start timestamp"


class ClipPlane:
    """GetClip for the streams of one Local KVS."""

    def __init__(self, control: ControlPlane, store: FragmentStore) -> None:
        self.control = control
        self.store = store

    async def get_clip(self, req: dict[str, Any]) -> RawResponse:
        """GetClip: an MP4 of the fragments whose start lies in the range (inclusive), at most
        the first 200 fragments or 100 MB of them (the model's Payload documentation)."""
        stream = self.control.stream_of(req, exclusive=True)
        if stream.retention_hours == 0:
            raise NoDataRetentionException(
                f"The stream {stream.name} has no data retention, so it has no media to clip."
            )
        selector = req["ClipFragmentSelector"]
        kind = selector["FragmentSelectorType"]
        start = epoch_ms(selector["TimestampRange"]["StartTimestamp"])
        end = epoch_ms(selector["TimestampRange"]["EndTimestamp"])
        if end <= start:
            raise InvalidArgumentException("EndTimestamp must be later than StartTimestamp.")
        if end - start > MAX_RANGE_MS:
            raise InvalidArgumentException(
                "EndTimestamp must be within 24 hours of StartTimestamp."
            )
        found = await asyncio.to_thread(self.store.list_fragments, stream.arn, kind, start, end)
        if kind == SELECTOR_PRODUCER:
            found = dedupe_producer(found, keep_newest=False)
        if not found:
            raise ResourceNotFoundException(
                f"No fragments were found in the stream {stream.name} for the requested clip."
            )
        require_codec_private(found[0])
        chosen: list[Fragment] = []
        total = 0
        for f in found[:CLIP_MAX_FRAGMENTS]:
            if chosen and total + f.size_bytes > CLIP_MAX_BYTES:
                break
            chosen.append(f)
            total += f.size_bytes
        if len(chosen) < len(found):
            logger.info(
                "GetClip on %s: %d of %d fragments (limit)", stream.name, len(chosen), len(found)
            )
        paths = [self.store.resolve(f) for f in chosen]
        body = await asyncio.to_thread(_build_clip, paths, chosen)
        return RawResponse(body, MP4_CONTENT_TYPE)


def _build_clip(paths: list[Path], fragments: list[Fragment]) -> bytes:
    parsed = [
        remux.read_fragment(p, f.producer_start_ms, f.producer_end_ms)
        for p, f in zip(paths, fragments, strict=True)
    ]
    return remux.clip_mp4(paths[0], parsed)
