"""The Player's views in JupyterLab (real anywidget, headless Chromium) own what they start:
two views of one LIVE DASH Player share one request for the player library (one per model),
and once their outputs are cleared nothing of theirs keeps running: no MPD refresh, no
dash.js fetch, no report to the kernel."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import NotebookPage
from .player_fixtures import player_notebook
from .test_player import KERNEL_EVAL_JS

pytestmark = pytest.mark.timeout(300)

NOTEBOOK = "player_views_test.ipynb"
SETUP_CELL = """
import asyncio, threading
import kvsnb
from kvsnb.client.ingest import ingest
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.widgets import Player
target = kvsnb.connect(extra={"storage": StorageOptions(fragment_duration_s=1.0)})
_, arn = target.create_storage_channel("views")
feed = lambda: asyncio.run(ingest(target, "views", seconds=600))  # noqa: E731
threading.Thread(target=feed, daemon=True).start()
wait = target.local.store.wait_for_fragment(arn, timeout=30)
target.local.call(wait, timeout=40)
"""
VIEWS_CELL = """
player = Player.from_stream(target, arn, protocol="DASH", mode="LIVE")
asks = []
player.on_msg(lambda _w, content, _b: asks.append(content.get("type")))
display(player)
display(player)
"""
PLAY_S = 60.0
# after the views are gone: how long no request of theirs may show (several MPD refresh
# periods, DASH_REFRESH_MS = 1 s in player.js), and a grace for requests issued as they went
QUIET_S = 4.0
GRACE_S = 0.5

BOTH_PLAY_JS = """
() => {
  const videos = Array.from(document.querySelectorAll('.kvsnb-player video'));
  return videos.length === 2 && videos.every((v) => v.currentTime > 0);
}
"""


def test_views_share_the_library_and_stop_when_removed(
    jupyter_lab: Any, browser_context: Any, chromium: Any, artifacts: Any
) -> None:
    player_notebook(jupyter_lab.root / NOTEBOOK, [SETUP_CELL, VIEWS_CELL])
    page = browser_context.new_page()
    nb = NotebookPage(NOTEBOOK, page, jupyter_lab)
    requests: list[tuple[float, str]] = []
    page.on("console", lambda m: nb.console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: nb.console.append(f"[pageerror] {e}"))
    page.on("request", lambda r: requests.append((time.monotonic(), r.url)))
    try:
        page.goto(f"{jupyter_lab.url}/lab/tree/{NOTEBOOK}?reset", wait_until="domcontentloaded")
        nb.wait_until_ready()
        nb.assert_no_errors(nb.run_all())
        page.wait_for_function(BOTH_PLAY_JS, polling=250, timeout=PLAY_S * 1000)
        error = page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, "print(repr(player.error))"])
        assert error == "''", error
        asked = page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, "print(asks.count('need-library'))"])
        assert asked == "1", f"two views of one model asked for the library {asked} times"
        assert any("/dash/v1/" in u for _, u in requests)

        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        page.wait_for_function(
            "() => document.querySelectorAll('.kvsnb-player').length === 0", timeout=20_000
        )
        gone = time.monotonic()
        page.wait_for_timeout(GRACE_S * 1000)  # a report sent as the views went arrives
        reported = page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, "print(player.current_time)"])
        page.wait_for_timeout(QUIET_S * 1000)  # an absence is watched for a while
        later = [u for t, u in requests if t > gone + GRACE_S and "/dash/v1/" in u]
        assert not later, f"requests after the views were removed: {later[:5]}"
        still = page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, "print(player.current_time)"])
        assert still == reported, f"a removed view still reports: {reported} then {still}"
        nb.assert_no_errors()
    finally:
        nb.screenshot("player-views")
        nb.save_logs()
        page.close(run_before_unload=False)
        jupyter_lab.shutdown_session(NOTEBOOK)
