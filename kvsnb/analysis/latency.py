"""Ingest latency of stamped media: capture → server → stored (listed) → retrievable.

Per fragment (``fragment_latency``), from ListFragments and a ``RetrievalProbe`` record:

* ``arrival_ms``: server timestamp − producer timestamp of the fragment's first frame (the
  transit of that frame to the storage session, on one machine's clock);
* ``listed_ms``, ``hls_ms``: when the fragment was first listed by ListFragments / first
  appeared in the LIVE HLS playlist, measured **beyond the fragment's end** (the capture of
  its first frame + its duration when the frames sent are known, else its producer start +
  duration): the part of the latency that is not the wait for the fragment to fill.

Every latency here is on one clock when the master runs on the same machine (capture
stamps, server timestamps, the probe's times) and is never negative: a frame cannot be
stored, listed or retrieved before it was captured, nor a fragment before it ended.

Per frame (``frame_latency``): each stamped frame sent, its fragment, and capture →
listed / in LIVE HLS / retrievable by GetImages (sampled frames) in ms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kvsnb.analysis.frame_timeline import fragment_of
from kvsnb.analysis.probe import ProbeRecord
from kvsnb.wire.times import epoch_ms

MATCH_TOLERANCE_MS = 60.0
PERCENTILES = (50, 95)


def _fragments_ms(fragments: pd.DataFrame) -> pd.DataFrame:
    f = fragments.copy()
    f["producer_ms"] = f["producer_time"].map(epoch_ms)
    f["server_ms"] = f["server_time"].map(epoch_ms)
    f["end_ms"] = f["producer_ms"] + f["duration_ms"]
    return f.sort_values("producer_ms", ignore_index=True)


def _hls_seen(record: ProbeRecord) -> pd.DataFrame:
    rows = [
        {"pdt_ms": epoch_ms(h["program_date_time"]), "hls_at": h["seen_at"]}
        for h in record.hls
        if h.get("program_date_time") is not None
    ]
    return pd.DataFrame(rows, columns=["pdt_ms", "hls_at"])


def fragment_latency(
    fragments: pd.DataFrame, record: ProbeRecord, frames_sent: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per fragment: its times and the latencies beyond its end (module docstring).

    With ``frames_sent`` (stamped capture times), ``arrival_ms`` is measured from the capture
    of the fragment's first frame, and ``producer_offset_ms`` says how far the producer
    timestamp (the sender's RTP/NTP mapping) runs after that capture; without, ``arrival_ms``
    is server − producer timestamp."""
    f = _fragments_ms(fragments)
    f["listed_at"] = f["fragment_number"].map(record.listed)
    hls = _hls_seen(record)

    def hls_at(row: Any) -> float:
        if hls.empty:
            return float("nan")
        # HLS LIVE sessions time segments by server timestamp (the selector's default)
        d = (hls["pdt_ms"] - row["server_ms"]).abs()
        i = d.idxmin()
        return float(hls.loc[i, "hls_at"]) if d[i] <= MATCH_TOLERANCE_MS else float("nan")

    f["hls_at"] = f.apply(hls_at, axis=1) if len(f) else pd.Series(dtype=float)
    f["arrival_ms"] = f["server_ms"] - f["producer_ms"]
    f["producer_offset_ms"] = np.nan
    if frames_sent is not None and len(frames_sent) and len(fragments):
        capture = frames_sent["capture_ms"].to_numpy(dtype=float)
        first = (
            pd.DataFrame(
                {"fragment_number": fragment_of(capture, fragments), "capture_ms": capture}
            )
            .groupby("fragment_number")["capture_ms"]
            .min()
        )
        first_capture = f["fragment_number"].map(first)
        f["arrival_ms"] = f["server_ms"] - first_capture
        f["producer_offset_ms"] = f["producer_ms"] - first_capture
        # the fragment's end on the capture clock (its producer timestamps run after capture
        # by the sender's offset): "beyond the end" is then measured on one clock
        f["end_ms"] = (first_capture + f["duration_ms"]).fillna(f["end_ms"])
    f["listed_beyond_end_ms"] = f["listed_at"] * 1000 - f["end_ms"]
    f["hls_beyond_end_ms"] = f["hls_at"] * 1000 - f["end_ms"]
    return f


def frame_latency(
    frames_sent: pd.DataFrame, fragments: pd.DataFrame, record: ProbeRecord
) -> pd.DataFrame:
    """One row per frame sent: capture time, fragment, and capture → listed / LIVE HLS /
    GetImages (sampled frames) in ms; ``beyond_end`` columns subtract the wait for the
    fragment to end."""
    frag = fragment_latency(fragments, record, frames_sent)
    merged = frames_sent[["frame_index", "capture_ms"]].sort_values("capture_ms").copy()
    merged["capture_ms"] = merged["capture_ms"].astype(float)
    merged["fragment_number"] = fragment_of(merged["capture_ms"].to_numpy(), fragments)
    merged = merged.merge(
        frag[["fragment_number", "producer_ms", "end_ms", "listed_at", "hls_at"]],
        on="fragment_number",
        how="left",
    )
    images = pd.DataFrame(record.images, columns=["frame_index", "capture_ms", "retrievable_at"])
    merged = merged.merge(images[["frame_index", "retrievable_at"]], on="frame_index", how="left")
    merged["capture_time"] = pd.to_datetime(merged["capture_ms"], unit="ms", utc=True)
    merged["listed_ms"] = merged["listed_at"] * 1000 - merged["capture_ms"]
    merged["hls_ms"] = merged["hls_at"] * 1000 - merged["capture_ms"]
    merged["images_ms"] = merged["retrievable_at"] * 1000 - merged["capture_ms"]
    merged["images_beyond_end_ms"] = merged["retrievable_at"] * 1000 - merged["end_ms"]
    return merged


def latency_summary(
    frame_lat: pd.DataFrame, fragment_lat: pd.DataFrame, *, session_ended: bool = True
) -> pd.DataFrame:
    """Count, p50, p95 and max (ms) of every latency, one row per measure.

    With ``session_ended`` (the master has left), the last fragment is left out of the
    "fragment end →" measures: it was closed by the master leaving, not cut by the recorder,
    so its end is the last frame and its wait is the session's shutdown."""
    if session_ended and len(fragment_lat):
        last = fragment_lat.sort_values("producer_ms")["fragment_number"].iloc[-1]
        fragment_lat = fragment_lat[fragment_lat["fragment_number"] != last]
        frame_lat = frame_lat.assign(
            images_beyond_end_ms=frame_lat["images_beyond_end_ms"].where(
                frame_lat["fragment_number"] != last
            )
        )
    measures = {
        "capture → server (fragment's first frame)": fragment_lat["arrival_ms"],
        "capture → producer timestamp (sender clock)": fragment_lat["producer_offset_ms"],
        "capture → listed (ListFragments)": frame_lat["listed_ms"],
        "capture → in LIVE HLS playlist": frame_lat["hls_ms"],
        "capture → retrievable by GetImages": frame_lat["images_ms"],
        "fragment end → listed": fragment_lat["listed_beyond_end_ms"],
        "fragment end → in LIVE HLS playlist": fragment_lat["hls_beyond_end_ms"],
        "fragment end → retrievable by GetImages": frame_lat["images_beyond_end_ms"],
    }
    rows = []
    for name, values in measures.items():
        v = pd.to_numeric(values, errors="coerce").dropna()
        row: dict[str, Any] = {"measure": name, "count": len(v)}
        for p in PERCENTILES:
            row[f"p{p}_ms"] = round(float(np.percentile(v, p)), 1) if len(v) else np.nan
        row["max_ms"] = round(float(v.max()), 1) if len(v) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
