"""The demo's HTML report: data in, one self-contained HTML page out (no I/O).

``report_html`` renders what ``kvsnb demo`` measured: key figures, the latency summary, the
frame timeline summary, the setup timeline as an inline SVG chart of steps and a table, the
stored fragments and the plots (by file name, next to the page) with captions on how to read
them. Every value is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from kvsnb.analysis.plots import short_fragment_number

REPORT_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2630;
  background: #f5f7fa; margin: 0; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; background: #fff;
  box-shadow: 0 0 12px rgba(0,0,0,.06); }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #e3e8ef; }
p.lead { color: #4a5866; margin-top: 0; }
code { background: #eef2f6; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { flex: 1 1 150px; border: 1px solid #e3e8ef; border-radius: 6px; padding: 10px 12px; }
.card b { display: block; font-size: 22px; }
.card span { color: #4a5866; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13.5px; width: 100%; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e3e8ef; text-align: left;
  vertical-align: top; }
th { background: #f0f3f7; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:hover td { background: #fafbfd; }
figure { margin: 18px 0; }
figure img, figure svg { max-width: 100%; height: auto; border: 1px solid #e3e8ef;
  border-radius: 4px; }
figcaption, caption { color: #4a5866; font-size: 13px; margin-top: 4px; text-align: left;
  caption-side: bottom; }
.neg { color: #b00020; font-weight: 600; }
.scroll { overflow-x: auto; }
"""


def _cell(value: Any) -> tuple[str, bool]:
    """(escaped text, is a number) of one table value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int | float):
        text = (
            f"{value:,.1f}"
            if isinstance(value, float) and not value.is_integer()
            else (f"{int(value):,}")
        )
        return html.escape(text), True
    return html.escape(str(value)), False


def html_table(rows: Iterable[Mapping[Any, Any]], headers: Mapping[str, str], caption: str) -> str:
    """An HTML table of ``rows`` with the columns (and header texts, units included) of
    ``headers``; every value and header escaped; numbers right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers.values())
    body = []
    for row in rows:
        cells = []
        for key in headers:
            value = row.get(key)
            if key == "fragment_number" and value is not None:
                full = html.escape(str(value))
                shown = html.escape(short_fragment_number(value))
                cells.append(f"<td title='{full}'><code>{shown}</code></td>")
                continue
            text, number = _cell(value)
            negative = number and isinstance(value, int | float) and value < 0
            cls = " class='num neg'" if negative else (" class='num'" if number else "")
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<div class='scroll'><table><caption>{html.escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def setup_steps(timeline: pd.DataFrame) -> pd.DataFrame:
    """The setup part of a session timeline (up to the first frame sent, peer-connection
    state changes left out), each step with the span it took: ``start_ms`` (the previous
    step) to ``t_ms``."""
    rows = timeline[timeline["step"] != "pc_state"].reset_index(drop=True)
    end = rows.index[rows["step"] == "first_frame_sent"]
    if len(end):
        rows = rows.iloc[: end[0] + 1]
    rows = rows.copy()
    rows["start_ms"] = rows["t_ms"].shift(1).fillna(0.0)
    return rows


def setup_chart_svg(timeline: pd.DataFrame, width: int = 960) -> str:
    """The setup timeline as a chart of steps (an inline SVG, like the metrics chart of
    AWS's WebRTC test page): one row per step, a bar from the previous step to this one,
    its duration at the bar's end, a time axis in ms."""
    steps = setup_steps(timeline)
    if steps.empty:
        return "<p>No setup steps recorded.</p>"
    label_w, right_w, row_h, top = 210, 70, 22, 26
    plot_w = width - label_w - right_w
    total = max(float(steps["t_ms"].max()), 1.0)
    scale = plot_w / total
    height = top + row_h * len(steps) + 10
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' "
        "aria-label='Setup timeline: one bar per step' font-family='system-ui, sans-serif' "
        "font-size='12'>",
        f"<rect width='{width}' height='{height}' fill='#ffffff'/>",
    ]
    tick = _nice_tick(total)
    t = 0.0
    while t <= total + 1e-9:
        x = label_w + t * scale
        out.append(
            f"<line x1='{x:.1f}' y1='{top - 6}' x2='{x:.1f}' y2='{height - 8}' "
            "stroke='#e3e8ef'/>"
            f"<text x='{x:.1f}' y='{top - 10}' text-anchor='middle' fill='#4a5866'>"
            f"{t:,.0f} ms</text>"
        )
        t += tick
    palette = {
        "join": "#3182bd",
        "offer": "#6baed6",
        "answer": "#6baed6",
        "ice": "#31a354",
        "dtls": "#31a354",
        "first": "#fd8d3c",
    }
    for i, row in steps.iterrows():
        y = top + int(i) * row_h  # type: ignore[call-overload]
        start, end = float(row["start_ms"]), float(row["t_ms"])
        step = str(row["step"])
        color = next((c for k, c in palette.items() if step.startswith(k)), "#9ecae1")
        if "error" in str(row.get("detail", "")) or step.endswith(("failed", "refused")):
            color = "#de2d26"
        x = label_w + start * scale
        w = max((end - start) * scale, 2.0)
        title = html.escape(f"{step}: {start:,.1f} → {end:,.1f} ms ({end - start:,.1f} ms)")
        out.append(
            f"<text x='{label_w - 8}' y='{y + 15}' text-anchor='end' fill='#1d2630'>"
            f"{html.escape(step)}</text>"
            f"<rect x='{x:.1f}' y='{y + 4}' width='{w:.1f}' height='{row_h - 8}' rx='2' "
            f"fill='{color}'><title>{title}</title></rect>"
            f"<text x='{x + w + 4:.1f}' y='{y + 15}' fill='#4a5866'>"
            f"{end - start:,.1f} ms</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _nice_tick(total_ms: float) -> float:
    """A round axis step giving 4–10 ticks over ``total_ms``."""
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000, 20_000):
        if total_ms / step <= 10:
            return float(step)
    return float(10 ** math.ceil(math.log10(total_ms / 10)))


PLOT_CAPTIONS = {
    "latency_cdf.png": (
        "Ingest latency, CDF: for each measure, the fraction of frames (y) whose latency from "
        "capture is at most x ms. A curve further left is faster; where it reaches 1 is the "
        "worst frame."
    ),
    "latency_waterfall.png": (
        "Latency waterfall: one bar per fragment (labelled by the last digits of its "
        "number). Light blue is the wait for the fragment to fill (its duration); dark "
        "blue, from its end until ListFragments lists it; orange, until it appears in the "
        "LIVE HLS playlist. Short dark and orange parts mean media is retrievable soon "
        "after a fragment closes."
    ),
    "frame_timeline.png": (
        "Frame timeline: every frame sent, by capture time (x), marked stored or missing; "
        "dashed lines are fragment boundaries. Gaps in the stored row are frames lost."
    ),
    "frame_intervals.png": (
        "Frame interval: time between consecutive captures (ms). A flat line at 1000/fps is "
        "a steady source; spikes are late frames."
    ),
}

LATENCY_HEADERS = {
    "measure": "measure",
    "count": "count",
    "p50_ms": "p50 (ms)",
    "p95_ms": "p95 (ms)",
    "max_ms": "max (ms)",
}
TIMELINE_HEADERS = {
    "step": "step",
    "t_ms": "since start (ms)",
    "delta_ms": "since previous step (ms)",
    "detail": "detail",
}
FRAGMENT_HEADERS = {
    "fragment_number": "fragment number",
    "producer_time": "producer timestamp (UTC)",
    "server_time": "server timestamp (UTC)",
    "duration_ms": "duration (ms)",
    "size_kb": "size (KB)",
}
FRAME_HEADERS = {
    "frames_sent": "frames sent",
    "frames_stored": "frames stored",
    "dropped": "dropped",
    "drop_rate": "drop rate",
    "gaps": "gaps",
    "longest_gap_frames": "longest gap (frames)",
    "duplicates": "duplicates",
    "interval_mean_ms": "mean interval (ms)",
    "interval_jitter_ms": "interval jitter (ms)",
    "interval_max_ms": "max interval (ms)",
    "keyframes": "keyframes",
    "fragments": "fragments",
}


def report_html(
    *,
    seconds: float,
    target: object,
    summary: pd.DataFrame,
    frame_summary: Mapping[str, Any],
    timeline: pd.DataFrame,
    fragments: pd.DataFrame,
    plots: Iterable[str],
    join_to_frame_s: float | None = None,
) -> str:
    """The demo's HTML report: a styled page with key figures, the latency summary, the
    frame timeline summary, the setup timeline as a chart of steps and a table, the stored
    fragments (numbers shortened, full on hover) and the plots with captions on how to read
    them. Every value is HTML-escaped (a target's repr such as ``<Target …>`` included)."""
    frags = fragments.assign(
        size_kb=fragments["size_bytes"] / 1000 if "size_bytes" in fragments else None,
        producer_time=fragments["producer_time"].map(_utc),
        server_time=fragments["server_time"].map(_utc),
    )
    sent = frame_summary.get("frames_sent", 0)
    stored = frame_summary.get("frames_stored", 0)
    cards = [
        (f"{len(fragments)}", "fragments stored"),
        (f"{stored:,} / {sent:,}", "frames stored / sent"),
        (
            "—" if join_to_frame_s is None else f"{join_to_frame_s * 1000:,.0f} ms",
            "JoinStorageSession call → first frame sent",
        ),
    ]
    cards_html = "".join(
        f"<div class='card'><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>"
        for v, k in cards
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>kvsnb demo report</title>",
        f"<style>{REPORT_CSS}</style></head><body><main>",
        "<h1>kvsnb demo report</h1>",
        "<p class='lead'>"
        + html.escape(
            f"{seconds:g} s of stamped test pattern through a storage session on {target!r}."
        )
        + "</p>",
        f"<div class='cards'>{cards_html}</div>",
        "<h2>Ingest latency</h2>",
        html_table(
            summary.to_dict("records"),
            LATENCY_HEADERS,
            "Per measure: how many frames or fragments were measured and their latency "
            "percentiles. All on this machine's clock: capture (the stamp in the frame), "
            "server and probe times.",
        ),
        "<h2>Frame timeline</h2>",
        html_table(
            [{"figure": FRAME_HEADERS.get(k, k), "value": v} for k, v in frame_summary.items()],
            {"figure": "figure", "value": "value"},
            "Every frame sent, read back from the stored media by its stamp: what was stored, "
            "lost or duplicated, and how evenly frames were captured.",
        ),
        "<h2>Setup timeline</h2>",
        "<figure>"
        + setup_chart_svg(timeline)
        + "<figcaption>"
        + html.escape(
            "Each bar is one setup step of the master's session, from the previous step to "
            "this one; its length is what the step took. Hover a bar for exact times."
        )
        + "</figcaption></figure>",
        html_table(
            timeline.to_dict("records"),
            TIMELINE_HEADERS,
            "Every step the session recorded, in order, with its details.",
        ),
        "<h2>Stored fragments</h2>",
        html_table(
            frags.to_dict("records"),
            FRAGMENT_HEADERS,
            "ListFragments: fragment numbers are shortened to their last digits (hover for "
            "the full number).",
        ),
        "<h2>Plots</h2>",
    ]
    for name in plots:
        caption = PLOT_CAPTIONS.get(name, "")
        src = html.escape(name, quote=True)
        parts.append(
            f"<figure><img src='{src}' alt='{src}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _utc(value: Any) -> str:
    stamp = pd.Timestamp(value)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
