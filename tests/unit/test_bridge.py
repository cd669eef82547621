"""The kernel bridge (``kvsnb.widgets.bridge``): a real aiohttp client plays the page."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kvsnb.widgets.bridge import (
    CLOSE_BAD_TOKEN,
    CLOSE_REPLACED,
    BridgeChannel,
    BridgeClosed,
    bridge_channel,
    page_url,
    page_urls,
    stop_bridge,
)
from tests.conftest import wait_until


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
    await stop_bridge()


async def open_page(
    http: aiohttp.ClientSession, channel: BridgeChannel, token: str | None = None
) -> aiohttp.ClientWebSocketResponse:
    """Open the channel's socket as the page does and say hello."""
    ws = await http.ws_connect(page_url(channel))
    await ws.send_str(json.dumps({"type": "hello", "token": token or channel.token}))
    return ws


async def test_json_and_bytes_both_ways(http: aiohttp.ClientSession) -> None:
    channel = bridge_channel("w-1")
    got_json: list[Any] = []
    got_bytes: list[bytes] = []
    channel.on_json(got_json.append)
    channel.on_bytes(got_bytes.append)
    assert not channel.connected
    with pytest.raises(BridgeClosed, match="no page is connected"):
        await channel.send_json({"x": 1})

    ws = await open_page(http, channel)
    assert json.loads((await ws.receive()).data) == {"type": "welcome"}
    await channel.wait_open(5)
    assert channel.connected and channel.transport == "websocket"

    await ws.send_str(json.dumps({"type": "answer", "sdp": "v=0"}))
    await ws.send_bytes(b"\x00\x01frame")
    await wait_until(lambda: got_json and got_bytes, "the page's messages reach the kernel")
    assert got_json == [{"type": "answer", "sdp": "v=0"}]
    assert got_bytes == [b"\x00\x01frame"]

    await channel.send_json({"type": "offer", "n": 2})
    await channel.send_bytes(b"\xffjpeg")
    assert json.loads((await ws.receive()).data) == {"type": "offer", "n": 2}
    assert (await ws.receive()).data == b"\xffjpeg"

    channel.close()
    msg = await ws.receive()
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert not channel.connected
    with pytest.raises(BridgeClosed, match="is closed"):
        await channel.send_json({})


async def test_a_coroutine_callback_runs_on_the_loop(http: aiohttp.ClientSession) -> None:
    channel = bridge_channel("w-async")
    done = asyncio.Event()

    async def answer(obj: Any) -> None:
        await channel.send_json({"echo": obj})
        done.set()

    channel.on_json(answer)
    ws = await open_page(http, channel)
    await ws.receive()  # welcome
    await ws.send_str(json.dumps("ping"))
    assert json.loads((await ws.receive()).data) == {"echo": "ping"}
    await asyncio.wait_for(done.wait(), 5)


async def test_a_wrong_token_is_refused(http: aiohttp.ClientSession) -> None:
    channel = bridge_channel("w-2")
    ws = await open_page(http, channel, token="not-the-token")
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_BAD_TOKEN
    assert not channel.connected
    with pytest.raises(TimeoutError, match="no page connected"):
        await channel.wait_open(0.2)


async def test_an_unknown_channel_is_404(http: aiohttp.ClientSession) -> None:
    channel = bridge_channel("w-3")
    url = page_url(channel).replace("w-3", "nobody")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url)
    assert info.value.status == 404


async def test_a_newer_socket_replaces_the_older(http: aiohttp.ClientSession) -> None:
    channel = bridge_channel("w-4")
    got: list[Any] = []
    channel.on_json(got.append)
    first = await open_page(http, channel)
    await first.receive()  # welcome
    second = await open_page(http, channel)
    assert json.loads((await second.receive()).data) == {"type": "welcome"}
    msg = await first.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_REPLACED
    await channel.send_json("to the newest")
    assert json.loads((await second.receive()).data) == "to the newest"
    assert channel.connected


async def test_comm_fallback(http: aiohttp.ClientSession) -> None:
    channel = bridge_channel("w-5")
    sent: list[tuple[dict[str, Any], list[bytes]]] = []
    got_json: list[Any] = []
    got_bytes: list[bytes] = []
    channel.attach_comm(lambda content, buffers: sent.append((content, buffers)))
    channel.on_json(got_json.append)
    channel.on_bytes(got_bytes.append)

    assert not channel.receive_comm({"type": "something-else"}, [])
    assert channel.receive_comm({"type": "kvsnb-bridge", "kind": "hello", "token": "wrong"}, [])
    assert not channel.connected
    assert channel.receive_comm(
        {"type": "kvsnb-bridge", "kind": "hello", "token": channel.token}, []
    )
    await channel.wait_open(5)
    assert channel.transport == "comm" and channel.connected
    assert sent[-1] == ({"type": "kvsnb-bridge", "kind": "welcome"}, [])

    channel.receive_comm({"type": "kvsnb-bridge", "kind": "json", "data": {"a": 1}}, [])
    channel.receive_comm({"type": "kvsnb-bridge", "kind": "bytes"}, [b"xyz"])
    assert got_json == [{"a": 1}] and got_bytes == [b"xyz"]
    await channel.send_json({"b": 2})
    await channel.send_bytes(b"abc")
    assert sent[-2:] == [
        ({"type": "kvsnb-bridge", "kind": "json", "data": {"b": 2}}, []),
        ({"type": "kvsnb-bridge", "kind": "bytes"}, [b"abc"]),
    ]

    # a socket that opens later takes over
    ws = await open_page(http, channel)
    await ws.receive()
    assert channel.transport == "websocket"
    await channel.send_json("over the socket")
    assert json.loads((await ws.receive()).data) == "over the socket"


async def test_page_urls_without_a_jupyter_server(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    channel = bridge_channel("w-6")
    urls = page_urls(channel)
    assert len(urls) == 1 and urls[0].startswith("ws://127.0.0.1:")
    assert urls[0].endswith("/kvsnb-bridge/w-6")
    other = bridge_channel("w-7")
    assert page_url(other).rsplit("/", 2)[0] == urls[0].rsplit("/", 2)[0]  # one server
    assert other.token != channel.token and len(other.token) >= 24


async def test_on_close_when_the_page_goes(http: aiohttp.ClientSession) -> None:
    channel = bridge_channel("w-8")
    closes: list[str] = []
    channel.on_close(lambda: closes.append("gone"))
    first = await open_page(http, channel)
    await first.receive()
    second = await open_page(http, channel)  # replaces the first: not a close
    await second.receive()
    assert (await first.receive()).data == CLOSE_REPLACED
    assert closes == [] and channel.connected
    await second.close()  # the tab goes
    await wait_until(lambda: closes == ["gone"], "on_close called")
    assert not channel.connected
    third = await open_page(http, channel)  # a reloaded page
    await third.receive()
    channel.close()  # closed by the kernel: not the page going
    await third.receive()
    assert closes == ["gone"]
