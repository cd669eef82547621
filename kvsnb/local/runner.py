"""Running Local KVS: in this event loop until a signal (``kvsnb local``), or embedded on
its own event-loop thread (``kvsnb.connect()``), and how to trust it in TLS mode."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from kvsnb.local.front.server import LocalKvs, LocalKvsConfig
from kvsnb.local.front.sigv4 import StrictKeys
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.wire.defaults import DEFAULT_REGION, LOOPBACK


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
) -> None:
    """Run a Local KVS in this event loop until SIGINT or SIGTERM (``kvsnb local``).

    ``strict_keys`` (access key, secret) makes it verify every SigV4 signature;
    ``storage_workers`` > 0 runs storage sessions in that many worker processes; ``tls``
    serves https/wss with a local CA kept in the data directory, or with ``tls_cert`` and
    ``tls_key`` when given. Prints the URL and, in TLS mode, how to trust the CA.
    ``storage_workers`` > 0 runs storage sessions in that many worker processes;
    ``public_url`` is the base URL browsers reach it at (``{port}`` = the bound port).
    """
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
        extra={"storage": options},
    )
    kvs = LocalKvs(config)
    await kvs.start()
    reached = f", reached at {kvs.public_url}" if public_url else ""
    print(f"Local KVS at {kvs.url}{reached} (data: {kvs.data_dir})", flush=True)
    if kvs.tls is not None:
        kept = data_dir is not None
        print(tls_instructions(kvs.url, kvs.tls.ca, kvs.tls.spki_sha256(), kept), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("stopping Local KVS", flush=True)
    await kvs.stop()


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
