"""The archived-media plane (``kinesis-video-archived-media``) over the fragment store:
ListFragments and GetMediaForFragmentList (docs/wire.md, "Archived media").

Selection is on a fragment's start time, inclusive at both ends; an empty stream gives an
empty list; fragments are listed only once durable (the store's rule). GetMediaForFragmentList
answers with Matroska carrying the AWS fragment tags, one EBML header and Segment per
fragment, as GetMedia does (``mkv``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kvsnb.local.control.plane import ControlPlane
from kvsnb.local.core.errors import InvalidArgumentException, ResourceNotFoundException
from kvsnb.local.core.responses import RawResponse
from kvsnb.local.core.tokens import INVALID_TOKEN, decode_token, encode_token
from kvsnb.local.store.fragments import Fragment, FragmentStore
from kvsnb.local.store.mkv import build_fragment_list_body
from kvsnb.wire.times import epoch_ms

logger = logging.getLogger(__name__)

LIST_DEFAULT_MAX = 1000
MKV_CONTENT_TYPE = "video/webm"


def fragment_to_dict(f: Fragment) -> dict[str, Any]:
    """The ``Fragment`` wire shape of ListFragments."""
    return {
        "FragmentNumber": f.fragment_number,
        "FragmentSizeInBytes": f.size_bytes,
        "ProducerTimestamp": f.producer_start_ms / 1000,
        "ServerTimestamp": f.server_start_ms / 1000,
        "FragmentLengthInMilliseconds": f.duration_ms,
    }


def decode_offset(token: str | None, expect: dict[str, Any]) -> int:
    """The offset in a NextToken made for the same request (``InvalidArgumentException``
    otherwise)."""
    if token is None:
        return 0
    state = decode_token(token)
    try:
        offset = int(state.pop("offset"))
    except (AttributeError, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise InvalidArgumentException(INVALID_TOKEN) from exc
    if state != expect or offset < 0:
        raise InvalidArgumentException("NextToken does not match this request.")
    return offset


class ArchivePlane:
    """ListFragments and GetMediaForFragmentList for the streams of one Local KVS."""

    def __init__(self, control: ControlPlane, store: FragmentStore) -> None:
        self.control = control
        self.store = store

    async def list_fragments(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListFragments: by producer or server start time (inclusive range), paginated."""
        stream = self.control.stream_of(req, exclusive=True)
        selector = req.get("FragmentSelector")
        kind, start, end = "SERVER_TIMESTAMP", None, None
        if selector is not None:
            kind = selector["FragmentSelectorType"]
            start = epoch_ms(selector["TimestampRange"]["StartTimestamp"])
            end = epoch_ms(selector["TimestampRange"]["EndTimestamp"])
            if start > end:
                raise InvalidArgumentException(
                    "The StartTimestamp must be before or equal to the EndTimestamp."
                )
        limit = int(req.get("MaxResults", LIST_DEFAULT_MAX))
        expect = {"stream": stream.arn, "kind": kind, "start": start, "end": end}
        offset = decode_offset(req.get("NextToken"), expect)
        fragments = await asyncio.to_thread(self.store.list_fragments, stream.arn, kind, start, end)
        page = fragments[offset : offset + limit]
        more = offset + limit < len(fragments)
        return {
            "Fragments": [fragment_to_dict(f) for f in page],
            "NextToken": encode_token({**expect, "offset": offset + limit}) if more else None,
        }

    async def get_media_for_fragment_list(self, req: dict[str, Any]) -> RawResponse:
        """GetMediaForFragmentList: the fragments' Matroska, in the order asked."""
        stream = self.control.stream_of(req, exclusive=True)
        numbers = list(req["Fragments"])
        found = await asyncio.to_thread(self.store.get_fragments, stream.arn, numbers)
        by_number = {f.fragment_number: f for f in found}
        missing = [n for n in numbers if n not in by_number]
        if missing:
            raise ResourceNotFoundException(
                f"Fragment {missing[0]} was not found in stream {stream.name}."
            )
        paths = [self.store.resolve(by_number[n]) for n in numbers]
        body = await asyncio.to_thread(build_fragment_list_body, paths)
        return RawResponse(body, MKV_CONTENT_TYPE)
