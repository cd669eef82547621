"""The control plane and the signaling REST plane, through real boto3 clients against a running
Local KVS: every implemented operation's success path, the AWS shapes of what they return,
pagination, the media-storage rules, endpoints and tags."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvsnb.local import LocalKvs

ARN_RE = r"arn:aws:kinesisvideo:us-west-2:000000000000:{kind}/{name}/(\d{{13}})"
VERSION_RE = re.compile(r"[a-zA-Z0-9]{20}")


def channel(kv: Any, name: str, **kwargs: Any) -> str:
    """Create a channel and return its ARN."""
    return str(kv.create_signaling_channel(ChannelName=name, **kwargs)["ChannelARN"])


def stream(kv: Any, name: str, hours: int = 24, **kwargs: Any) -> str:
    """Create a stream and return its ARN."""
    return str(kv.create_stream(StreamName=name, DataRetentionInHours=hours, **kwargs)["StreamARN"])


def near_now(when: dt.datetime, slack_s: float = 30.0) -> bool:
    """An aware datetime within ``slack_s`` of now."""
    return abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < slack_s


def storage(kv: Any, channel_arn: str) -> dict[str, Any]:
    """The channel's MediaStorageConfiguration."""
    conf: dict[str, Any] = kv.describe_media_storage_configuration(ChannelARN=channel_arn)[
        "MediaStorageConfiguration"
    ]
    return conf


def endpoints(kv: Any, arn: str, role: str, protocols: list[str]) -> dict[str, str]:
    """GetSignalingChannelEndpoint as ``{protocol: endpoint}``."""
    answer = kv.get_signaling_channel_endpoint(
        ChannelARN=arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": protocols, "Role": role},
    )
    return {e["Protocol"]: e["ResourceEndpoint"] for e in answer["ResourceEndpointList"]}


# ---------------------------------------------------------------------- signaling channels


def test_create_and_describe_channel_has_aws_shapes(kv: Any) -> None:
    before_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    arn = channel(kv, "cam-1.front_door")
    after_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    match = re.fullmatch(ARN_RE.format(kind="channel", name=r"cam-1\.front_door"), arn)
    assert match, arn
    assert before_ms - 5 <= int(match[1]) <= after_ms + 5

    info = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert info["ChannelName"] == "cam-1.front_door"
    assert info["ChannelARN"] == arn
    assert info["ChannelType"] == "SINGLE_MASTER"
    assert info["ChannelStatus"] == "ACTIVE"
    assert info["SingleMasterConfiguration"] == {"MessageTtlSeconds": 60}
    assert VERSION_RE.fullmatch(info["Version"]), info["Version"]
    assert isinstance(info["CreationTime"], dt.datetime)
    assert near_now(info["CreationTime"])
    # The ARN's epoch milliseconds are the creation time.
    assert round(info["CreationTime"].timestamp() * 1000) == int(match[1])

    assert kv.describe_signaling_channel(ChannelName="cam-1.front_door")["ChannelInfo"] == info


def test_create_channel_with_all_members(kv: Any) -> None:
    arn = channel(
        kv,
        "mesh",
        ChannelType="FULL_MESH",
        SingleMasterConfiguration={"MessageTtlSeconds": 5},
        Tags=[{"Key": "team", "Value": "video"}, {"Key": "empty", "Value": ""}],
    )
    info = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert info["ChannelType"] == "FULL_MESH"
    assert info["SingleMasterConfiguration"] == {"MessageTtlSeconds": 5}
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "video", "empty": ""}
    arn120 = channel(kv, "ttl120", SingleMasterConfiguration={"MessageTtlSeconds": 120})
    info120 = kv.describe_signaling_channel(ChannelARN=arn120)["ChannelInfo"]
    assert info120["SingleMasterConfiguration"] == {"MessageTtlSeconds": 120}


def test_update_channel_changes_ttl_and_version(kv: Any) -> None:
    arn = channel(kv, "upd")
    before = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    kv.update_signaling_channel(
        ChannelARN=arn,
        CurrentVersion=before["Version"],
        SingleMasterConfiguration={"MessageTtlSeconds": 30},
    )
    after = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert after["SingleMasterConfiguration"] == {"MessageTtlSeconds": 30}
    assert VERSION_RE.fullmatch(after["Version"])
    assert after["Version"] != before["Version"]
    assert after["ChannelARN"] == before["ChannelARN"]
    assert after["CreationTime"] == before["CreationTime"]


def test_delete_channel(kv: Any, expect_error: Any) -> None:
    arn = channel(kv, "gone", Tags=[{"Key": "k", "Value": "v"}])
    keep = channel(kv, "kept")
    version = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["Version"]
    kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion=version)
    expect_error(
        lambda: kv.describe_signaling_channel(ChannelARN=arn),
        "ResourceNotFoundException",
        404,
        "not found",
    )
    names = [c["ChannelName"] for c in kv.list_signaling_channels()["ChannelInfoList"]]
    assert names == ["kept"]
    kv.delete_signaling_channel(ChannelARN=keep)  # CurrentVersion is optional
    assert kv.list_signaling_channels()["ChannelInfoList"] == []
    # The name is free again, with a new ARN and no old tags.
    again = channel(kv, "gone")
    assert kv.list_tags_for_resource(ResourceARN=again).get("Tags", {}) == {}


def test_list_channels_is_stable_and_filters_by_prefix(kv: Any) -> None:
    names = ["b-cam", "a-cam", "door-2", "door-1", "a-door"]
    arns = {name: channel(kv, name) for name in names}
    listed = kv.list_signaling_channels()["ChannelInfoList"]
    assert sorted(c["ChannelName"] for c in listed) == sorted(names)
    assert {c["ChannelName"]: c["ChannelARN"] for c in listed} == arns
    again = kv.list_signaling_channels()["ChannelInfoList"]
    assert [c["ChannelARN"] for c in again] == [c["ChannelARN"] for c in listed]
    door = kv.list_signaling_channels(
        ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "door"}
    )["ChannelInfoList"]
    assert sorted(c["ChannelName"] for c in door) == ["door-1", "door-2"]
    none = kv.list_signaling_channels(ChannelNameCondition={"ComparisonValue": "zzz"})
    assert none["ChannelInfoList"] == []
    assert "NextToken" not in none


@pytest.mark.parametrize("page", [1, 2, 3, 7])
def test_list_channels_pages_walk_everything_once(kv: Any, page: int) -> None:
    names = [f"pg-{i:02d}" for i in range(7)]
    for name in names:
        channel(kv, name)
    channel(kv, "other")
    full = [
        c["ChannelARN"]
        for c in kv.list_signaling_channels(
            ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "pg-"}
        )["ChannelInfoList"]
    ]
    seen: list[str] = []
    token: str | None = None
    calls = 0
    while True:
        kwargs: dict[str, Any] = {
            "MaxResults": page,
            "ChannelNameCondition": {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "pg-"},
        }
        if token:
            kwargs["NextToken"] = token
        answer = kv.list_signaling_channels(**kwargs)
        assert len(answer["ChannelInfoList"]) <= page
        seen += [c["ChannelARN"] for c in answer["ChannelInfoList"]]
        calls += 1
        token = answer.get("NextToken")
        if not token:
            break
    assert seen == full
    assert len(set(seen)) == len(names)
    assert calls == -(-len(names) // page)


def test_botocore_paginator_walks_channels_and_streams(kv: Any) -> None:
    for i in range(5):
        channel(kv, f"ch{i}")
        stream(kv, f"st{i}")
    pages = kv.get_paginator("list_signaling_channels").paginate(PaginationConfig={"PageSize": 2})
    names = [c["ChannelName"] for p in pages for c in p["ChannelInfoList"]]
    assert sorted(names) == [f"ch{i}" for i in range(5)]
    assert len(names) == 5
    pages = kv.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 2})
    names = [s["StreamName"] for p in pages for s in p["StreamInfoList"]]
    assert sorted(names) == [f"st{i}" for i in range(5)]
    assert len(names) == 5


# ---------------------------------------------------------------------- streams


def test_create_and_describe_stream_has_aws_shapes(kv: Any) -> None:
    arn = stream(kv, "cam_1", hours=48, DeviceName="pi-4", MediaType="video/h264")
    match = re.fullmatch(ARN_RE.format(kind="stream", name="cam_1"), arn)
    assert match, arn
    info = kv.describe_stream(StreamARN=arn)["StreamInfo"]
    assert info["StreamName"] == "cam_1"
    assert info["StreamARN"] == arn
    assert info["DeviceName"] == "pi-4"
    assert info["MediaType"] == "video/h264"
    assert info["Status"] == "ACTIVE"
    assert info["DataRetentionInHours"] == 48
    assert VERSION_RE.fullmatch(info["Version"])
    assert near_now(info["CreationTime"])
    assert round(info["CreationTime"].timestamp() * 1000) == int(match[1])
    assert kv.describe_stream(StreamName="cam_1")["StreamInfo"] == info
    bare = kv.describe_stream(StreamARN=stream(kv, "bare", hours=0))["StreamInfo"]
    assert bare["DataRetentionInHours"] == 0


def test_update_stream_changes_version(kv: Any) -> None:
    arn = stream(kv, "upd", DeviceName="old", MediaType="video/h264")
    before = kv.describe_stream(StreamARN=arn)["StreamInfo"]
    kv.update_stream(
        StreamARN=arn, CurrentVersion=before["Version"], DeviceName="new", MediaType="video/h265"
    )
    after = kv.describe_stream(StreamName="upd")["StreamInfo"]
    assert (after["DeviceName"], after["MediaType"]) == ("new", "video/h265")
    assert after["Version"] != before["Version"]
    assert VERSION_RE.fullmatch(after["Version"])
    # By name too, changing only one member.
    kv.update_stream(StreamName="upd", CurrentVersion=after["Version"], DeviceName="newer")
    last = kv.describe_stream(StreamARN=arn)["StreamInfo"]
    assert (last["DeviceName"], last["MediaType"]) == ("newer", "video/h265")


def test_update_data_retention(kv: Any, expect_error: Any) -> None:
    arn = stream(kv, "ret", hours=10)

    def version() -> str:
        return str(kv.describe_stream(StreamARN=arn)["StreamInfo"]["Version"])

    def hours() -> int:
        return int(kv.describe_stream(StreamARN=arn)["StreamInfo"]["DataRetentionInHours"])

    v0 = version()
    kv.update_data_retention(
        StreamARN=arn,
        CurrentVersion=v0,
        Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=5,
    )
    assert hours() == 15
    v1 = version()
    assert v1 != v0
    kv.update_data_retention(
        StreamName="ret",
        CurrentVersion=v1,
        Operation="DECREASE_DATA_RETENTION",
        DataRetentionChangeInHours=15,
    )
    assert hours() == 0
    v2 = version()
    expect_error(
        lambda: kv.update_data_retention(
            StreamARN=arn,
            CurrentVersion=v2,
            Operation="DECREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        ),
        "InvalidArgumentException",
        400,
        "below 0",
    )
    assert (hours(), version()) == (0, v2)


def test_list_streams_pages_and_prefix(kv: Any, expect_error: Any) -> None:
    names = [f"s{i}" for i in range(6)] + ["t0", "t1"]
    for name in names:
        stream(kv, name)
    full = [s["StreamName"] for s in kv.list_streams()["StreamInfoList"]]
    assert sorted(full) == sorted(names)
    seen: list[str] = []
    token = None
    while True:
        answer = kv.list_streams(MaxResults=4, **({"NextToken": token} if token else {}))
        seen += [s["StreamName"] for s in answer["StreamInfoList"]]
        token = answer.get("NextToken")
        if token is None:
            break
    assert seen == full
    t = kv.list_streams(
        StreamNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "t"}
    )["StreamInfoList"]
    assert sorted(s["StreamName"] for s in t) == ["t0", "t1"]


def test_delete_stream(kv: Any, expect_error: Any) -> None:
    arn = stream(kv, "bye")
    version = kv.describe_stream(StreamARN=arn)["StreamInfo"]["Version"]
    kv.delete_stream(StreamARN=arn, CurrentVersion=version)
    expect_error(
        lambda: kv.describe_stream(StreamARN=arn), "ResourceNotFoundException", 404, "not found"
    )
    assert kv.list_streams()["StreamInfoList"] == []
    again = stream(kv, "bye")  # the name is free again
    assert kv.describe_stream(StreamARN=again)["StreamInfo"]["Status"] == "ACTIVE"
    assert kv.list_tags_for_stream(StreamARN=again)["Tags"] == {}
    kv.delete_stream(StreamARN=again)  # without CurrentVersion


# ---------------------------------------------------------------------- media storage


def test_fresh_channel_storage_is_disabled(kv: Any) -> None:
    arn = channel(kv, "fresh")
    assert storage(kv, arn) == {"Status": "DISABLED"}
    by_name = kv.describe_media_storage_configuration(ChannelName="fresh")
    assert by_name["MediaStorageConfiguration"] == {"Status": "DISABLED"}


def test_enable_and_disable_storage_maps_and_unmaps(kv: Any) -> None:
    ch = channel(kv, "store")
    st = stream(kv, "store-stream")
    assert (
        kv.describe_mapped_resource_configuration(StreamARN=st)["MappedResourceConfigurationList"]
        == []
    )
    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    assert storage(kv, ch) == {"Status": "ENABLED", "StreamARN": st}
    mapped = [{"Type": "SIGNALING_CHANNEL", "ARN": ch}]
    assert (
        kv.describe_mapped_resource_configuration(StreamARN=st)["MappedResourceConfigurationList"]
        == mapped
    )
    assert (
        kv.describe_mapped_resource_configuration(StreamName="store-stream", MaxResults=1)[
            "MappedResourceConfigurationList"
        ]
        == mapped
    )
    # Enabling again with the same stream is idempotent.
    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    assert storage(kv, ch) == {"Status": "ENABLED", "StreamARN": st}
    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"Status": "DISABLED"}
    )
    assert storage(kv, ch) == {"Status": "DISABLED"}
    assert (
        kv.describe_mapped_resource_configuration(StreamARN=st)["MappedResourceConfigurationList"]
        == []
    )
    # Unmapped, the stream can now be deleted and mapped elsewhere.
    other = channel(kv, "other")
    kv.update_media_storage_configuration(
        ChannelARN=other, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    assert storage(kv, other)["StreamARN"] == st


def test_deleting_a_storage_channel_frees_its_stream(kv: Any) -> None:
    ch = channel(kv, "tmp")
    st = stream(kv, "tmp-stream")
    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    kv.delete_signaling_channel(ChannelARN=ch)
    assert (
        kv.describe_mapped_resource_configuration(StreamARN=st)["MappedResourceConfigurationList"]
        == []
    )
    kv.delete_stream(StreamARN=st)


# ---------------------------------------------------------------------- endpoints


@pytest.mark.parametrize("role", ["MASTER", "VIEWER"])
def test_signaling_endpoints_wss_https(kv: Any, local_kvs: LocalKvs, role: str) -> None:
    arn = channel(kv, "ep")
    eps = endpoints(kv, arn, role, ["WSS", "HTTPS"])
    assert set(eps) == {"WSS", "HTTPS"}
    assert eps["WSS"].startswith(f"ws://127.0.0.1:{local_kvs.port}/")
    assert eps["HTTPS"].startswith(f"http://127.0.0.1:{local_kvs.port}/")
    only = endpoints(kv, arn, role, ["HTTPS"])
    assert only == {"HTTPS": eps["HTTPS"]}
    # Without a configuration: WSS and HTTPS.
    default = kv.get_signaling_channel_endpoint(ChannelARN=arn)["ResourceEndpointList"]
    assert {e["Protocol"] for e in default} == {"WSS", "HTTPS"}


@pytest.mark.parametrize("role", ["MASTER", "VIEWER"])
def test_webrtc_endpoint_needs_storage(kv: Any, expect_error: Any, role: str) -> None:
    arn = channel(kv, "rtc")
    expect_error(
        lambda: endpoints(kv, arn, role, ["WSS", "HTTPS", "WEBRTC"]),
        "InvalidArgumentException",
        400,
        "MediaStorageConfiguration is required for WEBRTC protocol",
    )
    st = stream(kv, "rtc-stream")
    kv.update_media_storage_configuration(
        ChannelARN=arn, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    eps = endpoints(kv, arn, role, ["WSS", "HTTPS", "WEBRTC"])
    assert set(eps) == {"WSS", "HTTPS", "WEBRTC"}
    assert eps["WEBRTC"].startswith("http://127.0.0.1:")
    kv.update_media_storage_configuration(
        ChannelARN=arn, MediaStorageConfiguration={"Status": "DISABLED"}
    )
    expect_error(
        lambda: endpoints(kv, arn, role, ["WEBRTC"]),
        "InvalidArgumentException",
        400,
        "MediaStorageConfiguration is required for WEBRTC protocol",
    )


def test_get_data_endpoint_builds_an_archived_media_client(
    kv: Any, client_for: Any, expect_error: Any
) -> None:
    arn = stream(kv, "media")
    for api in ["LIST_FRAGMENTS", "GET_CLIP", "GET_HLS_STREAMING_SESSION_URL", "GET_IMAGES"]:
        by_arn = kv.get_data_endpoint(StreamARN=arn, APIName=api)["DataEndpoint"]
        by_name = kv.get_data_endpoint(StreamName="media", APIName=api)["DataEndpoint"]
        assert by_arn == by_name
    assert by_arn.startswith("http://127.0.0.1:")
    media = client_for("kinesis-video-archived-media", by_arn)
    assert media.meta.endpoint_url == by_arn
    # The client talks to the archived-media plane (whatever that plane answers, it is an
    # AWS-shaped answer from a modelled operation, not a 404 for an unknown path).
    try:
        media.list_fragments(StreamARN=arn)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] != "UnknownOperationException", exc


# ---------------------------------------------------------------------- tags


def test_tag_resource_on_channels_and_streams(kv: Any) -> None:
    ch = channel(kv, "tagged")
    st = stream(kv, "tagged")
    for arn in (ch, st):
        kv.tag_resource(
            ResourceARN=arn, Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]
        )
        assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"a": "1", "b": "2"}
        kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "a", "Value": "one"}])
        assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"a": "one", "b": "2"}
        kv.untag_resource(ResourceARN=arn, TagKeyList=["b", "not-there"])
        assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"a": "one"}
    # Stream tags are the same tags through TagStream and friends.
    assert kv.list_tags_for_stream(StreamARN=st)["Tags"] == {"a": "one"}


def test_tag_stream_by_name_and_arn(kv: Any) -> None:
    st = stream(kv, "ts", Tags={"env": "test"})
    assert kv.list_tags_for_stream(StreamName="ts")["Tags"] == {"env": "test"}
    kv.tag_stream(StreamName="ts", Tags={"k1": "v1", "k2": "v2"})
    kv.tag_stream(StreamARN=st, Tags={"k1": "v1b"})
    assert kv.list_tags_for_stream(StreamARN=st)["Tags"] == {
        "env": "test",
        "k1": "v1b",
        "k2": "v2",
    }
    kv.untag_stream(StreamARN=st, TagKeyList=["k2"])
    kv.untag_stream(StreamName="ts", TagKeyList=["env"])
    assert kv.list_tags_for_stream(StreamName="ts")["Tags"] == {"k1": "v1b"}
    assert kv.list_tags_for_resource(ResourceARN=st)["Tags"] == {"k1": "v1b"}


def test_fifty_tags_are_allowed(kv: Any) -> None:
    arn = channel(kv, "many", Tags=[{"Key": f"k{i}", "Value": str(i)} for i in range(50)])
    assert len(kv.list_tags_for_resource(ResourceARN=arn)["Tags"]) == 50
    # Re-tagging existing keys does not count twice.
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "k0", "Value": "zero"}])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"]["k0"] == "zero"


# ---------------------------------------------------------------------- signaling REST


def test_get_ice_server_config(kv: Any, client_for: Any, expect_error: Any) -> None:
    arn = channel(kv, "ice")
    https = endpoints(kv, arn, "VIEWER", ["HTTPS"])["HTTPS"]
    signaling = client_for("kinesis-video-signaling", https)
    answer = signaling.get_ice_server_config(ChannelARN=arn, ClientId="viewer-1", Service="TURN")
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    servers = answer["IceServerList"]
    assert isinstance(servers, list)
    for server in servers:
        assert server["Uris"] and all(u.startswith(("turn:", "turns:")) for u in server["Uris"])
    assert signaling.get_ice_server_config(ChannelARN=arn)["IceServerList"] == servers
    missing = arn.replace("/ice/", "/nope/")
    expect_error(
        lambda: signaling.get_ice_server_config(ChannelARN=missing),
        "ResourceNotFoundException",
        404,
        "not found",
    )
