"""Fixtures of the Player browser tests: a Local KVS with a master ingesting the stamped
pattern for as long as the tests need it (1 s fragments), a page server on another origin
for the plain cross-origin player page (plain hls.js and dash.js, and the Player's own dash.js
set-up), and the notebook that shows the Player widgets.

Kept out of ``conftest.py`` (shared with the notebook tests); ``test_player.py`` imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bench.lab import free_port
from bench.lab import player_notebook as player_notebook  # the tests import it from here
from kvsnb.client.ingest import ingest
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs
from kvsnb.widgets.player import ESM as PLAYER_JS
from kvsnb.widgets.vendor import LIBRARIES, library_path
from tests.conftest import FAST, start_kvs

LIVE_SECONDS = 600  # the ingest outlives the tests; it is stopped at teardown
FIRST_FRAGMENTS_S = 30.0

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>kvsnb cross-origin player</title>
<video id="video" muted autoplay playsinline style="width:640px;height:480px"></video>
<script type="module">
const query = new URLSearchParams(location.search);
const url = query.get("url");
const kind = query.get("kind");
const video = document.getElementById("video");
window.kvsnbErrors = [];
if (kind === "hls") {
  const { default: Hls } = await import("./hls.min.mjs");
  const hls = new Hls({ liveSyncDurationCount: 1, enableWorker: false });
  hls.on(Hls.Events.ERROR, (_e, d) => { if (d.fatal) window.kvsnbErrors.push(d.details); });
  hls.loadSource(url);
  hls.attachMedia(video);
} else if (kind === "dash") {
  const dashjs = await import("./dash.all.min.mjs");
  const player = dashjs.MediaPlayer().create();
  player.updateSettings({ streaming: { delay: { liveDelay: 2 } } });
  player.on("error", (e) => {
    window.kvsnbErrors.push(String(e.error && (e.error.message || e.error.code)));
  });
  player.initialize(video, url, true);
} else if (kind === "player-dash") {
  // the Player's own dash.js set-up (kvsnb/widgets/player.js), LIVE at its default delay
  const dashjs = await import("./dash.all.min.mjs");
  const { setupDash } = await import("./player.js");
  const fail = (message) => window.kvsnbErrors.push(String(message));
  window.kvsnbAttached = await setupDash(
    dashjs, video, { url, live: true, sync: 1, delay: 0, target: 1, fail });
}
window.kvsnbReady = true;
</script>
"""


@dataclass
class LiveStream:
    """A Local KVS (its own, on 127.0.0.1) with a master ingesting into ``name``."""

    kvs: LocalKvs
    target: Target
    name: str
    arn: str


@contextlib.contextmanager
def live_ingest(target: Target, name: str) -> Iterator[None]:
    """A master ingesting the stamped pattern into ``name`` on a thread of its own, until the
    block ends."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        task = asyncio.ensure_future(ingest(target, name, seconds=LIVE_SECONDS, policy=FAST))
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(scope="module")
def live_stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStream]:
    """A stream being ingested while the module's tests run."""
    kvs = start_kvs(tmp_path_factory.mktemp("player-kvs") / "data")
    target = connect(endpoint_url=kvs.url)
    try:
        _, arn = target.create_storage_channel("cross-origin")
        with live_ingest(target, "cross-origin"):
            kvs.call(kvs.store.wait_for_fragment(arn, timeout=FIRST_FRAGMENTS_S), timeout=40)
            yield LiveStream(kvs, target, "cross-origin", arn)
    finally:
        target.close()
        kvs.stop_in_thread()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTP server on another port of 127.0.0.1 (another origin than Local KVS) serving
    the player page, the vendored hls.js and dash.js and the Player's ``player.js``; its
    base URL."""
    root = tmp_path_factory.mktemp("player-page")
    (root / "player.html").write_text(PAGE)
    shutil.copy(PLAYER_JS, root / "player.js")
    for name, lib in LIBRARIES.items():
        shutil.copy(library_path(name), root / lib.filename)
    port = free_port()

    def handler(*args: Any, **kwargs: Any) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
