"""``BrowserSession`` without a browser or a server: ipywidgets' recording dummy comm, the real
kernel bridge. The widget with a browser is in tests/browser/test_browser_session.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

import aiohttp
import boto3
import pytest

from kvsnb.client.session import SessionError
from kvsnb.client.target import Target
from kvsnb.widgets import BrowserSession
from kvsnb.widgets.bridge import page_js, page_url, stop_bridge
from kvsnb.widgets.browser_session import ESM, KERNEL_PATH_ESM, build_esm
from tests.conftest import wait_until
from tests.widget_support import recording_comm


@pytest.fixture(scope="module", autouse=True)
def _recording_comm() -> Iterator[None]:
    """Swap in ipywidgets' recording dummy comm for this module."""
    yield from recording_comm()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
    await stop_bridge()


def a_target() -> Target:
    """A target no call is made to (the widget only keeps it until started)."""
    return Target("test", "us-west-2", boto3.Session(region_name="us-west-2"), "http://127.0.0.1:9")


def test_the_front_end_has_the_kernel_path_first() -> None:
    """bridge.js and browser_media.js (plain declarations) come before the widget's ES module."""
    esm = build_esm()
    assert esm == page_js() + "\n" + KERNEL_PATH_ESM.read_text() + "\n" + ESM.read_text()
    assert "function kvsnbOpenBridge" in esm
    assert "function kvsnbKernelMaster" in esm and "function kvsnbKernelViewer" in esm
    assert not re.search(r"^\s*(import|export)\b", KERNEL_PATH_ESM.read_text(), re.MULTILINE)
    assert esm.count("export default") == 1


async def test_the_first_state_carries_the_bridge(http: aiohttp.ClientSession) -> None:
    widget = BrowserSession(a_target(), "my-channel", role="VIEWER")
    token, urls = widget.bridge_token, widget.bridge_urls
    assert len(token) >= 24 and urls and urls[-1].startswith("ws://127.0.0.1:")
    assert (widget.role, widget.state, widget.transport) == ("VIEWER", "new", "auto")
    assert widget.timeline.to_frame().empty and widget.stats_df().empty
    assert not await widget.page_connected(0.1)

    # the page connects: it says where it runs, and its buttons reach the kernel
    ws = await http.ws_connect(page_url(widget.channel_link))
    await ws.send_str(json.dumps({"type": "hello", "token": token}))
    assert json.loads((await ws.receive()).data) == {"type": "welcome"}
    assert await widget.page_connected(5)
    await ws.send_str(json.dumps({"type": "page", "via": "websocket", "host": "127.0.0.1"}))
    devices = [{"id": "cam1", "label": "Front camera"}]
    await ws.send_str(json.dumps({"type": "media_ready", "devices": devices}))
    await wait_until(lambda: widget.page_host == "127.0.0.1", "the page's host known")
    await wait_until(lambda: widget.devices == devices, "the page's cameras listed")
    assert widget.bridge_via == "websocket"

    await ws.send_str(json.dumps({"type": "ui", "action": "stop"}))
    await wait_until(lambda: widget.state == "closed", "Stop from the page")
    widget.close()
    msg = await ws.receive()
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_a_failed_start_is_shown_and_raised() -> None:
    """No credentials and no server: the set-up fails, the widget shows it and
    ``wait_connected`` raises it as a ``SessionError``."""
    widget = BrowserSession(a_target(), "my-channel", transport="direct")
    try:
        outcome = widget.start()
        assert widget.start() is outcome  # one start at a time
        with pytest.raises(SessionError) as info:
            await widget.wait_connected(30)
        assert outcome.done()
        assert widget.state == "failed" and widget.error == str(info.value)
    finally:
        widget.close()
        await stop_bridge()
