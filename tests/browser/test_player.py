"""Players in a real browser (Debian's Chromium, headless): Local KVS's HLS (fMP4 and
MPEG-TS) and DASH play, LIVE and ON_DEMAND,

- in a plain page on another origin with hls.js and dash.js (the vendored ES modules), the
  session URL pointing at Local KVS's 127.0.0.1 port (cross-origin reads);
- in JupyterLab, with the ``Player`` widget, the embedded Local KVS reached through the
  Jupyter server's ``/proxy/PORT/`` path (jupyter-server-proxy), never 127.0.0.1:PORT.

Each player must advance ``currentTime``, decode more and more frames, report no fatal error,
and a screenshot of its video element must carry a stamp that decodes (a capture time within
the ingest). The Player's time of the frame on screen is the frame's stamp within one frame
interval plus 50 ms (``ON_SCREEN_MS``), LIVE and ON_DEMAND, HLS and DASH: while playing (the
frame presented, drawn on a canvas in its requestVideoFrameCallback, against the time the
Player gives that frame), after a seek from the kernel, and paused from the kernel (the
screenshot's stamp against ``on_screen`` read in the kernel). The differences go to
``player-on-screen-vs-stamp.log``. Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import base64
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
FRAME_MS = 1000 / 30  # the stamped pattern's frame interval
ON_SCREEN_MS = FRAME_MS + 50  # the Player's time of the frame on screen vs the frame's stamp
REPORT_S = 30.0  # a paused Player reports the frame it shows within this
FRAME_SAMPLES = 3
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


# the next frame presented, drawn on a canvas in its requestVideoFrameCallback, and the time
# the Player gives it (its mediaTime through the Player's own mapping)
PRESENTED_FRAME_JS = """
(video) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no frame presented in 10 s")), 10000);
  video.requestVideoFrameCallback((_now, meta) => {
    clearTimeout(timer);
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    resolve({ png: canvas.toDataURL("image/png"), ms: video.kvsnbOnScreen(meta.mediaTime),
              mediaTime: meta.mediaTime });
  });
})
"""


def presented_frame_diffs(video: Any, label: str, samples: int = FRAME_SAMPLES) -> list[float]:
    """For a few frames presented while ``video`` plays: the Player's time of the frame minus
    the frame's stamp (ms)."""
    diffs = []
    for i in range(samples):
        video.scroll_into_view_if_needed()  # a video out of view presents no frame
        try:
            got = video.evaluate(PRESENTED_FRAME_JS)
        except Exception as exc:
            state = video.evaluate(VIDEO_STATE_JS)
            raise AssertionError(f"{label}: no frame presented ({exc}); {state}") from exc
        png = base64.b64decode(got["png"].split(",", 1)[1])
        stamp = stamp_of(png)
        if stamp is None:
            (ARTIFACTS / f"player-{label}-frame{i}-nostamp.png").write_bytes(png)
            raise AssertionError(f"{label}: no stamp on the presented frame {i}")
        assert got["ms"] is not None, f"{label}: the Player has no time for {got['mediaTime']}"
        diffs.append(got["ms"] - stamp.capture_ms)
    return diffs


def iso_ms(ms: int) -> str:
    """``Date.toISOString()`` of epoch ms, as the Player writes it under the video."""
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def stamp_of(shot: bytes) -> Stamp | None:
    """The stamp in a screenshot of a video element, if it decodes."""
    image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    return try_read_stamp(image)


PLAY_JS = "(v) => { v.play().catch(() => {}); }"


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
        # play() is not awaited: its promise waits for data, and the loop's deadline is the
        # wait (a page evaluation that waited for it held a run until the test's timeout)
        if state["paused"] and not state["ended"]:  # held while out of view: play it
            video.evaluate(PLAY_JS)
        if state["ended"]:  # an ON_DEMAND session played out while others were watched
            video.evaluate("(v) => { v.currentTime = 0; v.play().catch(() => {}); }")
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


# dash.js's own live latency (by its clock) against the age of the frame at its playhead by
# the MPD's kvs:ts, on one machine's clock: their difference is dash.js's clock error (plus a
# frame; the two are read at one instant of the page)
DASH_CLOCK_JS = """
() => {
  const attached = window.kvsnbAttached;
  const video = document.getElementById('video');
  if (!attached || video.currentTime < 1) return null;
  const ms = attached.onScreen(video.currentTime);
  const latency = attached.player.getCurrentLiveLatency();
  if (ms === null || !Number.isFinite(latency) || latency <= 0) return null;
  return latency * 1000 - (Date.now() - ms);
}
"""
CLOCK_SAMPLES = 8
CLOCK_ERROR_MS = 60.0


def test_player_dash_reads_the_servers_clock_to_the_millisecond(
    live_stream: LiveStream, page_server: str, page: Any
) -> None:
    """The Player's dash.js set-up gives dash.js the server's clock to the millisecond:
    dash.js's live latency is the age of the frame at its playhead. dash.js alone reads the
    MPD's UTCTiming to the second and was 0-1 s off (median of samples over 4 s)."""
    target, arn = live_stream.target, live_stream.arn
    url = dash_session_url(target, arn, mode="LIVE", selector="PRODUCER_TIMESTAMP")
    query = urllib.parse.urlencode({"kind": "player-dash", "url": url})
    page.goto(f"{page_server}/player.html?{query}", wait_until="load")
    page.wait_for_function("() => window.kvsnbReady === true", timeout=20_000)
    errors: Callable[[], Any] = lambda: page.evaluate("() => window.kvsnbErrors")  # noqa: E731
    page.wait_for_function(f"() => ({DASH_CLOCK_JS})() !== null", timeout=PLAY_S * 1000)
    samples: list[float] = []
    while len(samples) < CLOCK_SAMPLES:
        error = page.evaluate(DASH_CLOCK_JS)
        if error is not None:
            samples.append(error)
        page.wait_for_timeout(500)
    assert not errors(), errors()
    median = float(np.median(samples))
    assert abs(median) <= CLOCK_ERROR_MS, f"dash.js's clock is off by {median:.0f} ms: {samples}"


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
PAUSED_HOLD_S = 10.0  # past hls.js's max latency (sync + 2 target durations of 2 s)
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
    diffs: dict[str, float] = {}
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
            # playing (a LIVE one at the live edge): each frame presented and its time
            playing = presented_frame_diffs(video, label)
            diffs[f"{label} playing"] = max(playing, key=abs)
            assert all(abs(d) <= ON_SCREEN_MS for d in playing), (label, "playing", playing)
            # after a seek from the kernel: back 2 s, playing on
            back = max(0.0, float(video.evaluate("(v) => v.currentTime")) - 2.0)
            page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, f"{name}.seek({back}); {name}.play()"])
            video.evaluate("(v) => new Promise((r) => v.seeking ? v.onseeked = r : r())")
            seeked = presented_frame_diffs(video, label)
            diffs[f"{label} after-seek"] = max(seeked, key=abs)
            assert all(abs(d) <= ON_SCREEN_MS for d in seeked), (label, "after a seek", seeked)
            # paused from the kernel, the frame on screen stays: its stamp (capture time) and
            # the producer timestamp the kernel reads back agree
            page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, f"{name}.pause()"])
            video.evaluate("(v) => new Promise((r) => v.paused ? r() : v.onpause = r)")

            def kernel_reads(name: str = name) -> tuple[str, str]:
                code = f"print({name}.paused, {name}.on_screen_ms)"
                paused, shown = page.evaluate(KERNEL_EVAL_JS, [NOTEBOOK, code]).split()
                return paused, shown

            # wait for a report made after the pause that names a frame, and the same twice
            deadline = time.monotonic() + REPORT_S
            read, last = kernel_reads(), ("", "")
            while (read[0] != "True" or not read[1].isdigit() or read != last) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.3)
                read, last = kernel_reads(), read
            stamp = stamp_of(video.screenshot(timeout=10_000))
            assert stamp is not None, f"{label}: no stamp on the paused frame"
            on_page = pdt.inner_text()
            shown = kernel_reads()[1]
            assert shown.isdigit(), f"{label}: the kernel reads {shown!r}"
            diffs[f"{label} paused"] = int(shown) - stamp.capture_ms
            assert on_page.startswith(iso_ms(int(shown))), (label, on_page, shown)
            assert abs(diffs[f"{label} paused"]) <= ON_SCREEN_MS, (label, shown, stamp)
            assert first_ms <= int(shown) <= time.time() * 1000, (label, shown)
            if name == "hls_live":
                # a paused LIVE frame stays put while the playlist slides on: hls.js used to
                # reset it to the live edge once it was its max latency behind (seen once: a
                # paused frame 4 s ahead of the time read a moment before)
                held = video.evaluate("(v) => v.currentTime")
                behind = time.monotonic() + PAUSED_HOLD_S
                while time.monotonic() < behind:
                    time.sleep(0.5)  # the playlist reloads meanwhile; the video must not move
                    now = video.evaluate("(v) => [v.paused, v.currentTime]")
                    assert now == [True, held], (label, "moved while paused", held, now)
            # left paused: the machine decodes one video at a time
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
        # every time seen, also when a check failed
        (ARTIFACTS / "player-on-screen-vs-stamp.log").write_text(
            "\n".join(f"{k} {v:.0f} ms" for k, v in diffs.items()) + "\n"
        )
        nb.screenshot("players")
        nb.save_logs()
        page.close(run_before_unload=False)
        jupyter_lab.shutdown_session(NOTEBOOK)


WAIT_NOTEBOOK = "player_wait_test.ipynb"
AWAIT_CELL = """
import pandas as pd
from IPython.display import display
waiting = Player.from_stream(target, arn, protocol="HLS", mode="LIVE")
display(waiting)
first = await waiting.wait_on_screen(timeout=60)
later = await waiting.wait_on_screen(after=first + pd.Timedelta(seconds=1), timeout=60)
print("advanced", round((later - first).total_seconds(), 3), waiting.channel_link.transport)
"""


def test_a_running_cell_hears_the_player(
    jupyter_lab: Any, browser_context: Any, chromium: Any, artifacts: Any
) -> None:
    """A cell that displays a Player and then awaits, in the same cell, until ``on_screen``
    has advanced by a second ends: the reports come over the kernel bridge (a kernel reads
    comm messages only between cells)."""
    player_notebook(jupyter_lab.root / WAIT_NOTEBOOK, [SETUP_CELL, AWAIT_CELL])
    page = browser_context.new_page()
    nb = NotebookPage(WAIT_NOTEBOOK, page, jupyter_lab)
    page.on("console", lambda m: nb.console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: nb.console.append(f"[pageerror] {e}"))
    try:
        page.goto(
            f"{jupyter_lab.url}/lab/tree/{WAIT_NOTEBOOK}?reset", wait_until="domcontentloaded"
        )
        nb.wait_until_ready()
        cells = nb.run_all()
        nb.assert_no_errors(cells)
        printed = "".join(o["text"] or "" for o in cells[1]["outputs"]).split()
        assert printed[:1] == ["advanced"], cells[1]
        assert float(printed[1]) > 1.0 and printed[2] == "websocket", printed
    finally:
        nb.screenshot("player-wait")
        nb.save_logs()
        page.close(run_before_unload=False)
        jupyter_lab.shutdown_session(WAIT_NOTEBOOK)
