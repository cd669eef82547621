"""Giving freed memory back to the system when a storage session ends.

A storage session allocates natively as much as in Python (codec contexts, SRTP and DTLS
state, packet buffers, on the threads aiortc and the recorder start). When it ends, glibc's
allocator keeps the freed pages in its arenas: a process whose sessions re-join every 10
minutes (as AWS's signaling sockets idle out) grows by each re-join until the arenas settle,
~100 MiB over 15 re-joins of a master and a viewer in one process. ``malloc_trim(0)`` hands
those pages back; ``trim_later`` does it off the event loop, once a burst of ends is over.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

TRIM_DELAY_S = 1.0  # after a session ends: its objects are gone, and ends come in bursts

_pending: set[int] = set()  # ids of loops with a trim scheduled


def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _malloc_trim()


def can_trim() -> bool:
    """Whether this process's allocator can give freed memory back (glibc on Linux)."""
    return _MALLOC_TRIM is not None


def trim() -> bool:
    """Hand the allocator's free pages back to the system now (blocking, a few ms); True
    if any memory was released."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


def trim_later(delay_s: float = TRIM_DELAY_S) -> None:
    """Schedule one ``trim`` on a worker thread ``delay_s`` from now, unless one is already
    scheduled on this event loop (call it from the loop)."""
    if _MALLOC_TRIM is None:
        return
    loop = asyncio.get_running_loop()
    key = id(loop)
    if key in _pending:
        return
    _pending.add(key)

    def run() -> None:
        _pending.discard(key)
        if not loop.is_closed():
            future = loop.run_in_executor(None, trim)
            future.add_done_callback(_log_failure)

    loop.call_later(delay_s, run)


def _log_failure(future: asyncio.Future[bool]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("malloc_trim failed: %s", future.exception())
