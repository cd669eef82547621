"""Running Local KVS: in this event loop until a signal (``kvsnb local``), embedded on its
own event-loop thread (``kvsnb.connect()``), or in a child process (``LocalKvsProcess``, for
benchmarks and crash tests), and how to trust it in TLS mode."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from kvsnb.local.core import memory
from kvsnb.local.core.heap import (
    SNAPSHOT_LINE,
    Snapshot,
    dump_memory_snapshot,
    load_memory_snapshot,
)
from kvsnb.local.front.server import LocalKvs, LocalKvsConfig
from kvsnb.local.front.sigv4 import StrictKeys
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.local.turn.server import NO_COTURN
from kvsnb.wire.defaults import DEFAULT_REGION, LOOPBACK

PARENT_CHECK_S = 1.0  # how often ``kvsnb local --parent-pid`` checks that its parent lives


def start_embedded(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    region: str = DEFAULT_REGION,
    public_url: str | None = None,
    **options: Any,
) -> LocalKvs:
    """A Local KVS started on its own event-loop thread on loopback (``stop_in_thread()``
    stops it); ``options`` are ``LocalKvsConfig`` fields (``tls=True``, ``signaling=...``)."""
    config = LocalKvsConfig(
        data_dir=Path(data_dir) if data_dir else None,
        region=region,
        public_url=public_url,
        **options,
    )
    return LocalKvs(config).start_in_thread()


async def serve(
    *,
    host: str = LOOPBACK,
    port: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    region: str = DEFAULT_REGION,
    strict_keys: tuple[str, str] | None = None,
    storage_workers: int = 0,
    fragment_duration_s: float | None = None,
    require_audio: bool = True,
    tls: bool = False,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    public_url: str | None = None,
    ice: Literal["turn", "host"] = "turn",
    parent_pid: int | None = None,
) -> None:
    """Run a Local KVS in this event loop until SIGINT or SIGTERM (``kvsnb local``), or
    until process ``parent_pid``, its parent, ends.

    ``strict_keys`` (access key, secret) makes it verify every SigV4 signature;
    ``storage_workers`` > 0 runs storage sessions in that many worker processes (and one
    more that takes new joins while the others carry media); ``tls``
    serves https/wss with a local CA kept in the data directory, or with ``tls_cert`` and
    ``tls_key`` when given. Prints the URL and, in TLS mode, how to trust the CA.
    ``public_url`` is the base URL browsers reach it at (``{port}`` = the bound port);
    ``ice`` is how peers reach storage sessions (``LocalKvsConfig.ice``).
    """
    memory.fix_mmap_threshold()  # kvsnb.local.core.memory: a process with sessions stays flat
    options = StorageOptions(require_audio=require_audio)
    if fragment_duration_s is not None:
        options.fragment_duration_s = fragment_duration_s
    config = LocalKvsConfig(
        host=host,
        port=port,
        data_dir=Path(data_dir) if data_dir else None,
        region=region,
        strict_keys=StrictKeys(*strict_keys) if strict_keys else None,
        storage_workers=storage_workers,
        tls=tls,
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        public_url=public_url,
        ice=ice,
        extra={"storage": options},
    )
    kvs = LocalKvs(config)
    await kvs.start()
    memory.freeze_startup_objects()  # a session's end collects only what came after
    reached = f", reached at {kvs.public_url}" if public_url else ""
    print(f"Local KVS at {kvs.url}{reached} (data: {kvs.data_dir})", flush=True)
    print(ice_summary(kvs), flush=True)
    if kvs.tls is not None:
        kept = data_dir is not None
        print(tls_instructions(kvs.url, kvs.tls.ca, kvs.tls.spki_sha256(), kept), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR1: a memory snapshot in the data directory (kvsnb.local.core.heap)
    loop.add_signal_handler(signal.SIGUSR1, dump_memory_snapshot, kvs.data_dir)
    watch = None if parent_pid is None else asyncio.create_task(_parent_ended(parent_pid))
    if watch is not None:
        watch.add_done_callback(lambda _: stop.set())
    await stop.wait()
    if watch is not None:
        watch.cancel()
    print("stopping Local KVS", flush=True)
    await kvs.stop()


async def _parent_ended(parent_pid: int) -> None:
    """Return once this process's parent is no longer ``parent_pid`` (it ended, even by
    SIGKILL, and this process was handed to init or a subreaper)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(PARENT_CHECK_S)  # no event tells a child that its parent ended
    print(f"the parent process {parent_pid} has ended", flush=True)


def ice_summary(kvs: LocalKvs) -> str:
    """One line on how peers reach the storage sessions of ``kvs``."""
    turn = kvs.turn_endpoint
    if turn is not None:
        return (
            f"TURN: coturn at {turn.host}:{turn.port} (TLS {turn.tls_port}); storage sessions "
            "are reachable only through it, as on AWS (GetIceServerConfig gives its credentials)"
        )
    if kvs.config.ice == "turn":
        return f"TURN: off. {NO_COTURN}"
    return "TURN: off (--ice host): peers reach storage sessions on loopback host candidates"


def tls_instructions(url: str, ca: Path | None, spki: str, kept: bool = True) -> str:
    """How to trust a Local KVS in TLS mode, for ``kvsnb local`` to print; ``kept``: its
    data directory (so its CA) outlives it."""
    lines = []
    if ca is not None:
        where = (
            "kept in the data directory; reused on restart"
            if kept
            else "in a temporary data directory: a new CA every run; use --data to keep it"
        )
        lines += [
            f"TLS: local CA {ca} ({where})",
            f"  AWS CLI:  aws --endpoint-url {url} --ca-bundle {ca} kinesisvideo list-streams",
            f"  env:      export AWS_CA_BUNDLE={ca}",
            f"  boto3:    boto3.client('kinesisvideo', endpoint_url='{url}', verify='{ca}')",
            f"  kvsnb:    kvsnb.connect('{url}')  (fetches and trusts this CA itself)",
        ]
    else:
        lines.append("TLS: serving the certificate given with --cert/--key")
    lines.append(
        f"  Chromium: --ignore-certificate-errors-spki-list={spki} (with --user-data-dir), "
        "or import the CA into the browser's trust store"
    )
    return "\n".join(lines)


STARTED_LINE = "Local KVS at "  # what serve() prints first, followed by the URL


class LocalKvsProcess:
    """``python -m kvsnb.cli local`` in a child process on loopback and an ephemeral port, so
    that its CPU can be measured apart from the clients' or it can be killed with SIGKILL.

    ``args`` are further ``kvsnb local`` options (``"--workers", "2"``); ``data_dir`` is its
    data directory (default: a temporary one, removed by ``stop()``/``kill()``); ``env`` adds
    to its environment. The constructor returns once the child has printed its URL and
    answers its health check,
    or raises ``RuntimeError`` with the child's output after ``start_timeout_s``. The
    child's output goes to a file (``output()``), so a chatty child never blocks on a pipe.
    Usable as a context manager, which calls ``stop()``. The child stops by itself, as on
    SIGTERM, when this process ends without stopping it, even by SIGKILL (``--parent-pid``).
    ``url`` is the child's base URL
    (``http://127.0.0.1:PORT``, https with ``--tls``), ``data_dir`` its data directory and
    ``proc`` the ``subprocess.Popen``.
    """

    def __init__(
        self,
        *args: str,
        data_dir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self._own_data = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kvsnb-local-"))
        log_fd, log_name = tempfile.mkstemp(prefix="kvsnb-local-", suffix=".log")
        self._log = Path(log_name)
        command = [sys.executable, "-m", "kvsnb.cli", "local", "--host", LOOPBACK, "--port", "0"]
        command += ["--parent-pid", str(os.getpid())]  # it stops if this process is killed
        self.proc = subprocess.Popen(
            [*command, "--data", str(self.data_dir), *args],
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # a Ctrl-C in the terminal reaches the parent only
        )
        os.close(log_fd)
        try:
            self.url = self._wait_started(start_timeout_s)
        except BaseException:
            self.kill()
            raise

    def _wait_started(self, timeout_s: float) -> str:
        """The URL the child printed, once its health check answers 200."""
        deadline = time.monotonic() + timeout_s
        url = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if not url:
                for line in self.output().splitlines():
                    if line.startswith(STARTED_LINE):
                        url = line[len(STARTED_LINE) :].split()[0].rstrip(",")
            if url and self._healthy(url):
                return url
            time.sleep(0.05)  # polls the child's output and health check
        raise RuntimeError(
            f"Local KVS did not start within {timeout_s} s "
            f"(exit code {self.proc.poll()}): {self.output()!r}"
        )

    @staticmethod
    def _healthy(url: str) -> bool:
        """GET /_localkvs/health answers 200. Certificates are not checked: this only asks
        whether our own child on loopback is up."""
        context = None
        if url.startswith("https"):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(
                f"{url}/_localkvs/health", timeout=5, context=context
            ) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    @property
    def pid(self) -> int:
        """The child's process id (its storage workers are its children)."""
        return self.proc.pid

    def output(self) -> str:
        """Everything the child has printed so far (stdout and stderr)."""
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def memory_snapshot(self, timeout_s: float = 120.0) -> Snapshot:
        """A memory snapshot of the child (``kvsnb.local.core.heap``): SIGUSR1, then the file it
        writes once it says where; a tracemalloc snapshot when the child was started with
        ``env={"PYTHONTRACEMALLOC": "N"}``, else a census of its objects. Raises
        ``RuntimeError`` when none comes within ``timeout_s``."""
        before = self.output().count(SNAPSHOT_LINE)
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            lines = [ln for ln in self.output().splitlines() if ln.startswith(SNAPSHOT_LINE)]
            if len(lines) > before:
                return load_memory_snapshot(lines[-1][len(SNAPSHOT_LINE) :])
            time.sleep(0.2)  # polls the child's output for the snapshot's path
        raise RuntimeError(
            f"no memory snapshot within {timeout_s} s (exit code {self.proc.poll()})"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """A clean stop: SIGTERM, then SIGKILL if the child has not ended within
        ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL (no shutdown code runs), wait for the child, remove its output file and,
        if it was made here, its data directory. Safe to call more than once."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.unlink(missing_ok=True)
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKvsProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
