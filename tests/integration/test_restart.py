"""A Local KVS restarted on the same data directory (on another port) describes everything
exactly as before: ARNs, versions, creation times, the storage mapping and tags; stopping one
unwinds what still runs on its loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kvsnb.local import LocalKvs, LocalKvsConfig


def everything(kv: Any) -> dict[str, Any]:
    """All the control plane describes, by name, without response metadata."""
    state: dict[str, Any] = {"channels": {}, "streams": {}}
    for info in kv.list_signaling_channels()["ChannelInfoList"]:
        arn = info["ChannelARN"]
        state["channels"][info["ChannelName"]] = {
            "info": kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"],
            "listed": info,
            "storage": kv.describe_media_storage_configuration(ChannelARN=arn)[
                "MediaStorageConfiguration"
            ],
            "tags": kv.list_tags_for_resource(ResourceARN=arn).get("Tags", {}),
        }
    for info in kv.list_streams()["StreamInfoList"]:
        arn = info["StreamARN"]
        state["streams"][info["StreamName"]] = {
            "info": kv.describe_stream(StreamARN=arn)["StreamInfo"],
            "listed": info,
            "mapped": kv.describe_mapped_resource_configuration(StreamARN=arn)[
                "MappedResourceConfigurationList"
            ],
            "tags": kv.list_tags_for_stream(StreamARN=arn).get("Tags", {}),
        }
    state["order"] = [c["ChannelName"] for c in kv.list_signaling_channels()["ChannelInfoList"]]
    return state


def test_restart_keeps_everything(tmp_path: Path, boto_client: Any) -> None:
    data = tmp_path / "kvs-data"
    with LocalKvs(LocalKvsConfig(data_dir=data)) as first:
        kv = boto_client("kinesisvideo", first.url)
        cam = kv.create_signaling_channel(
            ChannelName="cam",
            SingleMasterConfiguration={"MessageTtlSeconds": 30},
            Tags=[{"Key": "site", "Value": "lab"}],
        )["ChannelARN"]
        kv.create_signaling_channel(ChannelName="mesh", ChannelType="FULL_MESH")
        spare = kv.create_signaling_channel(ChannelName="spare")["ChannelARN"]
        st = kv.create_stream(
            StreamName="cam-stream",
            DataRetentionInHours=24,
            DeviceName="pi",
            MediaType="video/h264",
            Tags={"kind": "storage"},
        )["StreamARN"]
        kv.create_stream(StreamName="bare")
        kv.update_media_storage_configuration(
            ChannelARN=cam, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        )
        version = kv.describe_signaling_channel(ChannelARN=spare)["ChannelInfo"]["Version"]
        kv.update_signaling_channel(
            ChannelARN=spare,
            CurrentVersion=version,
            SingleMasterConfiguration={"MessageTtlSeconds": 90},
        )
        kv.tag_resource(ResourceARN=spare, Tags=[{"Key": "a", "Value": "1"}])
        kv.untag_resource(ResourceARN=cam, TagKeyList=["nothing"])
        token = kv.list_signaling_channels(MaxResults=1)["NextToken"]
        before = everything(kv)

    assert data.is_dir()  # the data directory given is kept on stop
    with LocalKvs(LocalKvsConfig(data_dir=data)) as second:
        kv = boto_client("kinesisvideo", second.url)
        after = everything(kv)
        assert after == before
        assert after["channels"]["cam"]["storage"] == {"Status": "ENABLED", "StreamARN": st}
        assert after["streams"]["cam-stream"]["mapped"] == [
            {"Type": "SIGNALING_CHANNEL", "ARN": cam}
        ]
        # A NextToken handed out before the restart still continues the listing.
        rest = kv.list_signaling_channels(NextToken=token)["ChannelInfoList"]
        assert [c["ChannelName"] for c in rest] == before["order"][1:]
        # Endpoints are those of the new server; the storage mapping still allows WEBRTC.
        eps = kv.get_signaling_channel_endpoint(
            ChannelARN=cam,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC", "HTTPS"]},
        )["ResourceEndpointList"]
        assert all(f":{second.port}/" in e["ResourceEndpoint"] for e in eps)
        # Versions still guard updates, and the restarted server keeps working.
        kv.update_stream(
            StreamARN=st,
            CurrentVersion=before["streams"]["cam-stream"]["info"]["Version"],
            DeviceName="pi-5",
        )
        kv.create_signaling_channel(ChannelName="new")
        expected_names = {*before["channels"], "new"}
        final = everything(kv)

    with LocalKvs(LocalKvsConfig(data_dir=data)) as third:
        kv = boto_client("kinesisvideo", third.url)
        assert everything(kv) == final
        assert set(final["channels"]) == expected_names
        assert final["streams"]["cam-stream"]["info"]["DeviceName"] == "pi-5"


def test_stop_unwinds_tasks_still_pending_on_its_loop(tmp_path: Path) -> None:
    """Stopping a Local KVS on its own thread cancels what still runs on its loop and lets it
    unwind (its ``finally`` runs, inside the loop), as ``asyncio.run`` does, instead of
    closing the loop over pending coroutines."""
    unwound: list[bool] = []

    async def forever(running: asyncio.Event) -> None:
        try:
            running.set()
            await asyncio.Event().wait()
        finally:
            unwound.append(asyncio.get_running_loop().is_running())

    async def spawn() -> None:
        running = asyncio.Event()
        asyncio.get_running_loop().create_task(forever(running))
        await running.wait()

    kvs = LocalKvs(LocalKvsConfig(data_dir=tmp_path / "data", ice="host")).start_in_thread()
    kvs.call(spawn())
    kvs.stop_in_thread()
    assert unwound == [True]
