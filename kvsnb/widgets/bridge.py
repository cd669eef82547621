"""The kernel bridge: a WebSocket server of the kernel's own, so a widget's page and the kernel
keep talking while a cell runs.

A Jupyter kernel reads widget comm messages only between cells (or on a subshell thread,
JupyterLab 4.6 with ipykernel 7): a cell that displays a widget and then awaits something the
page must answer would wait for a message the kernel never reads. The bridge is an aiohttp
server in the kernel's own event loop, bound to 127.0.0.1 on an ephemeral port, one per
process, started on first use; while a cell awaits, the loop serves it.

The page reaches it directly (``ws://127.0.0.1:PORT/kvsnb-bridge/<widget id>``, a browser on
the kernel's machine) or through the Jupyter server's proxy path
(``<base_url>proxy/PORT/kvsnb-bridge/<widget id>``, jupyter-server-proxy, as the ``Player``'s
media is): ``page_urls`` lists both, ``page_url`` is the one to prefer. Each channel has a
random token that the widget sends the page in a trait (never a credential): the page's first
message is ``{"type": "hello", "token": ...}``, the server answers ``{"type": "welcome"}`` or
closes the socket (close code 4003). A newer socket of the same channel replaces the older one
(4001).

When the page cannot open the socket it falls back to the widget's comm messages
(``{"type": "kvsnb-bridge", "kind": "hello" | "json" | "bytes", ...}``, bytes as buffers):
``BridgeChannel.attach_comm`` is how the widget hands them over. Either way the channel's
callbacks run on the kernel loop, and ``transport`` says which way the page is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from aiohttp import WSMsgType, web

from kvsnb.client.target import jupyter_proxy_base
from kvsnb.errors import KvsnbError

__all__ = [
    "BRIDGE_PREFIX",
    "BridgeChannel",
    "BridgeClosed",
    "bridge_channel",
    "bridge_port",
    "page_js",
    "page_url",
    "page_urls",
]

logger = logging.getLogger(__name__)

BRIDGE_PREFIX = "/kvsnb-bridge/"
HELLO_TIMEOUT_S = 10.0  # a socket that sends no valid hello within this is closed
HEARTBEAT_S = 20.0
CLOSE_REPLACED = 4001  # a newer socket of the same channel took this one's place
CLOSE_CHANNEL_GONE = 4004  # the channel was closed in the kernel
CLOSE_BAD_TOKEN = 4003
COMM_TYPE = "kvsnb-bridge"
PAGE_JS = Path(__file__).with_name("bridge.js")  # the page side, shipped as package data

Transport = Literal["websocket", "comm"]
JsonCallback = Callable[[Any], Any]
BytesCallback = Callable[[bytes], Any]


class BridgeClosed(KvsnbError, ConnectionError):
    """The page is not connected to the channel (yet, or any more), or the channel is closed."""


class BridgeChannel:
    """One widget's path to its page: JSON and binary messages both ways.

    ``token`` is the secret the page proves itself with (send it to the page in a widget
    trait); ``path`` the URL path of its socket on the bridge server. ``connected`` is True
    while the page is connected, by WebSocket or by the comm fallback (``transport``).
    Callbacks registered with ``on_json``/``on_bytes`` run on the kernel loop; one that
    returns a coroutine has it scheduled there.
    """

    def __init__(self, widget_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.widget_id = widget_id
        self.token = secrets.token_urlsafe(24)
        self.path = f"{BRIDGE_PREFIX}{widget_id}"
        self.transport: Transport | None = None
        self.closed = False
        self._loop = loop
        self._ws: web.WebSocketResponse | None = None
        self._comm_send: Callable[[dict[str, Any], list[bytes]], None] | None = None
        self._json_callbacks: list[JsonCallback] = []
        self._bytes_callbacks: list[BytesCallback] = []
        self._close_callbacks: list[Callable[[], Any]] = []
        self._open = asyncio.Event()
        self._tasks: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"<BridgeChannel {self.widget_id} {self.transport or 'not connected'}>"

    @property
    def connected(self) -> bool:
        """Whether the page is connected now (by WebSocket or by the comm fallback)."""
        if self.closed:
            return False
        if self.transport == "websocket":
            return self._ws is not None and not self._ws.closed
        return self.transport == "comm"

    def on_json(self, callback: JsonCallback) -> None:
        """Call ``callback(obj)`` (on the kernel loop) for each JSON message from the page."""
        self._json_callbacks.append(callback)

    def on_bytes(self, callback: BytesCallback) -> None:
        """Call ``callback(data)`` (on the kernel loop) for each binary message from the page."""
        self._bytes_callbacks.append(callback)

    def on_close(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (on the kernel loop) when the page's socket closes and no newer
        one replaced it (the tab was closed or reloaded; a reloaded page connects again)."""
        self._close_callbacks.append(callback)

    async def wait_open(self, timeout: float | None = None) -> None:
        """Wait until the page is connected; ``TimeoutError`` after ``timeout`` seconds (with
        no browser showing the widget, it never is), ``BridgeClosed`` if the channel is
        closed."""
        if self.closed:
            raise BridgeClosed(f"bridge channel {self.widget_id} is closed")
        try:
            await asyncio.wait_for(self._open.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no page connected to the widget's bridge within {timeout} s: is the widget "
                "displayed in a browser (JupyterLab, Notebook 7, VS Code)?"
            ) from None

    async def send_json(self, obj: Any) -> None:
        """Send ``obj`` (JSON-serialisable) to the page; ``BridgeClosed`` when not connected."""
        ws, comm = self._route()
        if ws is not None:
            await ws.send_str(json.dumps(obj))
        elif comm is not None:
            comm({"type": COMM_TYPE, "kind": "json", "data": obj}, [])

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message to the page; ``BridgeClosed`` when not connected."""
        ws, comm = self._route()
        if ws is not None:
            await ws.send_bytes(bytes(data))
        elif comm is not None:
            comm({"type": COMM_TYPE, "kind": "bytes"}, [bytes(data)])

    def close(self) -> None:
        """Close the channel: the page's socket is closed and later sends raise
        ``BridgeClosed``. Idempotent."""
        if self.closed:
            return
        self.closed = True
        _registry.pop(self.widget_id, None)
        ws, self._ws = self._ws, None
        self.transport = None
        self._open.clear()
        if ws is not None and not ws.closed:
            self._call_on_loop(lambda: self._spawn(ws.close(code=CLOSE_CHANNEL_GONE)))

    # ------------------------------------------------------------------ comm fallback

    def attach_comm(self, send: Callable[[dict[str, Any], list[bytes]], None]) -> None:
        """The widget's way to send a comm message (``widget.send(content, buffers)``), used
        when the page falls back to comm messages."""
        self._comm_send = send

    def receive_comm(self, content: dict[str, Any], buffers: list[bytes]) -> bool:
        """Hand over a comm message from the page (any thread); True if it was a bridge
        message (``type`` ``kvsnb-bridge``). A ``hello`` with the right token makes the comm
        the channel's transport (unless a socket is open)."""
        if not isinstance(content, dict) or content.get("type") != COMM_TYPE:
            return False
        self._call_on_loop(lambda: self._on_comm(content, [bytes(b) for b in buffers or []]))
        return True

    def _on_comm(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        kind = content.get("kind")
        if kind == "hello":
            if content.get("token") != self.token or self.closed:
                logger.warning("bridge %s: a comm hello with a wrong token", self.widget_id)
                return
            if self.transport != "websocket" or not self.connected:
                self.transport = "comm"
                self._open.set()
            if self._comm_send is not None:
                self._comm_send({"type": COMM_TYPE, "kind": "welcome"}, [])
            return
        if self.transport != "comm":
            return
        if kind == "json":
            self._dispatch_json(content.get("data"))
        elif kind == "bytes":
            for data in buffers:
                self._dispatch_bytes(data)

    # ------------------------------------------------------------------ internals

    def _route(
        self,
    ) -> tuple[web.WebSocketResponse | None, Callable[[dict[str, Any], list[bytes]], None] | None]:
        if self.closed:
            raise BridgeClosed(f"bridge channel {self.widget_id} is closed")
        if self.transport == "websocket" and self._ws is not None and not self._ws.closed:
            return self._ws, None
        if self.transport == "comm" and self._comm_send is not None:
            return None, self._comm_send
        raise BridgeClosed(f"no page is connected to bridge channel {self.widget_id}")

    def _call_on_loop(self, func: Callable[[], None]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            func()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(func)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("bridge %s: a callback failed", self.widget_id, exc_info=task.exception())

    def _run_callback(self, callback: Callable[[Any], Any], arg: Any) -> None:
        try:
            result = callback(arg)
        except Exception:
            logger.exception("bridge %s: a callback failed", self.widget_id)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

    def _dispatch_json(self, obj: Any) -> None:
        for callback in list(self._json_callbacks):
            self._run_callback(callback, obj)

    def _dispatch_bytes(self, data: bytes) -> None:
        for callback in list(self._bytes_callbacks):
            self._run_callback(callback, data)

    async def _serve_socket(self, ws: web.WebSocketResponse) -> None:
        """Run one authenticated socket until it closes (a newer one replaces it)."""
        old, self._ws = self._ws, ws
        self.transport = "websocket"
        self._open.set()
        if old is not None and not old.closed:
            await old.close(code=CLOSE_REPLACED, message=b"replaced by a newer page socket")
        await ws.send_str(json.dumps({"type": "welcome"}))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        obj = json.loads(msg.data)
                    except ValueError:
                        logger.warning("bridge %s: a message that is not JSON", self.widget_id)
                        continue
                    self._dispatch_json(obj)
                elif msg.type == WSMsgType.BINARY:
                    self._dispatch_bytes(bytes(msg.data))
        finally:
            if self._ws is ws:
                self._ws = None
                self.transport = None
                self._open.clear()
                if not self.closed:
                    for callback in list(self._close_callbacks):
                        self._run_callback(lambda cb: cb(), callback)


class _BridgeServer:
    """The process's one bridge server (aiohttp on 127.0.0.1, an ephemeral port)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.runner: web.AppRunner | None = None
        # runs at once in a kernel (whose loop runs the cell), or when a script's loop starts
        self.started: asyncio.Task[None] = loop.create_task(self._start())

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get(BRIDGE_PREFIX + "{widget_id}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        logger.info("kvsnb bridge listening on 127.0.0.1:%d", self.port)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        channel = _registry.get(request.match_info["widget_id"])
        if channel is None:
            raise web.HTTPNotFound(text="no such bridge channel")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024 * 1024)
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # the page gave up before the handshake (it waits a few seconds per URL; a cell
            # that blocks the kernel's loop delays the answer): it tries its next URL
            logger.info("bridge %s: the page left before the handshake", channel.widget_id)
            # not the half-prepared socket (aiohttp would close it and fail): a plain answer,
            # whose write to the closed connection aiohttp drops quietly
            return web.Response(status=400, text="the page left before the handshake")
        try:
            hello = await ws.receive(timeout=HELLO_TIMEOUT_S)
            obj = json.loads(hello.data) if hello.type == WSMsgType.TEXT else {}
        except (TimeoutError, ValueError):
            obj = {}
        token = obj.get("token") if isinstance(obj, dict) else None
        if obj.get("type") != "hello" or not secrets.compare_digest(
            str(token or ""), channel.token
        ):
            await ws.close(code=CLOSE_BAD_TOKEN, message=b"bad or missing token")
            return ws
        if channel.closed:
            await ws.close(code=CLOSE_CHANNEL_GONE, message=b"channel closed")
            return ws
        await channel._serve_socket(ws)
        return ws


_registry: dict[str, BridgeChannel] = {}
_server: _BridgeServer | None = None
_lock = threading.Lock()


def _home_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()


def _bridge() -> _BridgeServer:
    global _server
    with _lock:
        if _server is None or _server.loop.is_closed():
            _server = _BridgeServer(_home_loop())
        return _server


def bridge_port() -> int:
    """The bridge server's port on 127.0.0.1 (the server starts on first use)."""
    return _bridge().port


def bridge_channel(widget_id: str) -> BridgeChannel:
    """A new channel for the widget ``widget_id`` (its model id), on the process's bridge
    server, started on the current event loop (the kernel's) on first use. A channel already
    open for that widget is closed and replaced."""
    server = _bridge()
    old = _registry.get(widget_id)
    if old is not None:
        old.close()
    channel = BridgeChannel(widget_id, server.loop)
    _registry[widget_id] = channel
    return channel


def page_urls(channel: BridgeChannel) -> list[str]:
    """Every URL the page may open for ``channel``, preferred first: through the Jupyter
    server's proxy (root-relative, the page makes it ``ws(s)://<its host>/...``) when this
    kernel runs under a Jupyter server with jupyter-server-proxy, and directly
    (``ws://127.0.0.1:PORT/...``)."""
    port = _bridge().port
    direct = f"ws://127.0.0.1:{port}{channel.path}"
    proxy = jupyter_proxy_base()
    if proxy is None:
        return [direct]
    return [proxy.format(port=port) + channel.path, direct]


def page_url(channel: BridgeChannel) -> str:
    """The URL the page opens for ``channel`` (the first of ``page_urls``)."""
    return page_urls(channel)[0]


def page_js() -> str:
    """The page side of the bridge (``bridge.js``): plain function declarations, no import or
    export, that a widget puts in front of its ES module; ``kvsnbOpenBridge(model, handlers)``
    opens the socket named by the widget's ``bridge_token`` and ``bridge_urls`` traits, or
    falls back to comm messages."""
    return PAGE_JS.read_text()


async def stop_bridge() -> None:
    """Stop the bridge server and close every channel (tests; a kernel keeps it)."""
    global _server
    for channel in list(_registry.values()):
        channel.close()
    server, _server = _server, None
    if server is not None and server.runner is not None:
        with contextlib.suppress(Exception):
            await server.runner.cleanup()
    if server is not None:
        server.sock.close()
