"""SigV4 checks for Local KVS: signed requests and presigned WebSocket URLs.

Every KVS plane signs with SigV4 under the signing name ``kinesisvideo`` (docs/wire.md). Two modes:

* default: any credentials are accepted, but a request must carry a well-formed signature
  (an ``Authorization`` header, or the presigned ``X-Amz-*`` query for the signaling
  WebSocket) whose scope names the ``kinesisvideo`` service;
* strict (an access key and secret configured): the signature is recomputed with botocore's
  own signer and must match; unknown keys, stale request dates and expired presigned URLs are
  rejected with the AWS errors.

Request times: a header-signed request whose ``X-Amz-Date`` is more than 5 minutes from the
server's clock is refused as AWS refuses it, ``InvalidSignatureException`` "Signature expired:
<date> is now earlier than <now - 5 min> (<now> - 5 min.)" (or "Signature not yet current:
... is still later than ... (<now> + 5 min.)" for a date ahead); a presigned URL is refused
after ``X-Amz-Date`` + ``X-Amz-Expires`` or more than 5 minutes before its date (docs/wire.md,
"SigV4 time"). The clock is the checker's ``clock`` (Local KVS's, which tests may set off).

The presigned-URL check reproduces the JS SDK's test vector (see ``tests``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from kvsnb.local.core.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

SIGNING_NAME = "kinesisvideo"
ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)  # AWS's SigV4 tolerance for a request's time
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<sh>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class SignedBy:
    """Who signed a request: access key and the credential scope's region."""

    access_key: str
    region: str


@dataclass(frozen=True)
class StrictKeys:
    """The one access key and secret accepted in strict mode."""

    access_key: str
    secret_key: str


class _Verifier(SigV4Auth):
    """botocore's SigV4 signer, told which headers the client signed."""

    def __init__(self, secret: str, access_key: str, region: str, signed: list[str]):
        super().__init__(Credentials(access_key, secret), SIGNING_NAME, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._signed:
            for value in request.headers.get_all(name) or []:
                headers[name] = value
        return headers


def _scope(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise IncompleteSignatureException(
            f"Credential should be scoped to a valid region, not '{credential}'"
        )
    access_key, date, region, service, _ = parts
    if service != SIGNING_NAME:
        raise InvalidSignatureException(
            f"Credential should be scoped to correct service: '{SIGNING_NAME}'."
        )
    if not re.fullmatch(r"\d{8}", date):
        raise IncompleteSignatureException(f"Invalid credential date '{date}'")
    return access_key, date, region, service


def _parse_time(value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, SIGV4_TIMESTAMP).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise IncompleteSignatureException(
            f"Date must be in ISO-8601 'basic format'. Got '{value}'."
        ) from exc


def _check_scope_date(date: str, stamp: str) -> None:
    """The credential scope's date must be the request's (``X-Amz-Date``) date."""
    if stamp[:8] != date:
        raise InvalidSignatureException(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
            f"date from HTTP: '{date}' != '{stamp[:8]}', from '{stamp}'."
        )


def _expected_signature(
    *,
    secret: str,
    access_key: str,
    region: str,
    timestamp: str,
    signed_headers: list[str],
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
) -> str:
    # The canonical query is built from the decoded parameters, re-encoded (RFC 3986, as
    # SigV4 specifies), so a client whose HTTP stack re-quoted the URL (yarl turns the
    # ARN's %3A into :) still matches, as it does on AWS.
    base, _, query = url.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    request = AWSRequest(
        method=method, url=base, headers=dict(headers), data=body, params=cast(Any, params)
    )
    request.context["timestamp"] = timestamp
    verifier = _Verifier(secret, access_key, region, signed_headers)
    canonical = verifier.canonical_request(request)
    return str(verifier.signature(verifier.string_to_sign(request, canonical), request))


class SigV4Checker:
    """Checks SigV4 on requests; strict when ``keys`` are given (see the module docstring)."""

    def __init__(
        self, keys: StrictKeys | None = None, clock: Callable[[], dt.datetime] | None = None
    ) -> None:
        self.keys = keys
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    @property
    def strict(self) -> bool:
        """True when signatures are recomputed and compared."""
        return self.keys is not None

    def _check_key(self, access_key: str) -> None:
        if self.keys is not None and access_key != self.keys.access_key:
            raise UnrecognizedClientException(
                "The security token included in the request is invalid."
            )

    def _compare(self, expected: str, given: str) -> None:
        if not hmac.compare_digest(expected, given):
            raise InvalidSignatureException(
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method. Consult the "
                "service documentation for details."
            )

    def check_request(
        self,
        *,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        now: dt.datetime | None = None,
    ) -> SignedBy:
        """Check a header-signed request (``Authorization: AWS4-HMAC-SHA256 ...``).

        ``url`` is the full URL as the client addressed it (scheme, Host header, raw path and
        query). Raises the AWS SigV4 errors; returns the signer.
        """
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization")
        if auth is None:
            if "x-amz-signature" in {k.lower() for k, _ in parse_qsl(_query(url))}:
                return self.check_presigned(method=method, url=url, headers=headers, now=now)
            raise MissingAuthenticationTokenException("Missing Authentication Token")
        match = _AUTH_RE.match(auth.strip())
        if match is None:
            raise IncompleteSignatureException(
                "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
                f"parameters of the {ALGORITHM} algorithm."
            )
        access_key, date, region, _ = _scope(match["cred"])
        stamp = lower.get("x-amz-date")
        if stamp is None:
            raise IncompleteSignatureException(
                "Authorization header requires existence of either a 'X-Amz-Date' or a "
                "'Date' header."
            )
        when = _parse_time(stamp)
        _check_scope_date(date, stamp)
        signed = match["sh"].split(";")
        if "host" not in signed:
            raise InvalidSignatureException("'Host' must be a signed header.")
        self._check_key(access_key)
        if self.keys is not None:
            _check_request_time(stamp, when, now or self.clock())
            expected = _expected_signature(
                secret=self.keys.secret_key,
                access_key=access_key,
                region=region,
                timestamp=stamp,
                signed_headers=signed,
                method=method,
                url=url,
                headers=headers,
                body=body,
            )
            self._compare(expected, match["sig"])
        return SignedBy(access_key, region)

    def check_presigned(
        self,
        *,
        method: str,
        url: str,
        headers: Mapping[str, str],
        now: dt.datetime | None = None,
    ) -> SignedBy:
        """Check a SigV4 presigned URL (query auth), as the signaling WebSocket uses."""
        params = dict(parse_qsl(_query(url), keep_blank_values=True))
        if "X-Amz-Signature" not in params and "X-Amz-Credential" not in params:
            raise MissingAuthenticationTokenException("Missing Authentication Token")
        needed = ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders"]
        needed += ["X-Amz-Signature", "X-Amz-Expires"]
        missing = [p for p in needed if not params.get(p)]
        if missing:
            raise IncompleteSignatureException(
                f"AWS query-string parameters must include {', '.join(missing)}. Re-examine "
                "the query-string parameters."
            )
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise IncompleteSignatureException(
                f"Unsupported AWS 'algorithm': '{params['X-Amz-Algorithm']}'"
            )
        access_key, date, region, _ = _scope(params["X-Amz-Credential"])
        stamp = params["X-Amz-Date"]
        when = _parse_time(stamp)
        _check_scope_date(date, stamp)
        try:
            expires = int(params["X-Amz-Expires"])
        except ValueError as exc:
            raise IncompleteSignatureException("X-Amz-Expires must be a number") from exc
        if not 0 < expires <= MAX_PRESIGN_EXPIRES_S:
            raise IncompleteSignatureException(
                f"X-Amz-Expires must be between 1 and {MAX_PRESIGN_EXPIRES_S} seconds"
            )
        signature = params["X-Amz-Signature"]
        if not re.fullmatch(r"[0-9a-f]{64}", signature):
            raise IncompleteSignatureException("Malformed X-Amz-Signature")
        self._check_key(access_key)
        if self.keys is not None:
            now = now or self.clock()
            valid_until = when + dt.timedelta(seconds=expires)
            if now > valid_until:
                raise InvalidSignatureException(
                    f"Signature expired: {stamp} is now earlier than "
                    f"{(now - dt.timedelta(seconds=expires)).strftime(SIGV4_TIMESTAMP)} "
                    f"({now.strftime(SIGV4_TIMESTAMP)} - {expires} sec.)"
                )
            if when - now > MAX_CLOCK_SKEW:
                raise InvalidSignatureException(_not_yet_current(stamp, now))
            unsigned_url = _without_param(url, "X-Amz-Signature")
            expected = _expected_signature(
                secret=self.keys.secret_key,
                access_key=access_key,
                region=region,
                timestamp=stamp,
                signed_headers=params["X-Amz-SignedHeaders"].split(";"),
                method=method,
                url=unsigned_url,
                headers=headers,
                body=b"",
            )
            self._compare(expected, signature)
        return SignedBy(access_key, region)


def _minutes(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 60:g} min."


def _not_yet_current(stamp: str, now: dt.datetime) -> str:
    return (
        f"Signature not yet current: {stamp} is still later than "
        f"{(now + MAX_CLOCK_SKEW).strftime(SIGV4_TIMESTAMP)} "
        f"({now.strftime(SIGV4_TIMESTAMP)} + {_minutes(MAX_CLOCK_SKEW)})"
    )


def _check_request_time(stamp: str, when: dt.datetime, now: dt.datetime) -> None:
    """AWS's refusal of a header-signed request more than ``MAX_CLOCK_SKEW`` off."""
    if now - when > MAX_CLOCK_SKEW:
        raise InvalidSignatureException(
            f"Signature expired: {stamp} is now earlier than "
            f"{(now - MAX_CLOCK_SKEW).strftime(SIGV4_TIMESTAMP)} "
            f"({now.strftime(SIGV4_TIMESTAMP)} - {_minutes(MAX_CLOCK_SKEW)})"
        )
    if when - now > MAX_CLOCK_SKEW:
        raise InvalidSignatureException(_not_yet_current(stamp, now))


def _query(url: str) -> str:
    return url.partition("?")[2].partition("#")[0]


def _without_param(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and p.partition("=")[0] != name]
    return base + ("?" + "&".join(kept) if kept else "")
