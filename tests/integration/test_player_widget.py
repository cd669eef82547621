"""The public-URL mapping of a target against a real embedded Local KVS with a public base URL
(as under jupyter-server-proxy): what a browser is handed, what the kernel uses, and both
players' URLs after a real ingest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from kvsnb.client.ingest import ingest
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.playback import DashReader, HlsReader
from kvsnb.widgets import Player
from tests.conftest import FAST
from tests.widget_support import recording_comm

PUBLIC = "/user/me/proxy/{port}"


@pytest.fixture
def comm() -> Iterator[None]:
    yield from recording_comm()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tg = connect(data_dir=tmp_path_factory.mktemp("player"), public_url=PUBLIC)
    try:
        yield tg
    finally:
        tg.close()


def test_public_url_is_returned_and_mapped_back(target: Target, comm: None) -> None:
    kvs = target.local
    public = PUBLIC.format(port=kvs.port)
    assert target.public_url == public and kvs.public_url == public
    _, arn = target.create_storage_channel("pub")
    data = target.kinesisvideo.get_data_endpoint(
        StreamARN=arn, APIName="GET_DASH_STREAMING_SESSION_URL"
    )["DataEndpoint"]
    assert data == public + "/archived-media"  # what a browser uses
    assert target.data_endpoint(arn, "GET_HLS_STREAMING_SESSION_URL") == kvs.url + "/archived-media"
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
        assert player.url.startswith(public + "/archived-media/"), player.url
        assert not player.live
        direct = target.direct_url(player.url)
        assert direct.startswith(kvs.url + "/archived-media/")
        reader = HlsReader(direct) if protocol == "HLS" else DashReader(direct)
        frames = asyncio.run(reader.to_frame())
        assert len(frames) > 0 and frames["timestamp"].notna().all()
