"""``connect()``: the target a notebook or script works against: AWS, a KVS endpoint at a
URL, or (the default) a Local KVS launched in this process.

This is where the two halves meet, besides the CLI: the client half (``kvsnb.client``) knows
targets, Local KVS (``kvsnb.local``) knows how to run; ``connect`` starts the second and hands
the first its URL. Selection, first match wins:

1. ``connect("aws", region=...)`` or ``KVSNB_TARGET=aws``: AWS, with boto3's standard
   credential chain and region;
2. ``connect("http://127.0.0.1:PORT")``, ``connect(endpoint_url=...)`` or
   ``KVSNB_ENDPOINT_URL``: a Local KVS (or anything else speaking KVS) already running there;
3. otherwise (``connect()``, ``KVSNB_TARGET=local``): an embedded Local KVS on its own
   event-loop thread, on 127.0.0.1 and an ephemeral port, with a temporary (or given) data
   directory. No AWS account or credentials are needed.

TLS, proxies and public URLs: see ``kvsnb.client.target``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kvsnb.client.target import (
    ENV_ENDPOINT,
    ENV_REGION,
    ENV_TARGET,
    Target,
    TargetError,
    aws_target,
    embedded_target,
    endpoint_target,
    jupyter_proxy_base,
    public_url_setting,
)
from kvsnb.wire.defaults import DEFAULT_REGION


def connect(
    target: str | None = None,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    data_dir: str | Path | None = None,
    profile: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    public_url: str | None = None,
    **local_options: Any,
) -> Target:
    """Connect to KVS (see the module docstring for how the target is chosen).

    ``data_dir`` keeps an embedded Local KVS's data (and, with ``tls=True``, its local CA)
    across runs; ``local_options`` go to its ``LocalKvsConfig`` (e.g. ``tls=True``,
    ``signaling=SignalingLimits(...)``). ``ca_bundle`` is the CA file to verify an
    ``https://`` endpoint with. ``public_url`` is the base URL browsers reach Local KVS at:
    the embedded one is started with it; for a Local KVS at ``endpoint_url`` it must be the
    one it was started with. Raises ``TargetError`` for an unknown target name.
    """
    choice = (target or os.environ.get(ENV_TARGET) or "").strip()
    endpoint_url = endpoint_url or (choice if choice.startswith(("http://", "https://")) else None)
    if not endpoint_url and choice.lower() not in ("aws", "local"):
        if choice:
            raise TargetError(f"Unknown target {choice!r}: use 'aws', 'local' or a URL")
        endpoint_url = os.environ.get(ENV_ENDPOINT) or None
    region = region or os.environ.get(ENV_REGION) or None

    if choice.lower() == "aws":
        return aws_target(region, profile)
    if endpoint_url:
        return endpoint_target(
            endpoint_url,
            region=region,
            profile=profile,
            ca_bundle=ca_bundle,
            public_url=public_url,
        )

    from kvsnb.local.runner import start_embedded  # the embedded default

    region = region or DEFAULT_REGION
    public = public_url_setting(public_url, jupyter_proxy_base())
    kvs = start_embedded(data_dir=data_dir, region=region, public_url=public, **local_options)
    return embedded_target(kvs, region, public_url=kvs.public_url if public is not None else None)
