"""The PutMedia client: one long-lived chunked POST of Matroska to the ``PUT_MEDIA`` data
endpoint, signed with SigV4 (``UNSIGNED-PAYLOAD``), reading the acknowledgement events while
the upload goes on. The same code loads into AWS KVS and into Local KVS.

Wire source: the PutMedia API reference (headers, acknowledgement events, error ids).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import pandas as pd
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from kvsnb.client.target import Target
from kvsnb.errors import KvsnbError

logger = logging.getLogger(__name__)

SIGNING_NAME = "kinesisvideo"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ACK_COLUMNS = ["event", "fragment_timecode", "fragment_number", "error_id", "error_code"]

AckEvent = Literal["BUFFERING", "RECEIVED", "PERSISTED", "ERROR", "IDLE"]


class PutMediaError(KvsnbError, RuntimeError):
    """PutMedia failed: an HTTP error before the upload (``code`` is AWS's error code) or an
    ERROR acknowledgement during it (``error_id`` is AWS's ErrorId)."""

    def __init__(self, message: str, *, code: str | None = None, error_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.error_id = error_id


@dataclass(frozen=True)
class Ack:
    """One PutMedia acknowledgement event."""

    event: str
    fragment_timecode: int | None = None
    fragment_number: str | None = None
    error_id: int | None = None
    error_code: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ack:
        """Parse the wire JSON (``EventType``, ``FragmentTimecode``, ``FragmentNumber``,
        ``ErrorId``, ``ErrorCode``)."""
        number = data.get("FragmentNumber")
        error_id = data.get("ErrorId")
        return cls(
            event=str(data.get("EventType", "")),
            fragment_timecode=data.get("FragmentTimecode"),
            fragment_number=None if number is None else str(number),
            error_id=None if error_id is None else int(error_id),
            error_code=data.get("ErrorCode"),
        )


def acks_frame(acks: list[Ack]) -> pd.DataFrame:
    """The acknowledgements as a table (one row per event)."""
    return pd.DataFrame(
        [(a.event, a.fragment_timecode, a.fragment_number, a.error_id, a.error_code) for a in acks],
        columns=ACK_COLUMNS,
    )


def _stream_headers(stream: str) -> dict[str, str]:
    return {"x-amzn-stream-arn" if stream.startswith("arn:") else "x-amzn-stream-name": stream}


def signed_headers(target: Target, url: str, headers: dict[str, str]) -> dict[str, str]:
    """SigV4 headers for a streaming POST whose payload is not signed."""
    request = AWSRequest(
        method="POST", url=url, headers={**headers, "X-Amz-Content-SHA256": UNSIGNED_PAYLOAD}
    )
    SigV4Auth(target.credentials(), SIGNING_NAME, target.region).add_auth(request)
    return dict(request.headers.items())


async def put_media(
    target: Target,
    stream: str,
    body: AsyncIterator[bytes],
    *,
    producer_start: dt.datetime | None = None,
    timecode_type: Literal["ABSOLUTE", "RELATIVE"] = "RELATIVE",
    on_ack: Callable[[Ack], None] | None = None,
    raise_on_error: bool = True,
    endpoint_url: str | None = None,
) -> list[Ack]:
    """Run one PutMedia request: send ``body`` (Matroska) while reading the acknowledgements.

    Returns every acknowledgement. An HTTP error raises ``PutMediaError`` with AWS's code;
    an ERROR acknowledgement raises it with the ErrorId unless ``raise_on_error`` is False.
    ``endpoint_url`` skips GetDataEndpoint.
    """
    if endpoint_url is None:
        endpoint_url = await asyncio.to_thread(target.data_endpoint, stream, "PUT_MEDIA")
    endpoint = str(endpoint_url)
    url = endpoint.rstrip("/") + "/putMedia"
    headers = {**_stream_headers(stream), "x-amzn-fragment-timecode-type": timecode_type}
    if producer_start is not None:
        headers["x-amzn-producer-start-timestamp"] = f"{producer_start.timestamp():.3f}"
    headers = signed_headers(target, url, headers)
    acks: list[Ack] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                text = await response.text()
                code = response.headers.get("x-amzn-ErrorType", "").split(":")[0] or None
                try:
                    message = next(iter(json.loads(text).values()))
                except (ValueError, StopIteration, AttributeError):
                    message = text
                raise PutMediaError(
                    f"PutMedia answered HTTP {response.status} {code}: {message}", code=code
                )
            async for line in response.content:
                if not line.strip():
                    continue
                ack = Ack.from_json(json.loads(line))
                acks.append(ack)
                if on_ack is not None:
                    on_ack(ack)
    errors = [a for a in acks if a.event == "ERROR"]
    if errors and raise_on_error:
        first = errors[0]
        raise PutMediaError(
            f"PutMedia ERROR {first.error_id} {first.error_code} at fragment timecode "
            f"{first.fragment_timecode}",
            code=first.error_code,
            error_id=first.error_id,
        )
    return acks
