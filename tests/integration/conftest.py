"""Fixtures for the control-plane, protocol and SigV4 integration tests: error assertions,
boto3 clients that skip client-side validation, raw (hand-signed or unsigned) HTTP requests,
and a Local KVS in strict-keys mode."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from kvsnb.local import LocalKvs, LocalKvsConfig, StrictKeys
from tests.conftest import make_client

REGION = "us-west-2"
STRICT_ACCESS_KEY = "AKIASTRICTLOCALKVS01"
STRICT_SECRET_KEY = "strict-secret/for+local+kvs"
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
HTTP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RawResponse:
    """What a raw HTTP call answered: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        """The AWS error code, as botocore reads it (``x-amzn-ErrorType`` before ``:``)."""
        return self.headers.get("x-amzn-errortype", "").split(":", 1)[0]

    @property
    def message(self) -> str:
        """The error message (``Message`` or ``message`` member), or ``""`` for a body that
        is not a JSON object."""
        try:
            data = self.json
        except ValueError:
            return ""
        if not isinstance(data, dict):
            return ""
        return str(data.get("Message", data.get("message", "")))


class Http:
    """Raw HTTP to Local KVS with urllib: unsigned, or signed by botocore's SigV4 signer."""

    @staticmethod
    def request(
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT_S,
    ) -> RawResponse:
        """Send one HTTP request, returning error statuses as responses too. A hang raises
        (``TimeoutError``/``URLError``) after ``timeout`` seconds."""
        req = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return RawResponse(resp.status, _lower(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            return RawResponse(exc.code, _lower(exc.headers.items()), exc.read())

    @staticmethod
    def signed_headers(
        url: str,
        body: bytes,
        *,
        access_key: str = "AKIDLOCALTEST",
        secret_key: str = "local-secret",
        service: str = "kinesisvideo",
        region: str = REGION,
        token: str | None = None,
        content_type: str = JSON_CONTENT_TYPE,
    ) -> dict[str, str]:
        """The headers of a POST to ``url`` signed with SigV4 by botocore's own signer."""
        request = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": content_type}
        )
        SigV4Auth(Credentials(access_key, secret_key, token), service, region).add_auth(request)
        return dict(request.headers.items())

    @classmethod
    def signed_post(
        cls, url: str, body: bytes, *, timeout: float = HTTP_TIMEOUT_S, **sign: Any
    ) -> RawResponse:
        """POST ``body`` to ``url`` signed with SigV4 (see ``signed_headers``)."""
        return cls.request("POST", url, body, cls.signed_headers(url, body, **sign), timeout)


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


@pytest.fixture
def http() -> Http:
    """Raw HTTP helpers (see ``Http``)."""
    return Http()


def check_error(err: ClientError, code: str, status: int, message: str) -> dict[str, Any]:
    """Assert a boto3 error's code, HTTP status and (part of) its message."""
    response: dict[str, Any] = err.response  # type: ignore[assignment]
    assert response["Error"]["Code"] == code, response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status, response
    assert message in response["Error"]["Message"], response["Error"]["Message"]
    return response


ExpectError = Callable[..., dict[str, Any]]


@pytest.fixture
def expect_error() -> ExpectError:
    """``expect_error(callable, code, status, message_part)``: the call must fail so."""

    def expect(call: Callable[[], Any], code: str, status: int, message: str) -> dict[str, Any]:
        with pytest.raises(ClientError) as info:
            call()
        return check_error(info.value, code, status, message)

    return expect


@pytest.fixture
def nv(local_kvs: LocalKvs) -> Any:
    """A ``kinesisvideo`` client with botocore's parameter validation off."""
    return make_client("kinesisvideo", local_kvs.url, validate=False)


@pytest.fixture
def strict_kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    """A Local KVS that accepts only ``STRICT_ACCESS_KEY``/``STRICT_SECRET_KEY``."""
    config = LocalKvsConfig(
        data_dir=tmp_path / "strict",
        strict_keys=StrictKeys(STRICT_ACCESS_KEY, STRICT_SECRET_KEY),
    )
    with LocalKvs(config) as kvs:
        yield kvs


@pytest.fixture
def boto_client() -> Callable[..., Any]:
    """``boto_client(service, endpoint_url, validate=True, **credentials)``."""
    return make_client
