"""Players across a gap in the media, in a real browser (Debian's Chromium, headless): a
stream recorded in two parts with a pause longer than a fragment between them
(``tests/integration/gaps.py``), played from a plain page on another origin to the end.

- dash.js, ON_DEMAND and LIVE_REPLAY: the presentation lasts as long as the media (AWS
  closes gaps in DASH's timeline), it plays to ``ended`` and never stands still for longer
  than a fragment on the way.
- HLS, ON_DEMAND, the session kvsnb's Player asks for (SERVER_TIMESTAMP, so a discontinuity
  before every segment): hls.js with fMP4 and MPEG-TS, and Chromium's own HLS player (this
  Chromium plays HLS natively; the test says so and skips when one does not) with MPEG-TS and
  fMP4, all reach ``ended``. hls.js used to stop a few tens of ms short of the end of the
  fMP4 one, its audio buffer holding a hole at the gap. Chromium's own player appends
  MPEG-TS segments in MSE's "sequence" mode, each after the end of the one before: when a
  fragment's audio started before its keyframe (the recorder's last AAC packets before a cut
  went into the next fragment), each join left a hole of up to two audio frames, and on a
  loaded machine the audio ran dry at one and the player stood still for good (its media
  log: the buffered ranges split at every join, DEMUXER_UNDERFLOW). Fragments now hold
  their own audio.

Each player's events, a ``currentTime`` sample every 50 ms, its buffered ranges and
Chromium's media log (the ``Media`` domain of the DevTools protocol, what
chrome://media-internals shows) go to ``test-artifacts/browser/gaps-<case>.json``.
"""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import json
import shutil
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.playback import dash_session_url, hls_session_url
from kvsnb.widgets.vendor import LIBRARIES, library_path
from tests.conftest import FRAGMENT_S
from tests.integration.gaps import gaps_ms, media_ms, record_gap, stored_video_times
from tests.integration.test_hls import Recorded

from .conftest import ARTIFACTS

pytestmark = pytest.mark.timeout(600)

STREAM = "gap"
PLAY_S = 90.0  # the session plays to its end within this (a loaded machine included)
SAMPLE_MS = 50
STALL_MS = FRAGMENT_S * 1000  # the longest a player may stand still on the way
END_S = 0.15  # standing still this close to the end is waiting for the end, not a stall
DURATION_S = 0.1  # the reported duration vs the media's: an audio frame or two past the video
HLS_MIME = "application/vnd.apple.mpegurl"

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>kvsnb gap player</title>
<video id="video" muted playsinline style="width:640px;height:480px"></video>
<script type="module">
const query = new URLSearchParams(location.search);
const url = query.get("url");
const kind = query.get("kind");
const video = document.getElementById("video");
const t0 = performance.now();
window.gapEvents = [];
window.gapSamples = [];
const note = (what, detail) => window.gapEvents.push({
  at: Math.round(performance.now() - t0), what, detail: detail ?? null, time: video.currentTime,
});
setInterval(() => window.gapSamples.push(
  [performance.now() - t0, video.currentTime, video.ended]), SAMPLE_MS);
for (const name of ["playing", "waiting", "seeking", "seeked", "ended", "durationchange"]) {
  video.addEventListener(name, () => note(name, name === "durationchange" ? video.duration : null));
}
video.addEventListener("error", () => note("error", String(video.error && video.error.message)));
if (kind === "hls.js") {
  const { default: Hls } = await import("./hls.min.mjs");
  const hls = new Hls({ enableWorker: false });
  hls.on(Hls.Events.ERROR, (_e, d) => note("hls-error", d.details + (d.fatal ? " (fatal)" : "")));
  hls.on(Hls.Events.BUFFER_EOS, (_e, d) => note("hls-eos", d.type || null));
  hls.loadSource(url);
  hls.attachMedia(video);
  video.play().catch((e) => note("play-rejected", String(e)));
} else if (kind === "dash.js") {
  const dashjs = await import("./dash.all.min.mjs");
  const player = dashjs.MediaPlayer().create();
  player.on("error", (e) => note("dash-error",
    String(e.error && (e.error.message || e.error.code))));
  player.initialize(video, url, true);
} else {
  video.src = url;
  video.play().catch((e) => note("play-rejected", String(e)));
}
window.gapReady = true;
</script>
""".replace("SAMPLE_MS", str(SAMPLE_MS))

STATE_JS = """() => {
  const v = document.getElementById("video");
  return {events: window.gapEvents, samples: window.gapSamples, duration: v.duration,
          ended: v.ended, time: v.currentTime,
          error: v.error ? String(v.error.message || v.error.code) : null};
}"""


BUFFERED_JS = """() => {
  const b = document.getElementById("video").buffered;
  return Array.from({length: b.length}, (_, i) => [b.start(i), b.end(i)]);
}"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the stdlib names it so
        pass


@pytest.fixture(scope="module")
def gapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorded, Target]]:
    """The stream with a pause (its own Local KVS) and a kvsnb target on it."""
    rec = record_gap(tmp_path_factory.mktemp("gap-kvs") / "data", STREAM)
    assert len(gaps_ms(rec.fragments)) == 1 and gaps_ms(rec.fragments)[0] > STALL_MS
    target = connect(endpoint_url=rec.kvs.url)
    try:
        yield rec, target
    finally:
        target.close()
        rec.kvs.stop_in_thread()


@pytest.fixture(scope="module")
def gap_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The player page and the vendored hls.js and dash.js, served from another origin than
    Local KVS; the page's URL."""
    root = tmp_path_factory.mktemp("gap-page")
    (root / "gap.html").write_text(PAGE)
    for name, lib in LIBRARIES.items():
        shutil.copy(library_path(name), root / lib.filename)

    def handler(*args: Any, **kwargs: Any) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/gap.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(browser_context: Any, artifacts: Path) -> Iterator[Any]:
    """A new page of the browser for each player."""
    page = browser_context.new_page()
    try:
        yield page
    finally:
        page.close()


def session_range(rec: Recorded) -> tuple[dt.datetime, dt.datetime]:
    """A server-time range holding every fragment of ``rec``."""
    first = min(f.server_start_ms for f in rec.fragments) / 1000 - 1
    last = max(f.server_start_ms for f in rec.fragments) / 1000 + 1
    return dt.datetime.fromtimestamp(first, dt.UTC), dt.datetime.fromtimestamp(last, dt.UTC)


def longest_stall_ms(samples: list[list[Any]], end_s: float) -> float:
    """The longest wall time ``currentTime`` stood still once playing and before the last
    ``END_S`` of the media (or ``ended``)."""
    longest = 0.0
    last: float | None = None
    since = 0.0
    for at, current, ended in samples:
        if ended or current >= end_s - END_S:
            break
        if last is None or current != last:
            last, since = current, at
        elif current > 0:
            longest = max(longest, at - since)
    return longest


def play_to_end(page: Any, page_url: str, kind: str, url: str, label: str) -> dict[str, Any]:
    """Open the page on ``url`` with player ``kind`` and wait for ``ended`` (or PLAY_S);
    the player's state, saved in the artifacts."""
    query = urllib.parse.urlencode({"kind": kind, "url": url})
    started = time.monotonic()
    requests: list[str] = []

    def seen(request: Any, what: str) -> None:
        name = request.url.rsplit("/", 1)[-1].split("&SessionToken")[0].split("?SessionToken")[0]
        requests.append(f"{time.monotonic() - started:.2f} {what} {name}")

    media_log: list[str] = []  # Chromium's media log of the player (chrome://media-internals)
    cdp = page.context.new_cdp_session(page)

    def logged(kind: str, items: list[dict[str, Any]]) -> None:
        for item in items:
            rest = {k: v for k, v in item.items() if k != "timestamp"}
            media_log.append(f"{time.monotonic() - started:.2f} {kind} {json.dumps(rest)}")

    cdp.on("Media.playerMessagesLogged", lambda e: logged("message", e["messages"]))
    cdp.on("Media.playerEventsAdded", lambda e: logged("event", e["events"]))
    cdp.on("Media.playerPropertiesChanged", lambda e: logged("property", e["properties"]))
    cdp.on("Media.playerErrorsRaised", lambda e: logged("error", e["errors"]))
    cdp.send("Media.enable")
    page.on("request", lambda r: seen(r, "asked"))
    page.on("requestfinished", lambda r: seen(r, "got"))
    page.on("requestfailed", lambda r: seen(r, "failed"))
    page.goto(f"{page_url}?{query}", wait_until="load")
    page.wait_for_function("() => window.gapReady === true", timeout=20_000)
    deadline = time.monotonic() + PLAY_S
    state: dict[str, Any] = page.evaluate(STATE_JS)
    while not state["ended"] and state["error"] is None and time.monotonic() < deadline:
        time.sleep(0.25)  # polls the page's state while it plays
        state = page.evaluate(STATE_JS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    state["buffered"] = page.evaluate(BUFFERED_JS)
    cdp.detach()
    (ARTIFACTS / f"gaps-{label}.json").write_text(
        json.dumps({**state, "requests": requests, "media_log": media_log})
    )
    return state


def summary(state: dict[str, Any]) -> str:
    keep = ("ended", "time", "duration", "error")
    return json.dumps({k: state[k] for k in keep} | {"events": state["events"][-12:]})


@pytest.mark.parametrize("mode", ["ON_DEMAND", "LIVE_REPLAY"])
def test_dash_js_plays_across_the_gap(
    gapped: tuple[Recorded, Target], gap_page: str, page: Any, mode: str
) -> None:
    rec, target = gapped
    media_s = media_ms(rec.fragments) / 1000
    start, end = session_range(rec)
    # LIVE_REPLAY: the first three fragments listed at once, the rest (after the gap) added
    # as they elapse, so the player crosses the gap while the session is live
    max_results = 3 if mode == "LIVE_REPLAY" else None
    url = dash_session_url(
        target, rec.arn, mode=mode, start=start, end=end, max_results=max_results
    )
    state = play_to_end(page, gap_page, "dash.js", url, f"dash-{mode}".lower())
    assert state["error"] is None, summary(state)
    assert state["ended"], f"dash.js {mode} did not reach the end: {summary(state)}"
    assert state["duration"] == pytest.approx(media_s, abs=DURATION_S), summary(state)
    stall = longest_stall_ms(state["samples"], media_s)
    assert stall <= STALL_MS, f"dash.js {mode} stood still {stall:.0f} ms: {summary(state)}"


@pytest.mark.parametrize(
    ("kind", "container"),
    [
        ("hls.js", "FRAGMENTED_MP4"),
        ("hls.js", "MPEG_TS"),
        ("native", "MPEG_TS"),
        ("native", "FRAGMENTED_MP4"),
    ],
)
def test_hls_plays_across_the_gap_to_the_end(
    gapped: tuple[Recorded, Target], gap_page: str, page: Any, kind: str, container: str
) -> None:
    rec, target = gapped
    if kind == "native":
        page.goto(gap_page.replace("gap.html", "hls.min.mjs"))  # any page of the origin
        if not page.evaluate(f"() => document.createElement('video').canPlayType('{HLS_MIME}')"):
            pytest.skip("this Chromium does not play HLS itself (hls.js covers MPEG-TS)")
    media_s = media_ms(rec.fragments) / 1000
    start, end = session_range(rec)
    url = hls_session_url(target, rec.arn, mode="ON_DEMAND", container=container,
                          start=start, end=end)  # fmt: skip
    label = f"hls-{kind}-{container}".lower().replace(".", "")
    state = play_to_end(page, gap_page, kind, url, label)
    assert state["error"] is None, summary(state)
    assert state["ended"], f"{kind} {container} did not reach the end: {summary(state)}"
    # at a discontinuity a player may join a segment to the previous one's end, taking out
    # a hole between frames there: allowed, up to the longest such hole in the media (once,
    # on a loaded machine, Chromium's MPEG-TS player ended 0.28 s short; not explained yet)
    frames = stored_video_times(rec)
    hole_s = max(b - a for a, b in itertools.pairwise(frames))
    assert state["time"] >= media_s - max(DURATION_S, hole_s), summary(state)
