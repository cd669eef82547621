"""Local KVS's worker processes (storage workers, GetImages decoders): the command that starts
one, and the messages between it and the server, length-prefixed pickled frames over the
child's stdin/stdout, read with asyncio or blocking."""

from __future__ import annotations

import asyncio
import pickle
import struct
import sys
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
    """The command of a worker process that runs ``module.function()``. ``kvsnb``'s root
    loads its public names lazily, so the worker loads only the modules it imports."""
    return [sys.executable, "-c", f"import {module}\n{module}.{function}()"]
