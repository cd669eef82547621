"""Frame analysis on Dask against a real Local KVS: the result on a LocalCluster equals the
single-process analysis, and a worker killed mid-run is retried with the result complete."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kvsnb.analysis.archive import (
    FrameContext,
    UserFunction,
    analyze_archive,
    analyze_local,
    frame_gaps,
    keyframe_intervals,
    local_client,
    plan_archive,
    to_dask,
)
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig
from kvsnb.putmedia import import_file_async
from kvsnb.sources.tracks import make_test_file
from tests.conftest import wait_until_sync

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SECONDS = 30.0
FPS = 30
SLOW_FRAME_S = 0.01


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """30 s of stamped pattern loaded with PutMedia into stream ``cam`` (2 s fragments)."""
    root = tmp_path_factory.mktemp("dask")
    path = make_test_file(
        root / "pattern.mp4",
        seconds=SECONDS,
        width=320,
        height=240,
        fps=FPS,
        gop=FPS,
        start_ms=int(START.timestamp() * 1000),
    )
    with LocalKvs(LocalKvsConfig(data_dir=root / "data")) as kvs:
        target = connect(endpoint_url=kvs.url)
        target.kinesisvideo.create_stream(StreamName="cam", DataRetentionInHours=24)
        asyncio.run(import_file_async(target, path, "cam", start=START, progress=False))
        yield target
        target.close()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of 2 single-threaded worker processes."""
    c = local_client(2)
    yield c
    c.close()
    c.cluster.close()


def slow_brightness(ctx: FrameContext) -> dict[str, Any]:
    """Brightness, slowly (so a worker can be killed while it works)."""
    time.sleep(SLOW_FRAME_S)  # the work itself: slow, not a wait
    return {"slow_brightness": float(ctx.luma().mean())}


def test_dask_result_equals_single_process(archive: Target, client: Any) -> None:
    plan = plan_archive(
        archive, "cam", functions=("timeline", "stamps", "brightness", "motion"),
        partition_seconds=6,
    )  # fmt: skip
    assert len(plan.partitions) == 5
    lazy = to_dask(plan)
    assert lazy.npartitions == 5
    assert list(lazy.columns) == list(plan.columns)  # meta, nothing computed
    local = analyze_local(plan)
    distributed = analyze_archive(plan, client)
    pd.testing.assert_frame_equal(local, distributed)
    # complete and right: every frame once, stamps read, capture times as written
    assert len(local) == SECONDS * FPS
    assert list(local["frame_index"]) == list(range(int(SECONDS * FPS)))
    expected_ms = [START.timestamp() * 1000 + round(i * 1000 / FPS) for i in range(900)]
    assert list(local["capture_ms"]) == expected_ms
    assert not frame_gaps(local)["gap"].any()
    assert keyframe_intervals(local).round(1).eq(1.0).all()
    assert local["brightness"].between(1, 254).all()
    first_in_fragment = local["fragment_number"] != local["fragment_number"].shift()
    assert local.loc[first_in_fragment, "motion"].isna().all()
    assert local.loc[~first_in_fragment, "motion"].notna().all()


def test_sampled_frames_and_a_user_function(archive: Target, client: Any) -> None:
    green = UserFunction(
        lambda ctx: {"green": float(ctx.rgb()[..., 1].mean())}, {"green": "float64"}
    )
    plan = plan_archive(archive, "cam", functions=(green,), partition_seconds=10, sample_ms=1000)
    result = analyze_archive(plan, client)
    assert len(result) == SECONDS  # one frame per second of media
    pd.testing.assert_frame_equal(result, analyze_local(plan))


def test_a_worker_killed_mid_run_is_retried_and_the_result_is_complete(
    archive: Target, tmp_path: Path
) -> None:
    fn = UserFunction(slow_brightness, {"slow_brightness": "float64"})
    plan = plan_archive(archive, "cam", functions=(fn,), partition_seconds=2)
    assert len(plan.partitions) == 15
    with local_client(2) as c:
        future = c.compute(to_dask(plan))
        wait_until_sync(  # work in progress
            lambda: any(tasks for tasks in c.processing().values()), "a worker starts a task"
        )
        victim = next(w for w, tasks in c.processing().items() if tasks)
        pids = c.run(os.getpid)
        os.kill(pids[victim], signal.SIGKILL)
        result = future.result(timeout=120).reset_index(drop=True)
        assert victim not in c.scheduler_info()["workers"] or pids != c.run(os.getpid)
        c.cluster.close()
    assert len(result) == SECONDS * FPS
    assert result["producer_time"].is_monotonic_increasing
    assert result["producer_time"].is_unique
    assert result["slow_brightness"].notna().all()
