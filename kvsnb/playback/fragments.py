"""Stored fragments of a stream: ListFragments as a DataFrame, GetMediaForFragmentList as
bytes, and the frames inside as numpy arrays or PyAV frames (docs/wire.md, "Archived media")."""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import av
import numpy as np
import pandas as pd

from kvsnb.client.target import Target

logger = logging.getLogger(__name__)

Selector = Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"]
FRAGMENT_COLUMNS = [
    "fragment_number",
    "producer_time",
    "server_time",
    "duration_ms",
    "size_bytes",
]
MAX_FRAGMENTS_PER_CALL = 1000  # GetMediaForFragmentList takes at most 1000 numbers


def archive_client(target: Target, stream: str, api: str = "LIST_FRAGMENTS") -> Any:
    """A boto3 archived-media client at the stream's data endpoint (GetDataEndpoint)."""
    return target.client("kinesis-video-archived-media", target.data_endpoint(stream, api))


def _stream_key(stream: str) -> dict[str, str]:
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


def list_fragments(
    target: Target,
    stream: str,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    *,
    selector: Selector = "SERVER_TIMESTAMP",
) -> pd.DataFrame:
    """Every fragment of a stream (all pages of ListFragments), sorted by start time.

    With ``start``/``end`` only fragments starting in that inclusive range (both needed).
    """
    client = archive_client(target, stream, "LIST_FRAGMENTS")
    args: dict[str, Any] = _stream_key(stream)
    if start is not None or end is not None:
        if start is None or end is None:
            raise ValueError("give both start and end, or neither")
        args["FragmentSelector"] = {
            "FragmentSelectorType": selector,
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
        }
    rows: list[dict[str, Any]] = []
    for page in client.get_paginator("list_fragments").paginate(**args):
        for f in page["Fragments"]:
            rows.append(
                {
                    "fragment_number": f["FragmentNumber"],
                    "producer_time": pd.Timestamp(f["ProducerTimestamp"]).tz_convert("UTC"),
                    "server_time": pd.Timestamp(f["ServerTimestamp"]).tz_convert("UTC"),
                    "duration_ms": int(f["FragmentLengthInMilliseconds"]),
                    "size_bytes": int(f["FragmentSizeInBytes"]),
                }
            )
    df = pd.DataFrame(rows, columns=FRAGMENT_COLUMNS)
    key = "producer_time" if selector == "PRODUCER_TIMESTAMP" else "server_time"
    return df.sort_values([key, "fragment_number"], ignore_index=True)


def get_media(target: Target, stream: str, fragment_numbers: Sequence[str]) -> bytes:
    """GetMediaForFragmentList: the Matroska bytes of the fragments, in the order given."""
    client = archive_client(target, stream, "GET_MEDIA_FOR_FRAGMENT_LIST")
    chunks = []
    for i in range(0, len(fragment_numbers), MAX_FRAGMENTS_PER_CALL):
        part = list(fragment_numbers[i : i + MAX_FRAGMENTS_PER_CALL])
        resp = client.get_media_for_fragment_list(**_stream_key(stream), Fragments=part)
        chunks.append(resp["Payload"].read())
    return b"".join(chunks)


@dataclass(frozen=True)
class DecodedFrame:
    """A decoded video frame: its presentation time in seconds from the media's start,
    whether it was a keyframe, and the frame itself (PyAV)."""

    pts_s: float
    keyframe: bool
    frame: av.VideoFrame

    def to_ndarray(self, fmt: str = "rgb24") -> np.ndarray:
        """The pixels as a numpy array (H, W, 3 for rgb24)."""
        return self.frame.to_ndarray(format=fmt)


def decode_video(media: bytes) -> Iterator[DecodedFrame]:
    """Decode every video frame of a media file held in memory (MKV, MP4, TS)."""
    with av.open(io.BytesIO(media), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.pts is None or frame.time_base is None:
                pts = float("nan")
            else:
                pts = float(frame.pts * frame.time_base)
            yield DecodedFrame(pts, bool(frame.key_frame), frame)
