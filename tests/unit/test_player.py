"""The Player widget without a browser (ipywidgets' dummy comm, the real kernel bridge) and
its vendored libraries; the public-URL mapping against a real Local KVS is in
tests/integration/test_player_widget.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pandas as pd
import pytest
import traitlets
from ipywidgets.widgets.tests.utils import setup_test_comm, teardown_test_comm

from kvsnb.widgets import Player
from kvsnb.widgets.bridge import page_url, stop_bridge
from kvsnb.widgets.player import build_esm
from kvsnb.widgets.vendor import LIBRARIES, VendorError, library, library_path
from tests.conftest import wait_until

PUBLIC = "/user/me/proxy/{port}"


@pytest.fixture
def comm() -> Iterator[None]:
    setup_test_comm()
    yield
    teardown_test_comm()


def test_vendored_libraries_are_es_modules() -> None:
    for name, lib in LIBRARIES.items():
        source = library(name)
        assert "export{" in source.replace(" ", "")[-2000:], name
        assert library_path(name).with_suffix(".mjs.version").read_text().strip() == lib.spec


def test_missing_library_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(VendorError, match=r"make setup.*python -m kvsnb.widgets.vendor"):
        library("dash.js", tmp_path)


def test_player_traits_and_commands(comm: None) -> None:
    player = Player("http://127.0.0.1:1/archived-media/hls/v1/x.m3u8", "HLS", live=True)
    # no third-party code in the widget state (what a saved notebook keeps): only our front end
    state = player.get_state()
    assert state["_esm"] == build_esm()
    assert state["live_delay_s"] == 0.0  # the delay follows live_sync_segments
    with pytest.raises(traitlets.TraitError):
        Player("http://127.0.0.1:1/x.mpd", "DASH", live=True, live_delay_s=-1.0)
    assert Player("http://127.0.0.1:1/x.mpd", "DASH", live_delay_s=1.5).live_delay_s == 1.5
    saved = json.dumps(state, default=str)
    assert all(library(name) not in saved for name in LIBRARIES)
    # the view asks for the library; the answer goes out as a custom message
    request = {"method": "custom", "content": {"type": "need-library"}}
    player._handle_msg({"content": {"data": request}, "buffers": []})
    custom = [
        kwargs["data"]["content"]
        for _, kwargs in player.comm.messages
        if kwargs.get("data", {}).get("method") == "custom"
    ]
    assert custom == [{"type": "library", "source": library("hls.js")}]
    assert player.on_screen is None and player.protocol == "HLS"
    player.on_screen_ms = 1_700_000_000_123  # what the browser reports
    assert player.on_screen is not None and player.on_screen.value // 1_000_000 == (
        1_700_000_000_123
    )
    player.seek(1.5)
    player.pause()
    player.play()  # sent to the (dummy) front end without waiting for it
    commands = [
        kwargs["data"]["content"]
        for _, kwargs in player.comm.messages
        if kwargs.get("data", {}).get("method") == "custom"
    ][1:]
    assert commands == [{"type": "seek", "time": 1.5}, {"type": "pause"}, {"type": "play"}]
    with pytest.raises(ValueError, match="protocol"):
        Player("u", "RTSP")
    dash = Player("u", "DASH")
    assert dash._source == library("dash.js")
    assert repr(dash) == "<kvsnb.widgets.Player DASH ON_DEMAND>"
    # made outside a running event loop (a script): no bridge, the page reports by traits
    assert dash.channel_link is None and dash.bridge_urls == [] and dash.bridge_token == ""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
    await stop_bridge()


async def test_reports_over_the_bridge_reach_an_awaiting_coroutine(
    comm: None, http: aiohttp.ClientSession
) -> None:
    """The page's reports come over the kernel bridge: a coroutine awaiting
    ``wait_on_screen`` (a running cell) sees them; a wrong token is refused."""
    player = Player("http://127.0.0.1:1/archived-media/dash/v1/x.mpd", "DASH", live=True)
    link = player.channel_link
    assert link is not None  # made on a running loop, as in a kernel
    assert player.bridge_token and player.bridge_urls[-1].startswith("ws://127.0.0.1:")
    assert "function kvsnbOpenBridge" in player.get_state()["_esm"]
    assert not await player.page_connected(0.1)
    with pytest.raises(TimeoutError, match="reported no frame"):
        await player.wait_on_screen(timeout=0.1)

    intruder = await http.ws_connect(page_url(link))
    await intruder.send_str(json.dumps({"type": "hello", "token": "not-the-token"}))
    assert (await intruder.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    ws = await http.ws_connect(page_url(link))
    await ws.send_str(json.dumps({"type": "hello", "token": player.bridge_token}))
    assert json.loads((await ws.receive()).data) == {"type": "welcome"}
    assert await player.page_connected(5)
    waiter = asyncio.ensure_future(player.wait_on_screen(timeout=10))
    await asyncio.sleep(0)
    assert not waiter.done()
    first = 1_700_000_000_000
    report = {"type": "report", "on_screen_ms": first, "current_time": 3.5, "paused": False}
    await ws.send_str(json.dumps({**report, "status": "playing", "stalls": 2}))
    shown = await waiter
    assert shown == pd.Timestamp(first, unit="ms", tz="UTC") == player.on_screen
    assert (player.current_time, player.paused, player.status, player.stalls) == (
        3.5,
        False,
        "playing",
        2,
    )
    # a second later on screen, in the same awaiting coroutine
    later = asyncio.ensure_future(player.wait_on_screen(after=shown + pd.Timedelta(seconds=1)))
    await ws.send_str(json.dumps({**report, "on_screen_ms": first + 500}))
    await wait_until(lambda: player.on_screen_ms == first + 500, "the report of +500 ms")
    assert not later.done()
    await ws.send_str(json.dumps({**report, "on_screen_ms": first + 1200, "status": "ended"}))
    assert await later == pd.Timestamp(first + 1200, unit="ms", tz="UTC")
    assert player.status == "ended"
    # an unknown status is ignored, the rest of the report kept
    await ws.send_str(json.dumps({**report, "on_screen_ms": first + 1300, "status": "dancing"}))
    await wait_until(lambda: player.on_screen_ms == first + 1300, "the report applied")
    assert player.status == "ended"

    player.close()
    msg = await ws.receive()
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
