"""SigV4 in Local KVS: the JS SDK's presigned-URL test vector, presigned URLs tampered with or
expired, strict keys through real boto3 clients, and default mode's checks on raw requests."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlencode

import botocore.auth
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvsnb.local import LocalKvs
from kvsnb.local.core.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)
from kvsnb.local.front.sigv4 import SigV4Checker, StrictKeys

# The JS SDK's SigV4RequestSigner test (amazon-kinesis-video-streams-webrtc-sdk-js), docs/wire.md.
JS_KEY = "AKIA4F7WJQR7FMMWMNXI"
JS_SECRET = "FakeSecretKey"
JS_TOKEN = "FakeSessionToken"
JS_TIME = dt.datetime(2019, 12, 1, tzinfo=dt.UTC)
JS_SIG_WITH_TOKEN = "fc268038be276315822b4f73eafd28ee3a5632a2a35fdb0a88db9a42b13d6c92"
JS_SIG_WITHOUT_TOKEN = "be1e78950d956a8a9a1997417099ddbd7455619f3d08c4ad20e1e272179ca695"
JS_HOST = "kvs.awsamazon.com"

STRICT_KEY = "AKIASTRICTLOCALKVS01"
STRICT_SECRET = "strict-secret/for+local+kvs"


def js_vector_url(token: str | None, signature: str) -> str:
    """The presigned URL the JS SDK's test expects, byte for byte."""
    params = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", f"{JS_KEY}/20191201/us-west-2/kinesisvideo/aws4_request"),
        ("X-Amz-Date", "20191201T000000Z"),
        ("X-Amz-Expires", "299"),
    ]
    if token is not None:
        params.append(("X-Amz-Security-Token", token))
    params += [
        ("X-Amz-SignedHeaders", "host"),
        ("X-Amz-TestParam", "test-param-value"),
        ("X-Amz-Signature", signature),
    ]
    return f"wss://{JS_HOST}?" + urlencode(params)


def presign(
    url: str,
    *,
    key: str,
    secret: str,
    token: str | None = None,
    when: dt.datetime | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
    params: dict[str, str] | None = None,
    expires: int = 299,
) -> str:
    """Presign a GET with botocore's ``SigV4QueryAuth`` as the KVS SDKs do (optionally at a
    fixed time)."""
    if when is not None:
        assert monkeypatch is not None
        naive = when.astimezone(dt.UTC).replace(tzinfo=None)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: naive)
    request = AWSRequest(method="GET", url=url, params=params or {})
    auth = SigV4QueryAuth(Credentials(key, secret, token), "kinesisvideo", "us-west-2", expires)
    auth.add_auth(request)
    if when is not None:
        assert monkeypatch is not None
        monkeypatch.undo()
    return str(request.prepare().url)


@pytest.fixture
def js_checker() -> SigV4Checker:
    """A strict checker holding the JS test vector's keys."""
    return SigV4Checker(StrictKeys(JS_KEY, JS_SECRET))


# ---------------------------------------------------------------------- presigned URLs


@pytest.mark.parametrize(
    ("token", "signature"),
    [(JS_TOKEN, JS_SIG_WITH_TOKEN), (None, JS_SIG_WITHOUT_TOKEN)],
)
def test_js_sdk_test_vector(
    js_checker: SigV4Checker,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    signature: str,
) -> None:
    url = js_vector_url(token, signature)
    signed = js_checker.check_presigned(
        method="GET", url=url, headers={"Host": JS_HOST}, now=JS_TIME
    )
    assert (signed.access_key, signed.region) == (JS_KEY, "us-west-2")
    # Still valid at the last second of X-Amz-Expires, and botocore signs the same.
    later = JS_TIME + dt.timedelta(seconds=299)
    js_checker.check_presigned(method="GET", url=url, headers={"Host": JS_HOST}, now=later)
    ours = presign(
        f"wss://{JS_HOST}",
        key=JS_KEY,
        secret=JS_SECRET,
        token=token,
        when=JS_TIME,
        monkeypatch=monkeypatch,
        params={"X-Amz-TestParam": "test-param-value"},
    )
    assert ours.endswith("X-Amz-Signature=" + signature)


def test_js_vector_rejected_with_another_secret() -> None:
    checker = SigV4Checker(StrictKeys(JS_KEY, "AnotherSecret"))
    with pytest.raises(InvalidSignatureException, match="does not match"):
        checker.check_presigned(
            method="GET",
            url=js_vector_url(JS_TOKEN, JS_SIG_WITH_TOKEN),
            headers={"Host": JS_HOST},
            now=JS_TIME,
        )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("test-param-value", "test-param-valuE"),  # a signed parameter changed
        ("FakeSessionToken", "OtherSessionToken"),  # the session token changed
        ("X-Amz-TestParam", "X-Amz-ChannelARN=x&X-Amz-TestParam"),  # a parameter added
        (JS_SIG_WITH_TOKEN, "0" + JS_SIG_WITH_TOKEN[1:]),  # the signature changed
        ("20191201T000000Z", "20191201T000001Z"),  # the date changed
    ],
)
def test_tampered_presigned_url_is_rejected(js_checker: SigV4Checker, old: str, new: str) -> None:
    url = js_vector_url(JS_TOKEN, JS_SIG_WITH_TOKEN)
    assert old in url
    with pytest.raises(InvalidSignatureException):
        js_checker.check_presigned(
            method="GET", url=url.replace(old, new, 1), headers={"Host": JS_HOST}, now=JS_TIME
        )
    with pytest.raises(InvalidSignatureException):  # another host
        js_checker.check_presigned(
            method="GET",
            url=url.replace(JS_HOST, "kvs.example.com"),
            headers={"Host": "kvs.example.com"},
            now=JS_TIME,
        )


def test_expired_presigned_url_is_rejected(js_checker: SigV4Checker) -> None:
    url = js_vector_url(JS_TOKEN, JS_SIG_WITH_TOKEN)
    with pytest.raises(InvalidSignatureException, match="expired"):
        js_checker.check_presigned(
            method="GET",
            url=url,
            headers={"Host": JS_HOST},
            now=JS_TIME + dt.timedelta(seconds=300),
        )
    with pytest.raises(InvalidSignatureException, match="not yet current"):
        js_checker.check_presigned(
            method="GET", url=url, headers={"Host": JS_HOST}, now=JS_TIME - dt.timedelta(hours=1)
        )


def test_presigned_url_with_unknown_key(js_checker: SigV4Checker) -> None:
    url = js_vector_url(JS_TOKEN, JS_SIG_WITH_TOKEN).replace(JS_KEY, "AKIAOTHERKEY00000000")
    with pytest.raises(UnrecognizedClientException):
        js_checker.check_presigned(method="GET", url=url, headers={"Host": JS_HOST}, now=JS_TIME)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("X-Amz-Signature=", "X-Amz-Nothing=", IncompleteSignatureException),
        ("X-Amz-Expires=299", "X-Amz-Expires=soon", IncompleteSignatureException),
        ("X-Amz-Expires=299", "X-Amz-Expires=0", IncompleteSignatureException),
        ("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1", IncompleteSignatureException),
        ("%2Fkinesisvideo%2F", "%2Fs3%2F", InvalidSignatureException),
        ("%2F20191201%2F", "%2F20191202%2F", InvalidSignatureException),
        ("20191201T000000Z", "2019-12-01", IncompleteSignatureException),
    ],
)
def test_malformed_presigned_urls(old: str, new: str, error: type[Exception]) -> None:
    url = js_vector_url(JS_TOKEN, JS_SIG_WITH_TOKEN)
    assert old in url
    for checker in (SigV4Checker(), SigV4Checker(StrictKeys(JS_KEY, JS_SECRET))):
        with pytest.raises(error):
            checker.check_presigned(
                method="GET", url=url.replace(old, new), headers={"Host": JS_HOST}, now=JS_TIME
            )


def test_unsigned_websocket_url() -> None:
    with pytest.raises(MissingAuthenticationTokenException):
        SigV4Checker().check_presigned(
            method="GET", url=f"wss://{JS_HOST}?X-Amz-ChannelARN=x", headers={}, now=JS_TIME
        )


def test_presigned_signaling_url_through_the_server(
    strict_kvs: LocalKvs, http: Any, boto_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signaling WebSocket's presigned GET is checked before any upgrade."""
    kv = boto_client(
        "kinesisvideo",
        strict_kvs.url,
        aws_access_key_id=STRICT_KEY,
        aws_secret_access_key=STRICT_SECRET,
    )
    arn = kv.create_signaling_channel(ChannelName="ws")["ChannelARN"]
    wss = kv.get_signaling_channel_endpoint(
        ChannelARN=arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS"], "Role": "MASTER"},
    )["ResourceEndpointList"][0]["ResourceEndpoint"]
    params = {"X-Amz-ChannelARN": arn}
    good = presign(wss, key=STRICT_KEY, secret=STRICT_SECRET, params=params)
    http_url = "http" + good[len("ws") :]

    tampered = http_url.replace("X-Amz-ChannelARN=", "X-Amz-ClientId=evil&X-Amz-ChannelARN=")
    resp = http.request("GET", tampered)
    assert (resp.status, resp.error_code) == (403, "InvalidSignatureException"), resp
    assert "signature" in resp.message

    old = presign(
        wss,
        key=STRICT_KEY,
        secret=STRICT_SECRET,
        params=params,
        when=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10),
        monkeypatch=monkeypatch,
    )
    resp = http.request("GET", "http" + old[len("ws") :])
    assert (resp.status, resp.error_code) == (403, "InvalidSignatureException"), resp
    assert "expired" in resp.message

    wrong = presign(wss, key=STRICT_KEY, secret="wrong", params=params)
    resp = http.request("GET", "http" + wrong[len("ws") :])
    assert (resp.status, resp.error_code) == (403, "InvalidSignatureException"), resp

    stranger = presign(wss, key="AKIASTRANGER00000000", secret=STRICT_SECRET, params=params)
    resp = http.request("GET", "http" + stranger[len("ws") :])
    assert (resp.status, resp.error_code) == (403, "UnrecognizedClientException"), resp

    resp = http.request("GET", f"{strict_kvs.url}/signaling/master?X-Amz-ChannelARN={arn}")
    assert (resp.status, resp.error_code) == (403, "MissingAuthenticationTokenException"), resp


# ---------------------------------------------------------------------- strict keys, boto3


def test_strict_mode_accepts_the_right_keys(strict_kvs: LocalKvs, boto_client: Any) -> None:
    kv = boto_client(
        "kinesisvideo",
        strict_kvs.url,
        aws_access_key_id=STRICT_KEY,
        aws_secret_access_key=STRICT_SECRET,
    )
    arn = kv.create_signaling_channel(ChannelName="strict")["ChannelARN"]
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["ChannelName"] == "strict"
    with_token = boto_client(
        "kinesisvideo",
        strict_kvs.url,
        aws_access_key_id=STRICT_KEY,
        aws_secret_access_key=STRICT_SECRET,
        aws_session_token="SessionTokenFromSts",
    )
    assert len(with_token.list_signaling_channels()["ChannelInfoList"]) == 1
    https = kv.get_signaling_channel_endpoint(
        ChannelARN=arn, SingleMasterChannelEndpointConfiguration={"Protocols": ["HTTPS"]}
    )["ResourceEndpointList"][0]["ResourceEndpoint"]
    signaling = boto_client(
        "kinesis-video-signaling",
        https,
        aws_access_key_id=STRICT_KEY,
        aws_secret_access_key=STRICT_SECRET,
    )
    assert "IceServerList" in signaling.get_ice_server_config(ChannelARN=arn)


def test_strict_mode_rejects_a_wrong_secret(
    strict_kvs: LocalKvs, boto_client: Any, expect_error: Any
) -> None:
    good = boto_client(
        "kinesisvideo",
        strict_kvs.url,
        aws_access_key_id=STRICT_KEY,
        aws_secret_access_key=STRICT_SECRET,
    )
    bad = boto_client(
        "kinesisvideo", strict_kvs.url, aws_access_key_id=STRICT_KEY, aws_secret_access_key="nope"
    )
    expect_error(
        lambda: bad.create_signaling_channel(ChannelName="x"),
        "InvalidSignatureException",
        403,
        "The request signature we calculated does not match the signature you provided",
    )
    assert good.list_signaling_channels()["ChannelInfoList"] == []


def test_strict_mode_rejects_an_unknown_key(
    strict_kvs: LocalKvs, boto_client: Any, expect_error: Any
) -> None:
    stranger = boto_client(
        "kinesisvideo",
        strict_kvs.url,
        aws_access_key_id="AKIASTRANGER00000000",
        aws_secret_access_key=STRICT_SECRET,
    )
    expect_error(
        lambda: stranger.list_streams(),
        "UnrecognizedClientException",
        403,
        "The security token included in the request is invalid",
    )


def test_strict_mode_rejects_tampered_body_and_stale_date(
    strict_kvs: LocalKvs, http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{strict_kvs.url}/createSignalingChannel"
    body = json.dumps({"ChannelName": "signed"}).encode()
    keys = {"access_key": STRICT_KEY, "secret_key": STRICT_SECRET}
    headers = http.signed_headers(url, body, **keys)
    resp = http.request("POST", url, json.dumps({"ChannelName": "evil"}).encode(), headers)
    assert (resp.status, resp.error_code) == (403, "InvalidSignatureException"), resp

    stale = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: stale)
    old_headers = http.signed_headers(url, body, **keys)
    monkeypatch.undo()
    resp = http.request("POST", url, body, old_headers)
    assert (resp.status, resp.error_code) == (403, "InvalidSignatureException"), resp
    assert "Signature expired" in resp.message

    resp = http.request("POST", url, body, headers)
    assert resp.status == 200, resp
    resp = http.signed_post(f"{strict_kvs.url}/listSignalingChannels", b"{}", **keys)
    assert [c["ChannelName"] for c in resp.json["ChannelInfoList"]] == ["signed"]


# ---------------------------------------------------------------------- default mode, raw


def test_default_mode_accepts_any_credentials(local_kvs: LocalKvs, boto_client: Any) -> None:
    for key, secret in [("AKIAANYTHING", "whatever"), ("ASIAOTHER", "x" * 40)]:
        kv = boto_client(
            "kinesisvideo", local_kvs.url, aws_access_key_id=key, aws_secret_access_key=secret
        )
        kv.create_stream(StreamName=key)
    assert len(kv.list_streams()["StreamInfoList"]) == 2


def test_default_mode_rejects_an_unsigned_request(local_kvs: LocalKvs, kv: Any, http: Any) -> None:
    resp = http.request(
        "POST",
        f"{local_kvs.url}/createSignalingChannel",
        json.dumps({"ChannelName": "unsigned"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert (resp.status, resp.error_code) == (403, "MissingAuthenticationTokenException")
    assert resp.message == "Missing Authentication Token"
    assert kv.list_signaling_channels()["ChannelInfoList"] == []


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 garbage",
        "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-west-2/kinesisvideo/aws4_request, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-west-2/kinesisvideo/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=nothex",
        "AWS4-HMAC-SHA256 Credential=AKID/us-west-2/kinesisvideo/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
    ],
)
def test_default_mode_rejects_malformed_authorization(
    local_kvs: LocalKvs, kv: Any, http: Any, authorization: str
) -> None:
    url = f"{local_kvs.url}/createSignalingChannel"
    body = json.dumps({"ChannelName": "malformed"}).encode()
    headers = http.signed_headers(url, body)
    headers["Authorization"] = authorization
    resp = http.request("POST", url, body, headers)
    assert (resp.status, resp.error_code) == (403, "IncompleteSignatureException"), resp
    assert resp.message
    assert kv.list_signaling_channels()["ChannelInfoList"] == []


def test_default_mode_needs_a_request_date(local_kvs: LocalKvs, http: Any) -> None:
    url = f"{local_kvs.url}/listStreams"
    headers = http.signed_headers(url, b"{}")
    del headers["X-Amz-Date"]
    resp = http.request("POST", url, b"{}", headers)
    assert (resp.status, resp.error_code) == (403, "IncompleteSignatureException")
    assert "X-Amz-Date" in resp.message


@pytest.mark.parametrize("service", ["s3", "kinesis", "execute-api"])
def test_scope_naming_another_service_is_rejected(
    local_kvs: LocalKvs, strict_kvs: LocalKvs, http: Any, service: str
) -> None:
    for kvs, keys in [
        (local_kvs, {}),
        (strict_kvs, {"access_key": STRICT_KEY, "secret_key": STRICT_SECRET}),
    ]:
        resp = http.signed_post(f"{kvs.url}/listStreams", b"{}", service=service, **keys)
        assert (resp.status, resp.error_code) == (403, "InvalidSignatureException"), resp
        assert "Credential should be scoped to correct service: 'kinesisvideo'" in resp.message


def test_scope_date_must_match_request_date(local_kvs: LocalKvs, http: Any) -> None:
    url = f"{local_kvs.url}/listStreams"
    headers = http.signed_headers(url, b"{}")
    headers["X-Amz-Date"] = "20200101T000000Z"
    resp = http.request("POST", url, b"{}", headers)
    assert (resp.status, resp.error_code) == (403, "InvalidSignatureException")
    assert "Date in Credential scope does not match" in resp.message


def test_data_planes_check_signatures_too(local_kvs: LocalKvs, kv: Any, http: Any) -> None:
    arn = kv.create_signaling_channel(ChannelName="ice")["ChannelARN"]
    url = f"{local_kvs.url}/signaling/v1/get-ice-server-config"
    body = json.dumps({"ChannelARN": arn}).encode()
    resp = http.request("POST", url, body, {"Content-Type": "application/json"})
    assert (resp.status, resp.error_code) == (403, "MissingAuthenticationTokenException")
    resp = http.signed_post(url, body)
    assert resp.status == 200, resp
    assert "IceServerList" in resp.json
