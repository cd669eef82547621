"""Helpers shared by the benchmarks: CPU and memory readings from /proc (a process with its
storage workers), percentiles. Local KVS runs in its own process
(``kvsnb.local.runner.LocalKvsProcess``), so its CPU can be measured apart from the
clients'."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """A process and its living descendants (Local KVS and its storage workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parents.get(p, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its living descendants (/proc stat)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its living descendants, in MiB."""
    kib = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                kib += int(line.split()[1])
    return kib / 1024


def report(**figures: float | None) -> None:
    """Print a benchmark's headline figures as one ``{"figures": {...}}`` JSON line, which
    ``make bench`` keeps in the history (``bench.history``). ``None`` values are left out."""
    kept = {k: round(v, 4) for k, v in figures.items() if v is not None and v == v}
    print(json.dumps({"figures": kept}), flush=True)


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (NaN for no values)."""
    return float(np.percentile(values, p)) if len(values) else float("nan")


def now_ms() -> float:
    """Wall clock in ms."""
    return time.time() * 1000
