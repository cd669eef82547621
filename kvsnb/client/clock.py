"""The clock kvsnb signs requests with, corrected for skew as the JS SDK's sample does.

AWS refuses a SigV4 signature whose time is more than 5 minutes from its own clock
(``InvalidSignatureException`` "Signature expired: ..."), and a presigned signaling URL once
``X-Amz-Date`` + ``X-Amz-Expires`` has passed on its clock (docs/wire.md, "SigV4 time"). The
KVS JS SDK's sample builds its AWS SDK clients with ``correctClockSkew: true``: on a refusal
for the request's time, the client takes the server's time from the error response's
``Date`` header, keeps the difference as ``systemClockOffset`` and retries; the sample hands
that offset to its ``SignalingClient``, which presigns the WebSocket URL at the corrected
time [JS SDK ``src/SignalingClient.ts`` ``systemClockOffset``].

``SigningClock`` is that offset. ``attach`` makes a boto3 client sign with it and correct it
(one retry per call); ``ClockedSigV4QueryAuth`` presigns with it. botocore's signers read the
machine's clock inside ``add_auth``; ``_SignsAt`` replaces that one method, and is the only
code that touches botocore's private signing steps (``_modify_request_before_signing``,
``_inject_signature_to_request``); ``tests/unit/test_clock.py`` signs the JS SDK's test
vector through it, so a botocore release that moves them fails there first.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import botocore.auth
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth, SigV4QueryAuth
from botocore.exceptions import NoCredentialsError

logger = logging.getLogger(__name__)

# The error codes an AWS service answers for a request signed at the wrong time (the JS SDK
# v2's clock-skew codes; KVS answers InvalidSignatureException).
CLOCK_SKEW_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidSignatureException",
        "RequestExpired",
        "RequestInTheFuture",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
    }
)
# Correct when the server's Date is this far from the signing clock. AWS tolerates 5 min;
# the JS SDK corrects at 5 min too. A minute less catches a skew just over AWS's limit that
# the Date header's whole seconds and the request's flight time would hide.
SKEW_THRESHOLD = dt.timedelta(minutes=4)
SIGNATURE_VERSION = "kvsnb-v4"  # botocore's "v4", at the signing clock's time
_CONTEXT_KEY = "kvsnb_signing_clock"
_RETRIED_KEY = "kvsnb_clock_corrected"


@dataclass
class SigningClock:
    """The time requests are signed at: this machine's clock plus ``offset_s``, which
    ``correct`` learns from a server's ``Date`` header after a clock-skew refusal."""

    offset_s: float = 0.0

    def now(self) -> dt.datetime:
        """The corrected current time (UTC, aware): botocore's clock plus ``offset_s``."""
        return _machine_now() + dt.timedelta(seconds=self.offset_s)

    def correct(self, server_date: str | None) -> bool:
        """Take the server's time from an HTTP ``Date`` header when it is more than
        ``SKEW_THRESHOLD`` from ``now()``; returns whether the offset changed."""
        if not server_date:
            return False
        try:
            server = parsedate_to_datetime(server_date)
        except (TypeError, ValueError):
            return False
        if server.tzinfo is None:
            server = server.replace(tzinfo=dt.UTC)
        if abs(server - self.now()) <= SKEW_THRESHOLD:
            return False
        self.offset_s = (server - _machine_now()).total_seconds()
        logger.warning(
            "clock skew: the server's time is %+.0f s from this machine's; signing with it",
            self.offset_s,
        )
        return True

    def attach(self, client: Any) -> None:
        """Make a boto3 client sign with this clock, and on a clock-skew refusal correct the
        clock from the response's ``Date`` and retry the call once."""
        _register_signer()
        events = client.meta.events
        service = client.meta.service_model.service_id.hyphenize()
        events.register(f"choose-signer.{service}", _choose_clocked_signer)
        events.register(f"before-sign.{service}", self._put_in_context)
        events.register_first(f"needs-retry.{service}", self._retry_after_skew)

    def _put_in_context(self, request: Any, **_: Any) -> None:
        request.context[_CONTEXT_KEY] = self

    def _retry_after_skew(
        self, response: Any = None, request_dict: Any = None, **_: Any
    ) -> float | None:
        """botocore ``needs-retry`` handler: 0 (retry now) once per call after a clock-skew
        refusal that corrected the clock; None leaves the decision to botocore's retries."""
        if response is None or request_dict is None:
            return None
        parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else {}
        code = (parsed.get("Error") or {}).get("Code")
        context = request_dict.setdefault("context", {})
        if code not in CLOCK_SKEW_CODES or context.get(_RETRIED_KEY):
            return None
        headers = (parsed.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
        if not self.correct(headers.get("date")):
            return None
        context[_RETRIED_KEY] = True
        return 0.0


def _machine_now() -> dt.datetime:
    """This machine's time as botocore's signers read it (UTC, aware)."""
    now: dt.datetime = botocore.auth.get_current_datetime()  # type: ignore[attr-defined]
    return now.replace(tzinfo=dt.UTC)


class _SignsAt:
    """``add_auth`` of botocore's SigV4 signers at a given clock's time instead of the
    machine's (mixed in before ``SigV4Auth`` or ``SigV4QueryAuth``)."""

    clock: SigningClock | None = None

    def add_auth(self, request: Any) -> None:
        """Sign ``request`` at the clock's time: the ``clock`` attribute, else the one
        ``SigningClock.attach`` put in the request's context, else the machine's."""
        signer: Any = self
        if signer.credentials is None:
            raise NoCredentialsError()
        clock = self.clock or request.context.get(_CONTEXT_KEY) or SigningClock()
        now = clock.now().astimezone(dt.UTC).replace(tzinfo=None)
        request.context["timestamp"] = now.strftime(SIGV4_TIMESTAMP)
        signer._modify_request_before_signing(request)
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        signer._inject_signature_to_request(request, signature)


class ClockedSigV4Auth(_SignsAt, SigV4Auth):
    """botocore's SigV4 header signer at the time of the ``SigningClock`` that
    ``SigningClock.attach`` put in the request's context."""


class ClockedSigV4QueryAuth(_SignsAt, SigV4QueryAuth):
    """botocore's SigV4 presigner (query auth) at ``clock``'s time."""

    def __init__(
        self,
        credentials: Any,
        service_name: str,
        region_name: str,
        expires: int,
        clock: SigningClock | None = None,
    ) -> None:
        super().__init__(credentials, service_name, region_name, expires)
        self.clock = clock


def _choose_clocked_signer(
    signature_version: str, context: dict[str, Any] | None = None, **_: Any
) -> str | None:
    """botocore ``choose-signer`` handler: plain SigV4 (body signed) becomes the clocked one;
    anything else is left to botocore's own choice."""
    context = context or {}
    plain = context.get("auth_type") in (None, "v4") and not context.get("unsigned_payload")
    return SIGNATURE_VERSION if signature_version == "v4" and plain else None


def _register_signer() -> None:
    """Make ``SIGNATURE_VERSION`` known to botocore (adds one entry; idempotent)."""
    botocore.auth.AUTH_TYPE_MAPS.setdefault(SIGNATURE_VERSION, ClockedSigV4Auth)
