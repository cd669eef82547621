"""Reading stamps back from retrieved frames and comparing them with what was sent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from ..media.stamp import StampError, read_stamp_frame
from ..playback.fragments import DecodedFrame

STAMP_COLUMNS = ["frame_index", "capture_ms", "pts_s", "keyframe"]


def stamps_from_frames(frames: Iterable[DecodedFrame]) -> tuple[pd.DataFrame, int]:
    """Read the stamp of each frame: a DataFrame (frame_index, capture_ms, pts_s, keyframe)
    and the number of frames whose stamp could not be read."""
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
