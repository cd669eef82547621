"""Shared pieces of the reliability suite: raw SigV4-signed HTTP and stored-media readers
(Local KVS in a child process is ``kvsnb.local.runner.LocalKvsProcess``). Everything talks
to 127.0.0.1 only."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import av
from hypothesis.configuration import set_hypothesis_home_dir

from tests.integration.conftest import HTTP_TIMEOUT_S, Http, RawResponse

ACCESS_KEY = "AKIDLOCALTEST"
SECRET_KEY = "local-secret"

# hypothesis keeps caches in ./.hypothesis by default: keep the working tree clean
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "kvsnb-hypothesis"))


# ---------------------------------------------------------------------------- raw HTTP


def http(
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> RawResponse:
    """One HTTP request (``Http.request``): error statuses come back as responses too."""
    return Http.request(method, url, body, headers, timeout)


def signed_post(
    url: str,
    body: bytes,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    content_type: str = "application/json",
    timeout: float = HTTP_TIMEOUT_S,
) -> RawResponse:
    """POST ``body`` signed with botocore's SigV4 signer (service ``kinesisvideo``)."""
    return Http.signed_post(
        url,
        body,
        access_key=access_key,
        secret_key=secret_key,
        content_type=content_type,
        timeout=timeout,
    )


def healthy(url: str) -> bool:
    """Local KVS answers its health check."""
    try:
        return http("GET", f"{url}/_localkvs/health", timeout=5).status == 200
    except OSError:
        return False


# ---------------------------------------------------------------------------- stored media


def decode_fully(media: bytes) -> tuple[int, int]:
    """Decode every packet of a Matroska body with PyAV (errors raise): (video frames,
    audio frames)."""
    video = audio = 0
    with av.open(io.BytesIO(media), mode="r") as container:
        for packet in container.demux():
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    video += 1
                else:
                    audio += 1
    return video, audio
