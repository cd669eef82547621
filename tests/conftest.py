"""Shared fixtures: a real Local KVS on 127.0.0.1 (own event-loop thread, temp data dir),
boto3 clients pointed at it, and a Local KVS with short fragments for storage-session tests
(``start_kvs``, ``kvs``, ``target``) with the helpers that read stored media back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from kvsnb.analysis import Delivery, compare_delivery, stamps_from_frames
from kvsnb.client.session import JoinPolicy
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import decode_video, get_media, list_fragments

REGION = "us-west-2"
FRAGMENT_S = 1.0
FAST = JoinPolicy.local(offer_wait_s=0.3)
CREDS = {"aws_access_key_id": "AKIDLOCALTEST", "aws_secret_access_key": "local-secret"}


def make_client(service: str, endpoint_url: str, **kwargs: Any) -> Any:
    """A signed boto3 client for a KVS plane at ``endpoint_url``, with no retries so errors
    surface. ``validate=False`` skips botocore's own parameter checks so bad input reaches
    the server; ``kwargs`` override the test credentials (``aws_access_key_id`` ...)."""
    from botocore.config import Config

    validate = bool(kwargs.pop("validate", True))
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=validate)
    client: Any = boto3.client  # the stubs' overloads want a literal service name
    return client(
        service, endpoint_url=endpoint_url, region_name=REGION, config=config, **{**CREDS, **kwargs}
    )


@dataclass
class SignalingChannel:
    """A signaling channel and its two WSS endpoints."""

    arn: str
    master_wss: str
    viewer_wss: str


def make_channel(kv: Any, name: str | None = None, ttl: int | None = None) -> SignalingChannel:
    """CreateSignalingChannel (a fresh name unless given), then GetSignalingChannelEndpoint
    for both roles."""
    kwargs: dict[str, Any] = {"ChannelName": name or f"ch-{uuid.uuid4().hex[:8]}"}
    if ttl is not None:
        kwargs["SingleMasterConfiguration"] = {"MessageTtlSeconds": ttl}
    arn = kv.create_signaling_channel(**kwargs)["ChannelARN"]
    wss = {}
    for role in ("MASTER", "VIEWER"):
        resp = kv.get_signaling_channel_endpoint(
            ChannelARN=arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS"], "Role": role},
        )
        (endpoint,) = resp["ResourceEndpointList"]
        assert endpoint["Protocol"] == "WSS"
        wss[role] = endpoint["ResourceEndpoint"]
    return SignalingChannel(arn, wss["MASTER"], wss["VIEWER"])


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


def start_kvs(
    data: Path,
    *,
    signaling: SignalingLimits | None = None,
    strict_keys: Any = None,
    storage_workers: int = 0,
    **storage: Any,
) -> LocalKvs:
    """A Local KVS on its own event-loop thread with 1 s fragments and ``storage`` options
    (``StorageOptions`` fields), its storage sessions in ``storage_workers`` processes."""
    options = StorageOptions(**{"fragment_duration_s": FRAGMENT_S, **storage})
    config = LocalKvsConfig(
        data_dir=data,
        signaling=signaling or SignalingLimits(connects_per_s=100.0),
        strict_keys=strict_keys,
        storage_workers=storage_workers,
        extra={"storage": options},
    )
    return LocalKvs(config).start_in_thread()


@pytest.fixture
def kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    """A fresh Local KVS with 1 s fragments (modules override it for other options)."""
    server = start_kvs(tmp_path / "data")
    yield server
    server.stop_in_thread()


@pytest.fixture
def target(kvs: LocalKvs) -> Iterator[Target]:
    """A kvsnb target on the ``kvs`` fixture's Local KVS."""
    with connect(endpoint_url=kvs.url) as tg:
        yield tg


def stored_frame_count(kvs: LocalKvs, stream_arn: str) -> int:
    """Video frames in the fragments of ``stream_arn`` that ``kvs`` has stored: tests wait
    until it reaches the frames sent, as the fragment a leaving master held is stored a
    moment after its client stopped."""
    return sum(f.frame_count for f in kvs.store.list_fragments(stream_arn))


def stored_stamps(target: Target, stream_arn: str, after: int | None = None) -> Any:
    """(fragments, (stamps, unreadable)) read via ListFragments + GetMediaForFragmentList;
    with ``after``, only the fragments numbered above it."""
    fragments = list_fragments(target, stream_arn)
    if after is not None and len(fragments):
        fragments = fragments[fragments["fragment_number"].map(int) > after]
    if not len(fragments):
        return fragments, (None, 0)
    media = get_media(target, stream_arn, list(fragments["fragment_number"]))
    return fragments, stamps_from_frames(decode_video(media))


async def stored_delivery(
    target: Target, stream_arn: str, sent: Any, *, within_s: float = 5.0, after: int | None = None
) -> Delivery:
    """How the stamped frames ``sent`` (``frame_index`` column) compare with what the stream
    stores, once every one is stored or ``within_s`` has passed: the last fragment of a
    master that just left is stored a moment after its client stopped."""
    deadline = time.monotonic() + within_s
    while True:
        _, (stamps, unreadable) = await asyncio.to_thread(stored_stamps, target, stream_arn, after)
        if stamps is None:
            stamps = pd.DataFrame({"frame_index": []})
        delivery = compare_delivery(sent, stamps, unreadable)
        if delivery.complete or time.monotonic() > deadline:
            return delivery
        await asyncio.sleep(0.1)


async def ingest_frames(
    target: Target,
    channel: str,
    frames: int,
    *,
    policy: JoinPolicy | None = None,
    size: tuple[int, int] = (320, 240),
    deadline_s: float = 120.0,
) -> Any:
    """Ingest exactly ``frames`` frames of the stamped pattern (and a tone) as master: wait,
    with a generous deadline, until the pattern has sent them all, however slowly a busy
    machine produces them; then stop. Returns the ``IngestResult``: tests assert that what
    was sent was stored, never how many frames a clock produced in a window."""
    from kvsnb.client.ingest import IngestResult
    from kvsnb.client.session import MasterSession
    from kvsnb.sources import TestPatternTrack, ToneTrack

    pattern = TestPatternTrack(*size, 30, max_frames=frames)
    tone = ToneTrack()
    session = MasterSession(target, channel, video=pattern, audio=tone, policy=policy or FAST)
    try:
        await session.start(timeout=60)
        started = time.time()
        # The pattern ends when the sender asks for a frame past the last one, so only after
        # the sender has encoded and sent every frame: then all of them have left it.
        await wait_until(
            lambda: pattern.readyState == "ended",
            f"the sender sends all {frames} frames of the pattern",
            deadline_s=deadline_s,
        )
        assert len(pattern.sent) == frames
        ended = time.time()
    finally:
        tone.stop()
        pattern.stop()
        await session.stop()
    assert session.channel_arn is not None
    return IngestResult(
        session.channel_arn, session.timeline, "pattern", started, ended, pattern.frames_df()
    )


async def wait_until(
    condition: Callable[[], bool], what: str, deadline_s: float = 60.0, every_s: float = 0.05
) -> None:
    """Wait until ``condition()`` holds, failing with ``what`` after a generous deadline (a
    busy machine is slow: tests wait for conditions, never for fixed times)."""

    async def check() -> bool:
        return condition()

    await wait_for(check, what, deadline_s, every_s)


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, deadline_s: float = 60.0, every_s: float = 0.05
) -> None:
    """``wait_until`` for a condition that must be awaited (a request, a join attempt): await
    ``check()`` until it returns True, failing with ``what`` after ``deadline_s``."""
    limit = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < limit, f"not within {deadline_s} s: {what}"
        await asyncio.sleep(every_s)


def wait_until_sync(
    condition: Callable[[], bool],
    what: str,
    deadline_s: float = 60.0,
    every_s: float = 0.05,
    detail: Callable[[], object] | None = None,
) -> None:
    """``wait_until`` for code without an event loop (a browser driven synchronously, a
    thread): poll ``condition()`` until it holds, failing with ``what`` (and ``detail()``,
    what was seen last, when given) after ``deadline_s``."""
    limit = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() >= limit:
            seen = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"not within {deadline_s} s: {what}{seen}")
        time.sleep(every_s)
