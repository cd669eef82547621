"""``RemoteSession`` (the kernel half of ``BrowserSession``'s direct path) against Local KVS with
TURN, over the real kernel bridge, with a page played by Python: an aiohttp WebSocket client
that speaks the page's messages and an aiortc peer connection with the TURN servers the kernel
hands it (as the browser's ``RTCPeerConnection`` does). No browser; the browser itself is in
``tests/browser/test_browser_session.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from kvsnb.client.remote import RemoteSession
from kvsnb.client.session import JoinPolicy, SessionError, prepare_remote_offer
from kvsnb.client.target import Target
from kvsnb.playback import list_fragments
from kvsnb.sources import TestPatternTrack, ToneTrack
from kvsnb.widgets.bridge import BridgeChannel, bridge_channel, page_url, stop_bridge
from kvsnb.wire import sdp, webrtc
from tests.conftest import stored_stamps, wait_until

POLICY = JoinPolicy.local(connect_timeout_s=20)


class PythonPage:
    """The page's side of the bridge: camera and microphone are kvsnb's test tracks."""

    def __init__(self, channel: BridgeChannel, *, deny: bool = False) -> None:
        self.channel = channel
        self.deny = deny
        self.pc: RTCPeerConnection | None = None
        self.peer = 0
        self.received: list[dict[str, Any]] = []
        self.offers = 0
        self.ice_servers: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.video = TestPatternTrack(320, 240, 30)
        self.audio = ToneTrack(1000.0)

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(obj))

    async def run(self, http: aiohttp.ClientSession) -> None:
        self.ws = await http.ws_connect(page_url(self.channel))
        await self.send({"type": "hello", "token": self.channel.token})
        await self.send({"type": "page", "via": "websocket", "host": "127.0.0.1"})
        async for msg in self.ws:
            data = json.loads(msg.data)
            self.received.append(data)
            await self.on_message(data)

    async def on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "media":
            if self.deny:
                await self.send(
                    {"type": "media_error", "name": "NotAllowedError", "message": "denied"}
                )
            else:
                await self.send({"type": "media_ready", "video": "test pattern", "width": 320})
        elif kind == "offer":
            await self.answer(msg)
        elif kind == "candidate" and self.pc is not None and msg["peer"] == self.peer:
            mids = [t.mid for t in self.pc.getTransceivers()]
            cand = webrtc.candidate_from_payload(msg["candidate"], mids)
            if cand is not None:
                await self.pc.addIceCandidate(cand)
        elif kind == "close_peer" and self.pc is not None and msg["peer"] == self.peer:
            await self.pc.close()

    async def answer(self, msg: dict[str, Any]) -> None:
        self.offers += 1
        self.peer = msg["peer"]
        self.ice_servers = msg["iceServers"]
        servers = [
            RTCIceServer(urls=s["urls"], username=s["username"], credential=s["credential"])
            for s in msg["iceServers"]
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.pc = pc
        peer = self.peer

        @pc.on("connectionstatechange")
        async def report() -> None:
            await self.send(
                {
                    "type": "peer_state",
                    "peer": peer,
                    "connection": pc.connectionState,
                    "ice": pc.iceConnectionState,
                }
            )
            if pc.connectionState == "connected":
                await self.send({"type": "first_frame", "peer": peer, "kind": "sent"})
                await self.send(
                    {"type": "stats", "peer": peer, "time": time.time() * 1000, "frames_sent": 1,
                     "local_candidate": "relay 127.0.0.2:1", "video_bytes_sent": 1000}
                )  # fmt: skip

        text = prepare_remote_offer(msg["sdp"])
        for kind, _, _ in sdp.directions(text):
            transceiver = pc.addTransceiver(kind, direction="inactive")
            transceiver.setCodecPreferences(webrtc.storage_codec_preferences(kind))
        await pc.setRemoteDescription(RTCSessionDescription(text, "offer"))
        for transceiver in pc.getTransceivers():
            track = self.video if transceiver.kind == "video" else self.audio
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly" if transceiver.kind == "video" else "sendrecv"
        await pc.setLocalDescription(await pc.createAnswer())
        # aiortc gathers before it answers: its candidates are in the SDP, as a browser's
        # are when it does not trickle (the kernel sends them as ICE_CANDIDATE messages)
        await self.send({"type": "answer", "peer": peer, "sdp": pc.localDescription.sdp})

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        self.video.stop()
        self.audio.stop()
        if self.ws is not None:
            await self.ws.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
    await stop_bridge()


async def test_a_page_master_is_stored_through_turn(
    target: Target, http: aiohttp.ClientSession
) -> None:
    _, stream_arn = target.create_storage_channel("remote-master")
    channel = bridge_channel("remote-master")
    page = PythonPage(channel)
    runner = asyncio.ensure_future(page.run(http))
    session = RemoteSession(target, "remote-master", channel, policy=POLICY)
    try:
        await session.start(timeout=60)
        assert session.state == "connected"
        # the page got only TURN servers, with the short-lived credentials of
        # GetIceServerConfig: no AWS key ever goes to it
        assert page.ice_servers and all(
            u.startswith(("turn:", "turns:")) for s in page.ice_servers for u in s["urls"]
        )
        sent = json.dumps(page.received)
        secret = target.credentials().secret_key
        assert secret and secret not in sent and "SecretAccessKey" not in sent

        await wait_until(
            lambda: len(stored_stamps(target, stream_arn)[0]) >= 3, "three fragments stored", 60
        )
        _, (stamps, _) = stored_stamps(target, stream_arn)
        assert stamps is not None and len(stamps) > 0
        indexes = list(stamps["frame_index"])
        assert indexes == sorted(indexes)  # the page's frames, stored in order

        steps = list(session.timeline.to_frame()["step"])
        for step in ("get_ice_config", "page_connected", "media_ready", "join_call",
                     "offer_received", "answer_sent", "ice_connected", "dtls_connected",
                     "first_frame_sent"):  # fmt: skip
            assert step in steps, steps
        await wait_until(lambda: len(session.stats_df()) > 0, "the page's statistics")
        stats = session.stats_df()
        assert stats["frames_sent"].iloc[-1] == 1 and str(stats["time"].dtype).startswith(
            "datetime"
        )
        assert (await session.stats())["video"]["bytes_sent"] == 1000
    finally:
        await session.stop()
        # the page reads "stop" on its own task: wait for it before its socket closes
        try:
            await wait_until(lambda: {"type": "stop"} in page.received, "the page told to stop", 10)
        finally:
            await page.close()
            runner.cancel()
    assert session.closed and session.timeline.last("stopped") is not None


async def test_a_denied_camera_ends_the_start(target: Target, http: aiohttp.ClientSession) -> None:
    target.create_storage_channel("remote-denied")
    channel = bridge_channel("remote-denied")
    page = PythonPage(channel, deny=True)
    runner = asyncio.ensure_future(page.run(http))
    session = RemoteSession(target, "remote-denied", channel, policy=POLICY)
    try:
        with pytest.raises(SessionError, match="could not open its camera/microphone") as info:
            await session.start(timeout=60)
        assert info.value.code == "NotAllowedError"
        assert session.timeline.last("media_error") is not None
        assert session.timeline.first("join_call") is None  # never joined
        assert page.offers == 0
    finally:
        await session.stop()
        await page.close()
        runner.cancel()


async def test_a_viewer_without_a_page_never_joins(target: Target) -> None:
    """A viewer has its own ClientId and asks the page for its microphone only; without a
    page it never calls JoinStorageSessionAsViewer."""
    target.create_storage_channel("remote-viewer")
    channel = bridge_channel("remote-viewer")
    session = RemoteSession(target, "remote-viewer", channel, role="VIEWER", policy=POLICY)
    assert session.client_id is not None and session.client_id.startswith("viewer-")
    assert session.media == {"video": False, "audio": True}
    try:
        with pytest.raises(TimeoutError):
            await session.start(timeout=2)
        assert session.timeline.first("join_call") is None
    finally:
        await session.stop()
        await stop_bridge()


async def test_a_reloaded_page_rejoins(target: Target, http: aiohttp.ClientSession) -> None:
    """The page goes (its socket and peer connection closed) and a new one comes: the session
    re-joins with the new page's media, as after any peer failure."""
    _, stream_arn = target.create_storage_channel("remote-reload")
    channel = bridge_channel("remote-reload")
    page = PythonPage(channel)
    runner = asyncio.ensure_future(page.run(http))
    session = RemoteSession(target, "remote-reload", channel, policy=POLICY)
    channel.on_close(session.page_lost)  # as BrowserSession wires it
    second: PythonPage | None = None
    try:
        await session.start(timeout=60)
        await page.close()  # the tab is reloaded
        await wait_until(lambda: session.timeline.last("page_lost") is not None, "page lost")
        stored = len(list_fragments(target, stream_arn))
        second = PythonPage(channel)
        runner2 = asyncio.ensure_future(second.run(http))
        await wait_until(
            lambda: (
                session.state == "connected"
                and len(session.timeline.to_frame().query("step == 'dtls_connected'")) == 2
            ),
            "connected again with the new page",
            60,
        )
        assert second.offers == 1 and any(m["type"] == "media" for m in second.received)
        await wait_until(
            lambda: len(list_fragments(target, stream_arn)) >= stored + 2,
            "the new page's media stored",
            60,
        )
        runner2.cancel()
    finally:
        await session.stop()
        await page.close()
        if second is not None:
            await second.close()
        runner.cancel()
