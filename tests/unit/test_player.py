"""The Player widget without a browser (ipywidgets' dummy comm), its vendored libraries, and
the public-URL mapping of a target, against a real embedded Local KVS with a public base
URL (as under jupyter-server-proxy)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from ipywidgets.widgets.tests.utils import setup_test_comm, teardown_test_comm

from kvsnb.ingest import ingest
from kvsnb.playback import DashReader, HlsReader
from kvsnb.target import Target, connect
from kvsnb.vendor import LIBRARIES, VendorError, library, library_path
from kvsnb.widgets import Player
from tests.conftest import FAST

PUBLIC = "/user/me/proxy/{port}"


@pytest.fixture
def comm() -> Iterator[None]:
    setup_test_comm()
    yield
    teardown_test_comm()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tg = connect(data_dir=tmp_path_factory.mktemp("player"), public_url=PUBLIC)
    try:
        yield tg
    finally:
        tg.close()


def test_vendored_libraries_are_es_modules() -> None:
    for name, lib in LIBRARIES.items():
        source = library(name)
        assert "export{" in source.replace(" ", "")[-2000:], name
        assert library_path(name).with_suffix(".mjs.version").read_text().strip() == lib.spec


def test_missing_library_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(VendorError, match=r"make setup.*python -m kvsnb.vendor"):
        library("dash.js", tmp_path)


def test_player_traits_and_commands(comm: None) -> None:
    player = Player("http://127.0.0.1:1/media/hls/v1/x.m3u8", "HLS", live=True)
    assert "_library" not in player.get_state()  # no third-party code in saved state
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


def test_public_url_is_returned_and_mapped_back(target: Target, comm: None) -> None:
    kvs = target.local
    public = PUBLIC.format(port=kvs.port)
    assert target.public_url == public and kvs.public_url == public
    _, arn = target.create_storage_channel("pub")
    data = target.kinesisvideo.get_data_endpoint(
        StreamARN=arn, APIName="GET_DASH_STREAMING_SESSION_URL"
    )["DataEndpoint"]
    assert data == public + "/media"  # what a browser uses
    assert target.data_endpoint(arn, "GET_HLS_STREAMING_SESSION_URL") == kvs.url + "/media"
    channel = target.channel_arn("pub")
    raw = target.kinesisvideo.get_signaling_channel_endpoint(
        ChannelARN=channel,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": "VIEWER"},
    )["ResourceEndpointList"]
    assert {e["Protocol"]: e["ResourceEndpoint"] for e in raw} == {
        "WSS": public + "/signaling/viewer",
        "HTTPS": public + "/signaling",
    }
    endpoints = target.endpoints(channel, "VIEWER", ("WSS", "HTTPS"))
    assert endpoints.wss == "ws" + kvs.url[4:] + "/signaling/viewer"
    assert endpoints.https == kvs.url + "/signaling"
    # a whole ingest through the mapped endpoints, then both players' URLs
    asyncio.run(ingest(target, "pub", seconds=2.5, policy=FAST))
    for protocol in ("HLS", "DASH"):
        player = Player.from_stream(target, arn, protocol=protocol, mode="ON_DEMAND")
        assert player.url.startswith(public + "/media/"), player.url
        assert not player.live
        direct = target.direct_url(player.url)
        assert direct.startswith(kvs.url + "/media/")
        reader = HlsReader(direct) if protocol == "HLS" else DashReader(direct)
        frames = asyncio.run(reader.to_frame())
        assert len(frames) > 0 and frames["timestamp"].notna().all()
