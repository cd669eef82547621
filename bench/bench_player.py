"""Capture → on screen in the ``Player`` widget, LIVE, 1 s fragments.

A JupyterLab (``bench/lab.py``, the browser tests' harness too: headless Debian Chromium
driven by Playwright) opens a notebook whose embedded Local KVS (reached through
jupyter-server-proxy, as on Binder) records a master ingesting the stamped test pattern with
1 s fragments, and shows a LIVE ``Player`` (HLS by default, ``--protocol DASH`` for
dash.js). Once it plays, the video element is screenshotted every ``--interval`` seconds for
``--seconds``; each screenshot's stamp gives the capture time of the frame on screen, and
capture → on screen is the wall clock at the screenshot (midpoint of the call) minus that
capture time. Prints p50/p95/max and the figures line, for HLS and then DASH by default.
Needs Chromium (``make test`` and ``make bench`` install it) and the vendored players.
``--live-delay S`` tries the Player with ``live_delay_s=S`` (its figures are printed, not
kept in the history).

    python -m bench.bench_player [--seconds 60] [--protocol HLS|DASH|both] [--live-delay S]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import report
from bench.lab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    NotebookPage,
    player_notebook,
    start_lab,
)
from kvsnb.sources.stamp import try_read_stamp

NOTEBOOK = "bench_player.ipynb"
PLAY_TIMEOUT_S = 90.0
SETUP = """
import asyncio, threading
import kvsnb
from kvsnb.client.ingest import ingest
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.widgets import Player
target = kvsnb.connect(extra={{"storage": StorageOptions(fragment_duration_s=1.0)}})
_, arn = target.create_storage_channel("bench")
feed = lambda: asyncio.run(ingest(target, "bench", seconds={ingest_s}))  # noqa: E731
threading.Thread(target=feed, daemon=True).start()
target.local.call(target.local.store.wait_for_fragment(arn, timeout=30), timeout=40)
print("public", target.public_url)
"""
PLAYER = (
    'player = Player.from_stream(target, arn, protocol="{protocol}", mode="LIVE", '
    "live_delay_s={delay})\nplayer"
)


def stamp_ms(shot: bytes) -> int | None:
    """The capture time (epoch ms) in a screenshot of the video, if its stamp decodes."""
    stamp = try_read_stamp(np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")))
    return None if stamp is None else stamp.capture_ms


def measure(page: Any, seconds: float, interval: float) -> tuple[list[float], int]:
    """Latencies (ms) from screenshots of the first Player video, and the misses."""
    video = page.locator(".kvsnb-player video").first
    deadline = time.monotonic() + PLAY_TIMEOUT_S
    while video.evaluate("(v) => v.currentTime") < 1.0:
        if time.monotonic() > deadline:
            raise RuntimeError("the Player did not start playing")
        time.sleep(0.25)
    latencies: list[float] = []
    misses = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        before = time.time()
        shot = video.screenshot(timeout=10_000)
        after = time.time()
        captured = stamp_ms(shot)
        if captured is None:
            misses += 1
        else:
            latencies.append((before + after) / 2 * 1000 - captured)
        time.sleep(interval)
    return latencies, misses


def run(
    protocol: str, seconds: float, interval: float, delay: float = 0.0
) -> tuple[list[float], int]:
    """One Player in JupyterLab, sampled for ``seconds``: (latencies in ms, screenshots
    without a readable stamp)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="kvsnb-bench-player-") as tmp:
        base = Path(tmp)
        root = base / "root"
        root.mkdir()
        ingest_s = int(seconds + PLAY_TIMEOUT_S + 60)
        player_notebook(
            root / NOTEBOOK,
            [SETUP.format(ingest_s=ingest_s), PLAYER.format(protocol=protocol, delay=delay)],
        )
        lab = start_lab(root, base / "jupyter", base / "server.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?reset", wait_until="domcontentloaded")
                nb = NotebookPage(NOTEBOOK, page, lab)
                nb.wait_until_ready()
                cells = nb.run_all()
                nb.assert_no_errors(cells)
                latencies, misses = measure(page, seconds, interval)
                browser.close()
        finally:
            lab.stop()
    return latencies, misses


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="sampling time")
    parser.add_argument("--interval", type=float, default=0.5, help="between screenshots (s)")
    parser.add_argument("--protocol", choices=("HLS", "DASH", "both"), default="both")
    parser.add_argument(
        "--live-delay", type=float, default=0.0,
        help="the Player's live_delay_s (0: its default); the figures are kept only at 0",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"skipped: no Chromium at {CHROMIUM}")
        return 0
    protocols = ("HLS", "DASH") if args.protocol == "both" else (args.protocol,)
    failed = 0
    for protocol in protocols:
        latencies, misses = run(protocol, args.seconds, args.interval, args.live_delay)
        if not latencies:
            print(f"{protocol}: no stamp decoded from {misses} screenshots")
            failed += 1
            continue
        p50, p95 = (float(np.percentile(latencies, q)) for q in (50, 95))
        print(
            f"capture -> on screen, Player LIVE {protocol}, 1 s fragments: "
            f"p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(latencies):.0f} ms "
            f"({len(latencies)} screenshots, {misses} without a readable stamp)"
        )
        if args.live_delay:
            print(f"  (live_delay_s={args.live_delay}: not the default, figures not kept)")
            continue
        key = protocol.lower()
        report(
            **{
                f"{key}_capture_to_screen_ms_p50": p50,
                f"{key}_capture_to_screen_ms_p95": p95,
            }
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
