"""The signaling relay: the KVS signaling WebSocket, as AWS runs it.

The rule: connections, routing, delivery, storage mode and limits behave as docs/wire.md,
"Signaling WebSocket" describes; every limit is a field of ``SignalingLimits`` (tests shorten
them). A socket that stops reading is cut off after ``send_timeout_s``, so one stalled client
never blocks a sender, a close or shutdown. Summary: docs/design.md, "Local KVS".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from kvsnb.local.control.plane import Channel, ControlPlane
from kvsnb.local.core import protocol
from kvsnb.local.core.errors import (
    AwsError,
    ClientLimitExceededException,
    InvalidArgumentException,
    ResourceNotFoundException,
)
from kvsnb.local.core.limits import TokenBucket
from kvsnb.wire.webrtc import Role

logger = logging.getLogger(__name__)

ACTIONS = ("SDP_OFFER", "SDP_ANSWER", "ICE_CANDIDATE")
CORRELATION_ID = re.compile(r"^[a-zA-Z0-9_.-]{1,256}$")
CLIENT_ID = re.compile(r"^[a-zA-Z0-9_.-]{1,256}$")
MASTER_KEY = "\x00master"  # pending-queue key of the master (never a valid ClientId)
CLOSE_REPLACED = 4001  # private-use close codes, with a reason text
CLOSE_IDLE = 4002
CLOSE_MAX_DURATION = 4003
CLOSE_CHANNEL_DELETED = 4004
CLOSE_GO_AWAY = 4005
CLOSE_RATE = 4006
SIGNALING_SERVICE = "kinesis-video-signaling"  # whose error shapes give STATUS_RESPONSE codes


@dataclass
class SignalingLimits:
    """Signaling quotas (docs/wire.md); tests shorten the durations."""

    connects_per_s: float = 3.0
    offers_per_s: float = 5.0
    answers_per_s: float = 5.0
    candidates_per_s: float = 20.0
    max_payload_bytes: int = 10 * 1024
    max_viewers: int = 10
    idle_timeout_s: float = 600.0
    max_connection_s: float = 3600.0
    go_away_grace_s: float = 60.0
    # A socket that takes longer than this to accept a frame (its reader stopped reading
    # and every buffer toward it is full) is cut off, so it never stalls the sender.
    send_timeout_s: float = 1.0


@dataclass(eq=False)
class SocketConnection:
    """One signaling WebSocket: its channel, role and ClientId."""

    ws: web.WebSocketResponse
    channel_arn: str
    role: Role
    client_id: str | None
    limits: SignalingLimits
    transport: asyncio.Transport | None = None
    opened: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    dead: bool = False

    def __post_init__(self) -> None:
        self.buckets = {
            "SDP_OFFER": TokenBucket(self.limits.offers_per_s),
            "SDP_ANSWER": TokenBucket(self.limits.answers_per_s),
            "ICE_CANDIDATE": TokenBucket(self.limits.candidates_per_s),
        }

    @property
    def key(self) -> str:
        """Where messages to this connection queue: the master, or the viewer's ClientId."""
        return MASTER_KEY if self.role == "MASTER" else str(self.client_id)

    async def send(self, message: dict[str, Any]) -> bool:
        """Send a JSON text frame; False if the socket is gone. A socket that does not take
        the frame within ``send_timeout_s`` is cut off (``abort``): a client that stopped
        reading must not stall whoever is sending to it."""
        if self.ws.closed or self.dead:
            return False
        text = json.dumps(message, separators=(",", ":"))
        try:
            await asyncio.wait_for(self.ws.send_str(text), self.limits.send_timeout_s)
            return True
        except TimeoutError:
            logger.info("cutting off a %s that stopped reading", self.role)
            self.abort()
            return False
        except (ConnectionError, RuntimeError):
            return False

    async def close(self, code: int, reason: str) -> None:
        """Close the socket with a close code and reason text (never raises); a client that
        does not take the close frame within ``send_timeout_s`` is cut off."""
        if self.dead:
            return
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=reason.encode()), self.limits.send_timeout_s
            )
        except TimeoutError:
            self.abort()
        except Exception:
            logger.debug("error closing a %s socket", self.role, exc_info=True)

    def abort(self) -> None:
        """Drop the TCP connection at once (no close handshake); its reader loop ends."""
        self.dead = True
        if self.transport is not None:
            self.transport.abort()


@dataclass
class ClientMessage:
    """A parsed client → server message."""

    action: str
    recipient: str | None
    payload: str
    correlation_id: str | None

    def decoded(self) -> dict[str, Any]:
        """The payload's JSON object (``InvalidArgumentException`` when it is not one)."""
        try:
            data = json.loads(base64.b64decode(self.payload, validate=True))
        except (binascii.Error, ValueError, RecursionError) as exc:
            raise InvalidArgumentException("messagePayload is not base64 of JSON") from exc
        if not isinstance(data, dict):
            raise InvalidArgumentException("messagePayload is not a JSON object")
        return data


class StorageSink(Protocol):
    """The storage session side of a channel (Local KVS's webrtc-storage plane)."""

    async def on_client_message(self, conn: SocketConnection, msg: ClientMessage) -> None:
        """Handle a message a client sent while the channel's storage is ENABLED; raise an
        ``AwsError`` to answer with a STATUS_RESPONSE."""

    async def on_client_connected(self, conn: SocketConnection) -> None:
        """A client (re)connected to a storage-enabled channel."""

    async def on_client_disconnected(self, conn: SocketConnection) -> None:
        """A client's socket closed."""


class ClientConnection(Protocol):
    """A client's signaling connection as the storage sessions see it: its channel, role
    and ClientId (a ``SocketConnection`` here, a ``WorkerConnection`` in a storage
    worker process)."""

    channel_arn: str
    role: Role
    client_id: str | None


class StorageRelay(Protocol):
    """What the storage sessions ask of the signaling relay (``SignalingRelay`` here; a
    proxy in a storage worker process)."""

    def master(self, channel_arn: str) -> ClientConnection | None:
        """The channel's connected master, if any."""

    def viewer(self, channel_arn: str, client_id: str) -> ClientConnection | None:
        """The channel's connected viewer with this ClientId, if any."""

    async def send_from_storage(
        self, conn: Any, message_type: str, payload: dict[str, Any]
    ) -> bool:
        """Send a storage-session message to a client."""


@dataclass
class _Pending:
    expires: float
    sender: str | None
    message: dict[str, Any]


@dataclass
class _ChannelState:
    master: SocketConnection | None = None
    viewers: dict[str, SocketConnection] = field(default_factory=dict)
    pending: dict[str, deque[_Pending]] = field(default_factory=dict)
    connects: TokenBucket | None = None


def _get_ci(data: dict[str, Any], key: str) -> Any:
    lowered = key.lower()
    for k, v in data.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def parse_client_message(text: str, max_payload: int) -> ClientMessage:
    """Parse a client text frame (keys case-insensitive, ``""`` recipient = none).

    Raises ``ValueError`` when there is no usable correlationId to answer to and
    ``AwsError`` (with the correlationId attached as ``correlation_id``) otherwise.
    """
    try:
        data = json.loads(text)
    except RecursionError as exc:  # nested too deep to read: as unreadable as bad JSON
        raise ValueError("message is nested too deeply") from exc
    if not isinstance(data, dict):
        raise ValueError("message is not a JSON object")
    corr = _get_ci(data, "correlationId")
    corr = corr if isinstance(corr, str) and CORRELATION_ID.match(corr) else None

    def fail(err: AwsError) -> AwsError:
        err.correlation_id = corr  # type: ignore[attr-defined]
        return err

    action = _get_ci(data, "action")
    if action not in ACTIONS:
        raise fail(InvalidArgumentException(f"Unsupported action: {action!r}"))
    recipient = _get_ci(data, "recipientClientId")
    if recipient == "":
        recipient = None
    if recipient is not None and (not isinstance(recipient, str) or not CLIENT_ID.match(recipient)):
        raise fail(InvalidArgumentException("recipientClientId is not a valid ClientId"))
    payload = _get_ci(data, "messagePayload")
    if not isinstance(payload, str) or not payload:
        raise fail(InvalidArgumentException("messagePayload is required"))
    if len(payload) > max_payload:
        raise fail(
            InvalidArgumentException(
                f"messagePayload exceeds the maximum size of {max_payload} bytes"
            )
        )
    try:
        base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise fail(InvalidArgumentException("messagePayload is not valid base64")) from None
    return ClientMessage(action, recipient, payload, corr)


def status_response(corr: str, err: AwsError) -> dict[str, Any]:
    """A STATUS_RESPONSE frame for an error; ``statusCode`` is the HTTP status the
    kinesis-video-signaling model gives the error (``"404"`` for ResourceNotFound), as a
    string."""
    status, _, _ = protocol.error_body(protocol.service_model(SIGNALING_SERVICE), err)
    return {
        "messageType": "STATUS_RESPONSE",
        "statusResponse": {
            "correlationId": corr,
            "errorType": err.code,
            "statusCode": str(status),
            "description": err.message,
            "success": False,
        },
    }


class SignalingRelay:
    """The signaling WebSocket endpoint of Local KVS (see the module docstring)."""

    def __init__(
        self,
        control: ControlPlane,
        authorize: Callable[[web.Request], Awaitable[None]],
        limits: SignalingLimits | None = None,
    ) -> None:
        self.control = control
        self.limits = limits or SignalingLimits()
        self._authorize = authorize
        self._channels: dict[str, _ChannelState] = {}
        self.storage: StorageSink | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        control.events.channel_deleted.append(self._on_channel_deleted)

    # ------------------------------------------------------------------ introspection

    def master(self, channel_arn: str) -> SocketConnection | None:
        """The channel's connected master, if any."""
        st = self._channels.get(channel_arn)
        return None if st is None else st.master

    def viewer(self, channel_arn: str, client_id: str) -> SocketConnection | None:
        """The channel's connected viewer with this ClientId, if any."""
        st = self._channels.get(channel_arn)
        return None if st is None else st.viewers.get(client_id)

    def connections(self) -> list[SocketConnection]:
        """Every open connection."""
        out: list[SocketConnection] = []
        for st in self._channels.values():
            out += ([st.master] if st.master else []) + list(st.viewers.values())
        return out

    # ------------------------------------------------------------------ handshake

    async def handle(self, request: web.Request, role_hint: Role | None) -> web.StreamResponse:
        """The WebSocket upgrade: check the presigned URL, the channel, the role and limits,
        then serve the socket until it closes."""
        if self._closed:  # a socket opened now would hold Local KVS's stop
            raise web.HTTPServiceUnavailable(text="Local KVS is stopping")
        self._loop = asyncio.get_running_loop()
        await self._authorize(request)
        arn = request.query.get("X-Amz-ChannelARN")
        if not arn:
            raise InvalidArgumentException("X-Amz-ChannelARN is required")
        channel = self.control.channel(arn=arn)
        client_id = request.query.get("X-Amz-ClientId") or None
        if client_id is not None and not CLIENT_ID.match(client_id):
            raise InvalidArgumentException("X-Amz-ClientId is not valid")
        role: Role = role_hint or ("VIEWER" if client_id else "MASTER")
        if role == "VIEWER" and client_id is None:
            raise InvalidArgumentException("X-Amz-ClientId is required for a viewer")
        st = self._channels.setdefault(channel.arn, _ChannelState())
        if st.connects is None:
            st.connects = TokenBucket(self.limits.connects_per_s)
        if not st.connects.take():
            raise ClientLimitExceededException(
                "Exceeded the rate of connections per second for this channel"
            )
        if (
            role == "VIEWER"
            and client_id not in st.viewers
            and len(st.viewers) >= self.limits.max_viewers
        ):
            raise ClientLimitExceededException(
                f"The channel has reached the maximum of {self.limits.max_viewers} viewers"
            )
        ws = web.WebSocketResponse(heartbeat=None, autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = SocketConnection(
            ws,
            channel.arn,
            role,
            client_id if role == "VIEWER" else None,
            self.limits,
            transport=request.transport,
        )
        if self._channels.get(channel.arn) is not st:  # deleted during the handshake
            await _close(conn, CLOSE_CHANNEL_DELETED, "channel deleted")
            return ws
        try:
            await self._register(st, conn)
            self._ensure_reaper()
            await self._serve(conn)
        finally:
            await self._unregister(conn)
        return ws

    async def _register(self, st: _ChannelState, conn: SocketConnection) -> None:
        old = st.master if conn.role == "MASTER" else st.viewers.get(str(conn.client_id))
        if conn.role == "MASTER":
            st.master = conn
        else:
            st.viewers[str(conn.client_id)] = conn
        if old is not None:
            await old.close(CLOSE_REPLACED, "replaced by a newer connection")
        await self._flush_pending(st, conn)
        if self.storage is not None and self._storage_enabled(conn.channel_arn):
            try:
                await self.storage.on_client_connected(conn)
            except Exception:
                logger.exception("storage session failed on a %s connecting", conn.role)

    async def _unregister(self, conn: SocketConnection) -> None:
        st = self._channels.get(conn.channel_arn)
        if st is not None:
            if conn.role == "MASTER" and st.master is conn:
                st.master = None
            elif conn.role == "VIEWER" and st.viewers.get(str(conn.client_id)) is conn:
                del st.viewers[str(conn.client_id)]
        if self.storage is not None:
            try:
                await self.storage.on_client_disconnected(conn)
            except Exception:
                logger.exception("storage session failed on a %s leaving", conn.role)

    # ------------------------------------------------------------------ messages

    async def _serve(self, conn: SocketConnection) -> None:
        async for frame in conn.ws:
            if frame.type == WSMsgType.TEXT:
                conn.last_active = time.monotonic()
                await self._on_text(conn, frame.data)
            elif frame.type == WSMsgType.BINARY:
                logger.info("closing %s: binary frame", conn.role)
                await conn.close(WSCloseCode.UNSUPPORTED_DATA, "text frames only")
            elif frame.type == WSMsgType.ERROR:
                break

    async def _on_text(self, conn: SocketConnection, text: str) -> None:
        try:
            msg = parse_client_message(text, self.limits.max_payload_bytes)
        except AwsError as err:
            corr = getattr(err, "correlation_id", None)
            if corr:
                await conn.send(status_response(corr, err))
            return
        except (ValueError, TypeError) as exc:
            logger.info("ignoring unparseable frame from %s: %s", conn.role, exc)
            return
        try:
            if not conn.buckets[msg.action].take():
                raise ClientLimitExceededException(
                    f"Exceeded the rate limit for {msg.action} messages on this connection"
                )
            await self._route(conn, msg)
        except AwsError as err:
            if msg.correlation_id:
                await conn.send(status_response(msg.correlation_id, err))
        except Exception:  # a bug behind the relay must not take the socket down
            logger.exception("internal error handling a %s from a %s", msg.action, conn.role)
            if msg.correlation_id:
                internal = AwsError("Local KVS hit an internal error; see its log.", status=500)
                await conn.send(status_response(msg.correlation_id, internal))

    def _storage_enabled(self, channel_arn: str) -> bool:
        try:
            return self.control.channel(arn=channel_arn).storage_enabled
        except AwsError:
            return False

    async def _route(self, conn: SocketConnection, msg: ClientMessage) -> None:
        if self._storage_enabled(conn.channel_arn):
            if self.storage is None:
                raise InvalidArgumentException("The storage session is not available")
            await self.storage.on_client_message(conn, msg)
            return
        st = self._channels.get(conn.channel_arn)
        if st is None:  # deleted while this frame was in flight; the socket is closing
            raise ResourceNotFoundException("The signaling channel no longer exists.")
        if conn.role == "VIEWER":
            out = {
                "senderClientId": conn.client_id,
                "messageType": msg.action,
                "messagePayload": msg.payload,
            }
            await self._deliver(st, conn.channel_arn, MASTER_KEY, st.master, out, conn.client_id)
        else:
            if msg.recipient is None:
                raise InvalidArgumentException(
                    "recipientClientId is required for messages from the master"
                )
            out = {"messageType": msg.action, "messagePayload": msg.payload}
            target = st.viewers.get(msg.recipient)
            await self._deliver(st, conn.channel_arn, msg.recipient, target, out, None)

    async def _deliver(
        self,
        st: _ChannelState,
        channel_arn: str,
        key: str,
        target: SocketConnection | None,
        message: dict[str, Any],
        sender: str | None,
    ) -> None:
        if target is not None and await target.send(message):
            return
        ttl = self.control.channel(arn=channel_arn).ttl
        queue = st.pending.setdefault(key, deque())
        now = time.monotonic()
        if message["messageType"] == "SDP_OFFER":
            for item in list(queue):
                if item.sender == sender and item.message["messageType"] == "SDP_OFFER":
                    queue.remove(item)
        queue.append(_Pending(now + ttl, sender, message))

    async def _flush_pending(self, st: _ChannelState, conn: SocketConnection) -> None:
        queue = st.pending.pop(conn.key, None)
        now = time.monotonic()
        while queue:
            item = queue.popleft()
            if item.expires >= now and not await conn.send(item.message):
                # The socket went away: keep this and the rest for the next connection.
                queue.appendleft(item)
                for later in st.pending.pop(conn.key, deque()):
                    queue.append(later)
                st.pending[conn.key] = queue
                break

    async def send_from_storage(
        self, conn: SocketConnection, message_type: str, payload: dict[str, Any]
    ) -> bool:
        """Send a storage-session message (no senderClientId) to a client connection."""
        encoded = base64.b64encode(json.dumps(payload).encode()).decode()
        return await conn.send({"messageType": message_type, "messagePayload": encoded})

    # ------------------------------------------------------------------ lifecycle

    async def go_away(self, channel_arn: str | None = None, grace_s: float | None = None) -> int:
        """Send GO_AWAY to every connection (of one channel, or all), then close them after
        the grace period. Returns how many were told."""
        conns = [c for c in self.connections() if channel_arn in (None, c.channel_arn)]
        for c in conns:
            await c.send({"messageType": "GO_AWAY", "messagePayload": ""})
        grace = self.limits.go_away_grace_s if grace_s is None else grace_s

        async def close_later() -> None:
            await asyncio.sleep(grace)
            for c in conns:
                self._spawn(_close(c, CLOSE_GO_AWAY, "GO_AWAY"))

        self._spawn(close_later())
        return len(conns)

    async def reconnect_ice_server(self, channel_arn: str | None = None) -> int:
        """Send RECONNECT_ICE_SERVER to every connection (of one channel, or all)."""
        conns = [c for c in self.connections() if channel_arn in (None, c.channel_arn)]
        for c in conns:
            await c.send({"messageType": "RECONNECT_ICE_SERVER", "messagePayload": ""})
        return len(conns)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background on the relay's loop (from any thread), keeping a
        reference until it is done."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (self._loop is not None and loop is not self._loop):
            if self._loop is None or self._loop.is_closed():
                coro.close()
                return
            self._loop.call_soon_threadsafe(self._spawn, coro)
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_channel_deleted(self, channel: Channel) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if not on_loop and self._loop is not None and not self._loop.is_closed():
            # Called from another thread: the relay's state belongs to its loop.
            self._loop.call_soon_threadsafe(self._on_channel_deleted, channel)
            return
        st = self._channels.pop(channel.arn, None)
        if st is None:
            return
        conns = ([st.master] if st.master else []) + list(st.viewers.values())
        for c in conns:
            self._spawn(_close(c, CLOSE_CHANNEL_DELETED, "channel deleted"))

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Close idle and over-age connections; drop expired pending messages."""
        while self._channels:
            period = max(0.05, min(self.limits.idle_timeout_s, self.limits.max_connection_s) / 10)
            await asyncio.sleep(min(period, 5.0))
            now = time.monotonic()
            for c in self.connections():
                if c.ws.closed:
                    continue
                if now - c.opened > self.limits.max_connection_s:
                    self._spawn(_close(c, CLOSE_MAX_DURATION, "maximum connection time"))
                elif now - c.last_active > self.limits.idle_timeout_s:
                    self._spawn(_close(c, CLOSE_IDLE, "idle timeout"))
            for st in self._channels.values():
                for key in list(st.pending):
                    q = st.pending[key]
                    while q and q[0].expires < now:
                        q.popleft()
                    if not q:
                        del st.pending[key]

    async def close(self) -> None:
        """Refuse new connections, close every connection and stop the reaper."""
        self._closed = True
        for c in self.connections():
            await c.close(WSCloseCode.GOING_AWAY, "server shutdown")
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self._tasks):
            task.cancel()


async def _close(conn: SocketConnection, code: int, reason: str) -> None:
    """Close a connection's socket with a close code and reason text (never raises)."""
    await conn.close(code, reason)
