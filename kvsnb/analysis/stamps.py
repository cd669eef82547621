"""Reading stamps back from retrieved frames and comparing them with what was sent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import av
import pandas as pd

from kvsnb.playback.images import decode_image
from kvsnb.sources.stamp import Stamp, StampError, read_stamp_frame, try_read_stamp
from kvsnb.wire.times import epoch_ms

STAMP_COLUMNS = ["frame_index", "capture_ms", "pts_s", "keyframe"]


class FrameLike(Protocol):
    """A decoded frame with its presentation time (``DecodedFrame``, ``HlsFrame``)."""

    @property
    def pts_s(self) -> float: ...

    @property
    def keyframe(self) -> bool: ...

    @property
    def frame(self) -> av.VideoFrame: ...


def stamps_from_frames(frames: Iterable[FrameLike]) -> tuple[pd.DataFrame, int]:
    """Read the stamp of each frame (from fragments, HLS, ...): a DataFrame (frame_index,
    capture_ms, pts_s, keyframe) and the number of frames whose stamp could not be read."""
    rows = []
    unreadable = 0
    for f in frames:
        try:
            stamp = read_stamp_frame(f.frame)
        except StampError:
            unreadable += 1
            continue
        rows.append((stamp.index, stamp.capture_ms, f.pts_s, f.keyframe))
    return pd.DataFrame(rows, columns=STAMP_COLUMNS), unreadable


@dataclass(frozen=True)
class Delivery:
    """What became of the frames sent: counts and the indexes missing or repeated."""

    sent: int
    received: int
    unreadable: int
    missing: list[int]
    duplicates: list[int]
    out_of_order: int

    @property
    def complete(self) -> bool:
        """Every frame sent was received exactly once, readable, in order."""
        return not (self.missing or self.duplicates or self.unreadable or self.out_of_order)

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, received {self.received}, unreadable {self.unreadable}, "
            f"missing {len(self.missing)}, duplicates {len(self.duplicates)}, "
            f"out of order {self.out_of_order}"
        )


def compare_delivery(sent: pd.DataFrame, received: pd.DataFrame, unreadable: int = 0) -> Delivery:
    """Compare the frame indexes sent (``frame_index`` column) with those read back."""
    sent_idx = set(sent["frame_index"].astype(int))
    got = received["frame_index"].astype(int)
    counts = got.value_counts()
    order = got.diff().dropna()
    return Delivery(
        sent=len(sent_idx),
        received=int(got.nunique()),
        unreadable=unreadable,
        missing=sorted(sent_idx - set(got)),
        duplicates=sorted(int(i) for i in counts[counts > 1].index),
        out_of_order=int((order < 0).sum()),
    )


def stamps_from_images(images: pd.DataFrame) -> pd.DataFrame:
    """GetImages rows (``get_images``) with the stamp read from each image: ``stamp_index``,
    ``stamp_capture_ms`` and ``stamp_offset_ms`` (stamp capture time − sampled time).
    Images may be decoded arrays or JPEG/PNG bytes; rows without a readable stamp get NA."""
    stamps: list[Stamp | None] = []
    for image in images["image"]:
        if image is None:
            stamps.append(None)
            continue
        rgb = decode_image(bytes(image)) if isinstance(image, bytes | bytearray) else image
        stamps.append(try_read_stamp(rgb))
    out = images.copy()
    out["stamp_index"] = pd.array([s.index if s else None for s in stamps], dtype="Int64")
    out["stamp_capture_ms"] = pd.array([s.capture_ms if s else None for s in stamps], dtype="Int64")
    sampled_ms = out["timestamp"].map(epoch_ms)
    out["stamp_offset_ms"] = (out["stamp_capture_ms"].astype("Float64") - sampled_ms).round(1)
    return out
