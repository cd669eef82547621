"""``kvsnb.client.clock``: the signing clock learns the server's time from a ``Date`` header
only when it is far off, presigns at the corrected time (the JS SDK's test vector, signed
from a machine clock 10 minutes behind), and takes over only botocore's plain SigV4."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvsnb.client.clock import (
    SIGNATURE_VERSION,
    SKEW_THRESHOLD,
    ClockedSigV4QueryAuth,
    SigningClock,
    _choose_clocked_signer,
)

JS_TIME = dt.datetime(2019, 12, 1)  # the JS SDK's SigV4RequestSigner test vector
JS_SIGNATURE = "fc268038be276315822b4f73eafd28ee3a5632a2a35fdb0a88db9a42b13d6c92"


def machine_clock(when: dt.datetime) -> Any:
    """Freeze the machine clock botocore's signers (and ``SigningClock``) read."""
    return mock.patch("botocore.auth.get_current_datetime", return_value=when)


def date_header(when: dt.datetime) -> str:
    return format_datetime(when.replace(tzinfo=dt.UTC), usegmt=True)


@pytest.mark.parametrize("header", [None, "", "not a date", "Mon, 99 Foo 2026 99:99:99 GMT"])
def test_unusable_date_changes_nothing(header: str | None) -> None:
    clock = SigningClock()
    assert not clock.correct(header)
    assert clock.offset_s == 0.0


def test_a_near_date_changes_nothing_and_a_far_one_sets_the_offset() -> None:
    now = dt.datetime(2026, 12, 6, 19, 0, 0)
    clock = SigningClock()
    with machine_clock(now):
        near = now + SKEW_THRESHOLD - dt.timedelta(seconds=1)
        assert not clock.correct(date_header(near))
        assert clock.offset_s == 0.0
        assert clock.correct(date_header(now + dt.timedelta(minutes=10)))
        assert clock.offset_s == 600.0
        assert clock.now() == (now + dt.timedelta(minutes=10)).replace(tzinfo=dt.UTC)
        # corrected: the same server time is no longer far off
        assert not clock.correct(date_header(now + dt.timedelta(minutes=10)))
        assert clock.correct(date_header(now - dt.timedelta(minutes=7)))
        assert clock.offset_s == -420.0


def test_presigns_at_the_corrected_time() -> None:
    """The machine's clock is 10 minutes behind the vector's time; with the offset the URL
    is the JS SDK's, byte for byte."""
    creds = Credentials("AKIA4F7WJQR7FMMWMNXI", "FakeSecretKey", "FakeSessionToken")
    request = AWSRequest(
        method="GET", url="wss://kvs.awsamazon.com/?X-Amz-TestParam=test-param-value"
    )
    with machine_clock(JS_TIME - dt.timedelta(minutes=10)):
        ClockedSigV4QueryAuth(
            creds, "kinesisvideo", "us-west-2", 299, SigningClock(600.0)
        ).add_auth(request)
    assert request.url is not None
    query = parse_qs(urlsplit(request.url).query)
    assert query["X-Amz-Date"] == ["20191201T000000Z"]
    assert query["X-Amz-Signature"] == [JS_SIGNATURE]


@pytest.mark.parametrize(
    ("version", "context", "chosen"),
    [
        ("v4", {}, SIGNATURE_VERSION),
        ("v4", {"auth_type": "v4"}, SIGNATURE_VERSION),
        ("v4", {"auth_type": "v4-unsigned-body"}, None),
        ("v4", {"unsigned_payload": True}, None),
        ("v4a", {}, None),
        ("v4-query", {}, None),
    ],
)
def test_only_plain_sigv4_is_taken_over(
    version: str, context: dict[str, Any], chosen: str | None
) -> None:
    assert _choose_clocked_signer(version, context=context) == chosen


def test_an_attached_client_signs_at_the_clock() -> None:
    """A boto3 client with a clock attached puts the clock's time in ``X-Amz-Date``."""
    client: Any = boto3.client(
        "kinesisvideo",
        region_name="us-west-2",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )
    SigningClock(3600.0).attach(client)
    seen: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        seen.append(request.headers["X-Amz-Date"].decode())
        raise StopSending

    client.meta.events.register_first("before-send.kinesis-video", capture)
    with machine_clock(dt.datetime(2026, 1, 1, 12, 0, 0)), pytest.raises(StopSending):
        client.list_signaling_channels()
    assert seen == ["20260101T130000Z"]
    client.close()


class StopSending(Exception):
    """Raised before anything is sent."""
