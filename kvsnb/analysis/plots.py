"""Matplotlib plots of ingest latency and frame timelines. Each function draws on ``ax``
(or a new figure) and returns the figure."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

CDF_MEASURES = {
    "listed_ms": "ListFragments",
    "hls_ms": "LIVE HLS playlist",
    "images_ms": "GetImages",
}


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Figure, Any]:
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def plot_latency_cdf(frame_lat: pd.DataFrame, ax: Any = None) -> Figure:
    """CDF of capture → retrievable latency per frame, one line per way of retrieving."""
    fig, ax = _axes(ax, (7, 4))
    for col, label in CDF_MEASURES.items():
        if col not in frame_lat:
            continue
        v = np.sort(pd.to_numeric(frame_lat[col], errors="coerce").dropna().to_numpy())
        if len(v):
            ax.step(
                v,
                np.arange(1, len(v) + 1) / len(v),
                where="post",
                label=f"{label} (p50 {np.percentile(v, 50):.0f} ms)",
            )
    ax.set_xlabel("capture → retrievable (ms)")
    ax.set_ylabel("fraction of frames")
    ax.set_title("Ingest latency, CDF")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


FRAGMENT_SHOWN_DIGITS = 6  # "…000123": the tail of a 47-digit KVS fragment number


def short_fragment_number(number: object) -> str:
    """A fragment number shortened for display: its last digits after an ellipsis."""
    text = str(number)
    if len(text) <= FRAGMENT_SHOWN_DIGITS + 1:
        return text
    return "…" + text[-FRAGMENT_SHOWN_DIGITS:]


def plot_latency_waterfall(fragment_lat: pd.DataFrame, ax: Any = None) -> Figure:
    """Per fragment: the wait for the fragment to fill (its duration), then fragment end →
    listed and → in the LIVE HLS playlist, stacked."""
    fig, ax = _axes(ax, (8, 4))
    x = np.arange(len(fragment_lat))
    fill = fragment_lat["duration_ms"].to_numpy(dtype=float)
    listed = fragment_lat["listed_beyond_end_ms"].to_numpy(dtype=float)
    hls = fragment_lat["hls_beyond_end_ms"].to_numpy(dtype=float)
    ax.bar(x, fill, color="#c6dbef", label="fragment fills (duration)")
    ax.bar(x, np.nan_to_num(listed), bottom=fill, color="#3182bd", label="end → listed")
    extra = np.nan_to_num(hls) - np.nan_to_num(listed)
    ax.bar(
        x,
        np.clip(extra, 0, None),
        bottom=fill + np.nan_to_num(listed),
        color="#fd8d3c",
        label="listed → in LIVE HLS",
    )
    ax.set_xticks(x)
    if "fragment_number" in fragment_lat:
        ax.set_xticklabels(
            [short_fragment_number(n) for n in fragment_lat["fragment_number"]],
            rotation=30 if len(x) > 6 else 0,
            fontsize="small",
        )
    ax.set_xlabel("fragment (number, last digits)")
    ax.set_ylabel("ms from the fragment's first frame")
    ax.set_title("Latency waterfall per fragment")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the legend above the bars
    ax.legend(loc="upper left", fontsize="small", ncols=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_timeline(tl: pd.DataFrame, ax: Any = None) -> Figure:
    """A strip of every frame sent over capture time: stored (green), missing (red),
    keyframes (tall black ticks), fragment boundaries (dashed lines)."""
    fig, ax = _axes(ax, (10, 2.6))
    t0 = tl["capture_ms"].min()
    t = (tl["capture_ms"] - t0) / 1000
    stored = tl["stored"].to_numpy(dtype=bool)
    ax.vlines(t[stored], 0.0, 0.6, color="#31a354", linewidth=0.6, label="stored")
    ax.vlines(t[~stored], 0.0, 1.0, color="#de2d26", linewidth=1.5, label="missing")
    keys = tl["keyframe"].to_numpy(dtype=bool)
    ax.vlines(t[keys], 0.6, 0.9, color="black", linewidth=1.2, label="keyframe")
    if "fragment_start" in tl:
        for x in t[tl["fragment_start"].to_numpy(dtype=bool)]:
            ax.axvline(x, color="#756bb1", linestyle="--", linewidth=0.8)
    ax.set_yticks([])
    ax.set_xlabel("capture time (s)")
    ax.set_title("Frame timeline (dashed: fragment boundaries)")
    ax.legend(loc="upper right", fontsize="small", ncol=3)
    fig.tight_layout()
    return fig


def plot_intervals(tl: pd.DataFrame, ax: Any = None) -> Figure:
    """Capture interval between consecutive frames, to see jitter and stalls."""
    fig, ax = _axes(ax, (8, 3))
    t = (tl["capture_ms"] - tl["capture_ms"].min()) / 1000
    ax.plot(t, tl["interval_ms"], linewidth=0.8)
    ax.set_xlabel("capture time (s)")
    ax.set_ylabel("interval (ms)")
    ax.set_title("Frame interval")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
