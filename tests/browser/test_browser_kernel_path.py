"""The page's half of the kernel path (``kvsnb/widgets/browser_media.js``) in Debian's
Chromium: a page with a fake camera playing kvsnb's stamped pattern (a ``.y4m``) and the fake
microphone encodes with ``kvsnbKernelMaster`` (WebCodecs H.264 and Opus) and sends the chunks
over a WebSocket to a small aiohttp server of the test; the access units are H.264
Constrained Baseline that PyAV decodes (stamps read back), the Opus packets decode, and a
``MasterSession`` fed with them (``EncodedVideoTrack``, ``EncodedAudioTrack``) has Local KVS
store them byte for byte. The viewer's half: JPEG pictures of stamped frames sent to
``kvsnbKernelViewer`` are drawn on its canvas (stamps read from a screenshot). A page whose
browser lacks the encoders sends JPEG and PCM instead, which aiortc encodes and Local KVS
stores. In JupyterLab, as on Binder (the bridge reached only through the Jupyter server's
proxy): ``BrowserSession(transport="kernel")`` as master is stored, and as viewer shows a kvsnb
master live and is heard."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import WSMsgType, web

from bench.lab import CHROMIUM, CHROMIUM_ARGS, LabServer, NotebookPage, player_notebook
from kvsnb.client.session import MasterSession
from kvsnb.client.target import Target
from kvsnb.local import LocalKvs
from kvsnb.playback import get_media, list_fragments
from kvsnb.sources import TestPatternTrack, read_stamp, read_stamp_frame
from kvsnb.sources.encoded import (
    KIND_H264,
    KIND_INFO,
    KIND_JPEG,
    KIND_KEYFRAME_REQUEST,
    KIND_OPUS,
    KIND_PCM,
    EncodedAudioTrack,
    EncodedChunk,
    EncodedVideoTrack,
    JpegEncoder,
    JpegVideoTrack,
    PcmAudioTrack,
    forward_keyframe_requests,
    pack_chunk,
    parse_chunk,
)
from kvsnb.wire import h264
from tests.browser.test_browser_session import (  # the JupyterLab + fake media harness
    CAMERA_SIZE,
    assert_live_and_heard,
    close_page,
    fake_media,  # noqa: F401 (a fixture, for media_context)
    in_order,
    kernel,
    media_context,  # noqa: F401 (a fixture)
    printed,
)
from tests.conftest import (
    FAST,
    stored_frame_count,
    stored_stamps,
    wait_for,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
MEDIA_JS = REPO / "kvsnb" / "widgets" / "browser_media.js"
WIDTH, HEIGHT, FPS = 320, 240, 15
CAMERA_S = 30  # the fake camera's file; the test reads well under one loop of it

PAGE = """<!doctype html><html><body><canvas id="view"></canvas><script>
%(media_js)s
const params = new URLSearchParams(location.search);
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.binaryType = "arraybuffer";
const handlers = [];
ws.onmessage = (ev) => { for (const h of handlers) h(new Uint8Array(ev.data)); };
const send = (data) => { if (ws.readyState === 1) ws.send(data); };
const log = (text) => console.log(text);
window.kvsnbRun = async (role, noEncoders) => {
  if (noEncoders) {  // as a browser without WebCodecs' H.264 and Opus encoders
    VideoEncoder.isConfigSupported = async () => ({ supported: false });
    AudioEncoder.isConfigSupported = async () => ({ supported: false });
  }
  await new Promise((resolve) => { if (ws.readyState === 1) resolve(); else ws.onopen = resolve; });
  if (role === "MASTER") {
    const stream = await navigator.mediaDevices.getUserMedia(
      { video: { width: %(width)d, height: %(height)d }, audio: true });
    window.kvsnbPath = await kvsnbKernelMaster(stream, send, log, (fn) => handlers.push(fn));
  } else {
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    window.kvsnbPath = await kvsnbKernelViewer(
      document.getElementById("view"), (fn) => handlers.push(fn), mic, send, log);
  }
  return window.kvsnbPath.info;
};
</script></body></html>"""


def write_stamped_y4m(path: Path, seconds: int) -> Path:
    """The stamped test pattern as a Y4M file (frame i stamped with index i)."""
    pattern = TestPatternTrack(WIDTH, HEIGHT)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for index in range(seconds * FPS):
            frame = pattern.render(index, 1_700_000_000_000 + index)
            out.write(b"FRAME\n" + frame.to_ndarray().tobytes())
    return path


class PageServer:
    """The test's page and its WebSocket (aiohttp on 127.0.0.1): chunks from the page go to
    ``on_chunk``; ``send`` sends the page a binary message."""

    def __init__(self) -> None:
        self.chunks: list[EncodedChunk] = []
        self.on_chunk: Callable[[EncodedChunk], None] = lambda chunk: None
        self.ws: web.WebSocketResponse | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        """Serve on an ephemeral port."""
        app = web.Application()
        page = PAGE % {"media_js": MEDIA_JS.read_text(), "width": WIDTH, "height": HEIGHT}

        async def index(_request: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")

        app.router.add_get("/", index)
        app.router.add_get("/ws", self._socket)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        self.ws = ws
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                chunk = parse_chunk(msg.data)
                self.chunks.append(chunk)
                self.on_chunk(chunk)
        return ws

    async def send(self, data: bytes) -> None:
        """Send the page one binary message."""
        assert self.ws is not None
        await self.ws.send_bytes(data)

    def of_kind(self, kind: int) -> list[EncodedChunk]:
        """The chunks received of ``kind``."""
        return [c for c in self.chunks if c.kind == kind]

    async def stop(self) -> None:
        """Close the socket and the server."""
        if self.ws is not None:
            await self.ws.close()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def page_server() -> AsyncIterator[PageServer]:
    """The test's page server, started."""
    server = PageServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def camera(tmp_path: Path) -> Path:
    """A Y4M of the stamped pattern for Chromium's fake camera."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return write_stamped_y4m(tmp_path / "camera.y4m", CAMERA_S)


@pytest.fixture
async def browser_page(camera: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """A Chromium page (Playwright, async) with the fake camera and microphone."""
    from playwright.async_api import async_playwright

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
        page = await browser.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
        try:
            yield page
        finally:
            (tmp_path / "console.log").write_text("\n".join(console))
            await browser.close()


def decode_h264(units: list[bytes]) -> list[int]:
    """The stamp indexes of the frames PyAV decodes from ``units``."""
    decoder = av.CodecContext.create("h264", "r")
    indexes = []
    for unit in units:
        for frame in decoder.decode(av.Packet(unit)):
            assert isinstance(frame, av.VideoFrame)
            indexes.append(read_stamp_frame(frame).index)
    return indexes


def slices(unit: bytes) -> list[bytes]:
    """The slice NAL units of an access unit, Annex B or length-prefixed."""
    if unit.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        nals = h264.split_annexb(unit)
    else:
        nals = h264.split_length_prefixed(unit)
    return [n for n in nals if h264.nal_type(n) in (h264.NAL_SLICE, h264.NAL_IDR)]


def stored_video(target: Target, stream_arn: str) -> tuple[list[bytes], set[str]]:
    """The stored video samples in order, and the stored codecs."""
    fragments = list_fragments(target, stream_arn)
    media = get_media(target, stream_arn, list(fragments["fragment_number"]))
    with av.open(io.BytesIO(media), mode="r") as container:
        codecs = {s.codec_context.name for s in container.streams}
        packets = [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]
    return packets, codecs


async def test_page_encodes_h264_and_opus_that_a_master_session_stores(
    page_server: PageServer, browser_page: Any, target: Target, kvs: LocalKvs
) -> None:
    _, stream_arn = target.create_storage_channel("page-kernel")
    video, audio = EncodedVideoTrack(), EncodedAudioTrack()
    session = MasterSession(target, "page-kernel", video=video, audio=audio, policy=FAST)
    await session.start(timeout=60)
    assert session.pc is not None
    for transceiver in session.pc.getTransceivers():
        if transceiver.kind == "video":
            forward_keyframe_requests(transceiver.sender, video)
    asked: list[asyncio.Task[None]] = []

    def ask_page() -> None:
        message = pack_chunk(KIND_KEYFRAME_REQUEST, b"", 0)
        asked.append(asyncio.get_running_loop().create_task(page_server.send(message)))

    video.on_keyframe_request(ask_page)

    def on_chunk(chunk: EncodedChunk) -> None:
        if chunk.kind == KIND_H264:
            video.feed_chunk(chunk)
        elif chunk.kind == KIND_OPUS:
            audio.feed_chunk(chunk)

    page_server.on_chunk = on_chunk
    try:
        await browser_page.goto(page_server.url)
        info = await browser_page.evaluate("kvsnbRun('MASTER')")
        assert info["video"] == "h264" and info["audio"] == "opus", info
        assert (info["codec"], info["width"], info["height"]) == ("avc1.42e01f", WIDTH, HEIGHT)
        await wait_until(lambda: len(video.sent) >= 60, "60 frames of the page sent", 60)
        await browser_page.evaluate("window.kvsnbPath.stop()")
        fed = video.stats()["fed"]
        await wait_until(
            lambda: video.stats()["queued"] == 0 and video.stats()["fed"] == fed,
            "the sender took every frame fed",
        )
    finally:
        await session.stop()
        video.stop()
        audio.stop()
        await asyncio.gather(*asked, return_exceptions=True)

    (info_chunk,) = page_server.of_kind(KIND_INFO)
    assert info_chunk.json()["video"] == "h264"
    units = [c.data for c in page_server.of_kind(KIND_H264)]
    first = h264.split_annexb(units[0])
    sps = h264.parse_sps(next(n for n in first if h264.nal_type(n) == h264.NAL_SPS))
    assert (sps.profile_idc, sps.constraint_flags & 0x40, sps.width, sps.height) == (
        66,
        0x40,
        WIDTH,
        HEIGHT,
    )  # Constrained Baseline at the camera's size
    assert page_server.of_kind(KIND_H264)[0].key and h264.is_keyframe(units[0])
    indexes = decode_h264(units)
    assert len(indexes) == len(units) and indexes == sorted(indexes)  # each AU one frame
    times = [c.timestamp_us for c in page_server.of_kind(KIND_H264)]
    assert times == sorted(times) and abs(times[0] / 1e6 - time.time()) < 120

    opus = [c.data for c in page_server.of_kind(KIND_OPUS)]
    decoder = av.CodecContext.create("opus", "r")
    samples = sum(f.samples for p in opus for f in decoder.decode(av.Packet(p)))
    assert len(opus) > 50 and samples == 960 * len(opus)  # 20 ms packets

    sent_units = [units[item.index] for item in video.sent]
    await wait_until(
        lambda: stored_frame_count(kvs, stream_arn) == len(sent_units), "every frame sent stored"
    )
    stored, codecs = await asyncio.to_thread(stored_video, target, stream_arn)
    assert [slices(p) for p in stored] == [slices(u) for u in sent_units]  # the page's own H.264
    assert codecs == {"h264", "aac"}
    _, (stamps, unreadable) = await asyncio.to_thread(stored_stamps, target, stream_arn)
    assert unreadable == 0 and list(stamps["frame_index"]) == decode_h264(sent_units)
    assert asked and len(list_fragments(target, stream_arn)) >= 2


async def test_page_without_encoders_sends_jpeg_and_pcm_that_are_stored(
    page_server: PageServer, browser_page: Any, target: Target, kvs: LocalKvs
) -> None:
    _, stream_arn = target.create_storage_channel("page-fallback")
    video, audio = JpegVideoTrack(), PcmAudioTrack()
    session = MasterSession(target, "page-fallback", video=video, audio=audio, policy=FAST)
    await session.start(timeout=60)

    def on_chunk(chunk: EncodedChunk) -> None:
        if chunk.kind == KIND_JPEG:
            video.feed_chunk(chunk)
        elif chunk.kind == KIND_PCM:
            audio.feed_chunk(chunk)

    page_server.on_chunk = on_chunk
    try:
        await browser_page.goto(page_server.url)
        info = await browser_page.evaluate("kvsnbRun('MASTER', true)")
        assert (info["video"], info["audio"], info["codec"]) == ("jpeg", "pcm", None), info
        await wait_until(lambda: len(video.sent) >= 30, "30 pictures of the page sent", 60)
        await browser_page.evaluate("window.kvsnbPath.stop()")
        fed = video.stats()["fed"]
        await wait_until(
            lambda: video.stats()["queued"] == 0 and video.stats()["fed"] == fed,
            "the sender took every picture fed",
        )
    finally:
        await session.stop()
        video.stop()
        audio.stop()

    pictures = page_server.of_kind(KIND_JPEG)
    decoder = av.CodecContext.create("mjpeg", "r")
    shown = []
    for chunk in pictures:
        (frame,) = decoder.decode(av.Packet(chunk.data))
        assert isinstance(frame, av.VideoFrame) and (frame.width, frame.height) == (WIDTH, HEIGHT)
        shown.append(read_stamp_frame(frame).index)
    assert shown == sorted(shown) and len(set(shown)) == len(shown)
    pcm = page_server.of_kind(KIND_PCM)
    assert pcm and all(len(c.data) % 2 == 0 for c in pcm)
    assert sum(len(c.data) for c in pcm) // 2 > 48_000  # over a second of microphone

    sent_indexes = [shown[item.index] for item in video.sent]  # the pictures aiortc encoded
    await wait_until(
        lambda: stored_frame_count(kvs, stream_arn) == len(sent_indexes), "every picture stored"
    )
    _, (stamps, unreadable) = await asyncio.to_thread(stored_stamps, target, stream_arn)
    assert unreadable == 0 and list(stamps["frame_index"]) == sent_indexes
    _, codecs = await asyncio.to_thread(stored_video, target, stream_arn)
    assert codecs == {"h264", "aac"}


async def test_viewer_page_draws_the_pictures_the_kernel_sends(
    page_server: PageServer, browser_page: Any
) -> None:
    await browser_page.goto(page_server.url)
    info = await browser_page.evaluate("kvsnbRun('VIEWER')")
    assert info == {"video": None, "audio": "opus"}
    await wait_until(lambda: page_server.of_kind(KIND_OPUS) != [], "the microphone goes up")
    pattern = TestPatternTrack(WIDTH, HEIGHT)
    encoder = JpegEncoder(quality=3)
    now_ms = int(time.time() * 1000)
    for index in (5, 6, 7):
        jpeg = encoder.encode(pattern.render(index, now_ms + index))
        await page_server.send(pack_chunk(KIND_JPEG, jpeg, now_ms * 1000, key=True))

    async def drawn() -> bool:
        return bool(await browser_page.evaluate("window.kvsnbPath.stats.drawn >= 1"))

    await wait_for(drawn, "a picture drawn", deadline_s=30)

    async def shown_index() -> int | None:
        png = await browser_page.locator("#view").screenshot()
        with av.open(io.BytesIO(png), mode="r") as container:
            frame = next(container.decode(video=0))
        try:
            return read_stamp(np.asarray(frame.to_ndarray(format="rgb24"))).index
        except ValueError:
            return None

    async def newest_shown() -> bool:
        return await shown_index() == 7  # the newest picture ends up on screen

    await wait_for(newest_shown, "the newest picture shown", deadline_s=30)
    await browser_page.evaluate("window.kvsnbPath.stop()")


# ---------------------------------------------------------------------- in JupyterLab

KERNEL_SETUP = """
import asyncio, json
import kvsnb
from kvsnb.client.session import JoinPolicy, MasterSession, SessionError
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.sources import TestPatternTrack, ToneTrack
from kvsnb.widgets import BrowserSession
target = kvsnb.connect(extra={"storage": StorageOptions(fragment_duration_s=1.0)})
POLICY = JoinPolicy.local(connect_timeout_s=20)
"""

KERNEL_MASTER_CELLS = [
    KERNEL_SETUP,
    'channel_arn, stream_arn = target.create_storage_channel("kernel-master")',
    """
cam = BrowserSession(target, "kernel-master", policy=POLICY, transport="kernel")
display(cam)
cam.start()
await cam.wait_connected(90)
print("connected", cam.state, "|", cam.transport_used, "|", cam.kernel_path.info)
""",
]

KERNEL_MASTER_CHECK = """
import io, av
from kvsnb.playback import HlsReader, get_images, get_media, hls_session_url, list_fragments
from kvsnb.sources import try_read_stamp
async def _check():
    deadline = asyncio.get_running_loop().time() + 60
    while len(list_fragments(target, stream_arn)) < %(fragments)d:
        assert asyncio.get_running_loop().time() < deadline, "fragments not stored"
        await asyncio.sleep(0.25)
    path = cam.kernel_path
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
    return {
        "fragments": len(frags),
        "hls": [s.index if s else None for s in hls_stamps],
        "images": [s.index if s else None for s in image_stamps],
        "codecs": codecs, "size": size, "stats": path.stats(), "info": path.info,
        "steps": list(path.session.timeline.to_frame()["step"]),
        "state": cam.state, "error": cam.error, "via": cam.bridge_via,
    }
print(json.dumps(await _check()))
"""

KERNEL_VIEWER_CELLS = [
    KERNEL_SETUP,
    """
target.create_storage_channel("kernel-viewer")
master = MasterSession(target, "kernel-viewer", video=TestPatternTrack(320, 240, 30),
                       audio=ToneTrack(440.0), policy=POLICY)
await master.start(timeout=30)
""",
    """
view = BrowserSession(target, "kernel-viewer", role="VIEWER", policy=POLICY, transport="kernel")
display(view)
view.start()
await view.wait_connected(90)
print("connected", view.state, view.client_id, "|", view.kernel_path.info)
""",
]


DIRECT_BRIDGE = re.compile(r"^wss?://[^/]+/kvsnb-bridge/")  # not through /proxy/PORT/


def open_proxied_page(
    lab: LabServer, context: Any, name: str, cells: list[str]
) -> tuple[NotebookPage, list[str]]:
    """Write a notebook of ``cells`` and open it as on Binder: the page reaches the kernel's
    bridge only through the Jupyter server's proxy path (its direct socket is refused);
    returns the page and the list of WebSocket URLs it opens."""
    player_notebook(lab.root / name, cells)
    page = context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.route_web_socket(DIRECT_BRIDGE, lambda ws: ws.close(code=1008, reason="no direct"))
    nb = NotebookPage(name, page, lab)
    page.on("console", lambda m: nb.console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: nb.console.append(f"[pageerror] {e}"))
    page.goto(f"{lab.url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
    nb.wait_until_ready()
    return nb, sockets


def through_proxy(sockets: list[str]) -> None:
    """The page's bridge socket went through ``/proxy/PORT/``."""
    bridge = [url for url in sockets if "/kvsnb-bridge/" in url]
    assert any("/proxy/" in url for url in bridge), bridge


def test_lab_master_through_the_kernel_is_stored(
    jupyter_lab: LabServer,
    media_context: Any,  # noqa: F811 (the fixture imported above)
    artifacts: Path,
) -> None:
    nb, sockets = open_proxied_page(
        jupyter_lab, media_context, "kernel_master.ipynb", KERNEL_MASTER_CELLS
    )
    try:
        cells = nb.run_all()
        nb.assert_no_errors(cells)
        line = printed(cells, "connected")
        assert line.startswith("connected connected | kernel"), line
        assert "'video': 'h264'" in line and "'audio': 'opus'" in line, line
        through_proxy(sockets)
        widget = nb.widget_output("Start")
        nb.screenshot("browser-session-kernel-master", widget)
        result = json.loads(kernel(nb, KERNEL_MASTER_CHECK % {"fragments": 5}).splitlines()[-1])
        print("\nkernel-path master:", {k: v for k, v in result.items() if k not in ("hls",)})
        assert result["fragments"] >= 5
        assert result["codecs"] == {"video": "h264", "audio": "aac"}, result["codecs"]
        assert result["size"] == list(CAMERA_SIZE)
        hls = in_order(result["hls"])
        images = in_order(result["images"])
        assert len(hls) >= 0.9 * len(result["hls"]) and len(hls) >= 25, result["hls"]
        assert len(images) >= 5, result["images"]
        stats = result["stats"]
        assert stats["bad_chunks"] == 0 and stats["video"]["sent"] >= len(hls), stats
        assert stats["audio"]["sent"] > 0, stats
        steps = result["steps"]
        for step in ("join_call", "offer_received", "answer_sent", "dtls_connected"):
            assert step in steps, steps
        assert result["state"] == "closed" and not result["error"], result
        nb.assert_no_errors()
    finally:
        close_page(nb)


def test_lab_viewer_through_the_kernel_shows_a_kvsnb_master(
    jupyter_lab: LabServer,
    media_context: Any,  # noqa: F811 (the fixture imported above)
    artifacts: Path,
) -> None:
    nb, sockets = open_proxied_page(
        jupyter_lab, media_context, "kernel_viewer.ipynb", KERNEL_VIEWER_CELLS
    )
    try:
        cells = nb.run_all()
        nb.assert_no_errors(cells)
        line = printed(cells, "connected")
        assert line.startswith("connected connected viewer-"), line
        assert "'audio': 'opus'" in line, line
        through_proxy(sockets)
        widget = nb.widget_output("Start")
        canvas = widget.locator("canvas")
        assert_live_and_heard(
            nb, widget, canvas, "browser-session-kernel-viewer", " through the kernel"
        )
        kernel(nb, "await view.stop(); await master.stop()")
        nb.assert_no_errors()
    finally:
        close_page(nb)
