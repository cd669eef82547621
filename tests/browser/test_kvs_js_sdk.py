"""The official KVS WebRTC JS SDK and the AWS SDK for JavaScript v3, unmodified, in Debian's
Chromium against Local KVS in TLS mode.

The page (``web/kvs.html``, ``web/kvs-page.js``) is served from ``http://localhost:PORT``, a
different origin than Local KVS (``https://127.0.0.1:PORT``), so every call goes through
CORS; Chromium trusts Local KVS's certificate through ``--ignore-certificate-errors-spki-list``
(that certificate only), with no ``--disable-web-security`` and the SDK's own SigV4 signer,
checked strictly by Local KVS. Camera and microphone are Chromium's fake devices (the
microphone plays a 1 kHz tone from a WAV file). WebRTC stays on loopback: Chromium gathers
127.0.0.1 candidates (``--allow-loopback-in-peer-connection``) and the page trickles only
those.

Each test saves the page's console to ``test-artifacts/browser/kvs-js-<test>-console.log``.
The master test prints the JS SDK master's figures (JoinStorageSession call → offer →
connected → first fragment listed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import threading
import wave
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.client.target import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, Target
from kvsnb.launch import connect
from kvsnb.local import StrictKeys
from kvsnb.playback import decode_image, list_fragments
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import wait_until_sync
from tests.integration.test_viewers import tone_level

from .conftest import ARTIFACTS, chromium_context
from .webjs import JsSetupError, ensure_js, serve_page

TONE_HZ = 1000.0
RATE = 48_000
MASTER_SECONDS = 12.0  # the JS master sends at least this long once connected
VIEWER_SECONDS = 6.0
PAGE_TIMEOUT_S = 150.0
CREDENTIALS = {"accessKeyId": LOCAL_ACCESS_KEY, "secretAccessKey": LOCAL_SECRET_KEY}
POLICY = JoinPolicy.local(connect_timeout_s=15)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def kvs_js() -> None:
    """The SDK and the AWS clients bundle, from the npm registry (once per package.json)."""
    try:
        ensure_js()
    except JsSetupError as exc:
        pytest.skip(f"the browser-test JS is not available: {exc}")


@pytest.fixture(scope="module")
def tls_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """An embedded Local KVS in TLS mode, verifying every signature (kvsnb's local keys)."""
    data = tmp_path_factory.mktemp("kvs-tls")
    with connect(
        tls=True, data_dir=data, strict_keys=StrictKeys(LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY)
    ) as tg:
        yield tg


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 kHz tone (mono, 16-bit, 48 kHz) for Chromium's fake microphone."""
    path = tmp_path_factory.mktemp("media") / "tone.wav"
    t = np.arange(RATE * 4) / RATE
    samples = (np.sin(2 * np.pi * TONE_HZ * t) * 12_000).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())
    return path


@dataclass
class KvsPage:
    """The test page and the console lines it has logged."""

    page: Any  # playwright.sync_api.Page
    console: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def kvs_page(
    chromium: Path,
    kvs_js: None,
    tls_target: Target,
    tone_wav: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KvsPage]:
    """``web/kvs.html`` open in Chromium (fake camera and microphone, Local KVS's
    certificate trusted by its key) from another origin than Local KVS."""
    assert tls_target.local is not None and tls_target.local.tls is not None
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={tone_wav}",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required",
        f"--ignore-certificate-errors-spki-list={tls_target.local.tls.spki_sha256()}",
    ]
    profile = tmp_path_factory.mktemp("chromium-kvs-profile")
    with serve_page() as origin, chromium_context(chromium, profile, args) as context:
        kp = KvsPage(context.new_page())
        kp.page.on("console", lambda m: kp.console.append(f"[{m.type}] {m.text}"))
        kp.page.on("pageerror", lambda e: kp.console.append(f"[pageerror] {e}"))
        kp.page.goto(f"{origin}/kvs.html", wait_until="load")
        assert kp.page.evaluate("() => typeof KVSWebRTC.SignalingClient") == "function"
        assert kp.page.evaluate("() => typeof AwsKvs.KinesisVideo.KinesisVideoClient") == "function"
        yield kp
        kp.page.close()


def run_page(kp: KvsPage, function: str, opts: dict[str, Any], name: str) -> Any:
    """Call ``window.<function>(opts)`` in the page, saving its console whatever happens."""
    kp.page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    start = len(kp.console)
    try:
        return kp.page.evaluate(f"opts => window.{function}(opts)", opts)
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"kvs-js-{name}-console.log").write_text("\n".join(kp.console[start:]) + "\n")


def page_options(target: Target, **extra: Any) -> dict[str, Any]:
    assert target.endpoint_url is not None
    return {
        "endpoint": target.endpoint_url,
        "region": target.region,
        "credentials": CREDENTIALS,
        **extra,
    }


# ---------------------------------------------------------------------- master


def test_js_sdk_master_stores_h264_and_aac(kvs_page: KvsPage, tls_target: Target) -> None:
    result = run_page(
        kvs_page,
        "kvsMaster",
        page_options(tls_target, name="js-master", seconds=MASTER_SECONDS),
        "master",
    )
    t = result["timings"]
    print(
        "\nJS SDK master on Local KVS (TLS, Chromium): JoinStorageSession call -> "
        f"returned {t['joinReturned'] * 1000:.0f} ms, offer {t['offer'] * 1000:.0f} ms, "
        f"answer sent {t['answerSent'] * 1000:.0f} ms, connected {t['connected'] * 1000:.0f} ms, "
        f"first fragment listed {t['firstFragmentListed'] * 1000:.0f} ms; "
        f"sent {t['sentSeconds']:.1f} s"
    )
    assert result["endpoints"]["WSS"].startswith("wss://127.0.0.1:")
    assert result["endpoints"]["WEBRTC"].startswith("https://127.0.0.1:")
    assert result["offerSender"] is None  # the storage session's offer has no senderClientId
    assert t["offer"] < t["connected"] < t["firstFragmentListed"]
    assert t["sentSeconds"] >= MASTER_SECONDS
    answer = result["answerSdp"]
    assert "H264/90000" in answer and "opus/48000" in answer
    assert result["stats"]["video"]["framesEncoded"] > 0

    # stored: the fragments the page listed cover what it sent (bar the last moment)
    fragments = result["fragments"]
    stored_ms = sum(f["ms"] for f in fragments)
    assert stored_ms >= (MASTER_SECONDS - 3) * 1000, fragments
    listed = list_fragments(tls_target, result["streamArn"])
    assert set(listed["fragment_number"]) >= {f["number"] for f in fragments}

    # GetImages from the page: JPEGs of the fake camera (640x480, not a blank frame)
    images = [i for i in result["images"] if i["data"]]
    assert len(images) >= (MASTER_SECONDS - 4) / 2, result["images"]
    for image in images:
        pixels = decode_image(base64.b64decode(image["data"]))
        assert pixels.shape == (480, 640, 3)
        assert pixels.std() > 5

    # GetMediaForFragmentList from the page: Matroska with H.264 video and AAC audio
    assert result["mkvContentType"] == "video/webm"
    mkv = base64.b64decode(result["mkv"])
    with av.open(io.BytesIO(mkv), mode="r") as container:
        codecs = {s.type: s.codec_context.name for s in container.streams}
        assert codecs == {"video": "h264", "audio": "aac"}
        video = container.streams.video[0]
        frames = [f for _, f in zip(range(30), container.decode(video), strict=False)]
    assert len(frames) == 30 and (frames[0].width, frames[0].height) == (640, 480)


# ---------------------------------------------------------------------- viewer


class BackgroundMaster:
    """A kvsnb ``MasterSession`` (test pattern + tone) ingesting on its own event loop."""

    def __init__(self, target: Target, channel: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="master", daemon=True)
        self.target, self.channel = target, channel
        self.session: MasterSession | None = None

    def run(self, coro: Any, timeout: float = 60) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    async def _start(self) -> None:
        self.session = MasterSession(
            self.target,
            self.channel,
            video=TestPatternTrack(320, 240, 30),
            audio=ToneTrack(440.0),
            policy=POLICY,
        )
        await self.session.start(timeout=30)

    async def _received_audio(self) -> np.ndarray:
        assert self.session is not None
        return self.session.received.audio()

    def received_audio(self) -> np.ndarray:
        """What the master heard (viewers' audio mixed by the storage session)."""
        return self.run(self._received_audio())

    def __enter__(self) -> BackgroundMaster:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.run(self.session.stop(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def test_js_sdk_viewer_sees_a_kvsnb_master(kvs_page: KvsPage, tls_target: Target) -> None:
    channel_arn, _ = tls_target.create_storage_channel("js-viewer")
    with BackgroundMaster(tls_target, "js-viewer") as master:
        result = run_page(
            kvs_page,
            "kvsViewer",
            page_options(
                tls_target, channelArn=channel_arn, clientId="js-viewer-1", seconds=VIEWER_SECONDS
            ),
            "viewer",
        )
        # the viewer's microphone (1 kHz) reaches the session: the master hears it
        wait_until_sync(
            lambda: tone_level(master.received_audio(), TONE_HZ) > 20,
            "the master hears the viewer's microphone",
            deadline_s=20,
            every_s=0.25,
        )
    print(
        f"\nJS SDK viewer: connected {result['connectedAfter'] * 1000:.0f} ms after the join "
        f"call; framesDecoded {result['framesDecoded']}"
    )
    assert result["offerSender"] is None
    assert "H264/90000" in result["answerSdp"]
    first, last = result["framesDecoded"]
    assert last > first and last > 0  # the browser decodes the master's video
    assert result["video"] == {"width": 320, "height": 240}
    assert result["audioPacketsSent"] > 0


# ---------------------------------------------------------------------- errors


def test_aws_errors_reach_the_page(kvs_page: KvsPage, tls_target: Target) -> None:
    errors = run_page(kvs_page, "kvsErrors", page_options(tls_target, name="js-errors"), "errors")
    by_what = {e["what"]: e for e in errors}
    missing = by_what["DescribeSignalingChannel missing"]
    assert (missing["name"], missing["status"]) == ("ResourceNotFoundException", 404)
    webrtc = by_what["GetSignalingChannelEndpoint WEBRTC without storage"]
    assert (webrtc["name"], webrtc["status"]) == ("InvalidArgumentException", 400)
    assert "MediaStorageConfiguration is required" in webrtc["message"]
    ttl = by_what["CreateSignalingChannel bad TTL"]
    assert ttl["status"] == 400 and ttl["name"] in (
        "InvalidArgumentException",
        "ValidationException",
    )
    join = by_what["JoinStorageSession missing channel"]
    assert (join["name"], join["status"]) == ("ResourceNotFoundException", 404)


# ---------------------------------------------------------------------- TURN


def test_js_sdk_master_needs_turn(kvs_page: KvsPage, tls_target: Target) -> None:
    """As on AWS: JoinStorageSession answers 200 either way, but only a master with the TURN
    servers from GetIceServerConfig connects, over a relay candidate pair."""
    with_turn = run_page(
        kvs_page,
        "kvsMasterIce",
        page_options(tls_target, name="js-turn", turn=True, forceTurn=True),
        "turn",
    )
    assert with_turn["iceServers"] == 2 and with_turn["joinStatus"] == 200, with_turn
    assert with_turn["state"] == "connected", with_turn
    assert (with_turn["local"], with_turn["remote"]) == ("relay", "relay"), with_turn
    without = run_page(
        kvs_page, "kvsMasterIce", page_options(tls_target, name="js-noturn", turn=False), "noturn"
    )
    assert without["iceServers"] == 0 and without["joinStatus"] == 200, without
    assert without["state"] == "failed", without
