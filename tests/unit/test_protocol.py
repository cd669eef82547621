"""The model-driven protocol layer on its own: validation in Coral's words, output rendering
and error bodies, from the botocore service models."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from kvsnb.local.core import protocol
from kvsnb.local.core.errors import (
    AccessDeniedException,
    InvalidArgumentException,
    NotImplementedByLocalKvs,
    SerializationException,
)


def route(plane: str, uri: str) -> protocol.Route:
    return protocol.routes()[(plane, uri)]


def parse(plane: str, uri: str, body: object) -> dict[str, object]:
    return protocol.parse_input(route(plane, uri), json.dumps(body).encode())


def test_every_operation_of_the_four_services_is_routed() -> None:
    table = protocol.routes()
    assert route("control", "/createSignalingChannel").name == "CreateSignalingChannel"
    assert route("signaling", "/v1/get-ice-server-config").name == "GetIceServerConfig"
    assert route("webrtc", "/joinStorageSession").name == "JoinStorageSession"
    assert route("archived-media", "/listFragments").name == "ListFragments"
    for name, plane in protocol.SERVICES.items():
        ops = protocol.service_model(name).operation_names
        assert sum(1 for r in table.values() if r.plane == plane) == len(ops)


def test_valid_input_is_converted() -> None:
    parsed = parse(
        "archived-media",
        "/listFragments",
        {
            "StreamName": "s",
            "FragmentSelector": {
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 1700000000.5, "EndTimestamp": 1700000001},
            },
        },
    )
    selector = parsed["FragmentSelector"]
    assert isinstance(selector, dict)
    start = selector["TimestampRange"]["StartTimestamp"]
    assert start == dt.datetime.fromtimestamp(1700000000.5, tz=dt.UTC)
    assert parse("control", "/createSignalingChannel", {"ChannelName": "a", "Extra": 1}) == {
        "ChannelName": "a"
    }
    empty = protocol.parse_input(route("control", "/listStreams"), b"")
    assert empty == {}


def test_list_of_scalars_is_reported_on_the_list() -> None:
    with pytest.raises(InvalidArgumentException) as info:
        parse(
            "control",
            "/getSignalingChannelEndpoint",
            {
                "ChannelARN": "arn:aws:kinesisvideo:us-west-2:1:channel/a/1",
                "SingleMasterChannelEndpointConfiguration": {"Protocols": ["WSS", "X", "Y"]},
            },
        )
    assert info.value.message == (
        "1 validation error detected: Value '[WSS, X, Y]' at "
        "'singleMasterChannelEndpointConfiguration.protocols' failed to satisfy constraint: "
        "Member must satisfy constraint: [Member must satisfy enum value set: "
        "[WSS, HTTPS, WEBRTC]]"
    )


def test_map_keys_and_values_are_reported_on_the_map() -> None:
    with pytest.raises(InvalidArgumentException) as info:
        parse("control", "/tagStream", {"StreamName": "s", "Tags": {"": "v" * 300}})
    message = info.value.message
    assert message.startswith("2 validation errors detected: Value '{=")
    assert (
        "at 'tags' failed to satisfy constraint: Map keys must satisfy constraint: "
        "[Member must have length greater than or equal to 1]"
    ) in message
    assert (
        "at 'tags' failed to satisfy constraint: Map value must satisfy constraint: "
        "[Member must have length less than or equal to 256]"
    ) in message


def test_structures_in_lists_are_reported_per_member() -> None:
    with pytest.raises(InvalidArgumentException) as info:
        parse(
            "control",
            "/createSignalingChannel",
            {"ChannelName": "a", "Tags": [{"Key": "k", "Value": "v"}, {"Key": "k2"}]},
        )
    assert info.value.message == (
        "1 validation error detected: Value null at 'tags.2.member.value' failed to satisfy "
        "constraint: Member must not be null"
    )


def test_at_most_ten_messages_are_listed() -> None:
    tags = [{"Key": f"bad#{i}", "Value": "v"} for i in range(12)]
    with pytest.raises(InvalidArgumentException) as info:
        parse("control", "/createSignalingChannel", {"ChannelName": "a", "Tags": tags})
    assert info.value.message.startswith("12 validation errors detected: ")
    assert info.value.message.count("failed to satisfy constraint") == 10


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b"null", b"\xff", b'{"ChannelName": 5}', b'{"ChannelName": "a", "Tags": {}}'],
)
def test_bodies_of_the_wrong_type(body: bytes) -> None:
    with pytest.raises(SerializationException):
        protocol.parse_input(route("control", "/createSignalingChannel"), body)


def test_integers_accept_integral_floats_only() -> None:
    parsed = parse(
        "control",
        "/createSignalingChannel",
        {"ChannelName": "a", "SingleMasterConfiguration": {"MessageTtlSeconds": 30.0}},
    )
    assert parsed["SingleMasterConfiguration"] == {"MessageTtlSeconds": 30}
    with pytest.raises(SerializationException):
        parse(
            "control",
            "/createSignalingChannel",
            {"ChannelName": "a", "SingleMasterConfiguration": {"MessageTtlSeconds": 30.5}},
        )
    with pytest.raises(SerializationException):
        parse(
            "control",
            "/createSignalingChannel",
            {"ChannelName": "a", "SingleMasterConfiguration": {"MessageTtlSeconds": True}},
        )


def test_output_is_rendered_and_checked() -> None:
    shape = route("control", "/describeSignalingChannel").operation.output_shape
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    out = protocol.serialize_output(
        shape,
        {"ChannelInfo": {"ChannelName": "a", "CreationTime": when, "ChannelStatus": None}},
    )
    assert out == {"ChannelInfo": {"ChannelName": "a", "CreationTime": when.timestamp()}}
    with pytest.raises(ValueError, match="not a member"):
        protocol.serialize_output(shape, {"ChannelInfo": {"Bogus": 1}})


def test_error_bodies_follow_each_service_model() -> None:
    control = protocol.service_model("kinesisvideo")
    storage = protocol.service_model("kinesis-video-webrtc-storage")
    status, headers, body = protocol.error_body(control, AccessDeniedException("no"))
    assert status == 401
    assert headers["x-amzn-ErrorType"].split(":")[0] == "AccessDeniedException"
    assert json.loads(body) == {"Message": "no"}
    status, _, body = protocol.error_body(storage, AccessDeniedException("no"))
    assert status == 403
    assert json.loads(body) == {"message": "no"}
    status, headers, _ = protocol.error_body(control, NotImplementedByLocalKvs("later"))
    assert (status, headers["x-amzn-ErrorType"].split(":")[0]) == (501, "NotImplementedException")
    status, _, _ = protocol.error_body(control, SerializationException("bad"))
    assert status == 400
