"""The demo's HTML report (issue 15, point 8): every value escaped, units in the headers,
fragment numbers shortened, the setup timeline as a chart of steps and a table, captions."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd

from kvsnb.analysis.report import report_html, setup_chart_svg
from kvsnb.client.timeline import SessionTimeline

NUMBER = "91343852333181432392682062607743920146975013" + "123"


class _Target:
    def __repr__(self) -> str:
        return "<kvsnb.Target local: http://127.0.0.1:4566>"


def _timeline() -> pd.DataFrame:
    tl = SessionTimeline()
    for step in ("describe_channel", "get_endpoints", "join_call", "offer_received"):
        tl.mark(step)
    tl.mark("answer_sent", video="H264 <script>alert(1)</script>")
    tl.mark("pc_state", state="connected")
    tl.mark("dtls_connected")
    tl.frame_sent(0)
    tl.mark("stopped")
    return tl.to_frame().drop(columns=["time"])


def _report() -> str:
    summary = pd.DataFrame(
        [
            {
                "measure": "capture → server <b>",
                "count": 3,
                "p50_ms": 12.5,
                "p95_ms": 20.0,
                "max_ms": 21.0,
            }
        ]
    )
    fragments = pd.DataFrame(
        [
            {
                "fragment_number": NUMBER,
                "producer_time": pd.Timestamp("2026-11-29 22:00:00.123", tz="UTC"),
                "server_time": pd.Timestamp("2026-11-29 22:00:00.140", tz="UTC"),
                "duration_ms": 1000,
                "size_bytes": 123_456,
            }
        ]
    )
    return report_html(
        seconds=20,
        target=_Target(),
        summary=summary,
        frame_summary={"frames_sent": 600, "frames_stored": 600, "interval_jitter_ms": 1.5},
        timeline=_timeline(),
        fragments=fragments,
        plots=["latency_cdf.png", "latency_waterfall.png"],
        join_to_frame_s=0.05,
    )


def test_every_value_is_escaped() -> None:
    page = _report()
    assert "on &lt;kvsnb.Target local: http://127.0.0.1:4566&gt;." in page
    assert "<kvsnb.Target" not in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "capture → server &lt;b&gt;" in page

    class Balanced(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.open: list[str] = []

        def handle_starttag(self, tag: str, attrs: object) -> None:
            if tag not in ("meta", "img", "rect", "line", "br"):
                self.open.append(tag)

        def handle_endtag(self, tag: str) -> None:
            if tag in ("rect", "line"):
                return
            assert self.open and self.open[-1] == tag, (self.open[-3:], tag)
            self.open.pop()

    parser = Balanced()
    parser.feed(page)
    assert parser.open == []


def test_styled_with_units_captions_and_short_fragment_numbers() -> None:
    page = _report()
    assert "<style>" in page
    for header in (
        "p50 (ms)",
        "p95 (ms)",
        "max (ms)",
        "duration (ms)",
        "size (KB)",
        "since start (ms)",
        "since previous step (ms)",
    ):
        assert f"<th>{header}</th>" in page, header
    assert "<td>interval jitter (ms)</td>" in page  # the frame summary: one row per figure
    assert f"title='{NUMBER}'" in page and "<code>…013123</code>" in page
    assert page.count(NUMBER) == 1  # only in the hover title
    assert "123.5" in page  # size in KB
    assert "2026-11-29 22:00:00.123" in page
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", page)
    assert len(captions) == 3 and all(len(c) > 40 for c in captions)  # chart + 2 plots


def test_setup_timeline_is_a_chart_of_steps_and_a_table() -> None:
    timeline = _timeline()
    svg = setup_chart_svg(timeline)
    steps = [
        "describe_channel",
        "get_endpoints",
        "join_call",
        "offer_received",
        "answer_sent",
        "dtls_connected",
        "first_frame_sent",
    ]
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert re.findall(r"<text[^>]*text-anchor='end'[^>]*>([^<]+)</text>", svg) == steps
    assert svg.count("<rect x=") == len(steps)  # one bar per step, pc_state left out
    assert "stopped" not in svg  # after the first frame: not setup
    page = _report()
    chart = page[page.index("<svg") : page.index("</svg>")]
    assert re.findall(r"<text[^>]*text-anchor='end'[^>]*>([^<]+)</text>", chart) == steps
    assert "<td>stopped</td>" in page  # the table has every step
