"""The archived-media plane (``kinesis-video-archived-media``) over the fragment store:
ListFragments and GetMediaForFragmentList (docs/wire.md, "Archived media").

Selection is on a fragment's start time, inclusive at both ends; an empty stream gives an
empty list; fragments are listed only once durable (the store's rule). GetMediaForFragmentList
answers with Matroska carrying the AWS fragment tags, one EBML header and Segment per
fragment, as GetMedia does (``mkv``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
from typing import Any

from kvsnb.local.control.plane import ControlPlane, Stream
from kvsnb.local.core.errors import InvalidArgumentException, ResourceNotFoundException
from kvsnb.local.core.responses import RawResponse
from kvsnb.local.store.fragments import Fragment, FragmentStore
from kvsnb.local.store.mkv import build_fragment_list_body

logger = logging.getLogger(__name__)

LIST_DEFAULT_MAX = 1000
MKV_CONTENT_TYPE = "video/webm"


def epoch_ms(value: dt.datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return round(value.timestamp() * 1000)


def fragment_to_dict(f: Fragment) -> dict[str, Any]:
    """The ``Fragment`` wire shape of ListFragments."""
    return {
        "FragmentNumber": f.fragment_number,
        "FragmentSizeInBytes": f.size_bytes,
        "ProducerTimestamp": f.producer_start_ms / 1000,
        "ServerTimestamp": f.server_start_ms / 1000,
        "FragmentLengthInMilliseconds": f.duration_ms,
    }


def encode_token(state: dict[str, Any]) -> str:
    """An opaque NextToken (base64 of JSON, matching the model's pattern)."""
    return base64.b64encode(json.dumps(state, sort_keys=True).encode()).decode()


def decode_token(token: str | None, expect: dict[str, Any]) -> int:
    """The offset in a NextToken made for the same request (``InvalidArgumentException``
    otherwise)."""
    if token is None:
        return 0
    try:
        state = json.loads(base64.b64decode(token, validate=True))
        offset = int(state.pop("offset"))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise InvalidArgumentException("NextToken is not valid.") from exc
    if state != expect or offset < 0:
        raise InvalidArgumentException("NextToken does not match this request.")
    return offset


class ArchivePlane:
    """ListFragments and GetMediaForFragmentList for the streams of one Local KVS."""

    def __init__(self, control: ControlPlane, store: FragmentStore) -> None:
        self.control = control
        self.store = store

    def stream(self, req: dict[str, Any]) -> Stream:
        """The stream named by StreamName or StreamARN (exactly one is needed)."""
        name, arn = req.get("StreamName"), req.get("StreamARN")
        if (name is None) == (arn is None):
            raise InvalidArgumentException("Specify either StreamName or StreamARN.")
        return self.control.stream(arn=arn, name=name)

    async def list_fragments(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListFragments: by producer or server start time (inclusive range), paginated."""
        stream = self.stream(req)
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
        offset = decode_token(req.get("NextToken"), expect)
        fragments = await asyncio.to_thread(self.store.list_fragments, stream.arn, kind, start, end)
        page = fragments[offset : offset + limit]
        more = offset + limit < len(fragments)
        return {
            "Fragments": [fragment_to_dict(f) for f in page],
            "NextToken": encode_token({**expect, "offset": offset + limit}) if more else None,
        }

    async def get_media_for_fragment_list(self, req: dict[str, Any]) -> RawResponse:
        """GetMediaForFragmentList: the fragments' Matroska, in the order asked."""
        stream = self.stream(req)
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
