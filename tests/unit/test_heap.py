"""Memory snapshots of a running Local KVS (``kvsnb.local.core.heap``): the census and its
comparison in this process, and a real ``kvsnb local`` child answering SIGUSR1 with a census
and, under ``PYTHONTRACEMALLOC``, a tracemalloc snapshot."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from kvsnb.local.core.heap import (
    census,
    dump_memory_snapshot,
    load_memory_snapshot,
    memory_growth,
)
from kvsnb.local.runner import LocalKvsProcess


class Grower:
    """A type only this test makes, so its growth is known exactly."""


def test_a_census_counts_live_objects_by_type_and_the_growth_names_them(tmp_path: Path) -> None:
    before = census()
    kept = [Grower() for _ in range(500)]
    after = census()
    name = f"{__name__}.Grower"
    assert after["types"][name][0] - before["types"].get(name, [0, 0])[0] == 500
    assert after["rss_kib"] > 0 and after["allocated_blocks"] > 0
    growth = memory_growth(before, after, top=200)
    row = next(r for r in growth["top_types"] if r["type"] == name)
    assert row["count_growth"] == 500 and row["growth_kib"] > 0
    # written and read back as the child does
    path = dump_memory_snapshot(tmp_path)
    assert path.name == "census-0.json"
    assert dump_memory_snapshot(tmp_path).name == "census-1.json"
    loaded = load_memory_snapshot(path)
    assert isinstance(loaded, dict) and loaded["types"][name][0] >= 500
    del kept


def test_snapshots_of_two_kinds_do_not_compare() -> None:
    tracemalloc.start()
    try:
        traced = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    with pytest.raises(TypeError, match="same kind"):
        memory_growth(census(), traced)


@pytest.mark.timeout(120)
def test_kvsnb_local_answers_sigusr1_with_a_snapshot() -> None:
    with LocalKvsProcess("--ice", "host") as kvs:
        first, second = kvs.memory_snapshot(), kvs.memory_snapshot()
        assert isinstance(first, dict) and isinstance(second, dict)
        assert "kvsnb.local.front.server.LocalKvs" in second["types"]
        assert kvs.proc.poll() is None  # still serving
    with LocalKvsProcess("--ice", "host", env={"PYTHONTRACEMALLOC": "2"}) as kvs:
        traced = kvs.memory_snapshot()
        assert isinstance(traced, tracemalloc.Snapshot)
        assert traced.traceback_limit == 2
        growth = memory_growth(traced, kvs.memory_snapshot())
        assert growth["kind"] == "tracemalloc" and growth["traced_mib_last"] > 0
