"""Giving freed memory back to the system when a storage session ends.

A storage session allocates natively as much as in Python (codec contexts, SRTP and DTLS
state, packet buffers, on the threads aiortc and the recorder start). When it ends, glibc's
allocator keeps the freed pages in its arenas: a process whose sessions re-join every 10
minutes (as AWS's signaling sockets idle out) grows by each re-join until the arenas settle,
~100 MiB over 15 re-joins of a master and a viewer in one process. ``malloc_trim(0)`` hands
those pages back; ``trim_later`` does it off the event loop, once a burst of ends is over,
after a full garbage collection: an ended session's objects hold one another in cycles, and
until a full collection frees them, they and what they own natively stay (a full collection
comes seldom in a process with many long-lived objects: ~6 MiB a re-join in a 60-minute
soak until one came).

What a live session allocates in large blocks (fragment bodies, packet batches, codec
buffers) is the other half. glibc serves a block of 128 KiB or more with its own mapping and
unmaps it when freed, but each such free raises that threshold to the block's size, after
which blocks of that size come from the heap and leave holes there that later small objects
pin: a process with sessions grows for as long as they live. A Local KVS process (``kvsnb
local`` and its storage workers) therefore fixes the threshold (``fix_mmap_threshold``), as
``MALLOC_MMAP_THRESHOLD_`` would (which, when set, wins).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024  # blocks this large get a mapping of their own (glibc's default)
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
TRIM_DELAY_S = 1.0  # after a session ends: its objects are gone, and ends come in bursts

_pending: set[int] = set()  # ids of loops with a trim scheduled


def _libc_function(name: str, *argtypes: Any) -> Any:
    """glibc's ``name`` with its argument types and an int result; None elsewhere (not
    Linux, or a C library without it: musl has no malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _libc_function("malloc_trim", ctypes.c_size_t)
_MALLOPT = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``size`` bytes or more with mappings of their own, given back when
    freed, for the rest of this process's life (glibc otherwise raises the threshold at
    each such free; see the module docstring). ``MALLOC_MMAP_THRESHOLD_`` in the environment
    wins. True if set here."""
    if size <= 0:
        raise ValueError(f"an mmap threshold must be a positive size, not {size}")
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or _MALLOPT is None:
        return False
    return bool(_MALLOPT(M_MMAP_THRESHOLD, size))


def can_trim() -> bool:
    """Whether this process's allocator can give freed memory back (glibc on Linux)."""
    return _MALLOC_TRIM is not None


def trim() -> bool:
    """Hand the allocator's free pages back to the system now (blocking, a few ms); True
    if any memory was released."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


def freeze_startup_objects() -> int:
    """Move every object alive now (modules, the planes, what start-up built) out of the
    garbage collector's sight, so that the full collection ``trim_later`` runs at a session's
    end looks only at what came after: ~20 ms instead of ~75 in a measured process with
    sessions. Call it once a Local KVS process has started; returns how many were frozen.
    A memory census (``kvsnb.local.core.heap``) unfreezes them, to count them."""
    gc.freeze()
    return gc.get_freeze_count()


def trim_later(delay_s: float = TRIM_DELAY_S) -> None:
    """Schedule, ``delay_s`` from now, one full garbage collection on this event loop and
    then one ``trim`` on a worker thread, unless they are already scheduled on this loop
    (call it from the loop). An ended session's objects hold one another in cycles (aiortc's
    peer connection, transports and tracks), so they, and the native memory they own, wait
    for a full collection, which a process with many long-lived objects runs seldom: it grew
    by each re-join until one came."""
    loop = asyncio.get_running_loop()
    key = id(loop)
    if key in _pending:
        return
    _pending.add(key)

    def run() -> None:
        _pending.discard(key)
        started = time.perf_counter()
        found = gc.collect()
        logger.debug(
            "collected %d objects in %.1f ms", found, (time.perf_counter() - started) * 1000
        )
        if _MALLOC_TRIM is not None and not loop.is_closed():
            future = loop.run_in_executor(None, trim)
            future.add_done_callback(_log_failure)

    loop.call_later(delay_s, run)


def _log_failure(future: asyncio.Future[bool]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("malloc_trim failed: %s", future.exception())
