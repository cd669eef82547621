"""Shared pieces of the reliability suite: Local KVS on its own thread or in a child process
(``kvsnb local``), raw SigV4-signed HTTP, stored-media readers and the join policy the
tests use. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
from hypothesis.configuration import set_hypothesis_home_dir

from tests.conftest import FRAGMENT_S
from tests.integration.conftest import HTTP_TIMEOUT_S, Http, RawResponse

ACCESS_KEY = "AKIDLOCALTEST"
SECRET_KEY = "local-secret"

# hypothesis keeps caches in ./.hypothesis by default: keep the working tree clean
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "kvsnb-hypothesis"))
CHILD_START_TIMEOUT_S = 30.0


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


# ---------------------------------------------------------------------------- child process


class LocalKvsChild:
    """``kvsnb local --port 0 --data DIR`` in a child process (1 s fragments, storage sessions
    in ``workers`` processes of its own), so that it can be killed with SIGKILL."""

    def __init__(self, data: Path, fragment_s: float = FRAGMENT_S, workers: int = 0) -> None:
        self.data = data
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvsnb.cli",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data",
                str(data),
                "--fragment-seconds",
                str(fragment_s),
                "--workers",
                str(workers),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + CHILD_START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "Local KVS at" in line or not line:
                break
        if "Local KVS at" not in line:
            self.kill()
            raise RuntimeError(f"Local KVS did not start: {line!r}")
        self.url = line.split("Local KVS at ", 1)[1].split()[0]
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL if it does not end."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


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
