"""Bad input against a running Local KVS, through real boto3 clients (with botocore's own
validation off where it would stop the request) and raw HTTP: every modelled error, with its
code, HTTP status and message in Coral's words, and nothing changed by a rejected request
(docs/design.md, principle 8)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvsnb.local import LocalKvs

NAME_PATTERN = "[a-zA-Z0-9_.-]+"
ARN_PATTERN = "arn:[a-z\\d-]+:kinesisvideo:[a-z0-9-]+:[0-9]+:[a-z]+/[a-zA-Z0-9_.-]+/[0-9]+"
TAG_KEY_PATTERN = "^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$"
MISSING_CHANNEL = "arn:aws:kinesisvideo:us-west-2:000000000000:channel/nope/1700000000000"
MISSING_STREAM = "arn:aws:kinesisvideo:us-west-2:000000000000:stream/nope/1700000000000"
INVALID = "InvalidArgumentException"


def one_error(value: str, path: str, constraint: str) -> str:
    """A single-failure validation message, exactly as Coral words it."""
    return (
        f"1 validation error detected: Value {value} at '{path}' failed to satisfy "
        f"constraint: {constraint}"
    )


def snapshot(kv: Any) -> dict[str, Any]:
    """Everything the control plane says about its resources."""
    channels = kv.list_signaling_channels()["ChannelInfoList"]
    streams = kv.list_streams()["StreamInfoList"]
    return {
        "channels": channels,
        "streams": streams,
        "storage": {
            c["ChannelARN"]: kv.describe_media_storage_configuration(ChannelARN=c["ChannelARN"])[
                "MediaStorageConfiguration"
            ]
            for c in channels
        },
        "tags": {
            r: kv.list_tags_for_resource(ResourceARN=r).get("Tags", {})
            for r in [c["ChannelARN"] for c in channels] + [s["StreamARN"] for s in streams]
        },
    }


@pytest.fixture
def world(kv: Any) -> dict[str, str]:
    """A channel, a stream with retention, one without, and their versions."""
    ch = kv.create_signaling_channel(ChannelName="ch", Tags=[{"Key": "k", "Value": "v"}])
    st = kv.create_stream(StreamName="st", DataRetentionInHours=2, Tags={"k": "v"})
    bare = kv.create_stream(StreamName="bare", DataRetentionInHours=0)
    return {
        "channel": ch["ChannelARN"],
        "stream": st["StreamARN"],
        "bare": bare["StreamARN"],
        "channel_version": kv.describe_signaling_channel(ChannelName="ch")["ChannelInfo"][
            "Version"
        ],
        "stream_version": kv.describe_stream(StreamName="st")["StreamInfo"]["Version"],
    }


# ---------------------------------------------------------------------- validation


def test_bad_channel_name_pattern_in_coral_words(kv: Any, expect_error: Any) -> None:
    err = expect_error(
        lambda: kv.create_signaling_channel(ChannelName="a b"),
        INVALID,
        400,
        "",
    )
    assert err["Error"]["Message"] == one_error(
        "'a b'",
        "channelName",
        f"Member must satisfy regular expression pattern: {NAME_PATTERN}",
    )
    assert err["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"].startswith(INVALID + ":")
    assert err["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]


@pytest.mark.parametrize(
    ("name", "constraint"),
    [
        ("x" * 257, "Member must have length less than or equal to 256"),
        ("bad/name", f"Member must satisfy regular expression pattern: {NAME_PATTERN}"),
        ("ünïcode", f"Member must satisfy regular expression pattern: {NAME_PATTERN}"),
    ],
)
def test_bad_names(kv: Any, nv: Any, expect_error: Any, name: str, constraint: str) -> None:
    err = expect_error(lambda: kv.create_signaling_channel(ChannelName=name), INVALID, 400, "")
    assert err["Error"]["Message"] == one_error(f"'{name}'", "channelName", constraint)
    err = expect_error(lambda: kv.create_stream(StreamName=name), INVALID, 400, "")
    assert err["Error"]["Message"] == one_error(f"'{name}'", "streamName", constraint)
    assert kv.list_signaling_channels()["ChannelInfoList"] == []
    assert kv.list_streams()["StreamInfoList"] == []


def test_longest_name_is_fine(kv: Any) -> None:
    name = "n" * 256
    arn = kv.create_signaling_channel(ChannelName=name)["ChannelARN"]
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["ChannelName"] == name


def test_empty_and_missing_required_members(nv: Any, expect_error: Any) -> None:
    expect_error(
        lambda: nv.create_signaling_channel(ChannelName=""),
        INVALID,
        400,
        "Value '' at 'channelName' failed to satisfy constraint: Member must have length "
        "greater than or equal to 1",
    )
    err = expect_error(lambda: nv.create_signaling_channel(), INVALID, 400, "")
    assert err["Error"]["Message"] == one_error("null", "channelName", "Member must not be null")
    expect_error(
        lambda: nv.update_media_storage_configuration(
            ChannelARN=MISSING_CHANNEL, MediaStorageConfiguration={}
        ),
        INVALID,
        400,
        "Value null at 'mediaStorageConfiguration.status' failed to satisfy constraint: "
        "Member must not be null",
    )
    err = expect_error(lambda: nv.update_data_retention(StreamName="x"), INVALID, 400, "")
    message = err["Error"]["Message"]
    assert message.startswith("3 validation errors detected: ")
    for member in ("currentVersion", "operation", "dataRetentionChangeInHours"):
        assert (
            f"Value null at '{member}' failed to satisfy constraint: Member must not be null"
            in (message)
        )
    expect_error(
        lambda: nv.get_data_endpoint(StreamName="x"),
        INVALID,
        400,
        "Value null at 'aPIName' failed to satisfy constraint: Member must not be null",
    )


@pytest.mark.parametrize(
    ("ttl", "constraint"),
    [
        (4, "Member must have value greater than or equal to 5"),
        (121, "Member must have value less than or equal to 120"),
    ],
)
def test_message_ttl_out_of_range(
    kv: Any, nv: Any, expect_error: Any, ttl: int, constraint: str
) -> None:
    conf = {"MessageTtlSeconds": ttl}
    err = expect_error(
        lambda: nv.create_signaling_channel(ChannelName="ttl", SingleMasterConfiguration=conf),
        INVALID,
        400,
        "",
    )
    assert err["Error"]["Message"] == one_error(
        f"'{ttl}'", "singleMasterConfiguration.messageTtlSeconds", constraint
    )
    assert kv.list_signaling_channels()["ChannelInfoList"] == []
    arn = kv.create_signaling_channel(ChannelName="ttl")["ChannelARN"]
    before = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    expect_error(
        lambda: nv.update_signaling_channel(
            ChannelARN=arn, CurrentVersion=before["Version"], SingleMasterConfiguration=conf
        ),
        INVALID,
        400,
        constraint,
    )
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"] == before


def test_negative_numbers(kv: Any, nv: Any, expect_error: Any, world: dict[str, str]) -> None:
    before = snapshot(kv)
    err = expect_error(
        lambda: nv.create_stream(StreamName="neg", DataRetentionInHours=-1), INVALID, 400, ""
    )
    assert err["Error"]["Message"] == one_error(
        "'-1'", "dataRetentionInHours", "Member must have value greater than or equal to 0"
    )
    expect_error(
        lambda: nv.update_data_retention(
            StreamARN=world["stream"],
            CurrentVersion=world["stream_version"],
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=0,
        ),
        INVALID,
        400,
        "Value '0' at 'dataRetentionChangeInHours' failed to satisfy constraint: Member must "
        "have value greater than or equal to 1",
    )
    expect_error(
        lambda: nv.list_signaling_channels(MaxResults=0),
        INVALID,
        400,
        "at 'maxResults' failed to satisfy constraint: Member must have value greater than "
        "or equal to 1",
    )
    expect_error(
        lambda: kv.list_streams(MaxResults=10001),
        INVALID,
        400,
        "Member must have value less than or equal to 10000",
    )
    assert snapshot(kv) == before


def test_unknown_enum_values(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    before = snapshot(kv)
    err = expect_error(
        lambda: kv.create_signaling_channel(ChannelName="x", ChannelType="BROADCAST"),
        INVALID,
        400,
        "",
    )
    assert err["Error"]["Message"] == one_error(
        "'BROADCAST'",
        "channelType",
        "Member must satisfy enum value set: [SINGLE_MASTER, FULL_MESH]",
    )
    expect_error(
        lambda: kv.get_data_endpoint(StreamName="st", APIName="PUT_EVERYTHING"),
        INVALID,
        400,
        "Value 'PUT_EVERYTHING' at 'aPIName' failed to satisfy constraint: Member must satisfy "
        "enum value set: [PUT_MEDIA, GET_MEDIA, LIST_FRAGMENTS",
    )
    err = expect_error(
        lambda: kv.get_signaling_channel_endpoint(
            ChannelARN=world["channel"],
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "FTP"]},
        ),
        INVALID,
        400,
        "",
    )
    assert err["Error"]["Message"] == one_error(
        "'[WSS, FTP]'",
        "singleMasterChannelEndpointConfiguration.protocols",
        "Member must satisfy constraint: [Member must satisfy enum value set: "
        "[WSS, HTTPS, WEBRTC]]",
    )
    expect_error(
        lambda: kv.get_signaling_channel_endpoint(
            ChannelARN=world["channel"],
            SingleMasterChannelEndpointConfiguration={"Role": "ADMIN"},
        ),
        INVALID,
        400,
        "Value 'ADMIN' at 'singleMasterChannelEndpointConfiguration.role' failed to satisfy "
        "constraint: Member must satisfy enum value set: [MASTER, VIEWER]",
    )
    expect_error(
        lambda: kv.update_data_retention(
            StreamARN=world["stream"],
            CurrentVersion=world["stream_version"],
            Operation="SET_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        ),
        INVALID,
        400,
        "Value 'SET_DATA_RETENTION' at 'operation'",
    )
    expect_error(
        lambda: kv.update_media_storage_configuration(
            ChannelARN=world["channel"],
            MediaStorageConfiguration={"StreamARN": world["stream"], "Status": "ON"},
        ),
        INVALID,
        400,
        "Value 'ON' at 'mediaStorageConfiguration.status' failed to satisfy constraint: "
        "Member must satisfy enum value set: [ENABLED, DISABLED]",
    )
    expect_error(
        lambda: kv.list_signaling_channels(
            ChannelNameCondition={"ComparisonOperator": "ENDS_WITH", "ComparisonValue": "x"}
        ),
        INVALID,
        400,
        "at 'channelNameCondition.comparisonOperator'",
    )
    assert snapshot(kv) == before


def test_several_errors_are_counted(kv: Any, nv: Any, expect_error: Any) -> None:
    err = expect_error(
        lambda: nv.create_signaling_channel(
            ChannelName="a b",
            ChannelType="NOPE",
            SingleMasterConfiguration={"MessageTtlSeconds": 1},
        ),
        INVALID,
        400,
        "3 validation errors detected: ",
    )
    message = err["Error"]["Message"]
    for part in (
        "Value 'a b' at 'channelName'",
        "Value 'NOPE' at 'channelType'",
        "Value '1' at 'singleMasterConfiguration.messageTtlSeconds'",
    ):
        assert part in message
    assert message.count("; ") == 2


def test_bad_arns(kv: Any, expect_error: Any) -> None:
    err = expect_error(
        lambda: kv.describe_signaling_channel(ChannelARN="not-an-arn"), INVALID, 400, ""
    )
    assert err["Error"]["Message"] == one_error(
        "'not-an-arn'",
        "channelARN",
        f"Member must satisfy regular expression pattern: {ARN_PATTERN}",
    )
    expect_error(
        lambda: kv.tag_resource(
            ResourceARN="arn:aws:s3:::bucket", Tags=[{"Key": "a", "Value": "b"}]
        ),
        INVALID,
        400,
        "at 'resourceARN' failed to satisfy constraint: Member must satisfy regular expression",
    )


def test_bad_tags(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    before = snapshot(kv)
    expect_error(
        lambda: kv.tag_resource(
            ResourceARN=world["channel"],
            Tags=[{"Key": "good", "Value": "v"}, {"Key": "bad#key", "Value": "v"}],
        ),
        INVALID,
        400,
        "Value 'bad#key' at 'tags.2.member.key' failed to satisfy constraint: Member must "
        f"satisfy regular expression pattern: {TAG_KEY_PATTERN}",
    )
    expect_error(
        lambda: kv.tag_stream(StreamARN=world["stream"], Tags={"bad#key": "v", "ok": "v"}),
        INVALID,
        400,
        "Value '{bad#key=v, ok=v}' at 'tags' failed to satisfy constraint: Map keys must "
        f"satisfy constraint: [Member must satisfy regular expression pattern: {TAG_KEY_PATTERN}]",
    )
    expect_error(
        lambda: kv.tag_stream(StreamARN=world["stream"], Tags={"ok": "x" * 257}),
        INVALID,
        400,
        "at 'tags' failed to satisfy constraint: Map value must satisfy constraint: [Member "
        "must have length less than or equal to 256]",
    )
    expect_error(
        lambda: kv.create_signaling_channel(
            ChannelName="t", Tags=[{"Key": f"k{i}", "Value": ""} for i in range(51)]
        ),
        INVALID,
        400,
        "at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50",
    )
    # Unicode letters and separators are allowed in tag keys.
    kv.tag_resource(ResourceARN=world["stream"], Tags=[{"Key": "Ünïcödé key", "Value": "ok"}])
    tags = kv.list_tags_for_resource(ResourceARN=world["stream"])["Tags"]
    assert tags["Ünïcödé key"] == "ok"
    kv.untag_resource(ResourceARN=world["stream"], TagKeyList=["Ünïcödé key"])
    assert snapshot(kv) == before


def test_wrong_json_types_are_serialization_errors(
    kv: Any, nv: Any, expect_error: Any, world: dict[str, str], local_kvs: LocalKvs, http: Any
) -> None:
    before = snapshot(kv)
    expect_error(
        lambda: nv.create_signaling_channel(
            ChannelName="x", SingleMasterConfiguration={"MessageTtlSeconds": "ten"}
        ),
        "SerializationException",
        400,
        "singleMasterConfiguration.messageTtlSeconds",
    )
    expect_error(
        lambda: nv.create_signaling_channel(ChannelName=["x"]),
        "SerializationException",
        400,
        "channelName",
    )
    # botocore cannot even send a list where the model has a map: send it raw.
    resp = http.signed_post(
        f"{local_kvs.url}/tagStream", json.dumps({"StreamName": "st", "Tags": ["a"]}).encode()
    )
    assert (resp.status, resp.error_code) == (400, "SerializationException")
    assert "'tags'" in resp.message
    assert snapshot(kv) == before


# ---------------------------------------------------------------------- unknown resources


def test_unknown_resources_are_404(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    before = snapshot(kv)
    channel_calls = [
        lambda: kv.describe_signaling_channel(ChannelName="nope"),
        lambda: kv.describe_signaling_channel(ChannelARN=MISSING_CHANNEL),
        lambda: kv.update_signaling_channel(ChannelARN=MISSING_CHANNEL, CurrentVersion="v1"),
        lambda: kv.delete_signaling_channel(ChannelARN=MISSING_CHANNEL),
        lambda: kv.describe_media_storage_configuration(ChannelARN=MISSING_CHANNEL),
        lambda: kv.update_media_storage_configuration(
            ChannelARN=MISSING_CHANNEL,
            MediaStorageConfiguration={"StreamARN": world["stream"], "Status": "ENABLED"},
        ),
        lambda: kv.get_signaling_channel_endpoint(ChannelARN=MISSING_CHANNEL),
    ]
    for call in channel_calls:
        expect_error(call, "ResourceNotFoundException", 404, "channel")
    stream_calls = [
        lambda: kv.describe_stream(StreamName="nope"),
        lambda: kv.describe_stream(StreamARN=MISSING_STREAM),
        lambda: kv.update_stream(StreamName="nope", CurrentVersion="v1", DeviceName="d"),
        lambda: kv.update_data_retention(
            StreamName="nope",
            CurrentVersion="v1",
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        ),
        lambda: kv.delete_stream(StreamARN=MISSING_STREAM),
        lambda: kv.get_data_endpoint(StreamName="nope", APIName="LIST_FRAGMENTS"),
        lambda: kv.tag_stream(StreamName="nope", Tags={"a": "b"}),
        lambda: kv.untag_stream(StreamName="nope", TagKeyList=["a"]),
        lambda: kv.list_tags_for_stream(StreamARN=MISSING_STREAM),
        lambda: kv.describe_mapped_resource_configuration(StreamName="nope"),
        lambda: kv.update_media_storage_configuration(
            ChannelARN=world["channel"],
            MediaStorageConfiguration={"StreamARN": MISSING_STREAM, "Status": "ENABLED"},
        ),
    ]
    for call in stream_calls:
        expect_error(call, "ResourceNotFoundException", 404, "stream")
    for arn in (MISSING_CHANNEL, MISSING_STREAM):
        expect_error(
            lambda arn=arn: kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "a", "Value": "b"}]),
            "ResourceNotFoundException",
            404,
            "not found",
        )
        expect_error(
            lambda arn=arn: kv.list_tags_for_resource(ResourceARN=arn),
            "ResourceNotFoundException",
            404,
            "not found",
        )
        expect_error(
            lambda arn=arn: kv.untag_resource(ResourceARN=arn, TagKeyList=["k"]),
            "ResourceNotFoundException",
            404,
            "not found",
        )
    # A name that exists, with another resource's ARN, is not found either.
    expect_error(
        lambda: kv.describe_stream(StreamName="st", StreamARN=world["bare"]),
        "ResourceNotFoundException",
        404,
        "stream",
    )
    assert snapshot(kv) == before


def test_describe_needs_a_name_or_arn(nv: Any, expect_error: Any) -> None:
    expect_error(lambda: nv.describe_stream(), INVALID, 400, "StreamName or StreamARN")
    expect_error(lambda: nv.describe_signaling_channel(), INVALID, 400, "ChannelName or ChannelARN")


# ---------------------------------------------------------------------- conflicts


def test_duplicates_are_resource_in_use(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    before = snapshot(kv)
    expect_error(
        lambda: kv.create_signaling_channel(ChannelName="ch", ChannelType="FULL_MESH"),
        "ResourceInUseException",
        400,
        "already exists",
    )
    expect_error(
        lambda: kv.create_stream(StreamName="st", DataRetentionInHours=5),
        "ResourceInUseException",
        400,
        "already exists",
    )
    assert snapshot(kv) == before


def test_version_mismatch(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    before = snapshot(kv)
    mismatch = "VersionMismatchException"
    expect_error(
        lambda: kv.update_signaling_channel(
            ChannelARN=world["channel"],
            CurrentVersion="x" * 20,
            SingleMasterConfiguration={"MessageTtlSeconds": 10},
        ),
        mismatch,
        400,
        "version",
    )
    expect_error(
        lambda: kv.delete_signaling_channel(ChannelARN=world["channel"], CurrentVersion="old1"),
        mismatch,
        400,
        "version",
    )
    expect_error(
        lambda: kv.update_stream(StreamARN=world["stream"], CurrentVersion="old1", DeviceName="d"),
        mismatch,
        400,
        "version",
    )
    expect_error(
        lambda: kv.update_data_retention(
            StreamARN=world["stream"],
            CurrentVersion="old1",
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        ),
        mismatch,
        400,
        "version",
    )
    expect_error(
        lambda: kv.delete_stream(StreamARN=world["stream"], CurrentVersion="old1"),
        mismatch,
        400,
        "version",
    )
    # A version that was current once is stale after an update.
    kv.update_stream(StreamARN=world["stream"], CurrentVersion=world["stream_version"])
    expect_error(
        lambda: kv.update_stream(
            StreamARN=world["stream"], CurrentVersion=world["stream_version"], DeviceName="d"
        ),
        mismatch,
        400,
        "version",
    )
    after = snapshot(kv)
    changed = next(s for s in after["streams"] if s["StreamName"] == "st")
    assert changed["Version"] != world["stream_version"]
    assert changed.get("DeviceName") is None
    assert after["channels"] == before["channels"]


def test_storage_rules(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    ch, st, bare = world["channel"], world["stream"], world["bare"]
    before = snapshot(kv)
    expect_error(
        lambda: kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"StreamARN": bare, "Status": "ENABLED"}
        ),
        "NoDataRetentionException",
        400,
        "data retention",
    )
    expect_error(
        lambda: kv.update_media_storage_configuration(
            ChannelARN=ch, MediaStorageConfiguration={"Status": "ENABLED"}
        ),
        INVALID,
        400,
        "StreamARN",
    )
    assert snapshot(kv) == before

    kv.update_media_storage_configuration(
        ChannelARN=ch, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
    )
    mapped = snapshot(kv)
    second = kv.create_signaling_channel(ChannelName="second")["ChannelARN"]
    expect_error(
        lambda: kv.update_media_storage_configuration(
            ChannelARN=second, MediaStorageConfiguration={"StreamARN": st, "Status": "ENABLED"}
        ),
        "ResourceInUseException",
        400,
        ch,
    )
    assert kv.describe_media_storage_configuration(ChannelARN=second)[
        "MediaStorageConfiguration"
    ] == {"Status": "DISABLED"}
    kv.delete_signaling_channel(ChannelARN=second)
    expect_error(
        lambda: kv.delete_stream(StreamARN=st),
        "ResourceInUseException",
        400,
        "mapped",
    )
    version = kv.describe_stream(StreamARN=st)["StreamInfo"]["Version"]
    expect_error(
        lambda: kv.update_data_retention(
            StreamARN=st,
            CurrentVersion=version,
            Operation="DECREASE_DATA_RETENTION",
            DataRetentionChangeInHours=2,
        ),
        "ResourceInUseException",
        400,
        "data retention",
    )
    assert snapshot(kv) == mapped


def test_too_many_tags(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    # Both already have the tag "k": 49 more make 50, and re-tagging "k" adds none.
    kv.tag_resource(
        ResourceARN=world["channel"],
        Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(49)] + [{"Key": "k", "Value": "w"}],
    )
    kv.tag_stream(StreamARN=world["stream"], Tags={f"k{i}": "v" for i in range(49)})
    before = snapshot(kv)
    assert len(before["tags"][world["channel"]]) == len(before["tags"][world["stream"]]) == 50
    limit = "TagsPerResourceExceededLimitException"
    expect_error(
        lambda: kv.tag_resource(
            ResourceARN=world["channel"], Tags=[{"Key": "one-more", "Value": "v"}]
        ),
        limit,
        400,
        "50 tags",
    )
    expect_error(
        lambda: kv.tag_stream(StreamName="st", Tags={"one-more": "v", "two-more": "v"}),
        limit,
        400,
        "50 tags",
    )
    expect_error(
        lambda: kv.tag_resource(ResourceARN=world["stream"], Tags=[{"Key": "x", "Value": "v"}]),
        limit,
        400,
        "50 tags",
    )
    assert snapshot(kv) == before


# ---------------------------------------------------------------------- pagination tokens


def test_bad_next_tokens(kv: Any, expect_error: Any, world: dict[str, str]) -> None:
    for token in ("garbage", "bm90LWpzb24=", "W10="):  # not base64, "not-json", "[]"
        expect_error(
            lambda token=token: kv.list_signaling_channels(NextToken=token),
            INVALID,
            400,
            "NextToken",
        )
        expect_error(
            lambda token=token: kv.list_streams(NextToken=token), INVALID, 400, "NextToken"
        )
    expect_error(
        lambda: kv.list_streams(NextToken="!!"),
        INVALID,
        400,
        "Value '!!' at 'nextToken' failed to satisfy constraint: Member must satisfy regular "
        "expression pattern: [a-zA-Z0-9+/=]*",
    )
    kv.create_stream(StreamName="st2")
    token = kv.list_streams(MaxResults=1)["NextToken"]
    # A token only continues the listing it came from.
    expect_error(
        lambda: kv.list_streams(
            MaxResults=1,
            NextToken=token,
            StreamNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "b"},
        ),
        INVALID,
        400,
        "NextToken",
    )


def test_begins_with_is_case_sensitive(kv: Any) -> None:
    for name in ("Door", "door-1", "door_2", "doorway", "adoor"):
        kv.create_signaling_channel(ChannelName=name)
    listed = kv.list_signaling_channels(
        ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "door"}
    )["ChannelInfoList"]
    assert sorted(c["ChannelName"] for c in listed) == ["door-1", "door_2", "doorway"]
    listed = kv.list_signaling_channels(ChannelNameCondition={"ComparisonValue": "door_"})
    assert [c["ChannelName"] for c in listed["ChannelInfoList"]] == ["door_2"]


def test_pages_survive_changes_between_calls(kv: Any) -> None:
    for i in range(6):
        kv.create_stream(StreamName=f"s{i}")
    first = kv.list_streams(MaxResults=3)
    seen = [s["StreamName"] for s in first["StreamInfoList"]]
    # Deleting an item already listed must not make the walk skip one not yet listed.
    kv.delete_stream(StreamARN=first["StreamInfoList"][0]["StreamARN"])
    rest = kv.list_streams(MaxResults=3, NextToken=first["NextToken"])
    seen += [s["StreamName"] for s in rest["StreamInfoList"]]
    assert seen == [f"s{i}" for i in range(6)]
    assert "NextToken" not in rest


# ---------------------------------------------------------------------- raw HTTP


def test_body_that_is_not_json(local_kvs: LocalKvs, kv: Any, http: Any) -> None:
    url = f"{local_kvs.url}/createSignalingChannel"
    for body in (b"{not json", b"\xff\xfe", b'["ChannelName"]', b'"x"'):
        resp = http.signed_post(url, body)
        assert resp.status == 400, resp
        assert resp.error_code == "SerializationException", resp
        assert resp.message
    resp = http.signed_post(url, json.dumps({"ChannelName": "raw"}).encode())
    assert resp.status == 200
    assert resp.json["ChannelARN"].startswith("arn:aws:kinesisvideo:")
    assert [c["ChannelName"] for c in kv.list_signaling_channels()["ChannelInfoList"]] == ["raw"]


def test_unknown_paths_are_404(local_kvs: LocalKvs, http: Any) -> None:
    for path in ("/noSuchOperation", "/createsignalingchannel", "/signaling/v1/nope"):
        resp = http.signed_post(local_kvs.url + path, b"{}")
        assert resp.status == 404, (path, resp)
        assert resp.error_code == "UnknownOperationException"
        assert "No KVS operation" in resp.message
    resp = http.request("GET", local_kvs.url + "/describeSignalingChannel")
    assert resp.status == 404
    assert resp.error_code == "UnknownOperationException"


def test_unimplemented_operation_is_501(kv: Any, expect_error: Any) -> None:
    expect_error(
        lambda: kv.delete_edge_configuration(StreamName="st"),
        "NotImplementedException",
        501,
        "Local KVS does not implement DeleteEdgeConfiguration; see the coverage table in the "
        "README",
    )
