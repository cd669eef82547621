"""Signaling fuzz: random and hostile frames against the Local KVS signaling relay, while a
witness master–viewer pair on the same channel keeps exchanging messages.

Faults: random text frames (bad JSON, bad base64, unknown actions, wrong types, payloads
over 10 KB, odd recipients and correlation ids), binary frames, floods past the per-socket
rate limits, wrong roles (a viewer addressing another viewer, a master without recipient),
a viewer that connects and never reads while the master keeps sending to it, and a client
that sends half a frame and stops. Each gets the right STATUS_RESPONSE (only with a
correlationId) or close code, the witness pair is never delayed or disturbed, and the
relay is up afterwards. Everything on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from botocore.credentials import Credentials
from yarl import URL

from kvsnb.client.signaling import presign_url
from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits
from kvsnb.local.signaling.relay import CLOSE_REPLACED
from tests.conftest import SignalingChannel, make_channel, make_client, wait_until

pytestmark = pytest.mark.timeout(60)

REGION = "us-west-2"
CREDS = Credentials("AKIDLOCALTEST", "local-secret")
WITNESS_PERIOD_S = 0.1  # the witness pair sends one message each way this often
# and each must arrive within this: at most one send timeout (1 s, the relay's default,
# after which a socket that stopped reading is cut off) plus scheduling slack
WITNESS_MAX_DELAY_S = 1.5
FUZZ_FRAMES = 150
CORR_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,256}$")
ACTIONS = ("SDP_OFFER", "SDP_ANSWER", "ICE_CANDIDATE")
MAX_PAYLOAD = 10 * 1024
CANDIDATE = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0"}


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def url_for(chan: SignalingChannel, role: str, client_id: str | None = None) -> str:
    endpoint = chan.master_wss if role == "MASTER" else chan.viewer_wss
    return presign_url(endpoint, chan.arn, CREDS, REGION, client_id)


class Witness:
    """A master and a viewer exchanging ICE_CANDIDATE messages both ways every
    ``WITNESS_PERIOD_S``; records how late each arrived, and anything unexpected."""

    def __init__(self, master: aiohttp.ClientWebSocketResponse, viewer: Any) -> None:
        self.master = master
        self.viewer = viewer
        self.sent: dict[str, float] = {}
        self.delays: list[float] = []
        self.problems: list[str] = []
        self.others_to_master: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Witness:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._send()),
            loop.create_task(self._read(self.master, "master")),
            loop.create_task(self._read(self.viewer, "viewer")),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        sender, readers = self._tasks[0], self._tasks[1:]
        await asyncio.gather(sender, return_exceptions=True)
        try:
            await wait_until(
                lambda: not self.sent,
                "the witness's last messages arrive",
                WITNESS_MAX_DELAY_S,
                every_s=0.02,
            )
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _send(self) -> None:
        n = 0
        while not self._stop.is_set():
            for ws, who, extra in (
                (self.viewer, "v", {}),
                (self.master, "m", {"recipientClientId": "witness-viewer"}),
            ):
                tag = f"{who}-{n}"
                payload = b64({**CANDIDATE, "usernameFragment": tag})
                self.sent[tag] = time.monotonic()
                frame = {"action": "ICE_CANDIDATE", "messagePayload": payload, **extra}
                await ws.send_str(json.dumps(frame))
            n += 1
            await asyncio.sleep(WITNESS_PERIOD_S)  # paces the witness

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, who: str) -> None:
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.problems.append(f"{who} socket got {msg.type!r} {msg.data!r}")
                return
            frame = json.loads(msg.data)
            if frame.get("messageType") == "STATUS_RESPONSE":
                self.problems.append(f"{who} got {frame}")
                continue
            if who == "master" and frame.get("senderClientId") != "witness-viewer":
                self.others_to_master.append(frame)
                continue
            tag = json.loads(base64.b64decode(frame["messagePayload"]))["usernameFragment"]
            self.delays.append(time.monotonic() - self.sent.pop(tag))

    def check(self) -> None:
        """Every witness message arrived, in time, and nothing else went wrong."""
        assert not self.problems, self.problems
        assert len(self.delays) >= 10, self.delays
        assert not self.sent, f"witness messages never delivered: {sorted(self.sent)[:10]}"
        assert max(self.delays) < WITNESS_MAX_DELAY_S, max(self.delays)


@dataclass
class Env:
    kvs: LocalKvs
    kv: Any
    session: aiohttp.ClientSession
    raw_sockets: list[socket.socket] = field(default_factory=list)

    async def ws(self, chan: SignalingChannel, role: str, client_id: str | None = None) -> Any:
        return await self.session.ws_connect(
            URL(url_for(chan, role, client_id), encoded=True), autoping=True
        )


@contextlib.asynccontextmanager
async def environment(tmp_path: Path, **limits_: Any) -> AsyncIterator[Env]:
    """A Local KVS (default signaling limits, but many connects per second, and ``limits_``)
    on its own thread, a control-plane client and an aiohttp session."""
    limits = SignalingLimits(**{"connects_per_s": 100.0, **limits_})
    kvs = LocalKvs(LocalKvsConfig(data_dir=tmp_path / "sig", signaling=limits))
    kvs.start_in_thread()
    session = aiohttp.ClientSession()
    env = Env(kvs, make_client("kinesisvideo", kvs.url), session)
    try:
        yield env
    finally:
        for s in env.raw_sockets:
            s.close()
        await session.close()
        await asyncio.to_thread(kvs.stop_in_thread)


async def registered(env: Env, chan: SignalingChannel, viewer: str) -> None:
    """Wait until the relay has filed the channel's master and ``viewer``: a client sees the
    handshake's 101 a moment before the relay files the connection."""
    relay = env.kvs.relay
    assert relay is not None
    await wait_until(
        lambda: relay.master(chan.arn) is not None and relay.viewer(chan.arn, viewer) is not None,
        f"the master and {viewer} registered",
        every_s=0.01,
    )


async def witness_pair(env: Env, chan: SignalingChannel) -> Witness:
    """A master and a viewer on a channel where no master is yet, both registered."""
    relay = env.kvs.relay
    assert relay is not None and relay.master(chan.arn) is None
    master = await env.ws(chan, "MASTER")
    viewer = await env.ws(chan, "VIEWER", "witness-viewer")
    await registered(env, chan, "witness-viewer")
    return Witness(master, viewer)


def assert_up(env: Env) -> None:
    """Local KVS still answers its health check and the control plane."""
    assert env.kv.list_signaling_channels()["ChannelInfoList"]
    import urllib.request

    with urllib.request.urlopen(f"{env.kvs.url}/_localkvs/health", timeout=5) as resp:
        assert resp.status == 200


# ---------------------------------------------------------------------------- random frames


def b64_tag(tag: str) -> str:
    """The messagePayload of the fuzz candidate tagged ``tag``."""
    return b64({**CANDIDATE, "usernameFragment": tag})


def fragment_tag(payload: str) -> str | None:
    """The ``usernameFragment`` a fuzz candidate carries (None for other payloads)."""
    try:
        data = json.loads(base64.b64decode(payload))
    except ValueError:
        return None
    return data.get("usernameFragment") if isinstance(data, dict) else None


def random_frame(rng: random.Random, n: int) -> tuple[str, str | None, bool]:
    """(text, correlationId or None, whether the relay must accept it as well formed)."""
    corr: str | None = f"fz-{n}"
    choice = rng.random()
    if choice < 0.08:
        return rng.choice(["{", "nul", '"str"', "[1,2", "\x00\x01", "{}}", ""]), None, False
    if choice < 0.14:
        return json.dumps(rng.choice([[1], None, 3, "x", True])), None, False
    frame: dict[str, Any] = {}
    valid = True
    action: Any = rng.choice([*ACTIONS, *ACTIONS, "HELLO", "sdp_offer", 5, None])
    if action is not None:
        frame[rng.choice(["action", "Action", "ACTION"])] = action
    valid &= action in ACTIONS
    kind = rng.random()
    payload: Any
    if kind < 0.5:
        payload = b64_tag(f"fz-{n}")
    elif kind < 0.6:
        payload = "%%% not base64 %%%"
        valid = False
    elif kind < 0.7:
        payload = base64.b64encode(os.urandom(MAX_PAYLOAD * 3 // 4 + 3)).decode()  # > 10 KB
        valid = False
    elif kind < 0.8:
        payload = rng.choice([7, None, [], {"a": 1}, ""])
        valid = False
    elif kind < 0.9:
        payload = base64.b64encode(os.urandom(rng.randint(1, 300))).decode()  # not JSON: fine
    else:
        payload = None
        valid = False
    if payload is not None:
        frame[rng.choice(["messagePayload", "MessagePayload"])] = payload
    elif kind >= 0.9:
        pass
    recipient = rng.random()
    if recipient < 0.15:
        frame["recipientClientId"] = rng.choice(["bad id!", "x" * 300, 12])
        valid = False
    elif recipient < 0.3:
        frame["RecipientClientId"] = rng.choice(["", "witness-viewer", "nobody"])
    c = rng.random()
    if c < 0.15:
        corr = None
    elif c < 0.25:
        frame["correlationId"] = rng.choice(["bad corr!", "y" * 300, 42])
        corr = None
    else:
        assert corr is not None
        frame[rng.choice(["correlationId", "CorrelationId"])] = corr
    if rng.random() < 0.2:
        frame[f"unknown{n}"] = rng.choice([1, "x", None, {"IceServerList": []}])
    return json.dumps(frame), corr, valid


async def test_random_frames_get_status_responses_and_harm_no_one(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        chan = make_channel(env.kv, "fuzz")
        rng = random.Random(20240611)
        fuzzer = await env.ws(chan, "VIEWER", "fuzzer")
        witness = await witness_pair(env, chan)
        answers: dict[str, dict[str, Any]] = {}
        expected: dict[str, bool] = {}
        sent_text: dict[str, str] = {}
        silent = 0
        async with witness:
            for n in range(FUZZ_FRAMES):
                text, corr, valid = random_frame(rng, n)
                await fuzzer.send_str(text)
                if corr is not None:
                    sent_text[corr] = text
                if corr is None:
                    silent += 1
                else:
                    expected[corr] = valid
                await asyncio.sleep(0.004)  # ~200 frames/s: floods past the limits
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    msg = await fuzzer.receive(0.5)
                except TimeoutError:
                    break
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                frame = json.loads(msg.data)
                assert frame["messageType"] == "STATUS_RESPONSE", frame
                status = frame["statusResponse"]
                assert status["correlationId"] not in answers, "answered twice"
                answers[status["correlationId"]] = status
        witness.check()
        assert not fuzzer.closed
        for corr, valid in expected.items():
            status = answers.get(corr)
            if not valid:
                assert status is not None, f"{corr}: no STATUS_RESPONSE for a bad frame"
                assert status["errorType"] == "InvalidArgumentException", status
            if status is not None:
                assert status["statusCode"] == "400" and status["success"] is False, status
                assert status["errorType"] in (
                    "InvalidArgumentException",
                    "ClientLimitExceededException",
                ), status
                assert valid or status["errorType"] == "InvalidArgumentException", status
        assert set(answers) <= set(expected), "a STATUS_RESPONSE without a correlationId"
        limited = [s for s in answers.values() if s["errorType"] == "ClientLimitExceededException"]
        assert limited, "the flood never hit a rate limit"
        # The well-formed frames that were not rate limited reached the master.
        well_formed = [
            c for c, v in expected.items() if v and c not in answers and b64_tag(c) in sent_text[c]
        ]
        # How many get past the per-type rate limits depends on how the flood meets the
        # token buckets (seen: 10 to 20 of 150); enough must, and every one must arrive.
        assert len(well_formed) >= 5, len(well_formed)
        got = {
            fragment_tag(f["messagePayload"])
            for f in witness.others_to_master
            if f.get("senderClientId") == "fuzzer"
        }
        missing = [c for c in well_formed if c not in got]
        assert not missing, missing
        assert silent > 0
        assert_up(env)


# ---------------------------------------------------------------------------- targeted faults


async def test_floods_binary_frames_and_wrong_roles(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        chan = make_channel(env.kv, "hostile")
        witness = await witness_pair(env, chan)
        async with witness:
            # Flood: 60 candidates at once from one viewer: 20/s with a burst of 20.
            flooder = await env.ws(chan, "VIEWER", "flooder")
            for i in range(60):
                frame = {"action": "ICE_CANDIDATE", "messagePayload": b64(CANDIDATE)}
                await flooder.send_str(json.dumps({**frame, "correlationId": f"f{i}"}))
            limited = await statuses(flooder, 1.0)
            assert 35 <= len(limited) <= 41, len(limited)
            assert {s["errorType"] for s in limited} == {"ClientLimitExceededException"}
            # Offers: 5/s.
            for i in range(8):
                frame = {"action": "SDP_OFFER", "messagePayload": b64({"type": "offer"})}
                await flooder.send_str(json.dumps({**frame, "correlationId": f"o{i}"}))
            assert len(await statuses(flooder, 0.5)) in (3, 4)

            # A viewer addressing another viewer: it goes to the master, never to the viewer.
            other = await env.ws(chan, "VIEWER", "other-viewer")
            sneaky = {
                "action": "SDP_OFFER",
                "messagePayload": b64({"type": "offer", "sdp": "v=0"}),
                "recipientClientId": "other-viewer",
                "correlationId": "sneaky",
            }
            await flooder.send_str(json.dumps(sneaky))
            with pytest.raises(asyncio.TimeoutError):
                msg = await other.receive(0.5)
                pytest.fail(f"a viewer's message reached another viewer: {msg}")

            # A master without a recipient: STATUS_RESPONSE InvalidArgumentException 400.
            master2 = witness.master
            del master2  # the witness master keeps its socket; a frame on it would count
            lone = make_channel(env.kv, "lone")
            lone_master = await env.ws(lone, "MASTER")
            await lone_master.send_str(
                json.dumps(
                    {"action": "SDP_ANSWER", "messagePayload": b64({}), "correlationId": "no-rcpt"}
                )
            )
            (status,) = await statuses(lone_master, 0.5)
            assert status["correlationId"] == "no-rcpt"
            assert status["errorType"] == "InvalidArgumentException"
            assert "recipientClientId" in status["description"]

            # Binary frames: closed with 1003, text frames only.
            binary = await env.ws(chan, "VIEWER", "binary")
            await binary.send_bytes(b"\x00\xffbinary")
            msg = await binary.receive(2.0)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1003, msg

            # A second master replaces the lone master: the first is closed with 4001.
            await env.ws(lone, "MASTER")
            msg = await lone_master.receive(2.0)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_REPLACED, msg
        witness.check()
        sneaky_seen = [f for f in witness.others_to_master if f.get("senderClientId") == "flooder"]
        assert any(f["messageType"] == "SDP_OFFER" for f in sneaky_seen)
        assert_up(env)


async def statuses(ws: Any, quiet_s: float) -> list[dict[str, Any]]:
    """Every STATUS_RESPONSE until ``quiet_s`` of silence."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            msg = await ws.receive(quiet_s)
        except TimeoutError:
            return out
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        assert frame["messageType"] == "STATUS_RESPONSE", frame
        out.append(frame["statusResponse"])


# ---------------------------------------------------------------------------- half-open


async def raw_upgrade(env: Env, url: str, rcvbuf: int = 4096) -> socket.socket:
    """A WebSocket handshake on a plain TCP socket with a tiny receive buffer; the caller
    decides whether it ever reads again."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    env.raw_sockets.append(sock)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (parts.hostname, parts.port or 80))
    key = base64.b64encode(os.urandom(16)).decode()
    path = (parts.path or "/") + "?" + parts.query
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    deadline = time.monotonic() + 3
    while b"\r\n\r\n" not in head:
        assert time.monotonic() < deadline, head
        head += await asyncio.wait_for(loop.sock_recv(sock, 1), 3)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked_text_header(length: int) -> bytes:
    """A client (masked) text frame header for a payload of ``length`` bytes."""
    if length < 126:
        return struct.pack("!BB", 0x81, 0x80 | length) + os.urandom(4)
    return struct.pack("!BBH", 0x81, 0x80 | 126, length) + os.urandom(4)


async def test_half_open_sockets_harm_no_one(tmp_path: Path) -> None:
    # Rate limits raised so that the stalled socket's buffers fill within a second or two.
    async with environment(tmp_path, candidates_per_s=10_000.0) as env:
        chan = make_channel(env.kv, "halfopen")
        witness = await witness_pair(env, chan)
        # A viewer that connects and never reads, while the master sends it ~6 MB: the
        # kernel's and aiohttp's buffers toward it fill up.
        await raw_upgrade(env, url_for(chan, "VIEWER", "stalled"))
        # A viewer that sends half a frame and stops.
        half = await raw_upgrade(env, url_for(chan, "VIEWER", "half-frame"))
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(half, masked_text_header(1000) + b'{"action":')
        big = base64.b64encode(os.urandom(7000)).decode()  # 9.3 KB: under the limit
        frame = {"action": "ICE_CANDIDATE", "messagePayload": big, "recipientClientId": "stalled"}
        async with witness:
            for _ in range(30):
                for _ in range(20):
                    await witness.master.send_str(json.dumps(frame))
                await asyncio.sleep(0.05)  # paces the sender: 20 frames at a time
        witness.check()
        # The socket that stopped reading was cut off; the half-frame one waits for its
        # idle timeout, harmlessly.
        relay = env.kvs.relay
        assert relay is not None
        assert relay.viewer(chan.arn, "stalled") is None
        assert relay.viewer(chan.arn, "half-frame") is not None
        # The relay still serves new sockets on the channel, and another channel.
        other = make_channel(env.kv, "other")
        m = await env.ws(other, "MASTER")
        v = await env.ws(other, "VIEWER", "v")
        await registered(env, other, "v")
        await v.send_str(json.dumps({"action": "SDP_OFFER", "messagePayload": b64({"x": 1})}))
        msg = await m.receive(2.0)
        assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["senderClientId"] == "v"
        assert_up(env)
