"""Quotas enforced with AWS errors, through real boto3 clients and WebSockets on 127.0.0.1:
at most 3 viewers in a storage session, 2 JoinStorageSession[AsViewer] calls per second per
channel, and one master socket per channel (the newest wins, the older one is closed with
the "replaced" close code)."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from yarl import URL

from kvsnb.client.signaling import presign_url
from kvsnb.launch import connect
from kvsnb.local import LocalKvs
from kvsnb.local.signaling.relay import CLOSE_REPLACED
from tests.conftest import make_client, start_kvs, wait_for, wait_until

pytestmark = pytest.mark.timeout(60)

CREDS = Credentials("AKIDLOCALTEST", "local-secret")


@dataclass
class Storage:
    kvs: LocalKvs
    arn: str
    wss: dict[str, str]
    webrtc: Any
    session: aiohttp.ClientSession

    async def socket(self, role: str, client_id: str | None = None) -> Any:
        url = presign_url(self.wss[role], self.arn, CREDS, "us-west-2", client_id)
        return await self.session.ws_connect(URL(url, encoded=True))


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    kvs = start_kvs(tmp_path / "data")
    session = aiohttp.ClientSession()
    try:
        with connect(endpoint_url=kvs.url) as tg:
            arn, _ = tg.create_storage_channel("quota")
        kv = make_client("kinesisvideo", kvs.url)
        wss = {}
        for role in ("MASTER", "VIEWER"):
            eps = kv.get_signaling_channel_endpoint(
                ChannelARN=arn,
                SingleMasterChannelEndpointConfiguration={
                    "Protocols": ["WSS", "WEBRTC"],
                    "Role": role,
                },
            )["ResourceEndpointList"]
            by = {e["Protocol"]: e["ResourceEndpoint"] for e in eps}
            wss[role] = by["WSS"]
            webrtc = by["WEBRTC"]
        yield Storage(kvs, arn, wss, make_client("kinesis-video-webrtc-storage", webrtc), session)
    finally:
        await session.close()
        await asyncio.to_thread(kvs.stop_in_thread)


def limit_error(call: Any) -> str:
    """Run a boto3 call that must fail with ClientLimitExceededException 400; its message."""
    with pytest.raises(ClientError) as info:
        call()
    response: Any = info.value.response
    assert response["Error"]["Code"] == "ClientLimitExceededException", response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"].startswith(
        "ClientLimitExceededException"
    )
    return str(response["Error"]["Message"])


async def admitted(call: Callable[[], Any]) -> None:
    """Make a join ``call`` until the channel's window of 2 joins a second admits it: until
    then it fails with ClientLimitExceededException about calls per second."""

    async def attempt() -> bool:
        try:
            await asyncio.to_thread(call)
        except ClientError as exc:
            error: Any = exc.response["Error"]
            if error["Code"] != "ClientLimitExceededException" or "per second" not in str(
                error["Message"]
            ):
                raise
            return False
        return True

    await wait_for(attempt, "the joins window admits the call", deadline_s=10)


async def test_fourth_viewer_is_refused(storage: Storage) -> None:
    viewers = [await storage.socket("VIEWER", f"v{i}") for i in range(4)]
    relay = storage.kvs.relay
    assert relay is not None
    await wait_until(
        lambda: all(relay.viewer(storage.arn, f"v{i}") for i in range(4)),
        "the four viewers registered by the relay",
    )
    join = storage.webrtc.join_storage_session_as_viewer
    for i in range(3):
        await admitted(functools.partial(join, channelArn=storage.arn, clientId=f"v{i}"))
    # each admitted viewer gets its offer
    for ws in viewers[:3]:
        kinds = set()
        while "SDP_OFFER" not in kinds:
            msg = await ws.receive(5)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            kinds.add(json.loads(msg.data)["messageType"])
    messages: list[str] = []

    async def refused_past_the_window() -> bool:
        messages.append(limit_error(lambda: join(channelArn=storage.arn, clientId="v3")))
        return "per second" not in messages[-1]

    await wait_for(refused_past_the_window, "a refusal past the joins window", deadline_s=10)
    assert "maximum number of viewers" in messages[-1]
    st = storage.kvs.sessions.channels[storage.arn]
    assert sorted(st.viewers) == ["v0", "v1", "v2"]
    # the refused viewer got no offer
    with pytest.raises(asyncio.TimeoutError):
        await viewers[3].receive(0.5)


async def test_third_join_within_a_second_is_refused(storage: Storage) -> None:
    join = storage.webrtc.join_storage_session
    started = time.monotonic()
    join(channelArn=storage.arn)  # no master socket: 200, no offer (as AWS)
    join(channelArn=storage.arn)
    message = limit_error(lambda: join(channelArn=storage.arn))
    assert time.monotonic() - started < 1.0
    assert "per second" in message
    # viewer joins count in the same per-channel window
    limit_error(
        lambda: storage.webrtc.join_storage_session_as_viewer(
            channelArn=storage.arn, clientId="late"
        )
    )
    await admitted(lambda: join(channelArn=storage.arn))  # a second later: admitted again


async def test_second_master_socket_replaces_the_first(storage: Storage) -> None:
    first = await storage.socket("MASTER")
    relay = storage.kvs.relay
    assert relay is not None
    await wait_until(lambda: relay.master(storage.arn) is not None, "the master registered")
    await asyncio.to_thread(storage.webrtc.join_storage_session, channelArn=storage.arn)
    msg = await first.receive(5)
    assert msg.type == aiohttp.WSMsgType.TEXT  # the storage session speaks to it
    second = await storage.socket("MASTER")
    deadline = time.monotonic() + 3
    while True:  # skip the rest of the storage session's messages
        msg = await first.receive(max(0.01, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert msg.data == CLOSE_REPLACED and "replaced" in msg.extra
    master = relay.master(storage.arn)
    assert master is not None and not master.ws.closed
    assert not second.closed
