"""BrowserSession's kernel path, measured end to end with a real browser (Debian's Chromium,
headless) and a Local KVS in a child process (``LocalKvsProcess``, TURN as by default, 1 s
fragments), so that this process's CPU is the kernel path's alone.

The page here is a minimal stand-in for the widget's front end: it opens the kernel bridge
(``kvsnb.widgets.bridge``: the hello with the channel's token), and at ``kernel_start`` calls
``kvsnbKernelMaster`` / ``kvsnbKernelViewer`` of ``kvsnb/widgets/browser_media.js``, as
``BrowserSession`` does; the kernel side is the real ``KernelPath``
(``kvsnb.widgets.browser_media``), given an object with the widget attributes it reads.

Figures (printed; never a pass or fail on time):

- master: capture (the page's capture clock, epoch µs in each chunk) → stored and listed by
  ListFragments (polled every 20 ms), p50/p95 over every frame, and the same for the last
  frame of each fragment (what the fragment duration does not explain);
- viewer: a kvsnb master's stamped capture time → the JPEG drawn on the page's canvas
  (``performance.timeOrigin + now()`` when drawn), p50/p95;
- CPU-s of this process (the kernel path: bridge, chunk parsing, the aiortc peer, JPEG
  encoding for the viewer) per media second, per stream: the master's in a window of its
  own (no ListFragments polling then); for the viewer, this process with the kvsnb master it
  watches alone, then with the viewer's kernel path too (the difference is noisy on a busy
  machine: the master's encoder is the larger part).

- in JupyterLab (``bench/lab.py``), the real ``BrowserSession`` as a viewer of a kvsnb master
  in its kernel, by the direct path (the page's RTCPeerConnection through TURN) and by the
  kernel path (through the Jupyter server's proxy, as on Binder): capture → on screen from
  screenshots, as ``bench_player`` measures the Player (a screenshot's own time included).

The master's direct path is not measured here (its capture → listed would need the page's
capture clock, which only the kernel path carries).

``python -m bench.bench_browser_session [--seconds S] [--no-lab]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web
from PIL import Image

from bench.common import pct, report
from bench.lab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    NotebookPage,
    player_notebook,
    start_lab,
)
from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.launch import connect
from kvsnb.local.runner import LocalKvsProcess
from kvsnb.playback import get_media, list_fragments
from kvsnb.sources import TestPatternTrack, ToneTrack, try_read_stamp, write_y4m
from kvsnb.widgets.bridge import bridge_channel, page_url, stop_bridge
from kvsnb.widgets.browser_media import KernelPath, start_kernel_path

MEDIA_JS = Path(__file__).resolve().parents[1] / "kvsnb" / "widgets" / "browser_media.js"
SIZE = (640, 480)
FPS = 30
POLICY = JoinPolicy.local(connect_timeout_s=20)
LIST_EVERY_S = 0.02

PAGE = """<!doctype html><html><body><canvas id="view"></canvas><script>
%(media_js)s
window.kvsnbDrawn = [];
window.kvsnbStart = (url, token, role) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let onBytes = null, path = null;
  const send = (d) => { if (ws.readyState === 1) ws.send(d); };
  ws.onopen = () => ws.send(JSON.stringify({ type: "hello", token }));
  ws.onmessage = async (ev) => {
    if (typeof ev.data !== "string") { if (onBytes) onBytes(new Uint8Array(ev.data)); return; }
    const msg = JSON.parse(ev.data);
    if (msg.type === "welcome") resolve();
    else if (msg.type === "kernel_start") {
      try {
        if (role === "MASTER") {
          const stream = await navigator.mediaDevices.getUserMedia(
            { video: { width: %(width)d, height: %(height)d }, audio: true });
          path = await kvsnbKernelMaster(stream, send, console.log, (fn) => { onBytes = fn; });
        } else {
          const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
          const canvas = document.getElementById("view");
          path = await kvsnbKernelViewer(canvas, (fn) => { onBytes = fn; }, mic, send, console.log);
          const watch = () => {
            if (path.stats.lastCaptureUs !== window.kvsnbLast) {
              window.kvsnbLast = path.stats.lastCaptureUs;
              const nowUs = (performance.timeOrigin + performance.now()) * 1000;
              window.kvsnbDrawn.push(nowUs - window.kvsnbLast);
            }
            requestAnimationFrame(watch);
          };
          requestAnimationFrame(watch);
        }
      } catch (e) {
        ws.send(JSON.stringify({ type: "media_error", name: e.name, message: e.message }));
      }
    } else if (msg.type === "kernel_stop" && path) path.stop();
  };
  ws.onerror = () => reject(new Error("bridge socket failed"));
});
</script></body></html>"""


class Widget:
    """What ``KernelPath`` reads of a ``BrowserSession``: role, channel, client id, target,
    policy, and the state it reports."""

    def __init__(self, target: Any, channel: str, role: str) -> None:
        self.target = target
        self.channel = channel
        self.role = role
        self.client_id = ""
        self.policy = POLICY
        self.states: list[str] = []

    def _kernel_state(self, state: str, detail: dict[str, Any]) -> None:
        self.states.append(state)
        if state == "failed":
            print("kernel path failed:", detail, file=sys.stderr)


async def serve_page() -> tuple[web.AppRunner, str]:
    """The bench page on an ephemeral port of 127.0.0.1."""
    page = PAGE % {"media_js": MEDIA_JS.read_text(), "width": SIZE[0], "height": SIZE[1]}

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/"


def video_frames(target: Any, stream_arn: str, number: str) -> int:
    """The video frames stored in fragment ``number`` (GetMediaForFragmentList)."""
    media = get_media(target, stream_arn, [number])
    with av.open(io.BytesIO(media), mode="r") as container:
        return sum(1 for p in container.demux(container.streams.video[0]) if p.size)


async def cpu_window(seconds: float) -> tuple[float, float]:
    """This process's CPU-s and the wall seconds of a window of ``seconds``."""
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window
    return time.process_time() - cpu0, time.monotonic() - t0


async def wait_state(widget: Widget, state: str, timeout_s: float = 60.0) -> None:
    """Until the kernel path reported ``state`` (``RuntimeError`` when it failed)."""
    limit = time.monotonic() + timeout_s
    while state not in widget.states:
        if "failed" in widget.states:
            raise RuntimeError(f"the kernel path failed: {widget.states}")
        if time.monotonic() > limit:
            raise TimeoutError(f"no {state} within {timeout_s} s: {widget.states}")
        await asyncio.sleep(0.05)


async def run_master(target: Any, browser: Any, url: str, seconds: float) -> dict[str, Any]:
    """The page's camera through the kernel for ``seconds``: capture → listed, and CPU."""
    _, stream_arn = target.create_storage_channel("bench-browser-master")
    widget = Widget(target, "bench-browser-master", "MASTER")
    channel = bridge_channel("bench-master")
    path: KernelPath = start_kernel_path(widget, channel)
    page = await browser.new_page()
    await page.goto(url)
    await page.evaluate(
        "([u, t]) => kvsnbStart(u, t, 'MASTER')", [page_url(channel), channel.token]
    )
    await wait_state(widget, "connected")
    cpu, wall = await cpu_window(seconds / 2)  # nothing else runs here meanwhile
    listed_at: dict[str, float] = {}
    before = await asyncio.to_thread(list_fragments, target, stream_arn)
    already = {str(n) for n in before["fragment_number"]}  # listed before the polling: no time
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        fragments = await asyncio.to_thread(list_fragments, target, stream_arn)
        now = time.time()
        for number in fragments["fragment_number"]:
            listed_at.setdefault(str(number), now)
        await asyncio.sleep(LIST_EVERY_S)
    await path.stop()
    await page.close()
    channel.close()
    fragments = list_fragments(target, stream_arn)
    fragments = fragments[fragments["fragment_number"].astype(str).isin(listed_at.keys() | already)]
    fragments = fragments.sort_values("fragment_number", key=lambda n: n.map(int))
    assert path.video is not None
    captures = [item.timestamp_us / 1e6 for item in path.video.sent]
    every, last = [], []
    start = 0
    for number in fragments["fragment_number"]:
        count = await asyncio.to_thread(video_frames, target, stream_arn, str(number))
        span = captures[start : start + count]
        start += count
        if str(number) in already:
            continue
        seen = listed_at[str(number)]
        every += [(seen - c) * 1000 for c in span]
        if span:
            last.append((seen - span[-1]) * 1000)
    return {
        "fragments": len(fragments),
        "frames": len(every),
        "capture_listed_p50_ms": pct(every, 50) if every else None,
        "capture_listed_p95_ms": pct(every, 95) if every else None,
        "last_frame_listed_p50_ms": pct(last, 50) if last else None,
        "last_frame_listed_p95_ms": pct(last, 95) if last else None,
        "cpu_s_per_media_s": cpu / wall,
        "info": path.info,
        "stats": path.stats(),
    }


async def run_viewer(target: Any, browser: Any, url: str, seconds: float) -> dict[str, Any]:
    """A kvsnb master's stamped pattern watched on the page through the kernel."""
    target.create_storage_channel("bench-browser-viewer")
    pattern = TestPatternTrack(*SIZE, FPS)
    tone = ToneTrack()
    master = MasterSession(target, "bench-browser-viewer", video=pattern, audio=tone, policy=POLICY)
    await master.start(timeout=60)
    base_cpu, base_wall = await cpu_window(seconds / 2)  # the kvsnb master alone
    widget = Widget(target, "bench-browser-viewer", "VIEWER")
    channel = bridge_channel("bench-viewer")
    path = start_kernel_path(widget, channel)
    page = await browser.new_page()
    await page.goto(url)
    await page.evaluate(
        "([u, t]) => kvsnbStart(u, t, 'VIEWER')", [page_url(channel), channel.token]
    )
    await wait_state(widget, "connected")
    await page.evaluate("window.kvsnbDrawn = []")
    cpu, wall = await cpu_window(seconds)
    drawn = [float(x) / 1000 for x in await page.evaluate("window.kvsnbDrawn")]
    stats = path.stats()
    await path.stop()
    await page.close()
    channel.close()
    await master.stop()
    pattern.stop()
    tone.stop()
    return {
        "pictures_drawn": len(drawn),
        "drawn_per_s": len(drawn) / wall,
        "capture_on_screen_p50_ms": pct(drawn, 50) if drawn else None,
        "capture_on_screen_p95_ms": pct(drawn, 95) if drawn else None,
        "cpu_s_per_media_s_master_alone": base_cpu / base_wall,
        "cpu_s_per_media_s_with_viewer": cpu / wall,
        "stats": stats,
    }


async def run(seconds: float) -> dict[str, Any]:
    """Both measurements against one Local KVS child process and one Chromium."""
    from playwright.async_api import async_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    camera = write_y4m(work / "camera.y4m", int(seconds) + 30, *SIZE, FPS)
    with LocalKvsProcess("--fragment-seconds", "1") as kvs, connect(endpoint_url=kvs.url) as tg:
        runner, url = await serve_page()
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM),
                    headless=True,
                    args=[
                        *CHROMIUM_ARGS,
                        "--use-fake-device-for-media-stream",
                        "--use-fake-ui-for-media-stream",
                        f"--use-file-for-fake-video-capture={camera}",
                        "--autoplay-policy=no-user-gesture-required",
                    ],
                )
                try:
                    master = await run_master(tg, browser, url, seconds)
                    viewer = await run_viewer(tg, browser, url, seconds)
                finally:
                    await browser.close()
        finally:
            await runner.cleanup()
            await stop_bridge()
            camera.unlink(missing_ok=True)
            os.rmdir(work)
    return {"master": master, "viewer": viewer}


LAB_NOTEBOOK = "bench_browser_viewer_{transport}.ipynb"
LAB_SETUP = """
import kvsnb
from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.sources import TestPatternTrack, ToneTrack
from kvsnb.widgets import BrowserSession
target = kvsnb.connect(extra={"storage": StorageOptions(fragment_duration_s=1.0)})
POLICY = JoinPolicy.local(connect_timeout_s=20)
target.create_storage_channel("bench-lab-viewer")
pattern = TestPatternTrack(%(width)d, %(height)d, 30)
master = MasterSession(target, "bench-lab-viewer", video=pattern, audio=ToneTrack(), policy=POLICY)
await master.start(timeout=30)
"""
LAB_VIEWER = """
view = BrowserSession(target, "bench-lab-viewer", role="VIEWER", policy=POLICY,
                      transport="%(transport)s")
display(view)
view.start()
await view.wait_connected(90)
print("connected", view.state, view.transport_used)
"""
DIRECT_BRIDGE = re.compile(r"^wss?://[^/]+/kvsnb-bridge/")  # the kernel path: proxy only


def stamp_ms(shot: bytes) -> int | None:
    """The capture time (epoch ms) in a screenshot, if its stamp decodes."""
    stamp = try_read_stamp(np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")))
    return None if stamp is None else stamp.capture_ms


def lab_viewer(transport: str, seconds: float, interval: float = 0.3) -> list[float]:
    """Capture → on screen (ms, from screenshots, as ``bench_player``) in a ``BrowserSession``
    viewer in JupyterLab watching a kvsnb master in its kernel, by ``transport``: "direct"
    (the page's RTCPeerConnection through TURN, a ``<video>``) or "kernel" (JPEG pictures
    over the bridge, through the Jupyter server's proxy as on Binder, a ``<canvas>``)."""
    from playwright.sync_api import sync_playwright

    name = LAB_NOTEBOOK.format(transport=transport)
    with tempfile.TemporaryDirectory(prefix="kvsnb-bench-browser-") as tmp:
        base = Path(tmp)
        root = base / "root"
        root.mkdir()
        cells = [
            LAB_SETUP % {"width": SIZE[0], "height": SIZE[1]},
            LAB_VIEWER % {"transport": transport},
        ]
        player_notebook(root / name, cells)
        lab = start_lab(root, base / "jupyter", base / "server.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM),
                    headless=True,
                    args=[
                        *CHROMIUM_ARGS,
                        "--use-fake-device-for-media-stream",
                        "--use-fake-ui-for-media-stream",
                        "--allow-loopback-in-peer-connection",
                        "--disable-features=WebRtcHideLocalIpsWithMdns",
                        "--autoplay-policy=no-user-gesture-required",
                    ],
                )
                page = browser.new_page(viewport=VIEWPORT)
                if transport == "kernel":
                    page.route_web_socket(DIRECT_BRIDGE, lambda ws: ws.close(code=1008))
                page.goto(f"{lab.url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
                nb = NotebookPage(name, page, lab)
                nb.wait_until_ready()
                nb.assert_no_errors(nb.run_all())
                shown = page.locator(
                    ".kvsnb-browser-session " + ("canvas" if transport == "kernel" else "video")
                ).first
                latencies: list[float] = []
                deadline = time.monotonic() + 60
                end = time.monotonic() + seconds
                while time.monotonic() < end or not latencies:
                    if time.monotonic() > deadline and not latencies:
                        raise RuntimeError(f"no stamp on screen ({transport})")
                    before = time.time()
                    shot = shown.screenshot(timeout=10_000)
                    after = time.time()
                    captured = stamp_ms(shot)
                    if captured is not None:
                        latencies.append((before + after) / 2 * 1000 - captured)
                    time.sleep(interval)  # between screenshots
                browser.close()
        finally:
            lab.stop()
    return latencies


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument(
        "--no-lab", action="store_true", help="skip the viewers in JupyterLab (direct, kernel)"
    )
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"no Chromium at {CHROMIUM}: nothing measured")
        return 0
    result = asyncio.run(run(args.seconds))
    master, viewer = result["master"], result["viewer"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    print(f"kernel path, {SIZE[0]}x{SIZE[1]} camera, {args.seconds:.0f} s each, 1 s fragments")
    print(f"  master sends {master['info'].get('video')} + {master['info'].get('audio')}")
    print(
        f"  capture -> stored and listed: p50 {ms(master['capture_listed_p50_ms'])}, "
        f"p95 {ms(master['capture_listed_p95_ms'])} over {master['frames']} frames, "
        f"{master['fragments']} fragments"
    )
    print(
        f"  last frame of a fragment -> listed: p50 {ms(master['last_frame_listed_p50_ms'])}, "
        f"p95 {ms(master['last_frame_listed_p95_ms'])}"
    )
    print(f"  kernel CPU per master stream: {master['cpu_s_per_media_s']:.3f} CPU-s/s")
    print(
        f"  viewer: capture -> drawn on the page: p50 {ms(viewer['capture_on_screen_p50_ms'])}, "
        f"p95 {ms(viewer['capture_on_screen_p95_ms'])}, {viewer['drawn_per_s']:.1f} pictures/s"
    )
    print(
        "  kernel CPU, the kvsnb master watched (pattern + x264) alone: "
        f"{viewer['cpu_s_per_media_s_master_alone']:.3f} CPU-s/s; with the viewer's kernel path: "
        f"{viewer['cpu_s_per_media_s_with_viewer']:.3f} CPU-s/s"
    )
    lab: dict[str, list[float]] = {}
    if not args.no_lab:
        for transport in ("direct", "kernel"):
            lab[transport] = lab_viewer(transport, args.seconds)
            found = lab[transport]
            print(
                f"  JupyterLab BrowserSession viewer, {transport}: capture -> on screen "
                f"(screenshots) p50 {ms(pct(found, 50))}, p95 {ms(pct(found, 95))} "
                f"over {len(found)} screenshots"
            )
    result["lab_viewer"] = {t: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95)} for t, v in lab.items()}
    print(json.dumps(result, default=str))
    report(
        browser_kernel_capture_listed_p50_ms=master["capture_listed_p50_ms"],
        browser_kernel_capture_listed_p95_ms=master["capture_listed_p95_ms"],
        browser_kernel_last_frame_listed_p95_ms=master["last_frame_listed_p95_ms"],
        browser_kernel_master_cpu_s_per_s=master["cpu_s_per_media_s"],
        browser_kernel_viewer_on_screen_p50_ms=viewer["capture_on_screen_p50_ms"],
        browser_kernel_viewer_on_screen_p95_ms=viewer["capture_on_screen_p95_ms"],
        browser_kernel_viewer_cpu_s_per_s=viewer["cpu_s_per_media_s_with_viewer"]
        - viewer["cpu_s_per_media_s_master_alone"],
        **{f"browser_lab_viewer_{t}_p50_ms": pct(v, 50) for t, v in lab.items()},
        **{f"browser_lab_viewer_{t}_p95_ms": pct(v, 95) for t, v in lab.items()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
