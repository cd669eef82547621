"""Signaling without sockets: presigned URLs, server-frame decoding (the client) and
client-frame parsing and STATUS_RESPONSE frames (the relay). docs/wire.md, "Signaling WebSocket"."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvsnb.client.signaling import (
    PRESIGN_EXPIRES_S,
    SignalingClient,
    decode_message,
    presign_url,
)
from kvsnb.local.core.errors import (
    ClientLimitExceededException,
    InvalidArgumentException,
    ResourceNotFoundException,
)
from kvsnb.local.front.sigv4 import SigV4Checker, StrictKeys
from kvsnb.local.signaling.relay import parse_client_message, status_response

ARN = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/my-channel/1700000000000"
OFFER = {"type": "offer", "sdp": "v=0\r\n"}
LIMIT = 10 * 1024


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def frozen(when: dt.datetime) -> Any:
    """Patch botocore's signing clock."""
    return mock.patch("botocore.auth.get_current_datetime", return_value=when)


# ---------------------------------------------------------------------------- presign


@pytest.mark.parametrize(
    ("token", "signature"),
    [
        ("FakeSessionToken", "fc268038be276315822b4f73eafd28ee3a5632a2a35fdb0a88db9a42b13d6c92"),
        (None, "be1e78950d956a8a9a1997417099ddbd7455619f3d08c4ad20e1e272179ca695"),
    ],
)
def test_js_sdk_test_vector(token: str | None, signature: str) -> None:
    """The signing presign_url relies on reproduces the JS SDK's SigV4RequestSigner vector."""
    creds = Credentials("AKIA4F7WJQR7FMMWMNXI", "FakeSecretKey", token)
    request = AWSRequest(
        method="GET", url="wss://kvs.awsamazon.com/?X-Amz-TestParam=test-param-value"
    )
    with frozen(dt.datetime(2019, 12, 1)):
        SigV4QueryAuth(creds, "kinesisvideo", "us-west-2", PRESIGN_EXPIRES_S).add_auth(request)
    assert request.url is not None
    query = parse_qs(urlsplit(request.url).query)
    assert query["X-Amz-Signature"] == [signature]


def test_presign_url_shape() -> None:
    creds = Credentials("AKIDEXAMPLE", "secret", "token/with+chars")
    with frozen(dt.datetime(2024, 5, 17, 13, 48, 35)):
        url = presign_url(
            "wss://v-1234.kinesisvideo.us-west-2.amazonaws.com",
            ARN,
            creds,
            "us-west-2",
            client_id="viewer.1",
        )
    parts = urlsplit(url)
    assert (parts.scheme, parts.path) == ("wss", "/")
    # The ARN is sent percent-encoded, exactly as signed.
    assert "X-Amz-ChannelARN=arn%3Aaws%3Akinesisvideo%3Aus-west-2%3A" in parts.query
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["X-Amz-ChannelARN"] == ARN
    assert query["X-Amz-ClientId"] == "viewer.1"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Credential"] == "AKIDEXAMPLE/20240517/us-west-2/kinesisvideo/aws4_request"
    assert query["X-Amz-Date"] == "20240517T134835Z"
    assert query["X-Amz-Expires"] == "299"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert query["X-Amz-Security-Token"] == "token/with+chars"
    assert len(query["X-Amz-Signature"]) == 64


def test_presign_url_keeps_a_path_and_omits_the_client_id() -> None:
    creds = Credentials("AKIDEXAMPLE", "secret")
    url = presign_url("ws://127.0.0.1:4566/signaling/master", ARN, creds, "us-west-2")
    parts = urlsplit(url)
    assert parts.path == "/signaling/master"
    query = parse_qs(parts.query)
    assert "X-Amz-ClientId" not in query
    assert "X-Amz-Security-Token" not in query


def test_presign_url_passes_the_strict_checker() -> None:
    keys = StrictKeys("AKIDEXAMPLE", "secret")
    now = dt.datetime(2024, 5, 17, 13, 48, 35)
    with frozen(now):
        url = presign_url(
            "ws://127.0.0.1:4566/signaling/viewer",
            ARN,
            Credentials(keys.access_key, keys.secret_key),
            "eu-west-1",
            "v1",
        )
    checker = SigV4Checker(keys)
    headers = {"Host": "127.0.0.1:4566"}
    aware = now.replace(tzinfo=dt.UTC)
    signed = checker.check_presigned(method="GET", url=url, headers=headers, now=aware)
    assert (signed.access_key, signed.region) == ("AKIDEXAMPLE", "eu-west-1")
    # Expired after 299 s.
    with pytest.raises(Exception, match="expired"):
        checker.check_presigned(
            method="GET", url=url, headers=headers, now=aware + dt.timedelta(seconds=300)
        )
    # A wrong secret does not match.
    wrong = SigV4Checker(StrictKeys("AKIDEXAMPLE", "other"))
    with pytest.raises(Exception, match="signature"):
        wrong.check_presigned(method="GET", url=url, headers=headers, now=aware)


def test_viewer_needs_a_client_id() -> None:
    with pytest.raises(ValueError):
        SignalingClient("ws://h/", ARN, Credentials("a", "b"), "us-west-2", role="VIEWER")


# ---------------------------------------------------------------------------- decode_message


def test_decode_viewer_offer() -> None:
    frame = json.dumps(
        {"senderClientId": "v1", "messageType": "SDP_OFFER", "messagePayload": b64(OFFER)}
    )
    msg = decode_message(frame)
    assert msg is not None
    assert (msg.type, msg.payload, msg.sender_client_id, msg.status) == (
        "SDP_OFFER",
        OFFER,
        "v1",
        None,
    )


def test_decode_storage_message_without_sender() -> None:
    cand = {"candidate": "candidate:1 1 udp 1 10.0.0.1 3478 typ relay", "sdpMLineIndex": 0}
    msg = decode_message(json.dumps({"messageType": "ICE_CANDIDATE", "messagePayload": b64(cand)}))
    assert msg is not None
    assert msg.sender_client_id is None and msg.payload == cand
    msg = decode_message(
        json.dumps({"senderClientId": "", "messageType": "SDP_OFFER", "messagePayload": b64({})})
    )
    assert msg is not None and msg.sender_client_id is None


@pytest.mark.parametrize("kind", ["GO_AWAY", "RECONNECT_ICE_SERVER"])
def test_decode_control_messages(kind: str) -> None:
    for frame in ({"messageType": kind}, {"messageType": kind, "messagePayload": ""}):
        msg = decode_message(json.dumps(frame))
        assert msg is not None and msg.type == kind and msg.payload is None


def test_decode_status_response() -> None:
    frame = {
        "messageType": "STATUS_RESPONSE",
        "statusResponse": {
            "correlationId": "c1",
            "errorType": "InvalidArgumentException",
            "statusCode": "400",
            "description": "bad",
            "success": False,
        },
    }
    msg = decode_message(json.dumps(frame))
    assert msg is not None and msg.status is not None
    assert (msg.status.correlation_id, msg.status.error_type) == ("c1", "InvalidArgumentException")
    assert (msg.status.status_code, msg.status.description) == ("400", "bad")
    frame["statusResponse"]["statusCode"] = 400  # type: ignore[index]  # a number: a string
    msg = decode_message(json.dumps(frame))
    assert msg is not None and msg.status is not None and msg.status.status_code == "400"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        "null",
        '"SDP_OFFER"',
        json.dumps({"messageType": "SOMETHING_NEW", "messagePayload": b64(OFFER)}),
        json.dumps({"messagePayload": b64(OFFER)}),
        json.dumps({"messageType": ["SDP_OFFER"]}),
    ],
)
def test_unknown_or_unparseable_frames_are_ignored(text: str) -> None:
    assert decode_message(text) is None


@pytest.mark.parametrize("payload", ["%%%", b64([1, 2]), b64("text"), "bm90IGpzb24=", 42])
def test_undecodable_payload_keeps_the_message(payload: Any) -> None:
    msg = decode_message(json.dumps({"messageType": "SDP_OFFER", "messagePayload": payload}))
    assert msg is not None and msg.type == "SDP_OFFER" and msg.payload is None


# ---------------------------------------------------------------------------- relay parsing


def test_parse_js_and_c_sdk_frames() -> None:
    js = json.dumps({"action": "SDP_OFFER", "messagePayload": b64(OFFER), "correlationId": "abc.1"})
    msg = parse_client_message(js, LIMIT)
    assert (msg.action, msg.recipient, msg.correlation_id) == ("SDP_OFFER", None, "abc.1")
    c_sdk = json.dumps(
        {
            "Action": "SDP_ANSWER",
            "RecipientClientId": "",
            "MessagePayload": b64(OFFER),
            "CorrelationId": "1700000000000",
            "IceServerList": [],
        }
    )
    msg = parse_client_message(c_sdk, LIMIT)
    assert (msg.action, msg.recipient, msg.correlation_id) == (
        "SDP_ANSWER",
        None,
        "1700000000000",
    )
    msg = parse_client_message(
        json.dumps(
            {"ACTION": "ICE_CANDIDATE", "MESSAGEPAYLOAD": b64({}), "recipientClientId": "v_1"}
        ),
        LIMIT,
    )
    assert (msg.recipient, msg.correlation_id) == ("v_1", None)


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ({"action": "HELLO", "messagePayload": b64(OFFER)}, "Unsupported action"),
        ({"messagePayload": b64(OFFER)}, "Unsupported action"),
        ({"action": "SDP_OFFER"}, "messagePayload is required"),
        ({"action": "SDP_OFFER", "messagePayload": ""}, "messagePayload is required"),
        ({"action": "SDP_OFFER", "messagePayload": 1}, "messagePayload is required"),
        ({"action": "SDP_OFFER", "messagePayload": "%%%"}, "base64"),
        ({"action": "SDP_OFFER", "messagePayload": "A" * (LIMIT + 4)}, "maximum size"),
        ({"action": "SDP_OFFER", "messagePayload": b64({}), "recipientClientId": "a b"}, "valid"),
        ({"action": "SDP_OFFER", "messagePayload": b64({}), "recipientClientId": 5}, "valid"),
    ],
)
def test_parse_errors_carry_the_correlation_id(frame: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgumentException, match=fragment) as err:
        parse_client_message(json.dumps({**frame, "correlationId": "corr-1"}), LIMIT)
    assert err.value.correlation_id == "corr-1"  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgumentException) as err:
        parse_client_message(json.dumps({**frame, "correlationId": "not valid!"}), LIMIT)
    assert err.value.correlation_id is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["{", "[]", "null", "1"])
def test_parse_non_objects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_client_message(text, LIMIT)


def test_payload_limit_boundary() -> None:
    at_limit = "A" * LIMIT
    assert (
        parse_client_message(
            json.dumps({"action": "SDP_OFFER", "messagePayload": at_limit}), LIMIT
        ).payload
        == at_limit
    )


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (InvalidArgumentException("bad"), "400"),
        (ClientLimitExceededException("slow down"), "400"),
        (ResourceNotFoundException("gone"), "404"),
    ],
)
def test_status_response_shape(err: Any, code: str) -> None:
    frame = status_response("c-9", err)
    assert frame == {
        "messageType": "STATUS_RESPONSE",
        "statusResponse": {
            "correlationId": "c-9",
            "errorType": err.code,
            "statusCode": code,
            "description": err.message,
            "success": False,
        },
    }
    assert "senderClientId" not in frame
