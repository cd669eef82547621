"""Local KVS's worker processes (storage workers, GetImages decoders): the command that starts
one, and the messages between it and the server, length-prefixed pickled frames over the
child's stdin/stdout, read with asyncio or blocking."""

from __future__ import annotations

import asyncio
import pickle
import struct
import sys
from pathlib import Path
from typing import IO, Any

_HEADER = struct.Struct(">I")


def pack(message: Any) -> bytes:
    """One frame: a 4-byte big-endian length, then the pickled message."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_async(reader: asyncio.StreamReader) -> Any:
    """The next message on an asyncio stream (``IncompleteReadError`` at its end)."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def read_blocking(stream: IO[bytes]) -> Any:
    """The next message on a blocking binary stream (``EOFError`` at its end)."""
    head = _read_exactly(stream, _HEADER.size)
    (size,) = _HEADER.unpack(head)
    return pickle.loads(_read_exactly(stream, size))


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the other end closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def worker_command(module: str, function: str) -> list[str]:
    """The command of a worker process that runs ``module.function()``, with ``kvsnb`` set up
    as a bare package namespace: the worker loads the modules it imports, not the toolkit's
    public names (sessions, playback, analysis: aiortc, pandas, matplotlib), which halves a
    storage worker's memory and takes a decode process from ~250 MiB to ~50."""
    return [sys.executable, "-c", bare_import_code(module) + f"\n{module}.{function}()"]


def bare_import_code(module: str) -> str:
    """Python source that imports ``module`` with ``kvsnb`` as a bare package namespace."""
    package = Path(__file__).resolve().parents[2]  # kvsnb/
    return "\n".join(
        [
            "import sys, types",
            "kvsnb = types.ModuleType('kvsnb')",
            f"kvsnb.__path__ = [{str(package)!r}]",
            "sys.modules['kvsnb'] = kvsnb",
            f"import {module}",
        ]
    )
