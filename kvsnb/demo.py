"""``kvsnb demo``: the main job, on Local KVS (or any target), printing every step.

1. Start Local KVS (embedded), create a channel and a stream, map them for storage.
2. Signaling check on a second channel with storage disabled: a master and a viewer relay
   an offer and an answer through the signaling WebSocket.
3. A master ingests stamped test media through a storage session (JoinStorageSession) while
   a ``RetrievalProbe`` times when fragments are listed, appear in a LIVE HLS playlist and
   become retrievable by GetImages.
4. The media is read back: every stored frame through GetMediaForFragmentList, the session
   through ON_DEMAND HLS (fMP4), and one image a second through GetImages; the stamps read
   back say which frames were stored and retrieved, and when they were captured.
5. The latency and frame-timeline summaries are printed; tables (CSV), plots (PNG) and an
   HTML report go to the output folder.
"""

from __future__ import annotations

import html
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from kvsnb.analysis.frame_timeline import frame_timeline, timeline_summary
from kvsnb.analysis.latency import fragment_latency, frame_latency, latency_summary
from kvsnb.analysis.plots import (
    plot_intervals,
    plot_latency_cdf,
    plot_latency_waterfall,
    plot_timeline,
    short_fragment_number,
)
from kvsnb.analysis.probe import RetrievalProbe
from kvsnb.analysis.stamps import compare_delivery, stamps_from_frames, stamps_from_images
from kvsnb.client.ingest import ingest, make_source
from kvsnb.client.signaling import SignalingClient
from kvsnb.client.target import Target
from kvsnb.client.timeline import TimelineEvent
from kvsnb.launch import connect
from kvsnb.playback.fragments import decode_video, get_media, list_fragments
from kvsnb.playback.hls import HlsReader, hls_session_url
from kvsnb.playback.images import get_images

T = TypeVar("T")


async def collect(frames: AsyncIterator[T]) -> list[T]:
    """Every item of an async iterator, as a list."""
    return [f async for f in frames]


class StepPrinter:
    """Prints numbered steps with their duration."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.durations: dict[str, float] = {}

    def step(self, name: str, func: Callable[[], Any]) -> Any:
        """Run ``func``, print ``name`` and how long it took."""
        t = time.perf_counter()
        result = func()
        self._done(name, t)
        return result

    async def astep(self, name: str, coro: Any) -> Any:
        """Await ``coro``, print ``name`` and how long it took."""
        t = time.perf_counter()
        result = await coro
        self._done(name, t)
        return result

    def _done(self, name: str, t: float) -> None:
        ms = (time.perf_counter() - t) * 1000
        self.durations[name] = ms
        self.out(f"  [{(time.perf_counter() - self.t0):7.2f} s] {name:<52} {ms:8.1f} ms")


async def signaling_check(target: Target, printer: StepPrinter) -> None:
    """Relay an offer (viewer → master) and an answer (master → viewer) on a channel without
    storage."""
    name = f"kvsnb-demo-signaling-{uuid.uuid4().hex[:6]}"
    kv = target.kinesisvideo
    arn = printer.step(
        "CreateSignalingChannel (storage disabled)",
        lambda: kv.create_signaling_channel(ChannelName=name)["ChannelARN"],
    )
    em = printer.step(
        "GetSignalingChannelEndpoint MASTER",
        lambda: target.endpoints(arn, "MASTER", ("WSS", "HTTPS")),
    )
    ev = printer.step(
        "GetSignalingChannelEndpoint VIEWER",
        lambda: target.endpoints(arn, "VIEWER", ("WSS", "HTTPS")),
    )
    creds = target.credentials()
    master = SignalingClient(em.wss, arn, creds, target.region)
    viewer = SignalingClient(
        ev.wss, arn, creds, target.region, role="VIEWER", client_id="demo-viewer"
    )
    await printer.astep("master socket open", master.open())
    await printer.astep("viewer socket open", viewer.open())
    await master.next_event(5)
    await viewer.next_event(5)

    async def relay_offer() -> None:
        await viewer.send("SDP_OFFER", {"type": "offer", "sdp": "v=0 (demo)"})
        ev_ = await master.next_event(5)
        assert ev_.message is not None and ev_.message.sender_client_id == "demo-viewer"

    async def relay_answer() -> None:
        await master.send(
            "SDP_ANSWER", {"type": "answer", "sdp": "v=0 (demo)"}, recipient_client_id="demo-viewer"
        )
        ev_ = await viewer.next_event(5)
        assert ev_.message is not None and ev_.message.type == "SDP_ANSWER"

    await printer.astep("offer relayed viewer → master (senderClientId set)", relay_offer())
    await printer.astep("answer relayed master → viewer", relay_answer())
    await master.close()
    await viewer.close()
    kv.delete_signaling_channel(ChannelARN=arn)


async def run_demo(
    out_dir: Path,
    *,
    seconds: float = 20.0,
    target: Target | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the figures it printed."""

    import matplotlib

    matplotlib.use("Agg")

    out_dir.mkdir(parents=True, exist_ok=True)
    printer = StepPrinter(out)
    out("kvsnb demo")
    own = target is None
    tg = target or printer.step("start Local KVS (embedded, 127.0.0.1)", connect)
    try:
        out(f"  target: {tg!r}")
        name = f"kvsnb-demo-{uuid.uuid4().hex[:6]}"
        _channel_arn, stream_arn = printer.step(
            "create channel + stream, UpdateMediaStorageConfiguration",
            lambda: tg.create_storage_channel(name),
        )
        out("signaling relay (storage disabled):")
        await signaling_check(tg, printer)

        out(f"storage session: a master ingests {seconds:g} s of stamped test pattern")
        source = make_source()
        probe = RetrievalProbe(tg, stream_arn)
        assert source.pattern is not None
        source.pattern.on_frame = probe.frame_sent

        def show(e: TimelineEvent) -> None:
            if e.step != "pc_state":
                out(f"    · {e.step:<22} {e.detail if e.detail else ''}")

        await probe.start()
        result = await printer.astep(
            f"ingest {seconds:g} s (JoinStorageSession)",
            ingest(tg, name, seconds=seconds, source=source, on_event=show),
        )
        record = await printer.astep("probe: wait for the last fragment", probe.stop(2.5))
        timeline = result.timeline.to_frame()
        join_to_frame = result.timeline.between("join_call", "first_frame_sent")
        out("setup timeline:")
        out(timeline.drop(columns=["time"]).to_string(index=False))

        fragments = printer.step("ListFragments", lambda: list_fragments(tg, stream_arn))
        out(f"stored fragments ({len(fragments)}):")
        out(fragments.to_string(index=False))
        media = printer.step(
            "GetMediaForFragmentList",
            lambda: get_media(tg, stream_arn, list(fragments["fragment_number"])),
        )
        stored, unreadable = printer.step(
            "decode stored frames, read stamps", lambda: stamps_from_frames(decode_video(media))
        )
        delivery = compare_delivery(result.frames_sent, stored, unreadable)
        out(f"stored frames: {delivery}")

        url = printer.step(
            "GetHLSStreamingSessionURL (ON_DEMAND, fMP4)",
            lambda: hls_session_url(tg, stream_arn, mode="ON_DEMAND"),  # whole stored range
        )
        reader = HlsReader(url)
        hls_frames = await printer.astep(
            "read HLS: playlists, segments, decode",
            collect(reader.frames(follow=False)),
        )
        hls_stamps, _ = stamps_from_frames(hls_frames)
        hls_indexes = set(hls_stamps["frame_index"].astype(int))
        out(f"HLS frames: {len(hls_frames)}, stamps read {len(hls_indexes)}")

        first, last = result.sample_range()
        images = printer.step(
            "GetImages, 1 s sampling (PRODUCER_TIMESTAMP)",
            lambda: get_images(
                tg,
                stream_arn,
                first,
                last,
                interval_ms=1000,
                progress=False,
            ),
        )
        images = stamps_from_images(images)
        ok = images["error"].isna().sum()
        out(
            f"GetImages: {len(images)} images, {ok} with media, stamp − sampled time "
            f"p50 {images['stamp_offset_ms'].abs().median():.0f} ms"
        )

        frame_lat = frame_latency(result.frames_sent, fragments, record)
        frag_lat = fragment_latency(fragments, record, result.frames_sent)
        summary = latency_summary(frame_lat, frag_lat)
        out("ingest latency (ms):")
        out(summary.to_string(index=False))
        stored_rows = stored.assign(frame_index=stored["frame_index"].astype(int))
        tl = frame_timeline(result.frames_sent, stored_rows, fragments)
        tls = timeline_summary(tl)
        tl["in_hls"] = tl["frame_index"].isin(hls_indexes)
        out("frame timeline: " + ", ".join(f"{k} {v}" for k, v in tls.items() if k != "gap_ranges"))

        paths = {
            "latency_cdf.png": plot_latency_cdf(frame_lat),
            "latency_waterfall.png": plot_latency_waterfall(frag_lat),
            "frame_timeline.png": plot_timeline(tl),
            "frame_intervals.png": plot_intervals(tl),
        }
        for fname, fig in paths.items():
            fig.savefig(out_dir / fname, dpi=110)
        timeline.to_csv(out_dir / "setup_timeline.csv", index=False)
        fragments.to_csv(out_dir / "fragments.csv", index=False)
        frame_lat.to_csv(out_dir / "frame_latency.csv", index=False)
        frag_lat.to_csv(out_dir / "fragment_latency.csv", index=False)
        summary.to_csv(out_dir / "latency_summary.csv", index=False)
        tl.to_csv(out_dir / "frame_timeline.csv", index=False)
        images.drop(columns=["image"]).to_csv(out_dir / "images.csv", index=False)
        report = report_html(
            seconds=seconds,
            target=tg,
            summary=summary,
            frame_summary={k: v for k, v in tls.items() if k != "gap_ranges"},
            timeline=timeline.drop(columns=["time"]),
            fragments=fragments,
            plots=list(paths),
            join_to_frame_s=join_to_frame,
        )
        (out_dir / "report.html").write_text(report, encoding="utf-8")

        figures = {
            "join_call_to_first_frame_sent_ms": None
            if join_to_frame is None
            else round(join_to_frame * 1000, 1),
            "fragments": len(fragments),
            "frames_sent": delivery.sent,
            "frames_stored": delivery.received,
            "frames_missing": len(delivery.missing),
            "hls_frames": len(hls_frames),
            "images": len(images),
            "latency": summary,
            "timeline": tls,
            "step_ms": printer.durations,
        }
        out(f"report: {out_dir / 'report.html'} (and CSV tables, PNG plots in {out_dir})")
        return figures
    finally:
        if own:
            tg.close()


# ---------------------------------------------------------------------------- the report

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
