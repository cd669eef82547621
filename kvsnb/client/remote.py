"""A storage session whose peer connection is in a web page (``RemoteSession``): the kernel
keeps the credentials and the signaling, the page does the media.

The kernel makes every AWS call (DescribeSignalingChannel, GetSignalingChannelEndpoint,
GetIceServerConfig, JoinStorageSession[AsViewer]) and holds the signaling WebSocket, with
``StorageSessionBase``'s join, retry and re-join rules unchanged (the JS SDK's, see
``kvsnb.client.session``); only the peer connection is elsewhere: the storage session's offer,
the answer and the ICE candidates travel between the kernel and the page over a ``PageLink``
(the widgets' bridge), and the page's ``RTCPeerConnection`` sends and receives the media with
the TURN servers of GetIceServerConfig. The page never calls an AWS API and never holds a key:
it gets SDP, candidates and the IceServerList (whose TURN credentials are short-lived and
scoped to the channel, as AWS hands them to any browser).

The messages (JSON), kernel → page: ``media`` (open the camera/microphone), ``offer``
(``peer``, ``sdp``, ``iceServers``), ``candidate`` (``peer``, the storage session's
candidate), ``close_peer``, ``stop``. Page → kernel: ``media_ready``, ``media_error``
(``name``, ``message``: e.g. NotAllowedError when the camera is denied), ``answer``,
``peer_error``, ``local_candidate``, ``peer_state`` (``connection``, ``ice``),
``first_frame`` (``kind``: "sent" for a master, "decoded" for a viewer), ``stats`` (the
page's ``getStats`` figures, one row a second) and ``page`` (a page connected: one that comes
after the set-up is asked for its camera/microphone again before the next offer). ``peer``
numbers each offer answered, so a late message of a closed peer is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import pandas as pd
from aiortc import RTCPeerConnection

from kvsnb.client.session import (
    JoinPolicy,
    SessionError,
    StorageSessionBase,
    _Connecting,
)
from kvsnb.client.signaling import SignalingMessage
from kvsnb.client.target import Target, new_client_id, run_sync
from kvsnb.wire import sdp, webrtc
from kvsnb.wire.webrtc import Role

__all__ = ["STATS_COLUMNS", "PageLink", "PagePeer", "RemoteSession"]

logger = logging.getLogger(__name__)

PAGE_OPEN_TIMEOUT_S = 30.0  # the page connects to the kernel after the widget is shown
MEDIA_TIMEOUT_S = 60.0  # getUserMedia, a permission prompt included
ANSWER_TIMEOUT_S = 15.0  # the page answers an offer
STATS_KEPT = 3600  # rows of page statistics kept (an hour at one a second)
STATS_COLUMNS = [
    "time",
    "state",
    "frames_sent",
    "frames_encoded",
    "frames_received",
    "frames_decoded",
    "video_kbps",
    "audio_packets_sent",
    "audio_packets_received",
    "rtt_ms",
    "local_candidate",
    "remote_candidate",
    "width",
    "height",
]


class PageLink(Protocol):
    """The way to the page: ``kvsnb.widgets.bridge.BridgeChannel`` is one."""

    async def send_json(self, obj: Any) -> None:
        """Send a JSON message to the page."""

    def on_json(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(obj)`` on the kernel loop for each JSON message from the page."""

    async def wait_open(self, timeout: float | None = None) -> None:
        """Wait until the page is connected."""


class PagePeer:
    """The page's ``RTCPeerConnection`` for one offer, as the kernel sees it: its states as
    the page reports them, the answer it made, and its local candidates waiting for the
    answer to go out first. It stands where ``StorageSessionBase`` keeps its aiortc peer
    (``pc``): the base class reads ``connectionState`` and closes it."""

    def __init__(self, number: int, link: PageLink) -> None:
        self.number = number
        self.connectionState = "new"
        self.iceConnectionState = "new"
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.answer_sent = False
        self.pending: list[dict[str, Any]] = []  # local candidates before the answer went out
        self.closed = False
        self._link = link

    def getTransceivers(self) -> list[Any]:
        """No transceivers in the kernel: the page holds the tracks."""
        return []

    async def close(self) -> None:
        """Tell the page to close this peer connection (its tracks stay for the next)."""
        if self.closed:
            return
        self.closed = True
        self.connectionState = "closed"
        if not self.answer.done():
            self.answer.set_exception(ConnectionError("peer closed before the page answered"))
        try:
            await self._link.send_json({"type": "close_peer", "peer": self.number})
        except ConnectionError as exc:
            logger.info("could not tell the page to close peer %d: %s", self.number, exc)


class RemoteSession(StorageSessionBase):
    """A master or viewer in a channel's storage session whose media is in a web page reached
    through ``link`` (see the module docstring). ``role`` is "MASTER" (the page sends its
    camera and microphone) or "VIEWER" (the page shows the master's video and sends its
    microphone; joins with JoinStorageSessionAsViewer and ``client_id``). ``media`` is what
    the page is asked to open: ``{"video": {constraints} | False, "audio": bool}``.

    ``start()``, ``stop()``, ``state``, ``timeline`` and the retry rules are
    ``StorageSessionBase``'s; ``page_stats`` keeps the page's ``getStats`` rows
    (``stats_df()``), ``media_info`` what the page opened (device label, size).
    """

    def __init__(
        self,
        target: Target,
        channel: str,
        link: PageLink,
        *,
        role: Role = "MASTER",
        media: dict[str, Any] | None = None,
        client_id: str | None = None,
        policy: JoinPolicy | None = None,
        force_turn: bool = False,
    ) -> None:
        if role not in ("MASTER", "VIEWER"):
            raise ValueError(f"role must be MASTER or VIEWER, not {role!r}")
        if role == "VIEWER":
            client_id = client_id or new_client_id("viewer")
        super().__init__(target, channel, client_id=client_id, policy=policy, force_turn=force_turn)
        self.role = role
        self.link = link
        self.media = media or {"video": role == "MASTER", "audio": True}
        self.media_info: dict[str, Any] = {}
        self.page_stats: list[dict[str, Any]] = []
        self._peers = 0
        self._page_lost = False
        self._media_ready: asyncio.Future[dict[str, Any]] | None = None
        self._stats_listeners: list[Callable[[dict[str, Any]], None]] = []
        link.on_json(self._on_page)

    @property
    def peer(self) -> PagePeer | None:
        """The page's current peer connection (None between peers)."""
        return cast("PagePeer | None", self.pc)

    def on_stats(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(row)`` for each statistics row the page sends."""
        self._stats_listeners.append(listener)

    def stats_df(self) -> pd.DataFrame:
        """The page's ``getStats`` figures, a row a second: frames sent/encoded (master) or
        received/decoded (viewer), video bitrate (kbit/s), audio packets, round-trip time
        (ms), the selected candidate pair (``type address:port`` each side), frame size."""
        rows = [{c: row.get(c) for c in STATS_COLUMNS} for row in self.page_stats]
        df = pd.DataFrame(rows, columns=STATS_COLUMNS)
        if not df.empty:
            df["time"] = pd.to_datetime(df["time"], unit="ms", utc=True)
        return df

    async def stats(self) -> dict[str, dict[str, int]]:
        """What the page's peer connection sent and received so far, per kind (from its
        latest statistics row): ``bytes_sent``, ``packets_sent``, ``bytes_received``,
        ``packets_received``."""
        if not self.page_stats:
            return {}
        last = self.page_stats[-1]
        return {
            kind: {
                key: int(last.get(f"{kind}_{key}") or 0)
                for key in ("bytes_sent", "packets_sent", "bytes_received", "packets_received")
            }
            for kind in ("video", "audio")
        }

    # ------------------------------------------------------------------ set-up

    async def _setup(self) -> None:
        """The AWS set-up and the signaling socket (``StorageSessionBase``), then the page: it
        must be showing, and opens its camera/microphone before the first join call."""
        await super()._setup()
        await self._open_page_media()

    async def _open_page_media(self) -> None:
        """Wait for the page and have it open its camera/microphone (``media_info``)."""
        await self.link.wait_open(PAGE_OPEN_TIMEOUT_S)
        self.timeline.mark("page_connected")
        self._media_ready = asyncio.get_running_loop().create_future()
        await self.link.send_json({"type": "media", "role": self.role, **self.media})
        try:
            self.media_info = await asyncio.wait_for(self._media_ready, MEDIA_TIMEOUT_S)
        except TimeoutError:
            self.timeline.mark("media_error", error="timeout")
            raise SessionError(
                f"the page did not open its camera/microphone within {MEDIA_TIMEOUT_S:.0f} s"
            ) from None
        self._page_lost = False
        shown = {k: v for k, v in self.media_info.items() if k not in ("type", "devices")}
        self.timeline.mark("media_ready", **shown)

    def page_lost(self) -> None:
        """The page went away (its tab closed or reloaded) and its peer connection with it:
        a connected session re-joins as after any peer failure, once a page is back (each
        join call waits up to ``PAGE_OPEN_TIMEOUT_S`` for it and asks it for its
        camera/microphone again), within the retry rules."""
        self._page_lost = True
        self.timeline.mark("page_lost")
        peer = self.peer
        if peer is not None and not peer.closed:
            self._on_peer_state(peer, "closed", "closed")

    async def _join_call(self) -> None:
        if self._page_lost:
            await self._open_page_media()
        await super()._join_call()

    async def stop(self) -> None:
        """End the session (as ``StorageSessionBase.stop``) and tell the page to stop its
        camera and microphone."""
        await super().stop()
        try:
            await self.link.send_json({"type": "stop"})
        except ConnectionError:
            pass  # the page is gone: nothing to stop

    async def _join(self, client: Any) -> None:
        if self.role == "MASTER":
            await run_sync(client.join_storage_session, channelArn=self.channel_arn)
        else:
            await run_sync(
                client.join_storage_session_as_viewer,
                channelArn=self.channel_arn,
                clientId=self.client_id,
            )

    def _attach_tracks(self, pc: RTCPeerConnection) -> None:
        """The page attaches its tracks (never called: ``_answer`` is the page's)."""

    # ------------------------------------------------------------------ WebRTC in the page

    async def _answer(self, offer: SignalingMessage) -> None:
        assert self.signaling is not None and offer.payload is not None
        offered = self.offers.answering(offer)
        try:
            webrtc.check_offer_codecs(offered)
        except webrtc.CodecError as exc:
            self.timeline.mark(
                "offer_refused", error="InvalidArgumentException", description=str(exc)
            )
            self._set_state("failed")
            raise SessionError(str(exc), "InvalidArgumentException") from exc
        if self._page_lost:  # a page came back between the join call and the offer
            await self._open_page_media()
        await self._refresh_stale_ice_servers()
        self._peers += 1
        peer = PagePeer(self._peers, self.link)
        # the page's peer stands where the base class keeps its aiortc peer
        self.pc = cast(RTCPeerConnection, peer)
        self._connecting = _Connecting()
        self.candidates.answering(sdp.ice_ufrag(offered))
        await self.link.send_json(
            {
                "type": "offer",
                "peer": peer.number,
                "role": self.role,
                "sdp": offered,
                "iceServers": [
                    {"urls": list(s["Uris"]), "username": s.get("Username"),
                     "credential": s.get("Password")}
                    for s in self._ice_servers
                ],
                "iceTransportPolicy": "relay" if self.force_turn else "all",
            }
        )  # fmt: skip
        try:
            answer_sdp = await asyncio.wait_for(asyncio.shield(peer.answer), ANSWER_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(f"the page did not answer within {ANSWER_TIMEOUT_S:.0f} s") from None
        await self._apply_early_candidates()
        answer, in_sdp = sdp.split_candidates(answer_sdp)
        answer_id = await self.signaling.send("SDP_ANSWER", {"type": "answer", "sdp": answer})
        self.offers.answer_sent(answer_id)
        self._mark_answer_sent(answer)
        peer.answer_sent = True
        waiting = [webrtc.candidate_to_payload(c) for c in sdp.bundled_candidates(in_sdp, answer)]
        waiting += peer.pending
        peer.pending = []
        for payload in waiting:
            await self._send_local_candidate(payload)

    async def _add_candidate(self, payload: dict[str, Any]) -> None:
        """A storage session candidate goes to the page's peer."""
        peer = self.peer
        if peer is None or peer.closed:
            return
        await self.link.send_json({"type": "candidate", "peer": peer.number, "candidate": payload})

    async def _send_local_candidate(self, payload: dict[str, Any]) -> None:
        assert self.signaling is not None
        text = str(payload.get("candidate", ""))
        if not text or ".local " in text:
            return  # end of candidates, or an mDNS name the storage session cannot resolve
        sent = await self.signaling.send("ICE_CANDIDATE", payload)
        self.offers.sent(sent, "candidate")

    # ------------------------------------------------------------------ page messages

    def _on_page(self, msg: Any) -> Awaitable[None] | None:
        if not isinstance(msg, dict):
            return None
        kind = msg.get("type")
        if kind == "media_ready":
            if self._media_ready is not None and not self._media_ready.done():
                self._media_ready.set_result(msg)
        elif kind == "media_error":
            text = f"{msg.get('name', 'Error')}: {msg.get('message', '')}".rstrip(": ")
            self.timeline.mark("media_error", error=msg.get("name"), description=text)
            if self._media_ready is not None and not self._media_ready.done():
                what = "camera/microphone" if self.role == "MASTER" else "microphone"
                self._media_ready.set_exception(
                    SessionError(f"the page could not open its {what}: {text}", msg.get("name"))
                )
        elif kind == "page" and self.media_info:
            # a new page (reloaded, or another view) has no camera open and no peer yet
            self._page_lost = True
        elif kind == "stats":
            self.page_stats.append(msg)
            del self.page_stats[:-STATS_KEPT]
            for listener in list(self._stats_listeners):
                listener(msg)
        else:
            return self._on_peer_message(kind, msg)
        return None

    def _on_peer_message(self, kind: Any, msg: dict[str, Any]) -> Awaitable[None] | None:
        peer = self.peer
        if peer is None or msg.get("peer") != peer.number or peer.closed:
            return None  # a closed peer's late message
        if kind == "answer":
            if not peer.answer.done():
                peer.answer.set_result(str(msg.get("sdp", "")))
        elif kind == "peer_error":
            text = str(msg.get("message", "the page's peer connection failed"))
            self.timeline.mark("page_error", description=text[:200])
            if not peer.answer.done():
                peer.answer.set_exception(SessionError(f"the page could not answer: {text}"))
        elif kind == "local_candidate":
            payload = msg.get("candidate")
            if isinstance(payload, dict):
                if not peer.answer_sent:
                    peer.pending.append(payload)
                else:
                    return self._send_local_candidate(payload)
        elif kind == "peer_state":
            self._on_peer_state(peer, str(msg.get("connection")), str(msg.get("ice")))
        elif kind == "first_frame":
            if msg.get("kind") == "sent":
                if not self.timeline.frames:
                    self.timeline.frame_sent(0)
            elif not self.timeline.first("first_frame_received"):
                self.timeline.mark("first_frame_received")
        return None

    def _on_peer_state(self, peer: PagePeer, state: str, ice_state: str) -> None:
        """As ``StorageSessionBase._on_pc_state``, from the states the page reports."""
        peer.iceConnectionState = ice_state
        if ice_state in ("connected", "completed") and not self.timeline.first("ice_connected"):
            self.timeline.mark("ice_connected")
        if state == peer.connectionState:
            return
        peer.connectionState = state
        self.timeline.mark("pc_state", state=state)
        if state == "connected":
            self.timeline.mark("dtls_connected")
            if self._connecting is not None:
                self._connecting.connected()
        elif state in ("failed", "closed"):
            if self._connecting is not None:
                self._connecting.failed(ConnectionError(f"the page's peer connection {state}"))
            if self.state == "connected":
                self._rejoin.set()
