"""Freed native memory goes back to the system (``kvsnb.local.core.memory``)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kvsnb.local.core import memory

pytestmark = pytest.mark.skipif(not memory.can_trim(), reason="needs glibc's malloc_trim")


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def fragmented_heap() -> list[bytes]:
    """~100 MiB of 1 KiB blocks (malloc'd, not pymalloc), 1 in 64 kept: the rest is free but
    held by the allocator, pinned in place by the survivors."""
    blocks = [bytes(1024) + bytes([i % 251]) for i in range(100_000)]
    return blocks[::64]


def test_trim_gives_freed_memory_back() -> None:
    kept = fragmented_heap()
    before = rss_mib()
    assert memory.trim()
    after = rss_mib()
    assert len(kept) > 1000
    assert before - after > 50, (before, after)


async def test_trim_later_runs_once_for_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = memory.trim

    def counted() -> bool:
        calls.append(1)
        return real()

    monkeypatch.setattr(memory, "trim", counted)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))  # its work runs in order
    for _ in range(5):
        memory.trim_later(0.05)
    # a timer due after every one the burst could have set: they have all fired once it has
    after_burst = loop.create_future()
    loop.call_later(0.1, after_burst.set_result, None)
    await after_burst
    await loop.run_in_executor(None, lambda: None)  # and every trim they submitted has run
    assert calls == [1]
