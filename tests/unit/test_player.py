"""The Player widget without a browser (ipywidgets' dummy comm) and its vendored libraries;
the public-URL mapping against a real Local KVS is in tests/integration/test_player_widget.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from ipywidgets.widgets.tests.utils import setup_test_comm, teardown_test_comm

from kvsnb.widgets import Player
from kvsnb.widgets.player import ESM
from kvsnb.widgets.vendor import LIBRARIES, VendorError, library, library_path

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
    assert state["_esm"] == ESM.read_text()
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
