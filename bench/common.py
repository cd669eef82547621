"""Helpers shared by the benchmarks: CPU and memory readings from /proc (a process with its
storage workers), percentiles. Local KVS runs in its own process
(``kvsnb.local.runner.LocalKvsProcess``), so its CPU can be measured apart from the
clients'."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from kvsnb.local.core.heap import rss_kib

CLK_TCK = os.sysconf("SC_CLK_TCK")
COTURN = "turnserver"  # coturn's command name, a child of Local KVS with ice="turn"


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


def process_name(pid: int) -> str:
    """A process's command name (``/proc/PID/comm``: ``turnserver`` for coturn); empty once
    it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendant_named(pid: int, name: str) -> int | None:
    """The first living descendant of ``pid`` whose command name is ``name`` (coturn, a child
    of Local KVS, is ``turnserver``), or None."""
    for p in process_tree(pid)[1:]:
        if process_name(p) == name:
            return p
    return None


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads; /proc stat utime + stime);
    0 once it is gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_rss_mib(pid: int) -> float:
    """Resident memory of one process, in MiB; 0 once it is gone."""
    return rss_kib(pid) / 1024


def cpu_seconds(pid: int, without: Collection[int] = ()) -> float:
    """User + system CPU seconds of a process and its living descendants (/proc stat),
    leaving out the processes ``without`` (coturn, measured apart)."""
    return sum(process_cpu_seconds(p) for p in process_tree(pid) if p not in without)


def rss_mib(pid: int, without: Collection[int] = ()) -> float:
    """Resident memory of a process and its living descendants, in MiB, leaving out the
    processes ``without``."""
    return sum(process_rss_mib(p) for p in process_tree(pid) if p not in without)


class Parts:
    """The processes of a running Local KVS: the server, coturn (when it runs) and the rest
    of its descendants (storage workers), measured apart: coturn's relay cost is not Local
    KVS's own."""

    def __init__(self, server: int) -> None:
        self.server = server
        self.coturn = descendant_named(server, COTURN)

    def workers(self) -> list[int]:
        """The server's living descendants but coturn."""
        return [p for p in process_tree(self.server)[1:] if p != self.coturn]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: server, workers, coturn."""
        return {
            "server": process_cpu_seconds(self.server),
            "workers": sum(process_cpu_seconds(p) for p in self.workers()),
            "coturn": process_cpu_seconds(self.coturn) if self.coturn is not None else 0.0,
        }

    def rss(self) -> dict[str, float]:
        """Resident memory now, in MiB: server, workers, coturn."""
        return {
            "server": process_rss_mib(self.server),
            "workers": sum(process_rss_mib(p) for p in self.workers()),
            "coturn": process_rss_mib(self.coturn) if self.coturn is not None else 0.0,
        }

    @staticmethod
    def split(reading: dict[str, float]) -> tuple[float, float]:
        """A ``cpu()`` or ``rss()`` reading (or a rate made of two) as (Local KVS's own:
        server and workers, coturn's)."""
        return reading["server"] + reading["workers"], reading["coturn"]

    @classmethod
    def cores_between(
        cls, before: dict[str, float], after: dict[str, float], seconds: float
    ) -> tuple[float, float]:
        """Cores used between two ``cpu()`` readings ``seconds`` apart: (Local KVS's own,
        coturn's)."""
        return cls.split({k: (after[k] - before[k]) / seconds for k in after})


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
