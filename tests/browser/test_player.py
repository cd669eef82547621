"""Players in a real browser (Debian's Chromium, headless): Local KVS's HLS (fMP4 and
MPEG-TS) and DASH play, LIVE and ON_DEMAND,

- in a plain page on another origin with hls.js and dash.js (the vendored ES modules), the
  session URL pointing at Local KVS's 127.0.0.1 port (cross-origin reads);
- in JupyterLab, with the ``Player`` widget, the embedded Local KVS reached through the
  Jupyter server's ``/proxy/PORT/`` path (jupyter-server-proxy), never 127.0.0.1:PORT.

Each player must advance ``currentTime``, decode more and more frames, report no fatal error,
and a screenshot of its video element must carry a stamp that decodes (a capture time within
the ingest). Paused from the kernel, an ON_DEMAND Player's ``on_screen`` (read in the
kernel) is the stamp of the frame in the screenshot within a fragment (usually a frame, see
``ON_SCREEN_MS``); for LIVE players only
that it is a timestamp of the stream: in headless Chromium their reported time was seen from
within a frame to 4.8 s behind the frame in the screenshot (``player-on-screen-vs-stamp.log``),
not explained yet. Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import datetime as dt
import io
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from kvsnb.playback import dash_session_url, hls_session_url
from kvsnb.sources.stamp import Stamp, try_read_stamp

from .conftest import ARTIFACTS, NotebookPage
from .player_fixtures import LiveStream, live_stream, page_server, player_notebook

__all__ = ["live_stream", "page_server"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(300)

PLAY_S = 60.0  # the player starts and shows a stamped frame
ADVANCE_S = 2.0  # currentTime must move at least this much while we watch
STAMP_TRIES = 20
# A paused ON_DEMAND Player's reported time vs the stamp in a screenshot: seen 8-40 ms
# (about a frame) on a quiet machine, up to 456 ms on a loaded one; within a fragment (1 s).
ON_SCREEN_MS = 1000
REPORT_S = 30.0  # a paused Player reports the frame it shows within this
CASES = [
    ("hls", "LIVE", "FRAGMENTED_MP4"),
    ("hls", "ON_DEMAND", "FRAGMENTED_MP4"),
    ("hls", "LIVE", "MPEG_TS"),
    ("dash", "LIVE", None),
    ("dash", "ON_DEMAND", None),
]

VIDEO_STATE_JS = """
(video) => ({
  time: video.currentTime,
  frames: video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality().totalVideoFrames : 0,
  error: video.error ? String(video.error.message || video.error.code) : null,
  width: video.videoWidth,
  ended: video.ended,
  paused: video.paused,
})
"""


def iso_ms(ms: int) -> str:
    """``Date.toISOString()`` of epoch ms, as the Player writes it under the video."""
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def stamp_of(shot: bytes) -> Stamp | None:
    """The stamp in a screenshot of a video element, if it decodes."""
    image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    return try_read_stamp(image)


def watch_video(
    video: Any, errors: Callable[[], list[str]], label: str
) -> tuple[dict[str, Any], Stamp]:
    """Wait until ``video`` plays (currentTime advances by ADVANCE_S, frames decoded grow)
    and a screenshot of it carries a stamp; the last state and the stamp."""
    deadline = time.monotonic() + PLAY_S
    first: dict[str, Any] | None = None
    state: dict[str, Any] = {}
    while True:
        state = video.evaluate(VIDEO_STATE_JS)
        assert not errors(), f"{label}: player errors {errors()}"
        assert state["error"] is None, f"{label}: video error {state['error']}"
        if state["paused"] and not state["ended"]:  # held while out of view: play it
            video.evaluate("(v) => v.play()")
        if state["ended"]:  # an ON_DEMAND session played out while others were watched
            video.evaluate("(v) => { v.currentTime = 0; v.play(); }")
            first = None
            time.sleep(0.25)
            continue
        if first is None and state["time"] > 0 and state["frames"] > 0:
            first = state
        if (
            first is not None
            and state["time"] >= first["time"] + ADVANCE_S
            and state["frames"] > first["frames"]
        ):
            break
        assert time.monotonic() < deadline, f"{label}: not playing within {PLAY_S} s: {state}"
        time.sleep(0.25)
    for i in range(STAMP_TRIES):
        shot = video.screenshot(timeout=10_000)
        stamp = stamp_of(shot)
        if stamp is not None:
            (ARTIFACTS / f"player-{label}.png").write_bytes(shot)
            return state, stamp
        time.sleep(0.2 * (i + 1))
    (ARTIFACTS / f"player-{label}-nostamp.png").write_bytes(shot)
    raise AssertionError(f"{label}: no stamp decoded from {STAMP_TRIES} screenshots")


@pytest.fixture(scope="module")
def page(browser_context: Any, artifacts: Any) -> Iterator[Any]:
    page = browser_context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "player-cross-origin-console.log").write_text("\n".join(console) + "\n")
        page.close()


@pytest.mark.parametrize(("kind", "mode", "container"), CASES)
def test_cross_origin_page_plays(
    live_stream: LiveStream,
    page_server: str,
    page: Any,
    kind: str,
    mode: str,
    container: str | None,
) -> None:
    target, arn = live_stream.target, live_stream.arn
    if kind == "hls":
        url = hls_session_url(target, arn, mode=mode, container=container or "FRAGMENTED_MP4")
    else:
        url = dash_session_url(target, arn, mode=mode)
    assert url.startswith(live_stream.kvs.url)  # another origin than the page's
    started_ms = time.time() * 1000
    query = urllib.parse.urlencode({"kind": kind, "url": url})
    page.goto(f"{page_server}/player.html?{query}", wait_until="load")
    page.wait_for_function("() => window.kvsnbReady === true", timeout=20_000)
    label = f"cross-origin-{kind}-{mode}-{container or 'fmp4'}".lower()
    state, stamp = watch_video(
        page.locator("#video"), lambda: page.evaluate("() => window.kvsnbErrors"), label
    )
    assert state["width"] == 640
    first = min(f.producer_start_ms for f in live_stream.kvs.store.list_fragments(arn))
    assert first <= stamp.capture_ms <= time.time() * 1000
    if mode == "LIVE":
        # a live player shows recent media, not the start of the stream
        assert stamp.capture_ms >= started_ms - 30_000


# ---------------------------------------------------------------------------- JupyterLab

NOTEBOOK = "player_test.ipynb"
SETUP_CELL = """
import asyncio, threading
import kvsnb
from kvsnb.client.ingest import ingest
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.widgets import Player
target = kvsnb.connect(extra={"storage": StorageOptions(fragment_duration_s=1.0)})
_, arn = target.create_storage_channel("player")
feed = lambda: asyncio.run(ingest(target, "player", seconds=600))  # noqa: E731
threading.Thread(target=feed, daemon=True).start()

def wait_fragments(n):
    last = None
    for _ in range(n):
        wait = target.local.store.wait_for_fragment(arn, after_number=last, timeout=30)
        last = target.local.call(wait, timeout=40).fragment_number

wait_fragments(1)
first_ms = int(kvsnb.playback.list_fragments(target, arn)["producer_time"].min().timestamp() * 1000)
print("public", target.public_url)
"""
PLAYERS = [
    ("dash_live", 'Player.from_stream(target, arn, protocol="DASH", mode="LIVE")'),
    ("hls_live", 'Player.from_stream(target, arn, protocol="HLS", mode="LIVE")'),
    ("hls_ts", 'Player.from_stream(target, arn, protocol="HLS", mode="LIVE", container="MPEG_TS")'),
    ("hls_vod", 'Player.from_stream(target, arn, protocol="HLS", mode="ON_DEMAND")'),
    ("dash_vod", 'Player.from_stream(target, arn, protocol="DASH", mode="ON_DEMAND")'),
]

KERNEL_EVAL_JS = """
async ([name, code]) => {
  const app = window.jupyterapp;
  let panel = null;
  for (const w of Array.from(app.shell.widgets('main'))) {
    if (w.context && w.context.path === name && w.sessionContext) panel = w;
  }
  const kernel = panel.sessionContext.session.kernel;
  let out = '';
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream') out += msg.content.text;
    if (msg.header.msg_type === 'error') out += 'ERROR ' + msg.content.evalue;
  };
  await future.done;
  return out.trim();
}
"""


def test_player_widget_plays_through_the_proxy(
    jupyter_lab: Any, browser_context: Any, chromium: Any, artifacts: Any
) -> None:
    """Every Player in a JupyterLab notebook plays from ``<base_url>proxy/PORT/`` and the
    kernel reads the producer timestamp of the frame on screen."""
    cells = [SETUP_CELL] + [f"{name} = {expr}\n{name}" for name, expr in PLAYERS]
    cells.insert(1 + 3, "wait_fragments(6)  # ON_DEMAND: a few seconds to play")
    player_notebook(jupyter_lab.root / NOTEBOOK, cells)
    page = browser_context.new_page()
    nb = NotebookPage(NOTEBOOK, page, jupyter_lab)
    requests: list[str] = []
    page.on("console", lambda m: nb.console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: nb.console.append(f"[pageerror] {e}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(f"{jupyter_lab.url}/lab/tree/{NOTEBOOK}?reset", wait_until="domcontentloaded")
        nb.wait_until_ready()
        cells_out = nb.run_all()
        nb.assert_no_errors(cells_out)
        public = next(
            o["text"]
            for c in cells_out
            for o in c["outputs"]
            if (o["text"] or "").startswith("public")
        ).split()[1]
        assert public.startswith("/proxy/"), public
        videos = page.locator(".kvsnb-player video")
        diffs: dict[str, int] = {}
        first_ms = int(page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, "print(first_ms)"]))
        page.wait_for_function(
            f"() => document.querySelectorAll('.kvsnb-player video').length >= {len(PLAYERS)}",
            timeout=30_000,
        )
        for i, (name, _) in enumerate(PLAYERS):
            video = videos.nth(i)
            video.scroll_into_view_if_needed()
            label = f"jupyterlab-{name}"
            pdt = page.locator(".kvsnb-player-pdt").nth(i)

            def errors(pdt: Any = pdt) -> list[str]:
                text = pdt.inner_text()
                return [text] if text.startswith("error") else []

            watch_video(video, errors, label)
            # paused from the kernel, the frame on screen stays (an ON_DEMAND one: a LIVE
            # hls.js jumps back to the live edge even when paused): its stamp (capture
            # time) and the producer timestamp the kernel reads back agree
            page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, f"{name}.pause()"])
            video.evaluate("(v) => new Promise((r) => v.paused ? r() : v.onpause = r)")

            def kernel_reads(name: str = name) -> str:
                read = page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, f"print({name}.on_screen_ms)"])
                return str(read)

            # the player reports a few times a second; after the pause, wait for a report that
            # names a frame (a LIVE hls.js player moving to the live edge reports none a while)
            deadline = time.monotonic() + REPORT_S
            while not kernel_reads().isdigit() and time.monotonic() < deadline:
                time.sleep(0.25)
            stamp = stamp_of(video.screenshot(timeout=10_000))
            assert stamp is not None, f"{label}: no stamp on the paused frame"
            on_page = pdt.inner_text()
            shown = kernel_reads()
            assert shown.isdigit(), f"{label}: the kernel reads {shown!r}"
            diffs[label] = int(shown) - stamp.capture_ms
            if name.endswith("vod"):
                assert on_page == iso_ms(int(shown)), (label, on_page, shown)
                assert abs(diffs[label]) <= ON_SCREEN_MS, (label, shown, stamp)
            else:  # a timestamp of the stream (see the module docstring)
                assert first_ms <= int(shown) <= time.time() * 1000, (label, shown)
            # left paused: the machine decodes one video at a time
        (ARTIFACTS / "player-on-screen-vs-stamp.log").write_text(
            "\n".join(f"{k} {v} ms" for k, v in diffs.items()) + "\n"
        )
        # seek from the kernel
        page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, "hls_vod.pause(); hls_vod.seek(0.5)"])
        page.wait_for_function(
            "() => { const v = document.querySelectorAll('.kvsnb-player video')[3];"
            " return v.paused && v.currentTime < 1.5; }",
            timeout=20_000,
        )
        media = [u for u in requests if "/hls/v1/" in u or "/dash/v1/" in u]
        assert media and all(u.startswith(jupyter_lab.url + public) for u in media), media[:5]
    finally:
        nb.screenshot("players")
        nb.save_logs()
        page.close(run_before_unload=False)
        jupyter_lab.shutdown_session(NOTEBOOK)
