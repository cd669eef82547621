"""GetMedia (``kinesis-video-media``): a stream's chunks from a start selector on, as a
fragment table and numpy frames, following the stream while it grows.

Each chunk is one fragment with AWS's tags: fragment number, server and producer timestamps,
how far behind the newest fragment it was, and the continuation token to resume from
(docs/wire.md, "GetMedia").
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from kvsnb.client.target import Target
from kvsnb.playback.fragments import DecodedFrame, _stream_key, decode_video
from kvsnb.wire.ebml import read_segment_tags, split_segments

logger = logging.getLogger(__name__)

StartSelectorType = Literal[
    "NOW",
    "EARLIEST",
    "FRAGMENT_NUMBER",
    "SERVER_TIMESTAMP",
    "PRODUCER_TIMESTAMP",
    "CONTINUATION_TOKEN",
]
READ_BYTES = 1 << 16
CHUNK_COLUMNS = [
    "fragment_number",
    "producer_time",
    "server_time",
    "millis_behind_now",
    "continuation_token",
    "size_bytes",
]


def _epoch(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(float(value), unit="s", tz="UTC")


@dataclass(frozen=True)
class MediaChunk:
    """One GetMedia chunk: a fragment's Matroska and its tags."""

    data: bytes
    tags: dict[str, str]

    @property
    def fragment_number(self) -> str | None:
        """``AWS_KINESISVIDEO_FRAGMENT_NUMBER``."""
        return self.tags.get("AWS_KINESISVIDEO_FRAGMENT_NUMBER")

    @property
    def continuation_token(self) -> str | None:
        """``AWS_KINESISVIDEO_CONTINUATION_TOKEN``: resume after this chunk with it."""
        return self.tags.get("AWS_KINESISVIDEO_CONTINUATION_TOKEN")

    @property
    def error(self) -> tuple[str, str] | None:
        """(``AWS_KINESISVIDEO_ERROR_ID``, ``..._ERROR_CODE``) when the service stopped."""
        if "AWS_KINESISVIDEO_ERROR_ID" not in self.tags:
            return None
        return self.tags["AWS_KINESISVIDEO_ERROR_ID"], self.tags.get(
            "AWS_KINESISVIDEO_ERROR_CODE", ""
        )

    def row(self) -> tuple[Any, ...]:
        """The chunk as a row of ``CHUNK_COLUMNS``."""
        behind = self.tags.get("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW")
        return (
            self.fragment_number,
            _epoch(self.tags.get("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP")),
            _epoch(self.tags.get("AWS_KINESISVIDEO_SERVER_TIMESTAMP")),
            None if behind is None else int(behind),
            self.continuation_token,
            len(self.data),
        )


def start_selector(
    start: StartSelectorType = "EARLIEST",
    *,
    after_fragment: str | None = None,
    timestamp: dt.datetime | None = None,
    continuation_token: str | None = None,
) -> dict[str, Any]:
    """The GetMedia ``StartSelector`` for a start type and its one parameter."""
    selector: dict[str, Any] = {"StartSelectorType": start}
    if after_fragment is not None:
        selector["AfterFragmentNumber"] = after_fragment
    if timestamp is not None:
        selector["StartTimestamp"] = timestamp
    if continuation_token is not None:
        selector["ContinuationToken"] = continuation_token
    return selector


def open_media(target: Target, stream: str, selector: dict[str, Any]) -> Any:
    """Call GetMedia; returns the streaming payload once the answer has begun (its start
    is fixed then: NOW means fragments stored after this returns)."""
    client = target.client("kinesis-video-media", target.data_endpoint(stream, "GET_MEDIA"))
    return client.get_media(**_stream_key(stream), StartSelector=selector)["Payload"]


def iter_chunks(payload: Any, *, max_chunks: int | None = None) -> Iterator[MediaChunk]:
    """The chunks of a GetMedia payload as they arrive (until the service ends the answer,
    or ``max_chunks`` have come); closes the payload."""
    raw = getattr(payload, "_raw_stream", None)  # urllib3: read1 returns what has arrived
    read = raw.read1 if raw is not None and hasattr(raw, "read1") else payload.read
    buffer = bytearray()
    count = 0
    try:
        while True:
            piece = read(READ_BYTES)
            if piece:
                buffer += piece
            chunks, used = split_segments(buffer) if piece else ([bytes(buffer)], len(buffer))
            del buffer[:used]
            for data in chunks:
                if not data:
                    continue
                tags = read_segment_tags(data)
                yield MediaChunk(data, tags[0] if tags else {})
                count += 1
                if max_chunks is not None and count >= max_chunks:
                    return
            if not piece:
                return
    finally:
        payload.close()


def iter_media(
    target: Target, stream: str, selector: dict[str, Any], *, max_chunks: int | None = None
) -> Iterator[MediaChunk]:
    """GetMedia chunks as they arrive (the call follows the stream until the service ends
    it, or until ``max_chunks`` chunks have come)."""
    yield from iter_chunks(open_media(target, stream, selector), max_chunks=max_chunks)


@dataclass(frozen=True)
class MediaResult:
    """What one GetMedia call returned: the chunks, as a table and as frames."""

    chunks: list[MediaChunk]

    @property
    def fragments(self) -> pd.DataFrame:
        """One row per chunk: fragment number, producer and server time, millis behind
        now, continuation token and size."""
        return pd.DataFrame([c.row() for c in self.chunks], columns=CHUNK_COLUMNS)

    @property
    def continuation_token(self) -> str | None:
        """The last chunk's token: pass it to resume where this call ended."""
        return self.chunks[-1].continuation_token if self.chunks else None

    @property
    def data(self) -> bytes:
        """All chunks' Matroska, in order (plays as one file)."""
        return b"".join(c.data for c in self.chunks)

    def video_frames(self) -> Iterator[DecodedFrame]:
        """Every video frame (PyAV), ``pts_s`` in producer epoch seconds."""
        if self.chunks:
            yield from decode_video(self.data)

    def to_ndarrays(self, fmt: str = "rgb24") -> list[np.ndarray]:
        """Every video frame as a numpy array (H, W, 3 for rgb24)."""
        return [f.to_ndarray(fmt) for f in self.video_frames()]

    def save(self, path: str) -> None:
        """Write the Matroska to a file."""
        with open(path, "wb") as f:
            f.write(self.data)


def read_media(
    target: Target,
    stream: str,
    start: StartSelectorType = "EARLIEST",
    *,
    after_fragment: str | None = None,
    timestamp: dt.datetime | None = None,
    continuation_token: str | None = None,
    max_fragments: int | None = None,
) -> MediaResult:
    """One GetMedia call from ``start`` (with its parameter), until the service ends the
    response or ``max_fragments`` fragments have come."""
    selector = start_selector(
        start,
        after_fragment=after_fragment,
        timestamp=timestamp,
        continuation_token=continuation_token,
    )
    return MediaResult(list(iter_media(target, stream, selector, max_chunks=max_fragments)))
