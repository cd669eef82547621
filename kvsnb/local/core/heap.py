"""Where a running Local KVS keeps its memory: snapshots taken inside the process on SIGUSR1
(``kvsnb local`` installs the handler) and their comparison, for the soak
(``python -m bench.soak --memory``) and for anyone chasing growth in a long run.

Two kinds of snapshot, written to the data directory:

* a **census** (``census-<n>.json``, always available, no cost between snapshots): the live
  Python objects the garbage collector tracks, counted and sized (``sys.getsizeof``) by type,
  with the process's resident memory and pymalloc's block count. It misses objects the
  collector does not track (bytes, str, numbers) except through their count in the blocks,
  and every native allocation (libav, OpenSSL, libsrtp, the allocator's own slack): resident
  memory growing while the census stays flat points there.
* a **tracemalloc snapshot** (``tracemalloc-<n>.snap``) when the process was started with
  ``PYTHONTRACEMALLOC=N``: every Python allocation with its traceback. tracemalloc slows each
  allocation several times over: with the soak's 4 masters and 2 viewers Local KVS saturates
  a core and falls behind (its queues then grow, which is not the growth being looked for), so
  use it with a lighter load.

Taking either holds the event loop still for a moment (about a second for a census of a
busy server).
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

SNAPSHOT_LINE = "memory snapshot: "  # printed before the path of each snapshot written
MIB = 1024 * 1024


def rss_kib(pid: int | None = None) -> int:
    """Resident memory (KiB) of process ``pid`` (default: this one), from /proc; 0 once it is
    gone or where there is no /proc."""
    try:
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def census() -> dict[str, Any]:
    """The live objects the garbage collector tracks, by type: ``{"types": {name: [count,
    bytes]}, "rss_kib": ..., "allocated_blocks": ...}``. Objects frozen at start-up
    (``memory.freeze_startup_objects``) are hidden from the collector, so the census unfreezes
    them first: from then on, collections look at them again."""
    gc.unfreeze()
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj, 0)
    return {
        "rss_kib": rss_kib(),
        "allocated_blocks": sys.getallocatedblocks(),
        "types": {name: [counts[name], sizes[name]] for name in counts},
    }


def dump_memory_snapshot(directory: Path) -> Path:
    """Write a snapshot of this process to ``directory``: tracemalloc's when it is tracing
    (``tracemalloc-<n>.snap``), else a census (``census-<n>.json``); print and return its
    path."""
    if tracemalloc.is_tracing():
        path = directory / f"tracemalloc-{len(list(directory.glob('tracemalloc-*.snap')))}.snap"
        tracemalloc.take_snapshot().dump(str(path))
    else:
        path = directory / f"census-{len(list(directory.glob('census-*.json')))}.json"
        path.write_text(json.dumps(census()))
    print(f"{SNAPSHOT_LINE}{path}", flush=True)
    return path


Snapshot = tracemalloc.Snapshot | dict[str, Any]


def load_memory_snapshot(path: str | Path) -> Snapshot:
    """A snapshot written by ``dump_memory_snapshot``."""
    path = Path(path)
    if path.suffix == ".snap":
        return tracemalloc.Snapshot.load(str(path))
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def memory_growth(old: Snapshot, new: Snapshot, top: int = 15) -> dict[str, Any]:
    """What grew from ``old`` to ``new`` (two snapshots of one kind): the totals and the
    ``top`` types (census) or source lines (tracemalloc) that grew most, largest first; for
    tracemalloc also the tracebacks of the three largest growths."""
    if isinstance(old, dict) and isinstance(new, dict):
        return _census_growth(old, new, top)
    if isinstance(old, tracemalloc.Snapshot) and isinstance(new, tracemalloc.Snapshot):
        return _traced_growth(old, new, top)
    raise TypeError("compare two snapshots of the same kind (census or tracemalloc)")


def _census_growth(old: dict[str, Any], new: dict[str, Any], top: int) -> dict[str, Any]:
    names = set(old["types"]) | set(new["types"])
    rows = []
    for name in names:
        count0, bytes0 = old["types"].get(name, [0, 0])
        count1, bytes1 = new["types"].get(name, [0, 0])
        rows.append((bytes1 - bytes0, count1 - count0, name, count1, bytes1))
    rows.sort(reverse=True)

    def total(snap: dict[str, Any]) -> float:
        return round(sum(b for _, b in snap["types"].values()) / MIB, 1)

    return {
        "kind": "census",
        "rss_mib_first": round(old["rss_kib"] / 1024, 1),
        "rss_mib_last": round(new["rss_kib"] / 1024, 1),
        "objects_mib_first": total(old),
        "objects_mib_last": total(new),
        "allocated_blocks_growth": new["allocated_blocks"] - old["allocated_blocks"],
        "top_types": [
            {
                "type": name,
                "growth_kib": round(db / 1024, 1),
                "count_growth": dc,
                "count": count,
                "kib": round(size / 1024, 1),
            }
            for db, dc, name, count, size in rows[:top]
        ],
    }


def _traced_growth(
    old: tracemalloc.Snapshot, new: tracemalloc.Snapshot, top: int
) -> dict[str, Any]:
    skip = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    old, new = old.filter_traces(skip), new.filter_traces(skip)

    def grown(by: str) -> list[tracemalloc.StatisticDiff]:
        return sorted(new.compare_to(old, by), key=lambda d: d.size_diff, reverse=True)

    def total(snap: tracemalloc.Snapshot) -> float:
        return round(sum(s.size for s in snap.statistics("filename")) / MIB, 1)

    return {
        "kind": "tracemalloc",
        "traced_mib_first": total(old),
        "traced_mib_last": total(new),
        "top_lines": [
            {
                "where": f"{d.traceback[0].filename}:{d.traceback[0].lineno}",
                "growth_kib": round(d.size_diff / 1024, 1),
                "blocks_growth": d.count_diff,
                "kib": round(d.size / 1024, 1),
            }
            for d in grown("lineno")[:top]
        ],
        "top_tracebacks": [
            {"growth_kib": round(d.size_diff / 1024, 1), "traceback": d.traceback.format()[-12:]}
            for d in grown("traceback")[:3]
        ],
    }
