"""The signaling WebSocket over real sockets: Local KVS's relay and kvsnb's client.

Every test talks to a Local KVS running on its own thread over 127.0.0.1: boto3 for the
control plane, raw aiohttp WebSockets (URLs from ``presign_url``) where the exact frames
matter, ``SignalingClient`` where the client's behaviour (reconnect, GO_AWAY) matters.
docs/wire.md, "Signaling WebSocket", is the reference for every assertion.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from botocore.credentials import Credentials
from yarl import URL

from kvsnb.client.signaling import SignalingClient, SignalingError, SignalingEvent, presign_url
from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits, StrictKeys
from kvsnb.local.signaling import relay as relay_module
from kvsnb.local.signaling.relay import (
    CLOSE_CHANNEL_DELETED,
    CLOSE_GO_AWAY,
    CLOSE_IDLE,
    CLOSE_MAX_DURATION,
    CLOSE_REPLACED,
)
from tests.conftest import SignalingChannel, make_channel, make_client, wait_for, wait_until

pytestmark = pytest.mark.timeout(30)

REGION = "us-west-2"
CREDENTIALS = Credentials("AKIDLOCALTEST", "local-secret")  # any key, outside strict mode
QUIET_S = 0.3  # how long "nothing arrives" is watched for
STOP_WITHIN_S = 20.0  # a liveness bound: a stop takes well under 1 s; a held one 30-60 s
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}
CANDIDATE = {
    "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def b64(obj: Any) -> str:
    """``messagePayload``: base64 of the JSON of ``obj``."""
    return base64.b64encode(json.dumps(obj).encode()).decode()


def unb64(payload: str) -> Any:
    """The JSON inside a ``messagePayload``."""
    return json.loads(base64.b64decode(payload))


class Sock:
    """A raw client WebSocket: send frames as the SDKs write them, read frames as JSON."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(
        self,
        action: str,
        payload: Any,
        recipient: str | None = None,
        corr: str | None = None,
    ) -> str:
        """Send a JS-SDK-style (camelCase) frame; returns the messagePayload sent."""
        encoded = payload if isinstance(payload, str) else b64(payload)
        frame: dict[str, Any] = {"action": action, "messagePayload": encoded}
        if recipient is not None:
            frame["recipientClientId"] = recipient
        if corr is not None:
            frame["correlationId"] = corr
        await self.ws.send_str(json.dumps(frame))
        return encoded

    async def recv(self, timeout: float = 2.0) -> dict[str, Any]:
        """The next text frame, parsed (fails on close or timeout)."""
        msg = await self.ws.receive(timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg}"
        data = json.loads(msg.data)
        assert isinstance(data, dict)
        return data

    async def quiet(self, timeout: float = QUIET_S) -> None:
        """Assert that nothing arrives for ``timeout`` seconds (and the socket stays open)."""
        with pytest.raises(asyncio.TimeoutError):
            msg = await self.ws.receive(timeout)
            pytest.fail(f"expected silence, got {msg}")
        assert not self.ws.closed

    async def synced(self) -> None:
        """Return once the relay has handled every frame sent so far on this socket (it
        handles a socket's frames in order, and answers this bad one)."""
        corr = f"sync-{uuid.uuid4().hex[:8]}"
        await self.send("SYNC", OFFER, corr=corr)
        frame = await self.recv()
        assert frame["statusResponse"]["correlationId"] == corr

    async def frames(self, timeout: float = QUIET_S) -> list[dict[str, Any]]:
        """Every text frame that arrives until ``timeout`` seconds of silence."""
        out = []
        while True:
            try:
                out.append(await self.recv(timeout))
            except TimeoutError:
                return out

    async def closed(self, timeout: float = 3.0) -> tuple[int | None, str]:
        """Wait for the server to close the socket: the code and reason of its close frame
        (not ``ws.close_code``, which aiohttp turns into 1006 when the server drops the
        connection before our close reply went out)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.ws.receive(max(0.01, deadline - time.monotonic()))
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return msg.data, msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return self.ws.close_code, ""
            assert time.monotonic() < deadline, "socket was not closed"


class Net:
    """One aiohttp session for raw sockets, plus every SignalingClient of a test."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession()
        self.clients: list[SignalingClient] = []

    async def raw(
        self,
        chan: SignalingChannel,
        role: str = "MASTER",
        client_id: str | None = None,
        credentials: Credentials = CREDENTIALS,
    ) -> Sock:
        """Open a raw socket as master or viewer (raises WSServerHandshakeError on refusal)."""
        endpoint = chan.master_wss if role == "MASTER" else chan.viewer_wss
        url = presign_url(endpoint, chan.arn, credentials, REGION, client_id)
        return Sock(await self.session.ws_connect(URL(url, encoded=True), autoping=True))

    async def client(
        self,
        chan: SignalingChannel,
        role: str = "MASTER",
        client_id: str | None = None,
        reconnect: bool = True,
        credentials: Credentials = CREDENTIALS,
    ) -> SignalingClient:
        """Open a SignalingClient (closed at the end of the test)."""
        endpoint = chan.master_wss if role == "MASTER" else chan.viewer_wss
        c = SignalingClient(
            endpoint,
            chan.arn,
            credentials,
            REGION,
            role="MASTER" if role == "MASTER" else "VIEWER",
            client_id=client_id,
            reconnect=reconnect,
        )
        self.clients.append(c)
        await c.open()
        assert (await c.next_event(2)).kind == "open"
        return c

    async def close(self) -> None:
        """Close every client and raw socket."""
        for c in self.clients:
            await c.close()
        await self.session.close()


@pytest.fixture
async def net(local_kvs: LocalKvs) -> AsyncIterator[Net]:
    """Client sockets; closed before the ``local_kvs`` fixture stops."""
    n = Net()
    yield n
    await n.close()


@asynccontextmanager
async def local(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[LocalKvs, Any, Net]]:
    """A Local KVS of its own (``signaling=SignalingLimits(...)``, ``strict_keys=...``), a
    control-plane client and a ``Net``; stopped off the test's loop so that its sockets can
    answer the close handshake."""
    config.setdefault("signaling", SignalingLimits(connects_per_s=100.0))
    kvs = LocalKvs(LocalKvsConfig(data_dir=tmp_path / "own", **config))
    kvs.start_in_thread()
    n = Net()
    try:
        yield kvs, make_client("kinesisvideo", kvs.url), n
    finally:
        await n.close()
        await asyncio.to_thread(kvs.stop_in_thread)


async def registered(kvs: LocalKvs, count: int, channel_arn: str | None = None) -> None:
    """Wait until the relay has registered ``count`` connections (of one channel, or all): a
    client sees the handshake's 101 a moment before the relay files the connection."""
    assert kvs.relay is not None
    relay = kvs.relay
    await wait_until(
        lambda: (
            len([c for c in relay.connections() if channel_arn in (None, c.channel_arn)]) >= count
        ),
        f"{count} connections registered",
        deadline_s=10.0,
        every_s=0.01,
    )


async def next_kind(client: SignalingClient, kind: str, timeout: float = 3.0) -> SignalingEvent:
    """The next event of ``kind``, skipping others."""
    deadline = time.monotonic() + timeout
    while True:
        ev = await client.next_event(max(0.01, deadline - time.monotonic()))
        if ev.kind == kind:
            return ev


def expect_status(frame: dict[str, Any], corr: str, error_type: str, code: str = "400") -> None:
    """``frame`` is exactly a STATUS_RESPONSE for ``corr``."""
    assert set(frame) == {"messageType", "statusResponse"}
    assert frame["messageType"] == "STATUS_RESPONSE"
    status = frame["statusResponse"]
    assert set(status) == {"correlationId", "errorType", "statusCode", "description", "success"}
    assert status["correlationId"] == corr
    assert status["errorType"] == error_type
    assert status["statusCode"] == code and isinstance(status["statusCode"], str)
    assert status["success"] is False
    assert isinstance(status["description"], str) and status["description"]


async def assert_relay_works(net: Net, kv: Any) -> None:
    """A fresh master and viewer on a fresh channel exchange messages; boto3 still works."""
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "check-viewer")
    sent = await viewer.send("SDP_OFFER", OFFER)
    assert await master.recv() == {
        "senderClientId": "check-viewer",
        "messageType": "SDP_OFFER",
        "messagePayload": sent,
    }
    sent = await master.send("SDP_ANSWER", ANSWER, recipient="check-viewer")
    assert await viewer.recv() == {"messageType": "SDP_ANSWER", "messagePayload": sent}
    info = kv.describe_signaling_channel(ChannelARN=chan.arn)["ChannelInfo"]
    assert info["ChannelStatus"] == "ACTIVE"


# ---------------------------------------------------------------------------- routing


async def test_routing_both_directions_exact_shapes(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "viewer-1")

    sent = await viewer.send("SDP_OFFER", OFFER, corr="c-offer")
    frame = await master.recv()
    assert frame == {
        "senderClientId": "viewer-1",
        "messageType": "SDP_OFFER",
        "messagePayload": sent,
    }
    assert unb64(frame["messagePayload"]) == OFFER

    sent = await master.send("SDP_ANSWER", ANSWER, recipient="viewer-1", corr="c-answer")
    frame = await viewer.recv()
    assert frame == {"messageType": "SDP_ANSWER", "messagePayload": sent}
    assert "senderClientId" not in frame

    sent = await viewer.send("ICE_CANDIDATE", CANDIDATE, corr="c-ice-v")
    assert await master.recv() == {
        "senderClientId": "viewer-1",
        "messageType": "ICE_CANDIDATE",
        "messagePayload": sent,
    }
    sent = await master.send("ICE_CANDIDATE", CANDIDATE, recipient="viewer-1", corr="c-ice-m")
    assert await viewer.recv() == {"messageType": "ICE_CANDIDATE", "messagePayload": sent}

    # Every message succeeded and carried a correlationId: no STATUS_RESPONSE at all.
    await master.quiet()
    await viewer.quiet()


async def test_master_reaches_the_right_viewer(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    v1 = await net.raw(chan, "VIEWER", "v1")
    v2 = await net.raw(chan, "VIEWER", "v2")
    await v1.send("SDP_OFFER", OFFER)
    await v2.send("SDP_OFFER", OFFER)
    senders = {(await master.recv())["senderClientId"] for _ in range(2)}
    assert senders == {"v1", "v2"}
    sent = await master.send("SDP_ANSWER", ANSWER, recipient="v2")
    assert await v2.recv() == {"messageType": "SDP_ANSWER", "messagePayload": sent}
    await v1.quiet()


async def test_signaling_client_round_trip(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.client(chan, "MASTER")
    viewer = await net.client(chan, "VIEWER", "cv-1")
    await viewer.send("SDP_OFFER", OFFER)
    ev = await master.next_event(2)
    assert ev.kind == "message" and ev.message is not None
    assert ev.message.type == "SDP_OFFER"
    assert ev.message.payload == OFFER
    assert ev.message.sender_client_id == "cv-1"
    await master.send("SDP_ANSWER", ANSWER, recipient_client_id="cv-1")
    ev = await viewer.next_event(2)
    assert ev.message is not None
    assert (ev.message.type, ev.message.payload, ev.message.sender_client_id) == (
        "SDP_ANSWER",
        ANSWER,
        None,
    )
    await viewer.send("ICE_CANDIDATE", CANDIDATE)
    ev = await master.next_event(2)
    assert ev.message is not None and ev.message.payload == CANDIDATE


async def test_c_sdk_pascal_case_keys(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "c-sdk-viewer")

    # The C SDK's offer: PascalCase, "" for the (unknown) recipient, an IceServerList.
    frame = {
        "Action": "SDP_OFFER",
        "RecipientClientId": "",
        "MessagePayload": b64(OFFER),
        "CorrelationId": "1700000000000",
        "IceServerList": [{"Uris": ["turn:example"], "Username": "u", "Password": "p"}],
    }
    await viewer.ws.send_str(json.dumps(frame))
    assert await master.recv() == {
        "senderClientId": "c-sdk-viewer",
        "messageType": "SDP_OFFER",
        "messagePayload": frame["MessagePayload"],
    }

    answer = {
        "Action": "SDP_ANSWER",
        "RecipientClientId": "c-sdk-viewer",
        "MessagePayload": b64(ANSWER),
        "CorrelationId": "1700000000001",
    }
    await master.ws.send_str(json.dumps(answer))
    assert await viewer.recv() == {
        "messageType": "SDP_ANSWER",
        "messagePayload": answer["MessagePayload"],
    }
    await viewer.quiet()

    # Mixed case works too; "" from the master is "no recipient", like leaving it out.
    await master.ws.send_str(
        json.dumps(
            {
                "ACTION": "ICE_CANDIDATE",
                "recipientclientid": "",
                "messagePayload": b64(CANDIDATE),
                "correlationID": "no-recipient",
            }
        )
    )
    expect_status(await master.recv(), "no-recipient", "InvalidArgumentException")
    await master.send("ICE_CANDIDATE", CANDIDATE, corr="left-out")
    expect_status(await master.recv(), "left-out", "InvalidArgumentException")
    await viewer.quiet()


async def test_master_may_send_a_client_id(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER", client_id="master-id")
    viewer = await net.raw(chan, "VIEWER", "v")
    sent = await viewer.send("SDP_OFFER", OFFER)
    assert (await master.recv())["messagePayload"] == sent
    sent = await master.send("SDP_ANSWER", ANSWER, recipient="v")
    assert await viewer.recv() == {"messageType": "SDP_ANSWER", "messagePayload": sent}


# ---------------------------------------------------------------------------- TTL queue


@pytest.fixture
def relay_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    """Move the relay's monotonic clock forward (the TTL queue and the reaper
    read it), instead of sleeping through a MessageTtlSeconds."""
    offset = [0.0]
    real = time.monotonic

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return real() + offset[0]

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

    monkeypatch.setattr(relay_module, "time", Clock())

    def advance(seconds: float) -> None:
        offset[0] += seconds

    yield advance


async def test_offer_waits_for_the_master_then_is_consumed(kv: Any, net: Net) -> None:
    chan = make_channel(kv, ttl=5)
    viewer = await net.raw(chan, "VIEWER", "early")
    sent_offer = await viewer.send("SDP_OFFER", OFFER, corr="queued")
    sent_ice = await viewer.send("ICE_CANDIDATE", CANDIDATE, corr="queued-ice")
    await viewer.quiet()  # queued, not an error

    master = await net.raw(chan, "MASTER")
    assert await master.recv() == {
        "senderClientId": "early",
        "messageType": "SDP_OFFER",
        "messagePayload": sent_offer,
    }
    assert await master.recv() == {
        "senderClientId": "early",
        "messageType": "ICE_CANDIDATE",
        "messagePayload": sent_ice,
    }
    await master.ws.close()

    # Delivered messages are consumed: a reconnecting master gets nothing.
    again = await net.raw(chan, "MASTER")
    await again.quiet()


async def test_answer_waits_for_the_viewer(kv: Any, net: Net) -> None:
    chan = make_channel(kv, ttl=5)
    master = await net.raw(chan, "MASTER")
    sent = await master.send("SDP_ANSWER", ANSWER, recipient="later", corr="for-later")
    await master.quiet()
    viewer = await net.raw(chan, "VIEWER", "later")
    assert await viewer.recv() == {"messageType": "SDP_ANSWER", "messagePayload": sent}
    other = await net.raw(chan, "VIEWER", "someone-else")
    await other.quiet()


async def test_offer_expires_after_message_ttl(
    kv: Any, net: Net, relay_clock: Callable[[float], None]
) -> None:
    chan = make_channel(kv, ttl=5)
    viewer = await net.raw(chan, "VIEWER", "v")
    await viewer.send("SDP_OFFER", OFFER)
    await viewer.synced()  # queued before the clock moves
    relay_clock(4.0)  # within MessageTtlSeconds: still there
    master = await net.raw(chan, "MASTER")
    assert (await master.recv())["messageType"] == "SDP_OFFER"
    await master.ws.close()

    await viewer.send("SDP_OFFER", OFFER)
    await viewer.synced()
    relay_clock(6.0)  # past MessageTtlSeconds = 5
    master = await net.raw(chan, "MASTER")
    await master.quiet()
    # The queue is not stuck either: live messages still flow.
    sent = await viewer.send("SDP_OFFER", OFFER)
    assert (await master.recv())["messagePayload"] == sent


async def test_ttl_is_per_channel(kv: Any, net: Net, relay_clock: Callable[[float], None]) -> None:
    short = make_channel(kv, ttl=5)
    long = make_channel(kv, ttl=120)
    for chan in (short, long):
        viewer = await net.raw(chan, "VIEWER", "v")
        await viewer.send("SDP_OFFER", OFFER)
        await viewer.synced()
    relay_clock(60.0)
    assert await (await net.raw(short, "MASTER")).frames() == []
    frames = await (await net.raw(long, "MASTER")).frames()
    assert [f["messageType"] for f in frames] == ["SDP_OFFER"]


async def test_newer_offer_replaces_an_undelivered_one(kv: Any, net: Net) -> None:
    chan = make_channel(kv, ttl=60)
    v1 = await net.raw(chan, "VIEWER", "v1")
    v2 = await net.raw(chan, "VIEWER", "v2")
    await v1.send("SDP_OFFER", {"type": "offer", "sdp": "first"})
    await v2.send("SDP_OFFER", {"type": "offer", "sdp": "other viewer"})
    newest = await v1.send("SDP_OFFER", {"type": "offer", "sdp": "second"})
    master = await net.raw(chan, "MASTER")
    frames = await master.frames()
    offers = [(f["senderClientId"], unb64(f["messagePayload"])["sdp"]) for f in frames]
    assert sorted(offers) == [("v1", "second"), ("v2", "other viewer")]
    assert {"senderClientId": "v1", "messageType": "SDP_OFFER", "messagePayload": newest} in (
        frames
    )


# ---------------------------------------------------------------------------- roles


async def test_newest_master_wins(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    old = await net.raw(chan, "MASTER")
    new = await net.raw(chan, "MASTER")
    code, reason = await old.closed()
    assert code == CLOSE_REPLACED
    assert "replaced" in reason
    viewer = await net.raw(chan, "VIEWER", "v")
    sent = await viewer.send("SDP_OFFER", OFFER)
    assert (await new.recv())["messagePayload"] == sent


async def test_new_master_served_while_old_one_is_unresponsive(kv: Any, net: Net) -> None:
    """Replacing a master must not wait for the old socket's close handshake (a dead
    master's TCP connection never answers)."""
    chan = make_channel(kv, ttl=60)
    viewer = await net.raw(chan, "VIEWER", "v")
    await net.raw(chan, "MASTER")  # never read again: it will not answer the close
    sent = await viewer.send("ICE_CANDIDATE", CANDIDATE)
    new = await net.raw(chan, "MASTER")
    answer = await new.send("SDP_ANSWER", ANSWER, recipient="v")
    assert await viewer.recv(1.0) == {"messageType": "SDP_ANSWER", "messagePayload": answer}
    del sent


async def test_same_client_id_newest_viewer_wins(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    old = await net.raw(chan, "VIEWER", "same")
    new = await net.raw(chan, "VIEWER", "same")
    code, reason = await old.closed()
    assert (code, "replaced" in reason) == (CLOSE_REPLACED, True)
    sent = await master.send("SDP_ANSWER", ANSWER, recipient="same")
    assert await new.recv() == {"messageType": "SDP_ANSWER", "messagePayload": sent}
    sent = await new.send("SDP_OFFER", OFFER)
    assert (await master.recv())["senderClientId"] == "same"


async def test_eleventh_viewer_is_refused(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    viewers = [await net.raw(chan, "VIEWER", f"v{i}") for i in range(10)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await net.raw(chan, "VIEWER", "v10")
    assert err.value.status == 400
    assert err.value.headers is not None
    assert err.value.headers["x-amzn-ErrorType"].startswith("ClientLimitExceededException")
    # A known ClientId may still reconnect (it replaces itself), and the master still fits.
    again = await net.raw(chan, "VIEWER", "v3")
    assert (await viewers[3].closed())[0] == CLOSE_REPLACED
    master = await net.raw(chan, "MASTER")
    sent = await again.send("SDP_OFFER", OFFER)
    assert (await master.recv())["messagePayload"] == sent


async def test_viewer_endpoint_needs_a_client_id(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await net.raw(chan, "VIEWER", None)
    assert err.value.status == 400


async def test_bad_handshake_parameters_are_refused_with_400(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    bad_id = SignalingChannel(chan.arn, chan.master_wss, chan.viewer_wss)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await net.raw(bad_id, "VIEWER", "not a valid id!")
    assert err.value.status == 400
    no_arn = SignalingChannel("", chan.master_wss, chan.viewer_wss)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await net.raw(no_arn, "MASTER")
    assert err.value.status == 400


async def test_endpoint_without_role_path(kv: Any, net: Net) -> None:
    """docs/wire.md: the path may be empty or ``/``; the ClientId then tells a viewer."""
    chan = make_channel(kv)
    base = chan.master_wss.rsplit("/", 1)[0]  # ws://HOST:PORT/signaling
    bare = SignalingChannel(chan.arn, base + "/", base)
    master = await net.raw(bare, "MASTER")
    viewer = await net.raw(bare, "VIEWER", "bare-viewer")
    sent = await viewer.send("SDP_OFFER", OFFER)
    assert await master.recv() == {
        "senderClientId": "bare-viewer",
        "messageType": "SDP_OFFER",
        "messagePayload": sent,
    }


async def test_unknown_channel_is_refused_with_404(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    ghost = SignalingChannel(
        chan.arn.replace(chan.arn.split("/")[1], "no-such-channel"), *([chan.master_wss] * 2)
    )
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await net.raw(ghost, "MASTER")
    assert err.value.status == 404


# ---------------------------------------------------------------------------- errors


async def test_status_response_only_for_errors_with_a_correlation_id(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "v")

    await viewer.send("SDP_OFFER", OFFER, corr="fine")
    await master.recv()
    await viewer.quiet()  # success: no STATUS_RESPONSE

    await master.send("SDP_ANSWER", ANSWER, corr="no-recipient")  # an error, with an id
    expect_status(await master.recv(), "no-recipient", "InvalidArgumentException")

    await master.send("SDP_ANSWER", ANSWER)  # the same error without an id: silence
    await master.quiet()
    await master.send("SDP_ANSWER", ANSWER, corr="bad id with spaces")  # unusable id
    await master.quiet()
    await viewer.quiet()


async def test_client_sees_status_response(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.client(chan, "MASTER")
    corr = await master.send("SDP_ANSWER", ANSWER)  # no recipient
    ev = await master.next_event(2)
    assert ev.message is not None and ev.message.type == "STATUS_RESPONSE"
    assert ev.message.status is not None
    assert ev.message.status.correlation_id == corr
    assert ev.message.status.error_type == "InvalidArgumentException"
    assert ev.message.status.status_code == "400"


async def test_payload_limit(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "v")
    at_limit = base64.b64encode(b"x" * 7680).decode()
    assert len(at_limit) == 10 * 1024
    await viewer.send("SDP_OFFER", at_limit, corr="at-limit")
    assert (await master.recv())["messagePayload"] == at_limit
    await viewer.quiet()

    over = base64.b64encode(b"x" * 7683).decode()
    await viewer.send("SDP_OFFER", over, corr="too-big")
    expect_status(await viewer.recv(), "too-big", "InvalidArgumentException")
    await viewer.send("SDP_OFFER", over)  # no id: dropped silently
    await viewer.quiet()
    await master.quiet()


async def test_malformed_frames(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "v")

    # Not JSON, or JSON that is not an object: ignored (nothing to answer to).
    await viewer.ws.send_str("{not json")
    await viewer.ws.send_str('["SDP_OFFER"]')
    await viewer.ws.send_str("null")
    await viewer.ws.send_str("[" * 3000 + "]" * 3000)  # too deep for any JSON reader
    await viewer.quiet()

    # Bad base64, an unknown action, a missing or non-string payload: STATUS_RESPONSE 400.
    await viewer.send("SDP_OFFER", "%%% not base64 %%%", corr="bad-b64")
    expect_status(await viewer.recv(), "bad-b64", "InvalidArgumentException")
    await viewer.send("HELLO", OFFER, corr="bad-action")
    expect_status(await viewer.recv(), "bad-action", "InvalidArgumentException")
    await viewer.ws.send_str(json.dumps({"action": "SDP_OFFER", "correlationId": "no-pl"}))
    expect_status(await viewer.recv(), "no-pl", "InvalidArgumentException")
    await viewer.ws.send_str(
        json.dumps({"action": "SDP_OFFER", "messagePayload": 7, "correlationId": "int-pl"})
    )
    expect_status(await viewer.recv(), "int-pl", "InvalidArgumentException")
    await viewer.send("SDP_OFFER", OFFER, recipient="bad id!", corr="bad-recipient")
    expect_status(await viewer.recv(), "bad-recipient", "InvalidArgumentException")
    # The same without correlationId: silence.
    await viewer.send("SDP_OFFER", "%%%")
    await viewer.send("HELLO", OFFER)
    await viewer.quiet()
    await master.quiet()  # none of it reached the master

    # The socket that sent all that still works.
    sent = await viewer.send("SDP_OFFER", OFFER)
    assert (await master.recv())["messagePayload"] == sent

    # A binary frame: text frames only, the socket is closed with 1003 (unsupported data).
    other = await net.raw(chan, "VIEWER", "binary")
    await other.ws.send_bytes(b"\x00\x01binary")
    code, reason = await other.closed()
    assert code == aiohttp.WSCloseCode.UNSUPPORTED_DATA
    assert "text" in reason

    # Everything else keeps working: this channel, a new one, and the control plane.
    sent = await master.send("SDP_ANSWER", ANSWER, recipient="v")
    assert await viewer.recv() == {"messageType": "SDP_ANSWER", "messagePayload": sent}
    await assert_relay_works(net, kv)


async def test_client_send_raw_binary_then_reconnects(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.client(chan, "MASTER")
    await master.send_raw(b"\x00binary")
    await next_kind(master, "reconnected")
    await master.send_raw("{garbage")
    viewer = await net.client(chan, "VIEWER", "v")
    await viewer.send("SDP_OFFER", OFFER)
    ev = await next_kind(master, "message")
    assert ev.message is not None and ev.message.sender_client_id == "v"


# ---------------------------------------------------------------------------- limits


async def test_per_connection_rate_limits(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "v")

    for i in range(6):
        await viewer.send("SDP_OFFER", OFFER, corr=f"offer-{i}")
    errors = await viewer.frames()
    assert errors, "6 offers within a second must hit the 5/s limit"
    for frame in errors:
        expect_status(
            frame, frame["statusResponse"]["correlationId"], "ClientLimitExceededException"
        )
    delivered = await master.frames()
    assert len(delivered) + len(errors) == 6
    assert 5 <= len(delivered) < 6

    for i in range(6):
        await master.send("SDP_ANSWER", ANSWER, recipient="v", corr=f"answer-{i}")
    assert len(await master.frames()) >= 1
    for i in range(22):
        await master.send("ICE_CANDIDATE", CANDIDATE, recipient="v", corr=f"ice-{i}")
    limited = await master.frames()
    assert limited
    assert {f["statusResponse"]["errorType"] for f in limited} == {"ClientLimitExceededException"}

    # The limit is per connection: another viewer is not affected.
    fresh = await net.raw(chan, "VIEWER", "fresh")
    await fresh.send("SDP_OFFER", OFFER, corr="fresh-offer")
    assert (await master.recv())["senderClientId"] == "fresh"
    await fresh.quiet()


async def test_connects_per_second(tmp_path: Path) -> None:
    limits = SignalingLimits(connects_per_s=3.0)
    async with local(tmp_path, signaling=limits) as (_kvs, kv, net):
        chan = make_channel(kv)
        await net.raw(chan, "MASTER")
        await net.raw(chan, "VIEWER", "a")
        await net.raw(chan, "VIEWER", "b")
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await net.raw(chan, "VIEWER", "c")
        assert err.value.status == 400
        assert err.value.headers is not None
        assert err.value.headers["x-amzn-ErrorType"].startswith("ClientLimitExceededException")
        # Per channel: another channel is not affected; and the bucket refills.
        other = make_channel(kv)
        await net.raw(other, "MASTER")

        async def refilled() -> bool:
            try:
                await net.raw(chan, "VIEWER", "c")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 400  # the limit again, until a token is back
                return False
            return True

        await wait_for(refilled, "the bucket refills (3 connects/s)", deadline_s=10.0)


async def test_idle_timeout_closes_and_client_reconnects(tmp_path: Path) -> None:
    limits = SignalingLimits(connects_per_s=100.0, idle_timeout_s=0.5)
    async with local(tmp_path, signaling=limits) as (_kvs, kv, net):
        chan = make_channel(kv)
        raw = await net.raw(chan, "VIEWER", "raw")
        client = await net.client(chan, "MASTER")
        code, reason = await raw.closed()
        assert code == CLOSE_IDLE and "idle" in reason
        await next_kind(client, "reconnected", timeout=3)
        assert client.connects >= 2
        # Activity keeps a socket open past the idle timeout.
        busy = await net.raw(chan, "VIEWER", "busy")
        started = time.monotonic()
        while time.monotonic() - started < 3 * limits.idle_timeout_s:
            await busy.send("ICE_CANDIDATE", CANDIDATE)
            assert not busy.ws.closed
            await asyncio.sleep(0.05)  # paces the sender: 10 frames per idle timeout
        assert not busy.ws.closed


async def test_maximum_connection_time(tmp_path: Path) -> None:
    limits = SignalingLimits(connects_per_s=100.0, max_connection_s=0.6)
    async with local(tmp_path, signaling=limits) as (_kvs, kv, net):
        chan = make_channel(kv)
        raw = await net.raw(chan, "VIEWER", "raw")
        client = await net.client(chan, "MASTER")
        started = time.monotonic()
        for _ in range(3):  # busy, yet closed at the maximum connection time
            await raw.send("ICE_CANDIDATE", CANDIDATE)
            await asyncio.sleep(0.1)  # paces the sender
        code, reason = await raw.closed()
        assert code == CLOSE_MAX_DURATION and "maximum" in reason
        assert time.monotonic() - started >= 0.3
        await next_kind(client, "reconnected", timeout=3)


# ---------------------------------------------------------------------------- GO_AWAY


async def test_go_away_reaches_every_socket_and_clients_reconnect(
    local_kvs: LocalKvs, kv: Any, net: Net
) -> None:
    chan = make_channel(kv)
    other = make_channel(kv)
    master = await net.client(chan, "MASTER")
    viewer = await net.client(chan, "VIEWER", "v")
    raw = await net.raw(other, "MASTER")
    assert local_kvs.relay is not None

    await registered(local_kvs, 3)
    started = time.monotonic()
    told = local_kvs.call(local_kvs.relay.go_away(grace_s=5.0))
    assert told == 3
    assert await raw.recv() == {"messageType": "GO_AWAY", "messagePayload": ""}
    for c in (master, viewer):
        ev = await next_kind(c, "message")
        assert ev.message is not None and ev.message.type == "GO_AWAY"
        # The client reconnects at once, on its own, long before the server closes.
        await next_kind(c, "reconnected", timeout=2)
    assert time.monotonic() - started < 2.0
    assert master.connects == 2 and viewer.connects == 2

    # The new sockets work.
    await viewer.send("SDP_OFFER", OFFER)
    ev = await next_kind(master, "message")
    assert ev.message is not None and ev.message.sender_client_id == "v"


async def test_go_away_closes_after_the_grace_period(
    local_kvs: LocalKvs, kv: Any, net: Net
) -> None:
    chan = make_channel(kv)
    other = make_channel(kv)
    raw = await net.raw(chan, "MASTER")
    bystander = await net.raw(other, "MASTER")
    assert local_kvs.relay is not None
    await registered(local_kvs, 1, chan.arn)
    started = time.monotonic()
    assert local_kvs.call(local_kvs.relay.go_away(chan.arn, grace_s=0.3)) == 1
    assert (await raw.recv())["messageType"] == "GO_AWAY"
    code, reason = await raw.closed()
    assert code == CLOSE_GO_AWAY and reason == "GO_AWAY"
    assert time.monotonic() - started >= 0.25
    await bystander.quiet()  # GO_AWAY for one channel only


async def test_reconnect_ice_server(local_kvs: LocalKvs, kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.client(chan, "MASTER")
    raw = await net.raw(chan, "VIEWER", "v")
    assert local_kvs.relay is not None
    await registered(local_kvs, 2, chan.arn)
    assert local_kvs.call(local_kvs.relay.reconnect_ice_server(chan.arn)) == 2
    assert await raw.recv() == {"messageType": "RECONNECT_ICE_SERVER", "messagePayload": ""}
    ev = await master.next_event(2)
    assert ev.message is not None and ev.message.type == "RECONNECT_ICE_SERVER"
    assert ev.message.payload is None
    await raw.quiet()  # the socket stays open
    assert master.is_open and master.connects == 1


# ---------------------------------------------------------------------------- storage, deletion


async def test_storage_mode_stops_viewer_to_master_delivery(
    local_kvs: LocalKvs, kv: Any, net: Net
) -> None:
    chan = make_channel(kv)
    stream_arn = kv.create_stream(StreamName="stored", DataRetentionInHours=1)["StreamARN"]
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "v")
    sent = await viewer.send("SDP_OFFER", OFFER)
    assert (await master.recv())["messagePayload"] == sent  # direct, before storage

    kv.update_media_storage_configuration(
        ChannelARN=chan.arn,
        MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"},
    )
    await viewer.send("SDP_OFFER", OFFER, corr="to-storage")
    await viewer.send("ICE_CANDIDATE", CANDIDATE, corr="to-storage-ice")
    # Whatever the master gets now (the storage session's messages), nothing from the viewer.
    for frame in await master.frames(0.5):
        assert "senderClientId" not in frame
    viewer_frames = await viewer.frames()
    assert local_kvs.relay is not None
    if local_kvs.relay.storage is None:  # no storage session behind the relay
        assert len(viewer_frames) == 2
        expect_status(viewer_frames[0], "to-storage", "InvalidArgumentException")
    # A viewer connecting afterwards is not routed to the master either.
    late = await net.raw(chan, "VIEWER", "late")
    await late.send("SDP_OFFER", OFFER)
    for frame in await master.frames(0.3):
        assert "senderClientId" not in frame

    # DISABLED again: direct delivery is back.
    kv.update_media_storage_configuration(
        ChannelARN=chan.arn, MediaStorageConfiguration={"Status": "DISABLED"}
    )
    sent = await late.send("SDP_OFFER", OFFER)
    frames = await master.frames()
    assert {"senderClientId": "late", "messageType": "SDP_OFFER", "messagePayload": sent} in (
        frames
    )


class BrokenStorage:
    """A storage session with a bug in every hook."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_client_message(self, conn: Any, msg: Any) -> None:
        self.calls.append(f"message {msg.action}")
        raise RuntimeError("bug in the storage session")

    async def on_client_connected(self, conn: Any) -> None:
        self.calls.append(f"connected {conn.role}")
        raise RuntimeError("bug in the storage session")

    async def on_client_disconnected(self, conn: Any) -> None:
        self.calls.append(f"disconnected {conn.role}")
        raise RuntimeError("bug in the storage session")


async def test_storage_session_bugs_do_not_break_the_relay(
    local_kvs: LocalKvs, kv: Any, net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = local_kvs.relay
    assert relay is not None
    broken = BrokenStorage()
    monkeypatch.setattr(relay, "storage", broken)
    chan = make_channel(kv)
    stream_arn = kv.create_stream(StreamName="broken", DataRetentionInHours=1)["StreamARN"]
    kv.update_media_storage_configuration(
        ChannelARN=chan.arn,
        MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "ENABLED"},
    )
    master = await net.raw(chan, "MASTER")
    await master.send("SDP_ANSWER", ANSWER, corr="to-broken")
    expect_status(await master.recv(), "to-broken", "InternalFailure", "500")
    await master.send("SDP_ANSWER", ANSWER)  # no id: silence, socket still open
    await master.quiet()
    await master.ws.close()
    assert broken.calls[:3] == ["connected MASTER", "message SDP_ANSWER", "message SDP_ANSWER"]
    await assert_relay_works(net, kv)


async def test_deleting_a_channel_closes_its_sockets(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    other = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "v")
    bystander = await net.raw(other, "VIEWER", "v")
    client = await net.client(chan, "VIEWER", "client", reconnect=False)
    kv.delete_signaling_channel(ChannelARN=chan.arn)
    for sock in (master, viewer):
        code, reason = await sock.closed()
        assert code == CLOSE_CHANNEL_DELETED and "deleted" in reason
    await next_kind(client, "closed")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await net.raw(chan, "MASTER")
    assert err.value.status == 404
    await bystander.quiet()
    await assert_relay_works(net, kv)


async def test_channel_deleted_from_another_thread_closes_sockets(
    local_kvs: LocalKvs, kv: Any, net: Net
) -> None:
    """The control plane may be driven in-process from a thread with no event loop (a
    notebook); the relay still closes the channel's sockets on its own loop."""
    chan = make_channel(kv)
    master = await net.raw(chan, "MASTER")
    assert local_kvs.control is not None
    await asyncio.to_thread(local_kvs.control.delete_signaling_channel, {"ChannelARN": chan.arn})
    code, _ = await master.closed()
    assert code == CLOSE_CHANNEL_DELETED
    await assert_relay_works(net, kv)


# ---------------------------------------------------------------------------- presigned URL


async def test_unsigned_or_malformed_url_is_refused_with_403(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    from urllib.parse import quote

    plain = f"{chan.master_wss}?X-Amz-ChannelARN={quote(chan.arn, safe='')}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await net.session.ws_connect(plain)
    assert err.value.status == 403
    assert err.value.headers is not None
    assert err.value.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationToken")

    signed = presign_url(chan.master_wss, chan.arn, CREDENTIALS, REGION)
    broken = signed.rsplit("X-Amz-Signature=", 1)[0] + "X-Amz-Signature=not-hex"
    no_sig = signed.rsplit("&X-Amz-Signature=", 1)[0]
    wrong_service = signed.replace("%2Fkinesisvideo%2F", "%2Fs3%2F")
    for url in (broken, no_sig, wrong_service):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await net.session.ws_connect(url)
        assert err.value.status == 403, url
    ws = await net.session.ws_connect(URL(signed, encoded=True))
    await ws.close()


async def test_presigned_url_in_strict_mode(tmp_path: Path) -> None:
    keys = StrictKeys("AKIDSTRICTEXAMPLE", "strict-secret")
    async with local(tmp_path, strict_keys=keys) as (kvs, _kv, net):
        creds = {"aws_access_key_id": keys.access_key, "aws_secret_access_key": keys.secret_key}
        kv = make_client("kinesisvideo", kvs.url, **creds)
        chan = make_channel(kv)
        good = Credentials(keys.access_key, keys.secret_key)
        master = await net.raw(chan, "MASTER", credentials=good)
        viewer = await net.raw(chan, "VIEWER", "strict-viewer", credentials=good)
        sent = await viewer.send("SDP_OFFER", OFFER)
        assert (await master.recv())["messagePayload"] == sent
        with_token = Credentials(keys.access_key, keys.secret_key, "a-session-token")
        await net.raw(chan, "VIEWER", "with-token", credentials=with_token)

        # SignalingClient sends the URL exactly as presigned, so a strict server accepts it.
        client_master = await net.client(chan, "MASTER", credentials=good)
        client_viewer = await net.client(chan, "VIEWER", "client-viewer", credentials=good)
        await client_viewer.send("SDP_OFFER", OFFER)
        ev = await next_kind(client_master, "message")
        assert ev.message is not None and ev.message.sender_client_id == "client-viewer"

        refused = [
            Credentials(keys.access_key, "wrong-secret"),
            Credentials("AKIDSOMEONEELSE", keys.secret_key),
        ]
        for creds_ in refused:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await net.raw(chan, "VIEWER", "intruder", credentials=creds_)
            assert err.value.status == 403

        # Tampering with a signed URL (another ClientId) breaks the signature.
        url = presign_url(chan.viewer_wss, chan.arn, good, REGION, "honest")
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await net.session.ws_connect(URL(url.replace("honest", "forged"), encoded=True))
        assert err.value.status == 403

        # SignalingClient surfaces the refusal with the status.
        client = SignalingClient(chan.master_wss, chan.arn, refused[0], REGION, reconnect=False)
        with pytest.raises(SignalingError) as serr:
            await client.open()
        assert serr.value.status == 403
        await client.close()


async def test_strict_mode_accepts_a_normalized_query(tmp_path: Path) -> None:
    keys = StrictKeys("AKIDSTRICTEXAMPLE", "strict-secret")
    """AWS decodes and re-encodes the query before checking the signature, so a URL whose
    HTTP stack normalized the percent-encoding (yarl turns the ARN's %3A into :) passes."""
    async with local(tmp_path, strict_keys=keys) as (kvs, _kv, _net):
        creds = {"aws_access_key_id": keys.access_key, "aws_secret_access_key": keys.secret_key}
        chan = make_channel(make_client("kinesisvideo", kvs.url, **creds))
        url = presign_url(
            chan.master_wss, chan.arn, Credentials(keys.access_key, keys.secret_key), REGION
        )
        assert "%3A" in url  # the ARN's colons were percent-encoded when signed
        requested: list[URL] = []

        async def on_request_start(
            _: Any, __: Any, params: aiohttp.TraceRequestStartParams
        ) -> None:
            requested.append(params.url)

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_request_start)
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            ws = await session.ws_connect(url)  # a str: yarl requotes the query
            assert ":" in urlsplit(str(requested[-1])).query  # and it went out normalized
            await registered(kvs, 1, chan.arn)  # accepted as the channel's master
            await ws.close()


# ---------------------------------------------------------------------------- client


async def test_replaced_client_stays_closed_instead_of_fighting(kv: Any, net: Net) -> None:
    """Two masters that both reconnect would replace each other for ever."""
    chan = make_channel(kv)
    old = await net.client(chan, "MASTER")
    new = await net.client(chan, "MASTER")
    await next_kind(old, "closed")
    assert not old.is_open
    with pytest.raises(asyncio.TimeoutError):
        await next_kind(new, "reconnected", timeout=0.5)
    assert new.is_open and (old.connects, new.connects) == (1, 1)


async def test_client_close_interrupts_reconnect_backoff(
    local_kvs: LocalKvs, kv: Any, net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    chan = make_channel(kv)
    client = await net.client(chan, "MASTER")
    unsigned = f"{chan.master_wss}?X-Amz-ChannelARN=x"
    client.url = lambda: unsigned  # type: ignore[method-assign]  # every reconnect: 403
    caplog.set_level(logging.INFO, logger="kvsnb.client.signaling")
    await client.drop()
    await wait_until(
        lambda: "signaling reconnect failed" in caplog.text, "a reconnect refused, backing off"
    )
    assert not client.is_open
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 1.0
    assert (await next_kind(client, "closed", timeout=1)).kind == "closed"


async def test_client_drop_reconnects_and_queued_offer_arrives(kv: Any, net: Net) -> None:
    chan = make_channel(kv, ttl=30)
    master = await net.client(chan, "MASTER")
    viewer = await net.raw(chan, "VIEWER", "v")
    await master.drop()
    await next_kind(master, "reconnected")
    sent = await viewer.send("SDP_OFFER", OFFER)
    ev = await next_kind(master, "message")
    assert ev.message is not None and ev.message.payload == unb64(sent)


async def test_client_ignores_unknown_server_frames(local_kvs: LocalKvs, kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    master = await net.client(chan, "MASTER")
    assert local_kvs.relay is not None
    await registered(local_kvs, 1, chan.arn)
    conn = local_kvs.relay.master(chan.arn)
    assert conn is not None

    async def hostile() -> None:
        await conn.ws.send_str('{"messageType": "SOMETHING_NEW", "messagePayload": ""}')
        await conn.ws.send_str("not json at all")
        await conn.ws.send_str("[]")
        await conn.ws.send_bytes(b"\x00binary")
        await conn.send({"messageType": "SDP_OFFER", "messagePayload": b64(OFFER)})

    local_kvs.call(hostile())
    ev = await master.next_event(2)
    assert ev.kind == "message" and ev.message is not None
    assert (ev.message.type, ev.message.payload, ev.message.sender_client_id) == (
        "SDP_OFFER",
        OFFER,
        None,
    )
    assert master.is_open and master.connects == 1


async def test_client_as_context_manager_and_events(kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    viewer = await net.raw(chan, "VIEWER", "v")
    async with SignalingClient(
        chan.master_wss, chan.arn, CREDENTIALS, REGION, client_id="m"
    ) as master:
        sent = await viewer.send("ICE_CANDIDATE", CANDIDATE)
        kinds = []
        async for ev in master.events():
            kinds.append(ev.kind)
            if ev.kind == "message":
                assert ev.message is not None and ev.message.payload == unb64(sent)
                await master.close()
        assert kinds == ["open", "message", "closed"]
    assert not master.is_open
    with pytest.raises(SignalingError):
        await master.send("SDP_ANSWER", ANSWER, recipient_client_id="v")


async def test_client_unreachable_endpoint(kv: Any) -> None:
    chan = make_channel(kv)
    client = SignalingClient("ws://127.0.0.1:1/signaling/master", chan.arn, CREDENTIALS, REGION)
    with pytest.raises(SignalingError) as err:
        await client.open()
    assert err.value.status is None
    await client.close()


# ---------------------------------------------------------------------------- stopping


async def test_a_stopping_relay_refuses_new_sockets(local_kvs: LocalKvs, kv: Any, net: Net) -> None:
    chan = make_channel(kv)
    client = await net.client(chan, "MASTER")
    assert local_kvs.relay is not None
    await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(local_kvs.relay.close(), local_kvs.loop)
    )
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await net.raw(chan, "VIEWER", "late")
    assert refused.value.status == 503
    await wait_until(lambda: not client.is_open, "the relay's close did not reach the client")
    assert client.connects == 1  # its reconnects are refused too


CLIENT_PAIRS = 10  # a master and a viewer each: many reconnects race the stop


async def test_stop_is_not_held_by_clients_that_reconnect(tmp_path: Path) -> None:
    # Each client reconnects the moment the server closes its socket (masters must: the JS
    # SDK re-joins after every signaling reconnect). A socket opened while Local KVS stops
    # used to hold the stop for aiohttp's 60 s shutdown timeout.
    kvs = LocalKvs(
        LocalKvsConfig(data_dir=tmp_path / "own", signaling=SignalingLimits(connects_per_s=100.0))
    ).start_in_thread()
    net = Net()
    try:
        kv = make_client("kinesisvideo", kvs.url)
        for n in range(CLIENT_PAIRS):
            chan = make_channel(kv)
            await net.client(chan, "MASTER")
            await net.client(chan, "VIEWER", f"v{n}")
        await registered(kvs, 2 * CLIENT_PAIRS)
        started = time.monotonic()
        await asyncio.to_thread(kvs.stop_in_thread)  # raises after 30 s on a held stop
        assert time.monotonic() - started < STOP_WITHIN_S, "a reconnected socket held the stop"
        await wait_until(
            lambda: not any(c.is_open for c in net.clients), "a client is still connected"
        )
    finally:
        await net.close()
        await asyncio.to_thread(kvs.stop_in_thread)
