"""GetClip: an MP4 of a time range, saved to a file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from kvsnb.client.target import Target

CHUNK_BYTES = 1 << 20


def get_clip(
    target: Target,
    stream: str,
    start: dt.datetime,
    end: dt.datetime,
    path: str | Path,
    *,
    selector: Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"] = "PRODUCER_TIMESTAMP",
) -> Path:
    """Write the MP4 clip of ``[start, end]`` to ``path`` and return the path."""
    client = target.client("kinesis-video-archived-media", target.data_endpoint(stream, "GET_CLIP"))
    resp = client.get_clip(
        **{("StreamARN" if stream.startswith("arn:") else "StreamName"): stream},
        ClipFragmentSelector={
            "FragmentSelectorType": selector,
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
        },
    )
    out = Path(path)
    with out.open("wb") as f:
        for chunk in resp["Payload"].iter_chunks(CHUNK_BYTES):
            f.write(chunk)
    return out
