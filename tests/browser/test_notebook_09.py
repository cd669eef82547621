"""Notebook 09 run as a Binder user runs it: JupyterLab under a base URL
(``--ServerApp.base_url=/user/NAME/``, as JupyterHub and Binder serve it), the notebook's
Local KVS reached by the browser only through jupyter-server-proxy (``<base_url>proxy/PORT/``),
Run → Run All Cells, then look at the page without touching it first.

After Run All every ``Player`` is still on the page: each one started by itself, before
anything was scrolled into view (ON_DEMAND ones too), and shows a stamped frame; the LIVE
cell heard the page's reports while it ran (over the kernel bridge); once the ingest is over
the LIVE players say the live stream stopped, the ON_DEMAND ones say they ended and keep the
last frame's time; LIVE DASH played without a stall. Screenshots and logs go to
``test-artifacts/browser/`` (``09_player-*``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from bench.lab import LabServer, start_lab
from tests.conftest import wait_until_sync

from .conftest import ARTIFACTS, NOTEBOOKS, NotebookPage
from .test_player import KERNEL_EVAL_JS, VIDEO_STATE_JS, stamp_of, watch_video

pytestmark = pytest.mark.timeout(420)

BASE_URL = "/user/kvsnb-reader/"
NOTEBOOK = "09_player.ipynb"
PLAYERS = ("live_hls", "live_dash", "vod_hls", "vod_dash")  # in the order of the page
STARTED_S = 30.0  # every player has started after Run All
LABEL_S = 45.0  # the LIVE players notice the stream stopped, the ON_DEMAND ones end
FRAME_MS = 1000 / 30  # the stamped pattern's frame interval
ON_SCREEN_MS = FRAME_MS + 50  # the kernel's on_screen vs the stamp of a still frame


# what the page's player holds, for the log: its times and buffered ranges, hls.js's fragments
PLAYER_STATE_JS = """
(video) => {
  const ranges = (r) => Array.from({ length: r.length }, (_, i) => [r.start(i), r.end(i)]);
  const hls = video.kvsnbPlayer && video.kvsnbPlayer.levels ? video.kvsnbPlayer : null;
  const details = hls && hls.levels[0] && hls.levels[0].details;
  const frags = details ? details.fragments.slice(-4).map((f) => {
    const v = f.elementaryStreams && f.elementaryStreams.video;
    const vs = v ? [v.startPTS, v.endPTS] : null;
    return [f.sn, f.start, f.startPTS, vs, f.programDateTime];
  }) : null;
  return { currentTime: video.currentTime, mediaTime: video.kvsnbMediaTime(),
           readyState: video.readyState, buffered: ranges(video.buffered), frags };
}
"""


@pytest.fixture(scope="module")
def lab_under_base_url(
    tmp_path_factory: pytest.TempPathFactory, chromium: Any, artifacts: Any
) -> Iterator[LabServer]:
    """JupyterLab under ``BASE_URL`` serving a temp copy of ``notebooks/``."""
    if not (NOTEBOOKS / NOTEBOOK).is_file():
        pytest.skip(f"notebooks/{NOTEBOOK} is not in the repository")
    base = tmp_path_factory.mktemp("jupyterlab-base-url")
    root = base / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    lab = start_lab(root, base / "jupyter", base / "server.log", base_url=BASE_URL)
    try:
        yield lab
    finally:
        lab.stop()
        with contextlib.suppress(OSError):
            shutil.copy(lab.log, ARTIFACTS / "jupyterlab-base-url-server.log")


def kernel(page: Any, code: str) -> str:
    """Run ``code`` in the notebook's kernel (between cells); what it printed."""
    return str(page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, code]))


def test_run_all_under_a_base_url_shows_every_player(
    lab_under_base_url: LabServer, browser_context: Any
) -> None:
    lab = lab_under_base_url
    assert lab.url.endswith(BASE_URL.rstrip("/"))
    page = browser_context.new_page()
    nb = NotebookPage(NOTEBOOK, page, lab)
    requests: list[str] = []
    page.on("console", lambda m: nb.console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: nb.console.append(f"[pageerror] {e}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?reset", wait_until="domcontentloaded")
        nb.wait_until_ready()
        cells = nb.run_all()
        nb.assert_no_errors(cells)
        text = "".join(o["text"] or "" for c in cells for o in c["outputs"])
        public = re.search(r"reached by the browser at: (\S+)", text)
        assert public and public.group(1).startswith(BASE_URL + "proxy/"), text[:500]
        # the LIVE cell heard the page while it ran: the kernel bridge under the base URL
        videos = page.locator(".kvsnb-player video")
        heard = all(
            re.search(rf"{name}: frame of \S+ \S+ on screen, [\d.]+ s behind now", text)
            for name in ("HLS", "DASH")
        )
        if not heard:
            seen = [videos.nth(i).evaluate(PLAYER_STATE_JS) for i in range(2)]
            bridge = [m for m in nb.console if "bridge" in m]
            kernel_side = kernel(page, "print(live_hls.status, live_dash.status, live_dash.stalls)")
            raise AssertionError(f"{text}\n{seen}\n{bridge}\n{kernel_side}")
        labels = page.locator(".kvsnb-player-pdt")
        page.wait_for_function(
            f"() => document.querySelectorAll('.kvsnb-player video').length === {len(PLAYERS)}",
            timeout=30_000,
        )
        # every player started by itself, none scrolled into view yet
        states: list[dict[str, Any]] = []

        def all_started() -> bool:
            states[:] = [videos.nth(i).evaluate(VIDEO_STATE_JS) for i in range(len(PLAYERS))]
            return all(s["time"] > 0 and s["frames"] > 0 for s in states)

        wait_until_sync(
            all_started,
            "every player started",
            deadline_s=STARTED_S,
            every_s=0.5,
            detail=lambda: dict(zip(PLAYERS, states, strict=True)),
        )
        assert not any(s["error"] for s in states), states

        # the ingest is over: the LIVE players say so, the ON_DEMAND ones end and keep a time
        want = {"live_hls": "live stream stopped", "live_dash": "live stream stopped"}
        want |= {"vod_hls": "ended", "vod_dash": "ended"}
        shown: list[str] = []

        def all_labelled() -> bool:
            shown[:] = [labels.nth(i).inner_text() for i in range(len(PLAYERS))]
            return all(want[name] in label for name, label in zip(PLAYERS, shown, strict=True))

        wait_until_sync(
            all_labelled,
            "every label says ended or stopped",
            deadline_s=LABEL_S,
            every_s=0.5,
            detail=lambda: dict(zip(PLAYERS, shown, strict=True)),
        )
        assert all(re.match(r"\d{4}-\d\d-\d\dT", label) for label in shown), shown
        for name in PLAYERS:
            status = kernel(page, f"print({name}.status)")
            assert status == ("stopped" if name.startswith("live") else "ended"), (name, status)

        # a still frame (the last one the player has) and the time the kernel reads agree
        diffs: dict[str, tuple[int, Any]] = {}
        for i, name in enumerate(PLAYERS[:2]):
            video = videos.nth(i)
            video.scroll_into_view_if_needed()
            shot = video.screenshot(timeout=10_000)
            (ARTIFACTS / f"09_player-{name}-stopped.png").write_bytes(shot)
            stamp = stamp_of(shot)
            assert stamp is not None, f"{name}: no stamp on the last frame"
            on_screen = int(kernel(page, f"print({name}.on_screen_ms)"))
            diffs[name] = (on_screen - stamp.capture_ms, video.evaluate(PLAYER_STATE_JS))
        (ARTIFACTS / "09_player-stopped-on-screen-vs-stamp.log").write_text(
            "\n".join(f"{k} {d} ms {state}" for k, (d, state) in diffs.items()) + "\n"
        )
        assert all(abs(d) <= ON_SCREEN_MS for d, _ in diffs.values()), diffs
        stalls = kernel(page, "print(live_hls.stalls, live_dash.stalls)").split()
        with (ARTIFACTS / "09_player-stopped-on-screen-vs-stamp.log").open("a") as log:
            log.write(f"stalls: live_hls {stalls[0]} live_dash {stalls[1]}\n")
        assert stalls[1] == "0", f"LIVE DASH stalled {stalls[1]} times (LIVE HLS {stalls[0]})"

        # the ON_DEMAND players play again, with stamped frames
        for i, name in enumerate(PLAYERS[2:], start=2):
            video = videos.nth(i)
            video.scroll_into_view_if_needed()
            label = labels.nth(i)

            def errors(label: Any = label) -> list[str]:
                text = label.inner_text()
                return [text] if text.startswith("error") else []

            watch_video(video, errors, f"09_player-{name}")
        media = [u for u in requests if "/hls/v1/" in u or "/dash/v1/" in u]
        assert media and all(u.startswith(lab.url + "/proxy/") for u in media), media[:5]
    finally:
        nb.screenshot("run-all")
        nb.save_logs()
        page.close(run_before_unload=False)
        lab.shutdown_session(NOTEBOOK)
