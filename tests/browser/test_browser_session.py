"""``BrowserSession`` in a real JupyterLab in Debian's Chromium, direct path, against the
notebook's embedded Local KVS with TURN (the default: its storage peer is reachable only
through the TURN server on 127.0.0.2).

Chromium's fake camera plays kvsnb's stamped pattern (a ``.y4m`` by ``write_y4m``) and its fake
microphone a 1 kHz tone; ``--use-fake-ui-for-media-stream`` grants the camera, and
``--deny-permission-prompts`` (another Chromium) denies it for the camera-denied test.

- master: a cell displays the widget, ``start()``s it and awaits ``wait_connected()`` in the
  same cell (the bridge keeps working while it runs); the stamped frames the browser sent are
  stored (read back by HLS and GetImages, stamps decoded, none out of order), as H.264 + AAC,
  and the timeline has every setup step;
- viewer: the page shows a kvsnb master's live frames (stamps read from screenshots of the
  video) and the kvsnb master hears the page's microphone;
- errors: a channel not mapped for storage, and the camera denied, shown in the widget and
  raised in the kernel as ``SessionError``.

Screenshots go to ``test-artifacts/browser/`` (``browser-session-*``); the widget's with the
master connected is also ``docs/images/browser-session.png`` when ``KVSNB_UPDATE_DOCS_IMAGES=1``.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.lab import LabServer, NotebookPage, player_notebook
from kvsnb.sources import write_y4m
from kvsnb.sources.stamp import Stamp
from tests.browser.test_player import KERNEL_EVAL_JS, stamp_of
from tests.conftest import wait_until_sync
from tests.integration.test_viewers import tone_level

from .conftest import ARTIFACTS, REPO, chromium_context

pytestmark = pytest.mark.timeout(400)

TONE_HZ = 1000.0
RATE = 48_000
CAMERA_S = 120  # the fake camera's file; longer than any test's capture (Chromium loops it)
CAMERA_SIZE = (320, 240)
CAMERA_FPS = 15
STORED_FRAGMENTS = 6  # the master test sends until this many fragments are stored
SETUP_STEPS = (
    "describe_channel",
    "get_ice_config",
    "socket_open",
    "join_call",
    "offer_received",
    "answer_sent",
    "ice_connected",
    "dtls_connected",
    "first_frame_sent",
)
DOCS_IMAGE = REPO / "docs" / "images" / "browser-session.png"

SETUP_CELL = """
import asyncio, json
import kvsnb
from kvsnb.client.session import JoinPolicy, MasterSession, SessionError
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.sources import TestPatternTrack, ToneTrack
from kvsnb.widgets import BrowserSession
target = kvsnb.connect(extra={"storage": StorageOptions(fragment_duration_s=1.0)})
POLICY = JoinPolicy.local(connect_timeout_s=20)
_probe = target.endpoints(target.create_storage_channel("probe")[0], "MASTER")
print("ice", [u for s in target.ice_servers(_probe, None) for u in s["Uris"]])
"""

MASTER_CELLS = [
    SETUP_CELL,
    'channel_arn, stream_arn = target.create_storage_channel("browser-master")',
    # one cell: display, start, await the connection (the bridge works while it runs)
    """
cam = BrowserSession(target, "browser-master", policy=POLICY)
display(cam)
cam.start()
await cam.wait_connected(90)
print("connected", cam.state, "|", cam.transport_used)
""",
]

# Run in the kernel after the master cells: wait for fragments, stop, read back.
MASTER_CHECK = """
import io, av
from kvsnb.playback import HlsReader, get_images, get_media, hls_session_url, list_fragments
from kvsnb.sources import try_read_stamp
async def _check():
    deadline = asyncio.get_running_loop().time() + 60
    while len(list_fragments(target, stream_arn)) < %(fragments)d:
        assert asyncio.get_running_loop().time() < deadline, "fragments not stored"
        await asyncio.sleep(0.25)
    await cam.stop()
    frags = list_fragments(target, stream_arn).sort_values("producer_time")
    url = hls_session_url(target, stream_arn, mode="ON_DEMAND")
    hls = [f async for f in HlsReader(url).frames(follow=False)]
    hls_stamps = [try_read_stamp(f.to_ndarray()) for f in hls]
    start, end = frags["producer_time"].min(), frags["producer_time"].max()
    images = get_images(target, stream_arn, start, end, interval_ms=500, progress=False)
    image_stamps = [try_read_stamp(i) for i in images["image"] if i is not None]
    mkv = get_media(target, stream_arn, list(frags["fragment_number"]))
    with av.open(io.BytesIO(mkv)) as c:
        codecs = {s.type: s.codec_context.name for s in c.streams}
        size = [c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height]
    steps = list(cam.timeline.to_frame()["step"])
    stats = cam.stats_df()
    return {
        "fragments": len(frags),
        "hls": [s.index if s else None for s in hls_stamps],
        "images": [s.index if s else None for s in image_stamps],
        "codecs": codecs, "size": size, "steps": steps,
        "stats_rows": len(stats),
        "frames_sent": int(stats["frames_sent"].max()) if len(stats) else 0,
        "pair": str(stats["local_candidate"].dropna().iloc[-1]) if len(stats) else "",
        "state": cam.state, "error": cam.error,
    }
print(json.dumps(await _check()))
"""

VIEWER_CELLS = [
    SETUP_CELL,
    """
target.create_storage_channel("browser-viewer")
master = MasterSession(target, "browser-viewer", video=TestPatternTrack(320, 240, 30),
                       audio=ToneTrack(440.0), policy=POLICY)
await master.start(timeout=30)
""",
    """
view = BrowserSession(target, "browser-viewer", role="VIEWER", policy=POLICY)
display(view)
view.start()
await view.wait_connected(90)
print("connected", view.state, view.client_id)
""",
]

ERROR_CELLS = [
    SETUP_CELL,
    """
target.kinesisvideo.create_signaling_channel(ChannelName="browser-unmapped")
unmapped = BrowserSession(target, "browser-unmapped", policy=POLICY)
display(unmapped)
unmapped.start()
try:
    await unmapped.wait_connected(90)
except SessionError as exc:
    print("UNMAPPED", exc.code, "|", exc)
""",
    """
target.create_storage_channel("browser-denied")
denied = BrowserSession(target, "browser-denied", policy=POLICY)
display(denied)
denied.start()
try:
    await denied.wait_connected(90)
except SessionError as exc:
    print("DENIED", exc.code, "|", exc)
""",
]


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The stamped camera (.y4m) and a 1 kHz tone (.wav) for Chromium's fake devices."""
    base = tmp_path_factory.mktemp("fake-media")
    camera = write_y4m(base / "camera.y4m", CAMERA_S, *CAMERA_SIZE, CAMERA_FPS)
    tone = base / "tone.wav"
    t = np.arange(RATE * 4) / RATE
    samples = (np.sin(2 * np.pi * TONE_HZ * t) * 12_000).astype("<i2")
    with wave.open(str(tone), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())
    return camera, tone


@pytest.fixture
def media_context(
    chromium: Path, fake_media: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Chromium with the fake camera and microphone, granted without a prompt (one per test:
    Playwright's sync API runs one browser driver at a time, and the errors test needs
    another Chromium)."""
    camera, tone = fake_media
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
        f"--use-file-for-fake-audio-capture={tone}",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
    ]
    profile = tmp_path_factory.mktemp("chromium-camera-profile")
    with chromium_context(chromium, profile, args) as context:
        yield context


def open_page(lab: LabServer, context: Any, name: str, cells: list[str]) -> NotebookPage:
    """Write a notebook of ``cells``, open it and run every cell."""
    player_notebook(lab.root / name, cells)
    page = context.new_page()
    nb = NotebookPage(name, page, lab)
    page.on("console", lambda m: nb.console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: nb.console.append(f"[pageerror] {e}"))
    page.goto(f"{lab.url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    nb.wait_until_ready()
    return nb


def close_page(nb: NotebookPage) -> None:
    nb.save_logs()
    nb.page.close(run_before_unload=False)
    nb.lab.shutdown_session(nb.name)


def printed(cells: list[dict[str, Any]], prefix: str) -> str:
    """The first printed line of the cells' outputs that starts with ``prefix``."""
    for cell in cells:
        for out in cell["outputs"]:
            for line in (out["text"] or "").splitlines():
                if line.startswith(prefix):
                    return line
    raise AssertionError(f"no output line starts with {prefix!r}: {cells}")


def kernel(nb: NotebookPage, code: str) -> str:
    """Run ``code`` in the notebook's kernel; what it printed."""
    return str(nb.page.evaluate(KERNEL_EVAL_JS, [nb.name, code]))


def in_order(indexes: list[int | None]) -> list[int]:
    """The decoded stamp indexes, checked never to go backwards."""
    found = [i for i in indexes if i is not None]
    assert found == sorted(found), f"stamps out of order: {found}"
    return found


def test_master_from_the_browser_camera_is_stored(
    jupyter_lab: LabServer, media_context: Any, artifacts: Path
) -> None:
    nb = open_page(jupyter_lab, media_context, "browser_master.ipynb", MASTER_CELLS)
    try:
        cells = nb.run_all()
        nb.assert_no_errors(cells)
        assert "connected connected" in printed(cells, "connected"), cells
        assert "direct" in printed(cells, "connected")
        ice = printed(cells, "ice")
        assert "turn:" in ice, ice  # Local KVS with its TURN server (relays on 127.0.0.2)
        widget = nb.widget_output("Start")
        video = widget.locator("video")
        wait_until_sync(
            lambda: video.evaluate("(v) => v.videoWidth > 0 && !v.paused"),
            "the local preview plays",
            deadline_s=30,
        )
        wait_until_sync(
            lambda: "frames sent" in widget.inner_text() and "pair relay" in widget.inner_text(),
            "the widget shows the figures and a relay candidate pair",
            deadline_s=30,
        )
        preview = stamp_of(video.screenshot(timeout=10_000))
        assert preview is not None, "the preview shows the stamped camera"
        nb.screenshot("browser-session-master", widget)
        if os.environ.get("KVSNB_UPDATE_DOCS_IMAGES") == "1":
            DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ARTIFACTS / "browser_master-browser-session-master-widget.png", DOCS_IMAGE)
        result = json.loads(
            kernel(nb, MASTER_CHECK % {"fragments": STORED_FRAGMENTS}).splitlines()[-1]
        )
        print("\nbrowser master:", {k: v for k, v in result.items() if k not in ("hls", "images")})
        assert result["fragments"] >= STORED_FRAGMENTS
        assert result["codecs"] == {"video": "h264", "audio": "aac"}, result["codecs"]
        assert result["size"] == list(CAMERA_SIZE)
        hls = in_order(result["hls"])
        images = in_order(result["images"])
        assert len(hls) >= 0.9 * len(result["hls"]) and len(hls) >= STORED_FRAGMENTS * 5, hls
        assert len(images) >= STORED_FRAGMENTS, result["images"]
        assert set(images) <= set(range(CAMERA_S * CAMERA_FPS))
        steps = result["steps"]
        assert [s for s in steps if s in SETUP_STEPS] == list(SETUP_STEPS), steps
        assert "stopped" in steps and result["state"] == "closed" and not result["error"]
        assert result["frames_sent"] > 0 and result["pair"].startswith("relay 127.0.0.2")
        wait_until_sync(
            lambda: "state: closed" in widget.inner_text(), "the widget shows closed", 20
        )
        nb.assert_no_errors()
    finally:
        close_page(nb)


def test_viewer_shows_a_kvsnb_master_and_sends_its_microphone(
    jupyter_lab: LabServer, media_context: Any, artifacts: Path
) -> None:
    nb = open_page(jupyter_lab, media_context, "browser_viewer.ipynb", VIEWER_CELLS)
    try:
        cells = nb.run_all()
        nb.assert_no_errors(cells)
        assert printed(cells, "connected").startswith("connected connected viewer-"), cells
        widget = nb.widget_output("Start")
        video = widget.locator("video")
        wait_until_sync(
            lambda: video.evaluate("(v) => v.videoWidth === 320 && !v.paused"),
            "the page plays the master's video",
            deadline_s=30,
        )
        assert_live_and_heard(nb, widget, video, "browser-session-viewer", "")
        kernel(nb, "await view.stop(); await master.stop()")
        nb.assert_no_errors()
    finally:
        close_page(nb)


@pytest.fixture
def denied_context(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium with fake devices whose permission prompts are denied: the camera is."""
    args = ["--use-fake-device-for-media-stream", "--deny-permission-prompts"]
    profile = tmp_path_factory.mktemp("chromium-denied-profile")
    with chromium_context(chromium, profile, args) as context:
        yield context


def test_errors_show_in_the_widget_and_raise_in_the_kernel(
    jupyter_lab: LabServer, denied_context: Any, artifacts: Path
) -> None:
    nb = open_page(jupyter_lab, denied_context, "browser_errors.ipynb", ERROR_CELLS)
    try:
        cells = nb.run_all()
        nb.assert_no_errors(cells)
        unmapped = printed(cells, "UNMAPPED")
        assert "InvalidArgumentException" in unmapped and "media storage" in unmapped, unmapped
        denied = printed(cells, "DENIED")
        assert "NotAllowedError" in denied and "camera" in denied, denied
        widgets = nb.page.locator(".kvsnb-browser-session")
        wait_until_sync(lambda: widgets.count() == 2, "both widgets drawn", 30)
        first, second = widgets.nth(0), widgets.nth(1)
        wait_until_sync(
            lambda: "Error: Channel browser-unmapped has media storage" in first.inner_text(),
            "the unmapped channel's error shown",
            20,
        )
        wait_until_sync(
            lambda: "NotAllowedError" in second.inner_text(), "the camera denial shown", 20
        )
        assert "state: failed" in first.inner_text() and "state: failed" in second.inner_text()
        nb.screenshot("browser-session-errors")
    finally:
        close_page(nb)


def assert_live_and_heard(nb: Any, widget: Any, view: Any, shot: str, via: str) -> None:
    """A viewer page shows the kernel's master live (stamps of its last seconds in
    screenshots of ``view``, newer later) and that master (``master`` in the kernel) hears
    the page's microphone."""
    stamps: list[Stamp] = []

    def read_one() -> bool:
        stamp = stamp_of(view.screenshot(timeout=10_000))
        if stamp is not None:
            stamps.append(stamp)
        return len(stamps) >= 3

    wait_until_sync(read_one, f"stamps in screenshots of the viewer{via}", 60, 0.3)
    now_ms = time.time() * 1000
    for stamp in stamps:  # live: the master's frames of the last seconds
        assert now_ms - 20_000 <= stamp.capture_ms <= now_ms, (stamps, now_ms)
    assert stamps[-1].capture_ms > stamps[0].capture_ms
    nb.screenshot(shot, widget)
    level_code = (
        f"RATE, SILENCE_RMS = {RATE}, 200.0\nimport numpy as np\n"
        + inspect.getsource(tone_level)
        + f"\nprint(tone_level(master.received.audio(), {TONE_HZ}))"
    )
    wait_until_sync(
        lambda: float(kernel(nb, level_code).splitlines()[-1]) > 20,
        f"the kvsnb master hears the page's microphone{via} (1 kHz)",
        deadline_s=30,
        every_s=0.5,
    )
