"""Signaling WebSocket client for KVS channels (docs/wire.md, "Signaling WebSocket").

``SignalingClient`` presigns the URL with botocore (SigV4 query auth, service
``kinesisvideo``, 299 s) at the time of its ``SigningClock`` (a session shares its target's,
so the offset the boto3 clients learnt from a clock-skew refusal applies; refused itself for
a skewed clock, it corrects the clock from the 403's ``Date`` and tries once more, see
``kvsnb.client.clock``), opens the socket, sends typed messages and yields typed events.
It copes with what AWS sends: messages without ``senderClientId`` (everything from the
storage session), STATUS_RESPONSE only for errors, GO_AWAY (reconnect at once, before the
server closes), RECONNECT_ICE_SERVER, and unknown or unparseable frames (ignored).

If the socket closes without ``close()`` being called, the client reconnects with
exponential backoff and emits a ``reconnected`` event, so that sessions can re-join (the JS
SDK re-joins the storage session after every signaling reconnect). It does not come back when
the server says that coming back is pointless: the socket was replaced by a newer connection
with the same role and ClientId (reconnecting would close that one, and so on for ever), or
the channel was deleted (Local KVS's close codes ``4001`` and ``4004``); it emits ``closed``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from yarl import URL

from kvsnb.client.clock import ClockedSigV4QueryAuth, SigningClock
from kvsnb.client.trust import ssl_context
from kvsnb.errors import KvsnbError, reap

logger = logging.getLogger(__name__)

PRESIGN_EXPIRES_S = 299  # the JS and C SDKs presign for 299 s
SIGNING_NAME = "kinesisvideo"
RECONNECT_BASE_S = 0.2
RECONNECT_MAX_S = 10.0
CLOSE_REPLACED = 4001  # Local KVS: a newer connection took this one's place
CLOSE_CHANNEL_DELETED = 4004  # Local KVS: the channel was deleted
NO_RECONNECT_CLOSE_CODES = frozenset({CLOSE_REPLACED, CLOSE_CHANNEL_DELETED})
MESSAGE_TYPES = (
    "SDP_OFFER",
    "SDP_ANSWER",
    "ICE_CANDIDATE",
    "GO_AWAY",
    "RECONNECT_ICE_SERVER",
    "STATUS_RESPONSE",
)

EventKind = Literal["message", "open", "reconnected", "closed"]


class SignalingError(KvsnbError, RuntimeError):
    """The signaling socket could not be opened; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StatusResponse:
    """A STATUS_RESPONSE: the error for a message sent with ``correlation_id``."""

    correlation_id: str | None
    error_type: str | None
    status_code: str | None
    description: str | None


@dataclass(frozen=True)
class SignalingMessage:
    """A server → client message. ``payload`` is the decoded JSON of messagePayload (SDP or
    ICE candidate), ``None`` when absent; ``sender_client_id`` is ``None`` for messages from
    the master or the storage session."""

    type: str
    payload: dict[str, Any] | None
    sender_client_id: str | None
    status: StatusResponse | None = None
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class SignalingEvent:
    """What ``SignalingClient.events()`` yields: a message, or a socket state change."""

    kind: EventKind
    message: SignalingMessage | None = None


def presign_url(
    endpoint: str,
    channel_arn: str,
    credentials: ReadOnlyCredentials | Credentials,
    region: str,
    client_id: str | None = None,
    expires: int = PRESIGN_EXPIRES_S,
    clock: SigningClock | None = None,
) -> str:
    """The SigV4-presigned signaling URL (``X-Amz-ChannelARN`` [+ ``X-Amz-ClientId``]),
    signed at ``clock``'s time (this machine's when None).

    Send it byte for byte as signed: with aiohttp, ``ws_connect(URL(url, encoded=True))``,
    since yarl would otherwise decode the ``%3A`` and ``%2F`` of the ARN, and a server that
    compares the canonical query as sent then refuses the signature.
    """
    query = f"X-Amz-ChannelARN={quote(channel_arn, safe='')}"
    if client_id:
        query += f"&X-Amz-ClientId={quote(client_id, safe='')}"
    base = endpoint if "/" in endpoint.split("://", 1)[1] else endpoint + "/"
    request = AWSRequest(method="GET", url=f"{base}?{query}")
    creds = Credentials(str(credentials.access_key), str(credentials.secret_key), credentials.token)
    ClockedSigV4QueryAuth(creds, SIGNING_NAME, region, expires, clock).add_auth(request)
    return str(request.url)


def decode_message(text: str) -> SignalingMessage | None:
    """Parse a server frame; ``None`` for anything unknown or unparseable."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("messageType") not in MESSAGE_TYPES:
        return None
    payload: dict[str, Any] | None = None
    raw = data.get("messagePayload")
    if isinstance(raw, str) and raw:
        try:
            decoded = json.loads(base64.b64decode(raw))
            payload = decoded if isinstance(decoded, dict) else None
        except ValueError:
            payload = None
    status = None
    if isinstance(data.get("statusResponse"), dict):
        s = data["statusResponse"]
        code = s.get("statusCode")
        status = StatusResponse(
            s.get("correlationId"),
            s.get("errorType"),
            None if code is None else str(code),
            s.get("description"),
        )
    sender = data.get("senderClientId") or None
    return SignalingMessage(str(data["messageType"]), payload, sender, status)


class SignalingClient:
    """One signaling connection of a master (``client_id`` optional) or a viewer."""

    def __init__(
        self,
        endpoint: str,
        channel_arn: str,
        credentials: ReadOnlyCredentials | Credentials,
        region: str,
        *,
        role: Literal["MASTER", "VIEWER"] = "MASTER",
        client_id: str | None = None,
        reconnect: bool = True,
        clock: SigningClock | None = None,
    ) -> None:
        if role == "VIEWER" and not client_id:
            raise ValueError("a viewer needs a client_id")
        self.endpoint = endpoint
        self.channel_arn = channel_arn
        self.credentials = credentials
        self.region = region
        self.role = role
        self.client_id = client_id
        self.reconnect = reconnect
        # the time URLs are presigned at: share a Target's ``clock`` to use the offset its
        # boto3 clients learnt (the JS SDK passes ``systemClockOffset`` this way)
        self.clock = clock or SigningClock()
        self.connects = 0
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._events: asyncio.Queue[SignalingEvent] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._stop = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """True while the socket is open."""
        return self._ws is not None and not self._ws.closed

    def url(self) -> str:
        """A freshly presigned URL."""
        return presign_url(
            self.endpoint,
            self.channel_arn,
            self.credentials,
            self.region,
            self.client_id,
            clock=self.clock,
        )

    async def open(self) -> None:
        """Open the socket (raises ``SignalingError`` with the HTTP status on refusal)."""
        self._closing = False
        self._stop.clear()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            await self._connect()
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _connect(self) -> None:
        """Open the socket with a freshly presigned URL. Refused with a 403 whose ``Date``
        shows this machine's clock off (the URL expired on the server's clock), it corrects
        ``clock`` and tries once more."""
        assert self._session is not None
        for attempt in (1, 2):
            try:
                url = self.url()
                self._ws = await self._session.ws_connect(
                    URL(url, encoded=True),
                    autoping=True,
                    heartbeat=None,
                    ssl=ssl_context(url) or True,
                )
            except aiohttp.WSServerHandshakeError as exc:
                date = exc.headers.get("Date") if exc.headers is not None else None
                if attempt == 1 and exc.status == 403 and self.clock.correct(date):
                    continue
                raise SignalingError(
                    f"signaling refused: {exc.status} {exc.message}", exc.status
                ) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise SignalingError(f"signaling unreachable: {exc}") from exc
            self.connects += 1
            return

    async def _read_loop(self) -> None:
        first = True
        attempt = 0
        while True:
            if not first:
                if self._closing:
                    await self._events.put(SignalingEvent("closed"))
                    return
                try:
                    await self._connect()
                except SignalingError as exc:
                    attempt += 1
                    delay = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2**attempt) * (
                        0.5 + random.random() / 2
                    )
                    logger.info("signaling reconnect failed (%s); retry in %.2fs", exc, delay)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    continue
                if self._closing:  # close() was called while connecting
                    assert self._ws is not None
                    await self._ws.close()
                    continue
                attempt = 0
                await self._events.put(SignalingEvent("reconnected"))
            else:
                await self._events.put(SignalingEvent("open"))
            first = False
            ws = self._ws
            assert ws is not None
            code = await self._read_socket(ws)
            if self._closing or not self.reconnect or code in NO_RECONNECT_CLOSE_CODES:
                logger.info("signaling socket closed (code %s)", code)
                await self._events.put(SignalingEvent("closed"))
                return
            logger.info("signaling socket closed (code %s); reconnecting", code)

    async def _read_socket(self, ws: aiohttp.ClientWebSocketResponse) -> int | None:
        """Turn one socket's frames into events until it closes or says GO_AWAY; returns the
        server's close code. That is read from the close frame itself: aiohttp reports 1006
        in ``close_code`` when the server drops the connection before our close reply."""
        while True:
            frame = await ws.receive()
            if frame.type == aiohttp.WSMsgType.CLOSE:
                return int(frame.data) if isinstance(frame.data, int) else ws.close_code
            if frame.type in (
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return ws.close_code
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = decode_message(frame.data)
            if msg is None:
                logger.debug("ignoring unknown signaling frame: %.200s", frame.data)
                continue
            await self._events.put(SignalingEvent("message", msg))
            if msg.type == "GO_AWAY":  # reconnect now, before the server closes
                await ws.close()
                return None

    async def events(self) -> AsyncIterator[SignalingEvent]:
        """Events in order until the client is closed."""
        while True:
            ev = await self._events.get()
            yield ev
            if ev.kind == "closed":
                return

    async def next_event(self, timeout: float | None = None) -> SignalingEvent:
        """The next event (``asyncio.TimeoutError`` after ``timeout`` seconds)."""
        return await asyncio.wait_for(self._events.get(), timeout)

    async def send(
        self,
        action: Literal["SDP_OFFER", "SDP_ANSWER", "ICE_CANDIDATE"],
        payload: dict[str, Any],
        recipient_client_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Send a message; returns its correlationId (a STATUS_RESPONSE names it on error)."""
        if not self.is_open:
            raise SignalingError("signaling socket is not open")
        correlation_id = correlation_id or uuid.uuid4().hex
        frame: dict[str, Any] = {
            "action": action,
            "messagePayload": base64.b64encode(json.dumps(payload).encode()).decode(),
            "correlationId": correlation_id,
        }
        if recipient_client_id:
            frame["recipientClientId"] = recipient_client_id
        assert self._ws is not None
        await self._ws.send_str(json.dumps(frame))
        return correlation_id

    async def send_raw(self, data: str | bytes) -> None:
        """Send a raw frame as is (tests use it for hostile input)."""
        assert self._ws is not None
        if isinstance(data, bytes):
            await self._ws.send_bytes(data)
        else:
            await self._ws.send_str(data)

    async def drop(self) -> None:
        """Close the current socket without closing the client: it reconnects."""
        if self._ws is not None:
            await self._ws.close()

    async def close(self) -> None:
        """Close for good (no reconnect)."""
        self._closing = True
        self._stop.set()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await reap(asyncio.wait_for(self._reader, 5), "the signaling reader", logger)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> SignalingClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
