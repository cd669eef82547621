"""``BrowserSession``: the browser showing the notebook joins a channel's storage session, as
the master (your camera and microphone, stored by KVS) or as a viewer (the master's live video
in a ``<video>``, your microphone sent up).

**Credentials stay in the kernel.** The kernel makes every AWS call and holds the signaling
socket, with kvsnb's own join and retry rules (``kvsnb.client.remote.RemoteSession``, a
``StorageSessionBase``); the page gets only the storage session's offer, its candidates and
the IceServerList (short-lived TURN credentials scoped to the channel), over the kernel bridge
(``kvsnb.widgets.bridge``), which keeps working while a cell awaits (a cell may display the
widget, ``start()`` it and ``await wait_connected()``). If the page cannot open the bridge's
socket it falls back to the widget's comm messages, and says so: then the kernel hears the
page only between cells.

``transport``: "direct" — the page's ``RTCPeerConnection`` sends and receives the media
itself, through the TURN servers of GetIceServerConfig (Local KVS's on 127.0.0.2 on this
machine, AWS's anywhere); "kernel" — the page hands the media to the kernel over the bridge
and a kernel ``MasterSession``/``ViewerSession`` does the WebRTC (Binder, a remote JupyterLab:
only the Jupyter server's port is reachable), by ``kvsnb.widgets.browser_media``; "auto" —
direct against AWS, or when the page runs on the kernel's machine (its host is loopback),
else kernel. ``transport_used`` says which one, and why.

The kernel path's seam (``kvsnb.widgets.browser_media``, another module): when the transport
resolves to "kernel", ``start()`` calls ``browser_media.start_kernel_path(widget, channel)``
(``channel`` the widget's ``BridgeChannel``), which returns an object with ``stop()``
(awaitable or not) and ``session``; it reports with ``widget._kernel_state(state, detail)``.
Its front end, ``browser_media.js``, is concatenated *before* this widget's ES module
(``browser_session.js``) when the file exists, so it must hold plain function declarations (no
``import``/``export``): the page calls ``kvsnbKernelMaster(stream, sendBytes, log,
onBytes)`` (MASTER) or ``kvsnbKernelViewer(canvas, onBytes, micStream, sendBytes, log)``
(VIEWER) when the kernel sends ``{"type": "kernel_start"}``, and ``.stop()`` on their result at
``{"type": "kernel_stop"}``; ``onBytes(fn)`` registers ``fn(Uint8Array)`` for the kernel's
binary messages. The page answers ``{"type": "kernel_started"}`` or ``media_error``.

Errors (the channel not mapped for storage, the camera denied, no answer) show in the widget
and are raised in the kernel by ``wait_connected()`` as ``SessionError`` with AWS's code and
message or a clear one.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

import anywidget
import pandas as pd
import traitlets

from kvsnb.client.remote import STATS_COLUMNS, RemoteSession
from kvsnb.client.session import JoinPolicy, SessionError
from kvsnb.client.target import Target
from kvsnb.client.timeline import SessionTimeline
from kvsnb.widgets._common import Tasks, describe_error
from kvsnb.widgets.bridge import BridgeChannel, bridge_channel, page_js, page_urls
from kvsnb.wire.webrtc import Role

__all__ = ["BrowserSession", "Transport"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
ESM = HERE / "browser_session.js"
KERNEL_PATH_ESM = HERE / "browser_media.js"
KERNEL_PATH_MODULE = "kvsnb.widgets.browser_media"

Transport = Literal["auto", "direct", "kernel"]
TRANSPORTS: tuple[Transport, ...] = get_args(Transport)
ROLES: tuple[Role, ...] = ("MASTER", "VIEWER")
RESOLUTIONS = ("320x240", "640x480", "1280x720")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
TIMELINE_SHOWN = 60  # rows of the timeline the widget shows (the newest)


def build_esm() -> str:
    """The widget's front end: the bridge's page side (``bridge.js``), ``browser_media.js``
    (when present), then ``browser_session.js``."""
    parts = [page_js()]
    if KERNEL_PATH_ESM.is_file():
        parts.append(KERNEL_PATH_ESM.read_text())
    parts.append(ESM.read_text())
    return "\n".join(parts)


class BrowserSession(anywidget.AnyWidget):
    """Your browser as master or viewer of a channel's storage session (module docstring).

    ``start()`` joins (or the Start button), ``stop()`` leaves; ``state``, ``timeline`` (a
    ``SessionTimeline``), ``stats_df()`` and ``await wait_connected()`` follow it from the kernel.
    """

    _esm = build_esm()
    role = traitlets.Enum(
        ("MASTER", "VIEWER"), default_value="MASTER", help="MASTER or VIEWER"
    ).tag(sync=True)
    channel = traitlets.Unicode(help="the signaling channel (name or ARN)").tag(sync=True)
    client_id = traitlets.Unicode(help="the viewer's ClientId (empty for a master)").tag(sync=True)
    transport = traitlets.Enum(
        TRANSPORTS, default_value="auto", help="auto, direct (the page's WebRTC) or kernel"
    ).tag(sync=True)
    transport_used = traitlets.Unicode("", help="the transport in use, and why").tag(sync=True)
    force_turn = traitlets.Bool(
        False, help="relay candidates only in the page (the SDK samples' force TURN)"
    ).tag(sync=True)
    bridge_urls = traitlets.List(traitlets.Unicode(), help="the bridge socket URLs").tag(sync=True)
    bridge_token = traitlets.Unicode(help="the page's token for the bridge (not a key)").tag(
        sync=True
    )
    bridge_via = traitlets.Unicode("", help="how the page reached the bridge").tag(sync=True)
    page_host = traitlets.Unicode("", help="the host name of the page showing the widget").tag(
        sync=True
    )
    state = traitlets.Unicode("new", help="the session's state").tag(sync=True)
    error = traitlets.Unicode("", help="the last error, in plain words").tag(sync=True)
    timeline_rows = traitlets.List(traitlets.Dict(), help="the setup timeline, as shown").tag(
        sync=True
    )
    stats = traitlets.Dict(help="the page's latest getStats figures").tag(sync=True)
    devices = traitlets.List(traitlets.Dict(), help="the cameras the page found").tag(sync=True)
    device_id = traitlets.Unicode("", help="the camera to use (empty: the default)").tag(sync=True)
    resolutions = traitlets.List(traitlets.Unicode(), default_value=list(RESOLUTIONS)).tag(
        sync=True
    )
    resolution = traitlets.Enum(RESOLUTIONS, default_value="640x480", help="camera size").tag(
        sync=True
    )
    width = traitlets.Int(480, min=64, help="width of the video element (px)").tag(sync=True)

    def __init__(
        self,
        target: Target,
        channel: str,
        *,
        role: Role = "MASTER",
        transport: Transport = "auto",
        client_id: str | None = None,
        policy: JoinPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        # the bridge channel first: the page reads its token and URLs from the first state
        link = bridge_channel(uuid.uuid4().hex)
        super().__init__(
            role=role,
            channel=channel,
            transport=transport,
            client_id=client_id or "",
            bridge_token=link.token,
            bridge_urls=page_urls(link),
            **kwargs,
        )
        self.target = target
        self.policy = policy
        self.session: RemoteSession | None = None
        self.kernel_path: Any = None
        self._tasks = Tasks()
        self._outcome: asyncio.Future[None] | None = None
        self._start_requested = asyncio.Event()
        self._page_info = asyncio.Event()
        self._timeline = SessionTimeline()
        self.channel_link: BridgeChannel = link
        link.attach_comm(lambda content, buffers: self.send(content, buffers))
        link.on_json(self._on_page)
        link.on_close(self._page_closed)
        self.on_msg(self._on_comm)

    def __repr__(self) -> str:
        return f"<kvsnb.widgets.BrowserSession {self.role} {self.channel!r} {self.state}>"

    # ------------------------------------------------------------------ kernel API

    @property
    def timeline(self) -> SessionTimeline:
        """The current session's ``SessionTimeline`` (an empty one before ``start()``)."""
        if self.session is not None:
            return self.session.timeline
        session = getattr(self.kernel_path, "session", None)
        return session.timeline if session is not None else self._timeline

    def timeline_df(self) -> pd.DataFrame:
        """The setup timeline as a DataFrame (``SessionTimeline.to_frame``)."""
        return self.timeline.to_frame()

    def stats_df(self) -> pd.DataFrame:
        """The page's ``getStats`` figures, a row a second (``RemoteSession.stats_df``)."""
        if self.session is not None:
            return self.session.stats_df()
        return pd.DataFrame(columns=STATS_COLUMNS)

    def start(self) -> asyncio.Future[None]:
        """Join the storage session (the Start button does the same); returns a future that
        resolves once connected (or raises). A session already running is kept."""
        if self._outcome is not None and not self._outcome.done():
            return self._outcome
        self._outcome = self._tasks.home.create_future()
        self._outcome.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._start_requested.set()
        self.error = ""
        self.state = "starting"
        self._tasks.spawn(self._start())
        return self._outcome

    def stop(self) -> asyncio.Future[Any]:
        """Leave the session and stop the page's camera and microphone; awaitable."""
        return self._tasks.spawn(self._stop())

    async def page_connected(self, timeout: float = 5.0) -> bool:
        """Whether a browser shows the widget: its page connects to the kernel within
        ``timeout`` seconds (False when the notebook runs headless: nbval, nbconvert)."""
        try:
            await self.channel_link.wait_open(timeout)
        except TimeoutError:
            return False
        return True

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the session is connected (started by ``start()`` or the Start button);
        raises ``SessionError`` (AWS's code and message, or why the page failed) or
        ``TimeoutError``."""

        async def connected() -> None:
            await self._start_requested.wait()
            assert self._outcome is not None
            await asyncio.shield(self._outcome)

        await asyncio.wait_for(connected(), timeout)

    def close(self) -> None:
        """Close the widget and its bridge channel (call ``stop()`` first to leave a
        session)."""
        self.channel_link.close()
        super().close()

    # ------------------------------------------------------------------ internals

    async def _start(self) -> None:
        assert self._outcome is not None
        try:
            used = await self._resolve_transport()
            if used == "kernel":
                await self._start_kernel_path()
            else:
                await self._start_direct()
        except BaseException as exc:
            self.error = describe_error(exc)
            self.state = "failed"
            if not self._outcome.done():
                if isinstance(exc, SessionError | TimeoutError | asyncio.CancelledError):
                    self._outcome.set_exception(exc)
                else:
                    self._outcome.set_exception(SessionError(describe_error(exc)))
            if not isinstance(exc, Exception):
                raise

    async def _resolve_transport(self) -> str:
        if self.transport != "auto":
            self.transport_used = f"{self.transport} (chosen)"
            return str(self.transport)
        if self.target.local is None and self.target.endpoint_url is None:
            self.transport_used = "direct (AWS: the page reaches its TURN servers)"
            return "direct"
        await self.channel_link.wait_open(30.0)
        await asyncio.wait_for(self._page_info.wait(), 10.0)
        if self.page_host in LOOPBACK_HOSTS:
            self.transport_used = "direct (the page runs on the machine of Local KVS)"
            return "direct"
        self.transport_used = (
            f"kernel (the page, on {self.page_host}, cannot reach Local KVS's TURN server)"
        )
        return "kernel"

    async def _start_direct(self) -> None:
        assert self._outcome is not None
        if self.session is not None and not self.session.closed:
            await self.session.stop()
        self.transport_used = self.transport_used or "direct"
        session = RemoteSession(
            self.target,
            self.channel,
            self.channel_link,
            role="VIEWER" if self.role == "VIEWER" else "MASTER",
            media=self._media(),
            client_id=self.client_id or None,
            policy=self.policy,
            force_turn=self.force_turn,
        )
        self.session = session
        if self.role == "VIEWER":
            self.client_id = session.client_id or ""
        session.timeline.on_event(lambda _e: self._show_timeline(session.timeline))
        session.on_state(self._on_state)
        session.on_stats(lambda row: setattr(self, "stats", row))
        self._show_timeline(session.timeline)
        try:
            await session.start(timeout=None)
        except BaseException:
            await session.stop()  # the signaling socket, and the page's camera
            raise
        if session.media_info.get("devices"):
            self.devices = list(session.media_info["devices"])
        self.state = session.state
        if not self._outcome.done():
            self._outcome.set_result(None)
        self._tasks.spawn(self._watch(session))

    async def _watch(self, session: RemoteSession) -> None:
        """Show why a connected session ended, if it gave up (too many failures, the
        signaling socket closed for good)."""
        try:
            await session.wait_closed()
        except Exception as exc:
            if session is self.session:
                self.error = describe_error(exc)
                self.state = "failed"

    async def _start_kernel_path(self) -> None:
        if importlib.util.find_spec(KERNEL_PATH_MODULE) is None:
            raise SessionError(
                "the kernel transport is not available in this kvsnb (no "
                f"{KERNEL_PATH_MODULE}): use transport='direct', with JupyterLab on the "
                "machine running Local KVS or able to reach its TURN server"
            )
        module = importlib.import_module(KERNEL_PATH_MODULE)
        self.kernel_path = module.start_kernel_path(self, self.channel_link)
        if inspect.isawaitable(self.kernel_path):
            self.kernel_path = await self.kernel_path

    def _kernel_state(self, state: str, detail: dict[str, Any] | None = None) -> None:
        """The kernel path reports the state of its session (and an ``error`` in
        ``detail``); "connected" resolves ``wait_connected()``, "failed" fails it."""
        detail = detail or {}
        self.state = state
        if detail.get("error"):
            self.error = str(detail["error"])
        session = getattr(self.kernel_path, "session", None)
        if session is not None:
            self._show_timeline(session.timeline)
        outcome = self._outcome
        if outcome is None or outcome.done():
            return
        if state == "connected":
            outcome.set_result(None)
        elif state in ("failed", "closed"):
            outcome.set_exception(SessionError(self.error or f"the kernel path's session {state}"))

    async def _stop(self) -> None:
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(SessionError("stopped before connecting"))
        if self.kernel_path is not None:
            result = self.kernel_path.stop()
            if inspect.isawaitable(result):
                await result
        if self.session is not None:
            await self.session.stop()
            self._show_timeline(self.session.timeline)
        self.state = "closed"

    def _media(self) -> dict[str, Any]:
        if self.role == "VIEWER":
            return {"video": False, "audio": True}
        return {"video": True, "audio": True, "resolution": self.resolution}

    def _on_state(self, state: str) -> None:
        self.state = state

    def _show_timeline(self, timeline: SessionTimeline) -> None:
        df = timeline.to_frame().tail(TIMELINE_SHOWN)
        self.timeline_rows = [
            {"step": r.step, "t_ms": r.t_ms, "delta_ms": r.delta_ms, "detail": r.detail}
            for r in df.itertuples()
        ]

    def _on_page(self, msg: Any) -> None:
        """Messages from the page for the widget itself (the session reads its own)."""
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "page":
            self.bridge_via = str(msg.get("via") or "")
            self.page_host = str(msg.get("host") or "")
            self._page_info.set()
        elif msg.get("type") == "ui":
            if msg.get("action") == "start":
                self.start()
            elif msg.get("action") == "stop":
                self.stop()
        elif msg.get("type") == "media_ready" and msg.get("devices"):
            self.devices = list(msg["devices"])

    def _page_closed(self) -> None:
        """The page's socket closed (tab closed or reloaded): the direct path's peer went
        with it, so the session re-joins once a page is back."""
        if self.session is not None and not self.session.closed and self.state != "closed":
            self.session.page_lost()

    def _on_comm(self, _widget: Any, content: Any, buffers: Any) -> None:
        self.channel_link.receive_comm(content, list(buffers or []))
