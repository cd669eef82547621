"""Shared fixtures: a real Local KVS on 127.0.0.1 (own event-loop thread, temp data dir) and
boto3 clients pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits

REGION = "us-west-2"
CREDS = {"aws_access_key_id": "AKIDLOCALTEST", "aws_secret_access_key": "local-secret"}


def make_client(service: str, endpoint_url: str, **kwargs: Any) -> Any:
    """A boto3 client for a KVS plane at ``endpoint_url`` (no retries, so errors surface)."""
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        **{**CREDS, **kwargs},
    )


@pytest.fixture
def local_kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    """A fresh Local KVS per test, with generous signaling limits."""
    config = LocalKvsConfig(
        data_dir=tmp_path / "data",
        signaling=SignalingLimits(connects_per_s=100.0),
    )
    with LocalKvs(config) as kvs:
        yield kvs


@pytest.fixture
def kv(local_kvs: LocalKvs) -> Any:
    """A boto3 ``kinesisvideo`` client for the Local KVS control plane."""
    return make_client("kinesisvideo", local_kvs.url)


@pytest.fixture
def client_for(local_kvs: LocalKvs) -> Callable[[str, str], Any]:
    """Build a boto3 client for any plane: ``client_for(service, endpoint_url)``."""
    return make_client
