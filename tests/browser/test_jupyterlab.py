"""The notebooks in a real JupyterLab, in a real browser (headless Chromium): every cell
runs ("Run All Cells"), every widget renders with no widget or kernel error, and the widgets
work when clicked:

- ``01_quickstart.ipynb``: the ``SessionPanel`` joins its Local KVS channel as master; the
  setup timeline fills in step by step (``join_call`` … ``dtls_connected``), the state label
  reaches ``connected``, frames are sent and previewed; Stop closes the session.
- ``02_track_testing.ipynb``: the ``TrackTester``'s Check lists the ingestion rules as
  ✓/✗/⚠ rows; its end-to-end test ingests into Local KVS and finds the frames again.

Screenshots of each step go to ``test-artifacts/browser/`` (see ``conftest.py``).
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_until_sync

from .conftest import NotebookPage

pytestmark = pytest.mark.timeout(150)

QUICKSTART = "01_quickstart.ipynb"
TRACK_TESTING = "02_track_testing.ipynb"
JOIN_S = 45.0  # Join → connected (the panel's own connect timeout is 30 s)
STOP_S = 30.0
CHECK_S = 30.0
END_TO_END_S = 100.0  # the tester's default 5 s of media, the probe's linger, GetImages
SETUP_STEPS = ("describe_channel", "join_call", "offer_received", "answer_sent", "dtls_connected")
MARKS = {"✓", "✗", "⚠"}

# Records every distinct version of the SessionPanel's timeline table (its step column)
# from the moment the table is empty (Join clears it), so the test sees the table fill in
# step by step rather than only its final state.
WATCH_TIMELINE_JS = """
(el) => {
  const seen = [];
  let armed = false;
  const record = () => {
    const table = Array.from(el.querySelectorAll('table')).find((t) => {
      const head = t.querySelector('thead');
      return head && head.textContent.includes('t_ms');
    });
    const steps = table ? Array.from(table.querySelectorAll('tbody tr'))
      .map((tr) => (tr.cells[0] ? tr.cells[0].textContent.trim() : '')) : [];
    if (!steps.length) { armed = true; return; }
    if (!armed) return;
    const last = seen[seen.length - 1];
    if (!last || last.join() !== steps.join()) seen.push(steps);
  };
  window.__kvsnbTimeline = seen;
  record();
  new MutationObserver(record).observe(el, {childList: true, subtree: true, characterData: true});
}
"""

PREVIEW_DRAWN_JS = """
(el) => Array.from(el.querySelectorAll('img')).some((img) => img.complete && img.naturalWidth > 0)
"""
PLOTS_DRAWN_JS = """
(el) => Array.from(el.querySelectorAll('img'))
  .filter((img) => img.complete && img.naturalWidth > 0).length >= 2
"""
# Every drawn plot lies within the output area: none is cut off at its right edge.
PLOTS_INSIDE_JS = """
(el) => {
  const area = el.closest('.jp-OutputArea-output') || el;
  const right = area.getBoundingClientRect().right;
  const imgs = Array.from(el.querySelectorAll('img'))
    .filter((img) => img.complete && img.naturalWidth > 0);
  return imgs.length >= 2 && imgs.every((img) => img.getBoundingClientRect().right <= right + 1);
}
"""


def wait_for_text(
    nb: NotebookPage,
    area: Any,
    pattern: str,
    timeout_s: float,
    step: str,
    *,
    fail: str | None = None,
) -> re.Match[str]:
    """Poll ``area``'s text until ``pattern`` appears (its match); fail at once when
    ``fail`` appears, or after ``timeout_s``, with the widget's text and a screenshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = area.inner_text()
        found = re.search(pattern, text)
        if found:
            return found
        bad = re.search(fail, text) if fail else None
        if bad or time.monotonic() > deadline:
            nb.screenshot(f"{step}-failed", area)
            why = f"{bad.group(0)!r} appeared" if bad else f"not within {timeout_s:.0f} s"
            raise AssertionError(
                f"{nb.name}: waiting for {pattern!r} at step {step!r}: {why}; the widget "
                f"shows:\n{text}"
            )
        time.sleep(0.2)


def wait_for_js(
    nb: NotebookPage, element: Any, script: str, timeout_s: float, step: str, what: str, area: Any
) -> None:
    """Poll ``script(element)`` until it is true; fail after ``timeout_s`` with ``area``'s
    text and a screenshot."""

    def failed() -> str:
        nb.screenshot(f"{step}-failed", area)
        return f"the widget shows:\n{area.inner_text()}"

    wait_until_sync(
        lambda: bool(element.evaluate(script)),
        f"{nb.name}: {what}",
        deadline_s=timeout_s,
        every_s=0.2,
        detail=failed,
    )


def run_notebook(open_notebook: Callable[[str], NotebookPage], name: str) -> NotebookPage:
    """Open ``name``, check its kernel is this venv's Python, run every cell and check that
    the widgets render without errors."""
    nb = open_notebook(name)
    assert nb.kernel_prefix() == sys.prefix, "the kernel does not run this venv's Python"
    cells = nb.run_all()
    nb.assert_widgets_render(cells)
    nb.assert_no_errors(cells)
    return nb


def test_quickstart_session_panel_joins_and_stops(
    open_notebook: Callable[[str], NotebookPage],
) -> None:
    nb = run_notebook(open_notebook, QUICKSTART)
    panel = nb.widget_output("Join")
    join = panel.get_by_role("button", name="Join", exact=True)
    stop = panel.get_by_role("button", name="Stop", exact=True)
    assert panel.locator("select option").count() >= 1, "no channel to choose"
    # idle, or closed when the notebook joined and stopped from code
    wait_for_text(nb, panel, r"state: (idle|closed)", 10, "rendered")
    assert join.is_enabled() and stop.is_disabled()
    nb.screenshot("01-rendered", panel)

    panel.evaluate(WATCH_TIMELINE_JS)
    join.click()
    # (the label still says "closed" from the notebook's own join until the click lands)
    wait_for_text(nb, panel, r"state: connected", JOIN_S, "join", fail=r"state: failed|Error: ")
    for step in SETUP_STEPS:
        wait_for_text(nb, panel, rf"\b{step}\b", 5, "join")
    wait_for_text(nb, panel, r"frames sent: [1-9]\d*", 15, "frames")
    wait_for_js(nb, panel, PREVIEW_DRAWN_JS, 15, "join", "a preview image drawn", panel)
    assert stop.is_enabled() and join.is_disabled()
    assert "Error:" not in panel.inner_text(), panel.inner_text()
    nb.screenshot("02-joined", panel)

    versions: list[list[str]] = nb.page.evaluate("() => window.__kvsnbTimeline")
    final = versions[-1]
    assert [s for s in final if s in SETUP_STEPS] == list(SETUP_STEPS), final
    assert len(versions) >= 3, f"the timeline did not fill in step by step: {versions}"
    assert "stopped" not in final, final  # this join's table, not the notebook's
    assert all(len(a) <= len(b) for a, b in itertools.pairwise(versions)), versions

    stop.click()
    wait_for_text(nb, panel, r"state: closed", STOP_S, "stop")
    # the session says "closed" as soon as it starts stopping; Stop has finished when the
    # panel enables Join again, after the session's last step, "stopped"
    enabled = "(b) => !b.disabled"
    what = "Stop to finish (Join enabled again, a 'stopped' step in the timeline)"
    wait_for_js(nb, join, enabled, STOP_S, "stop", what, panel)
    wait_for_text(nb, panel, r"\bstopped\b", 5, "stop")
    assert stop.is_disabled()
    assert "Error:" not in panel.inner_text(), panel.inner_text()
    nb.screenshot("03-stopped", panel)
    nb.assert_no_errors()


def test_track_tester_checklist_and_end_to_end(
    open_notebook: Callable[[str], NotebookPage],
) -> None:
    nb = run_notebook(open_notebook, TRACK_TESTING)
    tester = nb.widget_output("Check")
    check = tester.get_by_role("button", name="Check", exact=True)
    nb.screenshot("01-rendered", tester)

    # The notebook already ran a check: its table is marked old, and this check's table
    # (drawn anew) is read once it has settled (rows present and every one marked).
    tester.locator("table").evaluate_all("ts => ts.forEach(t => { t.dataset.old = '1'; })")
    check.click()
    wait_for_text(nb, tester, r"\d+ rules: \d+ failed, \d+ warnings", CHECK_S, "check")
    rows = tester.locator("table:not([data-old]) tr[class^='rule-']")
    marks: list[str] = []

    def marked() -> bool:
        marks[:] = [m.strip() for m in rows.locator("td:first-child").all_inner_texts()]
        return bool(marks) and all(marks)

    wait_until_sync(marked, "every rule of the checklist marked", CHECK_S, 0.2, lambda: marks)
    assert rows.count() >= 1, tester.inner_text()
    assert set(marks) <= MARKS, marks
    assert "✓" in marks, marks
    for row in rows.all():
        cells = row.locator("td").all_inner_texts()
        assert len(cells) == 5 and cells[1].strip(), cells  # mark, rule, value, expected, reason
    nb.screenshot("02-checklist", tester)

    run = tester.get_by_role("button", name="End-to-end test", exact=True)
    run.click()
    wait_for_text(
        nb,
        tester,
        r"✓ frames arrived",
        END_TO_END_S,
        "end-to-end",
        fail=r"✗ frames did not arrive|Error: .*",
    )
    wait_for_js(nb, run, "(b) => !b.disabled", 10, "end-to-end", "the button enabled", tester)
    # then the latency summary, with the probe's measures, and its two plots
    wait_for_text(nb, tester, r"capture → listed \(ListFragments\)", 20, "end-to-end")
    wait_for_js(nb, tester, PLOTS_DRAWN_JS, 20, "end-to-end", "the latency plots drawn", tester)
    wait_for_js(nb, tester, PLOTS_INSIDE_JS, 5, "end-to-end", "the plots not cut off", tester)
    nb.screenshot("03-end-to-end", tester)
    nb.assert_no_errors()
