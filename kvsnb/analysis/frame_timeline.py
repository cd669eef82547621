"""Frame timelines: every frame sent, and whether and where it was stored and retrieved.

``frame_timeline`` joins the frames a stamped source sent with the stamps read back from
stored media (GetMediaForFragmentList or HLS) and the fragments (ListFragments): per frame,
stored or not, how many times, keyframe or not, its fragment, the capture interval to the
previous frame. ``timeline_summary`` counts drops, gaps (runs of missing frames),
duplicates, frame-interval jitter, keyframes and fragment boundaries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kvsnb.wire.times import epoch_ms

# Producer timestamps and capture times are whole ms, and the recorder rounds its own.
OFFSET_TOLERANCE_MS = 2.0


def producer_offset_ms(capture_ms: np.ndarray, fragment_starts_ms: np.ndarray) -> float:
    """How far producer timestamps run after capture times, from the fragment starts.

    A fragment starts at a frame, and a storage session's producer timestamps follow the RTP
    timestamps, which kvsnb's sources take from the capture clock: so (fragment start −
    capture time of its first frame) is one constant over the session (encode, send and the
    sender's RTP/NTP mapping). It is found as the offset, among those of the frames captured
    up to 1 s before the first fragment's start, that the most fragment starts share (within
    ``OFFSET_TOLERANCE_MS``); ties go to the smallest offset ≥ 0 (a frame is never produced
    before it is captured). With one fragment: the capture at or before its start."""
    if len(capture_ms) == 0 or len(fragment_starts_ms) == 0:
        return 0.0
    cap = np.sort(capture_ms.astype(float))
    starts = np.sort(fragment_starts_ms.astype(float))
    first = starts[0]
    window = cap[(cap <= first + OFFSET_TOLERANCE_MS) & (cap >= first - 1000.0)]
    if len(window) == 0:
        return 0.0
    best: tuple[int, float] | None = None
    for c in window[::-1]:  # latest capture first: smallest offset first
        offset = first - c
        if offset < -OFFSET_TOLERANCE_MS:
            continue
        shifted = cap + offset
        pos = np.clip(np.searchsorted(shifted, starts), 1, len(shifted) - 1)
        near = np.minimum(np.abs(shifted[pos] - starts), np.abs(shifted[pos - 1] - starts))
        hits = int((near <= OFFSET_TOLERANCE_MS).sum()) if len(shifted) > 1 else 1
        if best is None or hits > best[0]:
            best = (hits, offset)
    return max(best[1], 0.0) if best is not None else 0.0


def stored_offset_ms(stored: pd.DataFrame) -> float | None:
    """Producer timestamp − capture time of stored frames, when their producer timestamps
    are known (``pts_s`` of frames decoded from stored fragments is the producer time in
    epoch seconds, as KVS fragments carry it): the median over frames, else ``None``."""
    if "pts_s" not in stored or "capture_ms" not in stored or stored.empty:
        return None
    pts = pd.to_numeric(stored["pts_s"], errors="coerce")
    if not (pts > 1e9).all():
        return None  # presentation times from 0 (HLS, clips): not producer timestamps
    return float((pts * 1000 - stored["capture_ms"].astype(float)).median())


def fragment_of(
    capture_ms: np.ndarray, fragments: pd.DataFrame, offset_ms: float | None = None
) -> list[str | None]:
    """The fragment number holding each capture time. ``offset_ms`` is how far producer
    timestamps run after capture times (exact when the stored frames' timestamps are known,
    see ``stored_offset_ms``); estimated from the fragment starts when not given."""
    starts = fragments["producer_time"].map(epoch_ms).to_numpy()
    numbers = fragments["fragment_number"].to_numpy()
    order = np.argsort(starts)
    starts, numbers = starts[order], numbers[order]
    if offset_ms is None:
        offset_ms = producer_offset_ms(capture_ms, starts)
    shifted = capture_ms.astype(float) + offset_ms
    pos = np.searchsorted(starts, shifted + OFFSET_TOLERANCE_MS, side="right") - 1
    return [str(numbers[p]) if p >= 0 else None for p in pos]


def frame_timeline(
    frames_sent: pd.DataFrame,
    stored: pd.DataFrame,
    fragments: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per frame sent (see the module docstring). ``stored`` has ``frame_index``
    (and ``keyframe``, ``pts_s`` if known) for every frame read back, duplicates included."""
    sent = frames_sent[["frame_index", "capture_ms"]].sort_values("frame_index").copy()
    counts = stored.groupby("frame_index").size().rename("stored_count")
    tl = sent.merge(counts, on="frame_index", how="left")
    tl["stored_count"] = tl["stored_count"].fillna(0).astype(int)
    tl["stored"] = tl["stored_count"] > 0
    if "keyframe" in stored:
        keys = stored.groupby("frame_index")["keyframe"].any()
        tl["keyframe"] = tl["frame_index"].map(keys).fillna(False).astype(bool)
    else:
        tl["keyframe"] = False
    tl["capture_time"] = pd.to_datetime(tl["capture_ms"], unit="ms", utc=True)
    tl["interval_ms"] = tl["capture_ms"].diff()
    if fragments is not None and len(fragments):
        tl["fragment_number"] = fragment_of(
            tl["capture_ms"].to_numpy(), fragments, stored_offset_ms(stored)
        )
        prev = tl["fragment_number"].shift()
        tl["fragment_start"] = tl["fragment_number"].notna() & tl["fragment_number"].ne(prev)
    else:
        tl["fragment_number"] = None
        tl["fragment_start"] = False
    return tl


def _runs(missing: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in missing:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def timeline_summary(tl: pd.DataFrame) -> dict[str, Any]:
    """Counts and figures of a frame timeline (see the module docstring)."""
    missing = [int(i) for i in tl.loc[~tl["stored"], "frame_index"]]
    gaps = _runs(missing)
    intervals = tl["interval_ms"].dropna()
    keyframes = int(tl["keyframe"].sum())
    fragments = int(tl["fragment_start"].sum()) if "fragment_start" in tl else 0
    return {
        "frames_sent": len(tl),
        "frames_stored": int(tl["stored"].sum()),
        "dropped": len(missing),
        "drop_rate": round(len(missing) / len(tl), 6) if len(tl) else 0.0,
        "gaps": len(gaps),
        "longest_gap_frames": max((b - a + 1 for a, b in gaps), default=0),
        "gap_ranges": gaps,
        "duplicates": int((tl["stored_count"] > 1).sum()),
        "interval_mean_ms": round(float(intervals.mean()), 2) if len(intervals) else None,
        "interval_jitter_ms": round(float(intervals.std()), 2) if len(intervals) > 1 else None,
        "interval_max_ms": round(float(intervals.max()), 2) if len(intervals) else None,
        "keyframes": keyframes,
        "fragments": fragments,
    }
