"""GetImages over any time range, as a DataFrame of timestamps and images.

KVS answers at most 300 s per call and at most 25 images per page (docs/wire.md, "Archived
media"); ``get_images`` splits longer ranges into 300 s windows, follows NextToken, shows a
progress bar (tqdm, a widget in notebooks) and returns one row per sampled time: the time,
the error (``NO_MEDIA``/``MEDIA_ERROR``) or the image, as raw bytes or decoded to numpy.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging
from collections.abc import Callable
from typing import Any, Literal

import av
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kvsnb.client.target import Target

logger = logging.getLogger(__name__)

MAX_RANGE_S = 300.0  # GetImages takes at most 300 s per call
MIN_INTERVAL_MS = 200
IMAGE_COLUMNS = ["timestamp", "error", "image"]


def decode_image(data: bytes) -> np.ndarray:
    """A JPEG or PNG as an RGB numpy array (H, W, 3)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def image_windows(
    start: dt.datetime, end: dt.datetime, interval_ms: int
) -> list[tuple[dt.datetime, dt.datetime]]:
    """``[start, end]`` cut into GetImages calls of at most 300 s, on the sampling grid."""
    step = dt.timedelta(milliseconds=interval_ms)
    per_window = int(MAX_RANGE_S * 1000 // interval_ms)
    out = []
    t = start
    while t <= end:
        stop = min(end, t + step * (per_window - 1))
        out.append((t, stop))
        t = stop + step
    return out


def get_images(
    target: Target,
    stream: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    interval_ms: int = 1000,
    selector: Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"] = "PRODUCER_TIMESTAMP",
    fmt: Literal["JPEG", "PNG"] = "JPEG",
    width: int | None = None,
    height: int | None = None,
    jpeg_quality: int | None = None,
    decode: bool = True,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Images sampled every ``interval_ms`` from ``start`` to ``end`` (any length).

    Returns columns ``timestamp`` (UTC), ``error`` (None, NO_MEDIA or MEDIA_ERROR) and
    ``image`` (numpy RGB when ``decode``, else the JPEG/PNG bytes; None on error).
    ``on_progress(done, total)`` is called after every page (images so far, images asked).
    """
    if interval_ms < MIN_INTERVAL_MS:
        raise ValueError(f"interval_ms must be at least {MIN_INTERVAL_MS}")
    if end < start:
        raise ValueError("end is before start")
    client = target.client(
        "kinesis-video-archived-media", target.data_endpoint(stream, "GET_IMAGES")
    )
    base: dict[str, Any] = {
        ("StreamARN" if stream.startswith("arn:") else "StreamName"): stream,
        "ImageSelectorType": selector,
        "SamplingInterval": interval_ms,
        "Format": fmt,
    }
    if width is not None:
        base["WidthPixels"] = width
    if height is not None:
        base["HeightPixels"] = height
    if jpeg_quality is not None:
        base["FormatConfig"] = {"JPEGQuality": str(jpeg_quality)}
    total = int((end - start).total_seconds() * 1000 // interval_ms) + 1
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=total, disable=not progress, unit="img", desc="GetImages")
    try:
        for window_start, window_end in image_windows(start, end, interval_ms):
            token = None
            while True:
                args = dict(base, StartTimestamp=window_start, EndTimestamp=window_end)
                if token:
                    args["NextToken"] = token
                page = client.get_images(**args)
                for img in page.get("Images", []):
                    content = img.get("ImageContent")
                    data = base64.b64decode(content) if content else None
                    image: Any = data
                    if data is not None and decode:
                        image = decode_image(data)
                    rows.append(
                        {
                            "timestamp": pd.Timestamp(img["TimeStamp"]).tz_convert("UTC"),
                            "error": img.get("Error"),
                            "image": image,
                        }
                    )
                    bar.update(1)
                if on_progress is not None:
                    on_progress(len(rows), total)
                token = page.get("NextToken")
                if not token:
                    break
    finally:
        bar.close()
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS)
