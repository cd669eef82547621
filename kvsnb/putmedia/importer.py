"""Loading media files into a stream through PutMedia (what ``kvsnb import`` runs).

``import_file`` runs the file producer (``kvsnb.putmedia.fragmenter``) in a worker thread,
hands its clusters through a bounded queue to the PutMedia client
(``kvsnb.putmedia.client``) and shows progress in media seconds with tqdm.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from kvsnb.client.target import Target
from kvsnb.putmedia.client import Ack, acks_frame, put_media
from kvsnb.putmedia.fragmenter import file_fragments, plan_file

logger = logging.getLogger(__name__)


@dataclass
class ImportResult:
    """What ``import_file`` did: the acknowledgements, media seconds, bytes and wall time."""

    stream: str
    producer_start: dt.datetime
    media_seconds: float
    bytes_sent: int
    wall_seconds: float
    acks: list[Ack]
    notes: list[str]

    @property
    def fragments(self) -> pd.DataFrame:
        """The PERSISTED acknowledgements (one row per stored fragment)."""
        df = acks_frame(self.acks)
        return df[df["event"] == "PERSISTED"].reset_index(drop=True)

    @property
    def speed(self) -> float:
        """Media seconds loaded per wall second."""
        return self.media_seconds / self.wall_seconds if self.wall_seconds else float("inf")


async def import_file_async(
    target: Target,
    path: str | Path,
    stream: str,
    *,
    start: dt.datetime | None = None,
    progress: bool = True,
) -> ImportResult:
    """Load a media file into ``stream`` through PutMedia (see the module docstring).

    ``start`` is the producer timestamp of the file's first frame (default: so that the file
    ends now); timestamps in the past are accepted, so a file loads at disk speed.
    """
    plan = await asyncio.to_thread(plan_file, path)
    for note in plan.notes:
        logger.warning("%s: %s", plan.path.name, note)
    if start is None:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=plan.duration_s)
    bar = tqdm(
        total=round(plan.duration_s, 1), unit="media s", disable=not progress, desc=plan.path.name
    )
    sent = 0
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)

    def report(done_s: float) -> None:
        loop.call_soon_threadsafe(_advance, bar, done_s)

    def produce() -> None:
        try:
            for chunk in file_fragments(plan, progress=report):
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
        finally:
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        while (chunk := await queue.get()) is not None:
            sent += len(chunk)
            yield chunk

    began = time.monotonic()
    producer = loop.run_in_executor(None, produce)
    try:
        acks = await put_media(target, stream, body(), producer_start=start)
    finally:
        while not producer.done():  # let a blocked producer finish
            with _suppress_queue_full():
                queue.get_nowait()
            await asyncio.sleep(0.01)
        await producer
        bar.close()
    return ImportResult(
        stream, start, plan.duration_s, sent, time.monotonic() - began, acks, plan.notes
    )


class _suppress_queue_full:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, *rest: Any) -> bool:
        return exc_type is asyncio.QueueEmpty


def _advance(bar: Any, done_s: float) -> None:
    bar.update(max(0.0, round(done_s, 1) - bar.n))


def import_file(
    target: Target,
    path: str | Path,
    stream: str,
    *,
    start: dt.datetime | None = None,
    progress: bool = True,
) -> ImportResult:
    """Blocking ``import_file_async`` for scripts and notebooks without a running loop
    (in Jupyter, ``await import_file_async(...)``)."""
    return asyncio.run(import_file_async(target, path, stream, start=start, progress=progress))
