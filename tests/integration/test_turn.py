"""TURN in Local KVS (coturn), as AWS has it for WebRTC ingestion: GetIceServerConfig's shape
and rules, time-limited credentials that coturn refuses once expired, a storage peer
reachable only through TURN, Local KVS without coturn or with ``ice="host"``, and coturn
started with no Python between fork and exec."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection
from av.video.reformatter import VideoReformatter

from kvsnb.local import LocalKvs, LocalKvsConfig
from kvsnb.local.runner import ice_summary
from kvsnb.local.turn.credentials import password_for
from kvsnb.local.turn.server import NO_COTURN, RELAY_IP, coturn_binary
from kvsnb.wire import aiortc_compat
from tests.conftest import make_channel, make_client, wait_until, wait_until_sync
from tests.integration.conftest import ExpectError

pytestmark = pytest.mark.skipif(coturn_binary() is None, reason="coturn is not installed")

URI_FORMS = [
    r"turn:127\.0\.0\.1:\d+\?transport=udp",
    r"turns:127\.0\.0\.1:\d+\?transport=udp",
    r"turns:127\.0\.0\.1:\d+\?transport=tcp",
]


def signaling_client(kvs: LocalKvs, channel_arn: str, role: str = "MASTER") -> Any:
    kv = make_client("kinesisvideo", kvs.url)
    endpoint = kv.get_signaling_channel_endpoint(
        ChannelARN=channel_arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["HTTPS"], "Role": role},
    )["ResourceEndpointList"][0]["ResourceEndpoint"]
    return make_client("kinesis-video-signaling", endpoint)


@pytest.fixture
def short_ttl(tmp_path: Path) -> Iterator[LocalKvs]:
    """A Local KVS whose TURN credentials live 2 s."""
    with LocalKvs(LocalKvsConfig(data_dir=tmp_path / "data", turn_ttl_s=2)) as kvs:
        yield kvs


def test_get_ice_server_config_has_aws_shape(local_kvs: LocalKvs, kv: Any) -> None:
    channel = make_channel(kv)
    before = int(time.time())
    servers = signaling_client(local_kvs, channel.arn).get_ice_server_config(
        ChannelARN=channel.arn, ClientId="viewer-1", Service="TURN"
    )["IceServerList"]
    assert len(servers) == 2  # AWS answers with two TURN servers
    turn = local_kvs.turn_endpoint
    assert turn is not None
    for server in servers:
        assert set(server) == {"Uris", "Username", "Password", "Ttl"}
        assert all(re.fullmatch(f, u) for f, u in zip(URI_FORMS, server["Uris"], strict=True))
        assert server["Ttl"] == 300
        expiry, tag = server["Username"].split(":", 1)
        assert before + 300 <= int(expiry) <= int(time.time()) + 300
        assert base64.b64decode(tag).decode() == f"v1:{channel.arn}"
        assert server["Password"] == password_for(turn.secret, server["Username"])


def test_get_ice_server_config_rules(
    local_kvs: LocalKvs, kv: Any, expect_error: ExpectError
) -> None:
    channel = make_channel(kv)
    raw = signaling_client(local_kvs, channel.arn)
    unchecked = make_client("kinesis-video-signaling", raw.meta.endpoint_url, validate=False)
    expect_error(
        lambda: unchecked.get_ice_server_config(ChannelARN=channel.arn, Service="STUN"),
        "InvalidArgumentException",
        400,
        "Value 'STUN' at 'service' failed to satisfy constraint",
    )
    expect_error(
        lambda: unchecked.get_ice_server_config(ChannelARN=channel.arn, ClientId="bad id!"),
        "InvalidArgumentException",
        400,
        "at 'clientId' failed to satisfy constraint",
    )
    gone = channel.arn.rsplit("/", 2)[0] + "/nope/1700000000000"
    expect_error(
        lambda: raw.get_ice_server_config(ChannelARN=gone),
        "ResourceNotFoundException",
        404,
        "",
    )


def relay_only(server: dict[str, Any]) -> RTCConfiguration:
    """An aiortc configuration that gathers relay candidates only, through ``server`` (an
    IceServerList entry)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=server["Uris"], username=server["Username"], credential=server["Password"]
            )
        ],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


async def relay_candidates(server: dict[str, Any]) -> list[str]:
    """The relay candidates a relay-only aiortc peer gathers with ``server``."""
    pc = RTCPeerConnection(relay_only(server))
    try:
        pc.createDataChannel("probe")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    return [line for line in sdp.splitlines() if line.startswith("a=candidate") and "relay" in line]


async def test_expired_credentials_are_refused(short_ttl: LocalKvs) -> None:
    kv = make_client("kinesisvideo", short_ttl.url)
    channel = make_channel(kv)
    client = signaling_client(short_ttl, channel.arn)
    (server, _) = client.get_ice_server_config(ChannelARN=channel.arn)["IceServerList"]
    assert server["Ttl"] == 2
    fresh = await relay_candidates(server)
    assert fresh and all(f" {RELAY_IP} " in c for c in fresh)
    expiry = int(server["Username"].split(":", 1)[0])
    wait_until_sync(lambda: time.time() > expiry + 1, "the credentials expire", deadline_s=10)
    assert await relay_candidates(server) == []  # coturn answers 401 to the expired name
    (renewed, _) = client.get_ice_server_config(ChannelARN=channel.arn)["IceServerList"]
    assert await relay_candidates(renewed)


async def test_coturn_relays_only_between_relay_addresses(local_kvs: LocalKvs, kv: Any) -> None:
    """The storage peer's side: relay candidates only, on the relay address; coturn's
    configuration denies every other peer address."""
    turn = local_kvs.turn_endpoint
    assert turn is not None
    channel = make_channel(kv)
    candidates = await relay_candidates(turn.peer_ice_server(channel.arn))
    assert candidates and all(f" {RELAY_IP} " in c for c in candidates)
    conf = (local_kvs.data_dir / "turn" / "turnserver.conf").read_text().splitlines()
    assert "denied-peer-ip=0.0.0.0-255.255.255.255" in conf
    assert f"allowed-peer-ip={RELAY_IP}" in conf
    assert "use-auth-secret" in conf and "listening-ip=127.0.0.1" in conf


class _Heard(asyncio.DatagramProtocol):
    """What a TURN allocation of the test's own receives."""

    def __init__(self) -> None:
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.put_nowait(data)


async def test_an_opened_relay_permission_lets_the_first_datagram_through(
    local_kvs: LocalKvs, kv: Any
) -> None:
    """``open_relay_permissions``: coturn drops a datagram to an allocation from an address
    it has no permission for (RFC 8656), so a peer's first ICE check toward a relay
    candidate is lost until that side has sent toward the peer itself; once the permission
    is opened, the first datagram from that address is answered."""
    from aioice import stun
    from aioice.turn import create_turn_endpoint

    turn = local_kvs.turn_endpoint
    assert turn is not None
    server = turn.peer_ice_server(make_channel(kv).arn)
    pc = RTCPeerConnection(relay_only(server))
    host, port = server["Uris"][0].removeprefix("turn:").split("?")[0].split(":")
    other, heard = await create_turn_endpoint(
        _Heard, (host, int(port)), server["Username"], server["Password"]
    )
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        (line,) = [c for c in pc.localDescription.sdp.splitlines() if " typ relay" in c]
        relay = (line.split()[4], int(line.split()[5]))  # the peer connection's relay address

        def check() -> bytes:  # a bare Binding request: aioice answers 400, so it is heard
            return bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))

        other.sendto(check(), relay)
        with pytest.raises(TimeoutError):  # no permission for the other relay address: lost
            await asyncio.wait_for(heard.datagrams.get(), 1.0)

        assert aiortc_compat.open_relay_permissions(pc, [RELAY_IP, "::1", "peer.local"]) == 1
        (client,) = [
            getattr(t, aiortc_compat.TURN_CLIENT) for t in aiortc_compat.relay_transports(pc)
        ]
        await wait_until(
            lambda: (RELAY_IP, aiortc_compat.DISCARD_PORT) in client.peer_to_channel,
            "the permission is installed",
        )
        other.sendto(check(), relay)
        answer = stun.parse_message(await asyncio.wait_for(heard.datagrams.get(), 10.0))
        assert answer.message_class == stun.Class.ERROR
        assert answer.attributes["ERROR-CODE"][0] == 400
    finally:
        other.close()
        await pc.close()


def test_without_coturn_local_kvs_runs_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no turnserver on PATH
    caplog.set_level(logging.WARNING, logger="kvsnb.local.front.server")
    with LocalKvs(LocalKvsConfig(data_dir=tmp_path / "data")) as kvs:
        assert kvs.turn_endpoint is None
        assert [r.getMessage() for r in caplog.records] == [NO_COTURN]
        assert "apt-get install coturn" in ice_summary(kvs)
        kv = make_client("kinesisvideo", kvs.url)
        channel = make_channel(kv)
        servers = signaling_client(kvs, channel.arn).get_ice_server_config(ChannelARN=channel.arn)
        assert servers["IceServerList"] == []


def test_ice_host_serves_no_turn(tmp_path: Path) -> None:
    with LocalKvs(LocalKvsConfig(data_dir=tmp_path / "data", ice="host")) as kvs:
        assert kvs.turn_endpoint is None and not (kvs.data_dir / "turn").exists()
        assert "--ice host" in ice_summary(kvs)
        kv = make_client("kinesisvideo", kvs.url)
        channel = make_channel(kv)
        servers = signaling_client(kvs, channel.arn).get_ice_server_config(ChannelARN=channel.arn)
        assert servers["IceServerList"] == []


def test_coturn_is_a_child_that_stops_with_local_kvs(tmp_path: Path) -> None:
    kvs = LocalKvs(LocalKvsConfig(data_dir=tmp_path / "data")).start_in_thread()
    turn = kvs.turn
    assert turn is not None and turn.proc is not None
    proc = turn.proc
    assert proc.poll() is None
    kvs.stop_in_thread()
    assert proc.poll() is not None and kvs.turn is None


def test_coturn_starts_while_another_thread_holds_swscale_threads(tmp_path: Path) -> None:
    """Starting coturn runs no Python between fork and exec. A thread of the process keeps a
    PyAV reformatter in a ``threading.local`` (as PyAV 18.1.1's ``VideoFrame.reformat`` does
    for every thread that calls it), whose swscale context has slice threads of its own.
    Python code in the forked child would free that thread-local and wait forever on the slice
    threads, which do not exist there; Local KVS then never started (in CI, at every start
    after the first such thread)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        local = threading.local()
        local.reformatter = VideoReformatter()
        frame = av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="rgb24")
        local.reformatter.reformat(frame, format="yuv420p", threads=2)
        held.set()
        release.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(30)
        for n in range(3):
            config = LocalKvsConfig(data_dir=tmp_path / f"data-{n}")
            with LocalKvs(config) as kvs:
                assert kvs.turn_endpoint is not None
    finally:
        release.set()
        holder.join(30)
