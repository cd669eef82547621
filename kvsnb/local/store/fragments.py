"""Durable fragment store: fragment files plus an SQLite index.

The rule (docs/design.md, principle 4): a fragment is listed only once its file (written under
a temporary name, fsynced, renamed, its directory fsynced) and then its index row are durable;
rows whose file is missing are reported (``FragmentStore.missing``) and never returned. Times
are integer epoch milliseconds here (the archive converts to seconds on the wire); fragment
numbers are 47-digit strings that grow with ingestion order, across restarts too
(docs/wire.md, "Archived media"). Files and layout: docs/design.md, "Local KVS".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

INDEX_FILENAME = "fragments.sqlite"
FRAGMENTS_DIRNAME = "fragments"
FRAGMENT_SUFFIX = ".mkv"
TEMP_PREFIX = ".tmp-"
FRAGMENT_NUMBER_DIGITS = 47
FRAGMENT_NUMBER_BASE = 9 * 10 ** (FRAGMENT_NUMBER_DIGITS - 1)
SELECTOR_PRODUCER = "PRODUCER_TIMESTAMP"
SELECTOR_SERVER = "SERVER_TIMESTAMP"
STREAM_DIR_NAME_MAX = 64
STREAM_DIR_HASH_CHARS = 12

SelectorType = Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"]
FragmentListener = Callable[["Fragment"], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fragments (
    stream_arn TEXT NOT NULL,
    fragment_number TEXT NOT NULL,
    producer_start_ms INTEGER NOT NULL,
    server_start_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    path TEXT NOT NULL,
    codec_private INTEGER NOT NULL,
    has_audio INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    frame_count INTEGER NOT NULL,
    audio_frame_count INTEGER NOT NULL,
    keyframe_offsets_ms TEXT NOT NULL,
    video_codec TEXT NOT NULL,
    audio_codec TEXT,
    stored_at_ms INTEGER NOT NULL,
    PRIMARY KEY (stream_arn, fragment_number)
);
CREATE INDEX IF NOT EXISTS fragments_by_producer
    ON fragments (stream_arn, producer_start_ms, fragment_number);
CREATE INDEX IF NOT EXISTS fragments_by_server
    ON fragments (stream_arn, server_start_ms, fragment_number);
"""
_COLUMNS = (
    "stream_arn, fragment_number, producer_start_ms, server_start_ms, duration_ms, "
    "size_bytes, path, codec_private, has_audio, width, height, frame_count, "
    "audio_frame_count, keyframe_offsets_ms, video_codec, audio_codec, stored_at_ms"
)
_NUMBER_RE = re.compile(r"^[0-9]{1,128}$")
_NEXT_KEY = "next_fragment_seq"


class StoreError(Exception):
    """A store operation failed (bad input, path escape, closed store)."""


@dataclass(frozen=True, slots=True)
class FragmentMeta:
    """What the recorder knows about a fragment before it is stored (times in epoch ms)."""

    producer_start_ms: int
    server_start_ms: int
    duration_ms: int
    width: int
    height: int
    frame_count: int
    keyframe_offsets_ms: tuple[int, ...]
    codec_private: bool = True
    has_audio: bool = False
    audio_frame_count: int = 0
    video_codec: str = "avc1"
    audio_codec: str | None = None


@dataclass(frozen=True, slots=True)
class Fragment:
    """One stored, durable fragment as listed by the index (times in epoch ms)."""

    stream_arn: str
    fragment_number: str
    producer_start_ms: int
    server_start_ms: int
    duration_ms: int
    size_bytes: int
    path: str  # relative to the store's data directory
    codec_private: bool
    has_audio: bool
    width: int
    height: int
    frame_count: int
    audio_frame_count: int
    keyframe_offsets_ms: tuple[int, ...]
    video_codec: str
    audio_codec: str | None
    stored_at_ms: int

    @property
    def keyframe_count(self) -> int:
        """Number of keyframes (IDR access units) in the fragment."""
        return len(self.keyframe_offsets_ms)

    @property
    def producer_end_ms(self) -> int:
        """Producer timestamp just after the fragment's last frame."""
        return self.producer_start_ms + self.duration_ms


def _row_to_fragment(row: Sequence[Any]) -> Fragment:
    offsets = json.loads(str(row[13]))
    return Fragment(
        stream_arn=str(row[0]),
        fragment_number=str(row[1]),
        producer_start_ms=int(row[2]),
        server_start_ms=int(row[3]),
        duration_ms=int(row[4]),
        size_bytes=int(row[5]),
        path=str(row[6]),
        codec_private=bool(row[7]),
        has_audio=bool(row[8]),
        width=int(row[9]),
        height=int(row[10]),
        frame_count=int(row[11]),
        audio_frame_count=int(row[12]),
        keyframe_offsets_ms=tuple(int(x) for x in offsets),
        video_codec=str(row[14]),
        audio_codec=None if row[15] is None else str(row[15]),
        stored_at_ms=int(row[16]),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stream_dir_name(stream_arn: str) -> str:
    """A safe, unique directory name for a stream: readable name plus an ARN hash."""
    parts = stream_arn.split("/")
    name = parts[1] if len(parts) >= 3 else stream_arn
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:STREAM_DIR_NAME_MAX] or "stream"
    digest = hashlib.sha256(stream_arn.encode()).hexdigest()[:STREAM_DIR_HASH_CHARS]
    return f"{safe}-{digest}"


class FragmentStore:
    """Fragment files under ``data_dir/fragments/<stream-id>/`` with an SQLite index.

    Thread-safe: one connection guarded by a lock; every method may be called from any
    thread. File writes and fsyncs are blocking: call ``put_fragment`` through an executor
    from asyncio code. Listeners added with ``add_listener`` are called synchronously, in
    the storing thread, after the row is committed (use ``loop.call_soon_threadsafe`` to
    get back to a loop, or ``wait_for_fragment``).

    Several processes may write into one data directory (storage workers): fragment numbers
    and the index live in SQLite (WAL, ``BEGIN IMMEDIATE``). Only the process that owns the
    directory recovers it on open (``recover``: removes temp files left by a crash).
    """

    def __init__(self, data_dir: Path, *, recover: bool = True) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.fragments_dir = self.data_dir / FRAGMENTS_DIRNAME
        self.fragments_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._listeners: list[FragmentListener] = []
        self._closed = False
        self._conn = sqlite3.connect(
            self.data_dir / INDEX_FILENAME, check_same_thread=False, isolation_level=None
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self.removed_temp_files: list[Path] = []
        self.missing: set[tuple[str, str]] = set()
        if recover:
            self._recover()

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        for temp in sorted(self.fragments_dir.glob(f"*/{TEMP_PREFIX}*")):
            logger.warning("removing temp file left by an interrupted write: %s", temp)
            temp.unlink(missing_ok=True)
            self.removed_temp_files.append(temp)
        with self._lock:
            rows = self._conn.execute(
                "SELECT stream_arn, fragment_number, path FROM fragments"
            ).fetchall()
        indexed: set[str] = set()
        for stream_arn, number, rel in rows:
            indexed.add(str(rel))
            if not (self.data_dir / str(rel)).is_file():
                logger.error(
                    "fragment %s of %s is indexed but its file %s is missing; ignoring it",
                    number,
                    stream_arn,
                    rel,
                )
                self.missing.add((str(stream_arn), str(number)))
        for path in self.fragments_dir.glob(f"*/*{FRAGMENT_SUFFIX}"):
            rel = path.relative_to(self.data_dir).as_posix()
            if rel not in indexed:
                logger.warning("fragment file %s has no index row (never listed)", rel)
        # The counter never goes below what the index already holds.
        with self._lock:
            top = self._conn.execute("SELECT MAX(fragment_number) FROM fragments").fetchone()[0]
            if top is not None:
                floor = int(top) - FRAGMENT_NUMBER_BASE + 1
                if floor > self._next_seq():
                    self._set_next_seq(floor)

    # ------------------------------------------------------------------ numbers

    def _next_seq(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (_NEXT_KEY,)).fetchone()
        return 1 if row is None else int(row[0])

    def _set_next_seq(self, value: int) -> None:
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (_NEXT_KEY, str(value)),
        )

    def reserve_fragment_number(self) -> str:
        """Allocate the next fragment number (durably committed; never handed out twice).

        Numbers are fixed-width 47-digit strings, strictly increasing in allocation order.
        A number whose fragment is never stored leaves a harmless gap.
        """
        with self._lock:
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                seq = self._next_seq()
                self._set_next_seq(seq + 1)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return str(FRAGMENT_NUMBER_BASE + seq)

    # ------------------------------------------------------------------ paths

    def stream_dir(self, stream_arn: str) -> Path:
        """The directory that holds a stream's fragment files."""
        return self.fragments_dir / stream_dir_name(stream_arn)

    def resolve(self, fragment: Fragment | str) -> Path:
        """Absolute path of a fragment file, refusing any path outside the data directory."""
        rel = fragment.path if isinstance(fragment, Fragment) else fragment
        path = (self.data_dir / rel).resolve()
        if not path.is_relative_to(self.fragments_dir):
            raise StoreError(f"fragment path escapes the data directory: {rel!r}")
        return path

    # ------------------------------------------------------------------ writing

    def put_fragment(
        self, stream_arn: str, fragment_number: str, data: bytes, meta: FragmentMeta
    ) -> Fragment:
        """Durably store one fragment file and its index row; returns the listed fragment.

        Order: temp file → flush → fsync → rename → fsync dir → insert + commit → listeners.
        Blocking (disk I/O); call it from an executor in asyncio code.
        """
        if not _NUMBER_RE.match(fragment_number):
            raise StoreError(f"invalid fragment number {fragment_number!r}")
        self._check_open()
        directory = self.stream_dir(stream_arn)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{fragment_number}{FRAGMENT_SUFFIX}"
        rel = final.relative_to(self.data_dir).as_posix()
        self.resolve(rel)
        temp = directory / f"{TEMP_PREFIX}{fragment_number}-{uuid.uuid4().hex}{FRAGMENT_SUFFIX}"
        try:
            with open(temp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                raise StoreError(f"fragment {fragment_number} already exists for {stream_arn}")
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        fragment = Fragment(
            stream_arn=stream_arn,
            fragment_number=fragment_number,
            producer_start_ms=meta.producer_start_ms,
            server_start_ms=meta.server_start_ms,
            duration_ms=meta.duration_ms,
            size_bytes=len(data),
            path=rel,
            codec_private=meta.codec_private,
            has_audio=meta.has_audio,
            width=meta.width,
            height=meta.height,
            frame_count=meta.frame_count,
            audio_frame_count=meta.audio_frame_count,
            keyframe_offsets_ms=tuple(meta.keyframe_offsets_ms),
            video_codec=meta.video_codec,
            audio_codec=meta.audio_codec,
            stored_at_ms=int(time.time() * 1000),
        )
        with self._lock:
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    f"INSERT INTO fragments ({_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        fragment.stream_arn,
                        fragment.fragment_number,
                        fragment.producer_start_ms,
                        fragment.server_start_ms,
                        fragment.duration_ms,
                        fragment.size_bytes,
                        fragment.path,
                        int(fragment.codec_private),
                        int(fragment.has_audio),
                        fragment.width,
                        fragment.height,
                        fragment.frame_count,
                        fragment.audio_frame_count,
                        json.dumps(list(fragment.keyframe_offsets_ms)),
                        fragment.video_codec,
                        fragment.audio_codec,
                        fragment.stored_at_ms,
                    ),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                final.unlink(missing_ok=True)
                raise
        logger.debug("stored fragment %s of %s (%d bytes)", fragment_number, stream_arn, len(data))
        self.announce(fragment)
        return fragment

    def announce(self, fragment: Fragment) -> None:
        """Call the listeners for a fragment that is durably stored: by ``put_fragment``, or
        by another process writing into the same data directory (a storage worker)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(fragment)
            except Exception:
                logger.exception("fragment listener failed")

    # ------------------------------------------------------------------ queries

    def _filter(self, rows: Iterable[Sequence[Any]]) -> list[Fragment]:
        out = []
        for row in rows:
            if (str(row[0]), str(row[1])) not in self.missing:
                out.append(_row_to_fragment(row))
        return out

    def list_fragments(
        self,
        stream_arn: str,
        selector: SelectorType | str = "PRODUCER_TIMESTAMP",
        start_ms: int | None = None,
        end_ms: int | None = None,
        *,
        limit: int | None = None,
    ) -> list[Fragment]:
        """Fragments whose start time (by ``selector``) lies in [start_ms, end_ms].

        Both ends inclusive, either may be None (open). Ordered by that start time, then
        fragment number. Wire source: docs/wire.md "Archived media" (ListFragments selection).
        """
        if selector == SELECTOR_PRODUCER:
            column = "producer_start_ms"
        elif selector == SELECTOR_SERVER:
            column = "server_start_ms"
        else:
            raise StoreError(f"unknown fragment selector type {selector!r}")
        sql = f"SELECT {_COLUMNS} FROM fragments WHERE stream_arn = ?"
        args: list[object] = [stream_arn]
        if start_ms is not None:
            sql += f" AND {column} >= ?"
            args.append(int(start_ms))
        if end_ms is not None:
            sql += f" AND {column} <= ?"
            args.append(int(end_ms))
        sql += f" ORDER BY {column}, fragment_number"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit) + len(self.missing))
        with self._lock:
            self._check_open()
            rows = self._conn.execute(sql, args).fetchall()
        out = self._filter(rows)
        return out if limit is None else out[:limit]

    def get_fragments(self, stream_arn: str, fragment_numbers: Sequence[str]) -> list[Fragment]:
        """The stored fragments with these numbers, in the order asked; unknown ones skipped."""
        if not fragment_numbers:
            return []
        wanted = list(dict.fromkeys(fragment_numbers))
        found: dict[str, Fragment] = {}
        with self._lock:
            self._check_open()
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM fragments "
                    f"WHERE stream_arn = ? AND fragment_number IN ({marks})",
                    [stream_arn, *chunk],
                ).fetchall()
                for fragment in self._filter(rows):
                    found[fragment.fragment_number] = fragment
        return [found[n] for n in fragment_numbers if n in found]

    def fragments_after(
        self, stream_arn: str, after_number: str | None, limit: int = 100
    ) -> list[Fragment]:
        """Up to ``limit`` fragments numbered above ``after_number`` (all with None), in
        fragment-number (ingestion) order: what GetMedia streams next."""
        sql = f"SELECT {_COLUMNS} FROM fragments WHERE stream_arn = ?"
        args: list[object] = [stream_arn]
        if after_number is not None:
            sql += " AND fragment_number > ?"
            args.append(after_number.rjust(FRAGMENT_NUMBER_DIGITS, "0"))
        sql += " ORDER BY fragment_number LIMIT ?"
        args.append(int(limit) + len(self.missing))
        with self._lock:
            self._check_open()
            rows = self._conn.execute(sql, args).fetchall()
        return self._filter(rows)[:limit]

    def fragment_at(
        self, stream_arn: str, selector: SelectorType | str, at_ms: int
    ) -> Fragment | None:
        """Where GetMedia's timestamp selectors begin: the fragment that started last at or
        before ``at_ms`` (by ``selector``) if it still runs at ``at_ms``, else the first one
        starting after it (ties go to the lower fragment number)."""
        if selector == SELECTOR_PRODUCER:
            column = "producer_start_ms"
        elif selector == SELECTOR_SERVER:
            column = "server_start_ms"
        else:
            raise StoreError(f"unknown fragment selector type {selector!r}")
        base = f"SELECT {_COLUMNS} FROM fragments WHERE stream_arn = ? "
        limit = 1 + len(self.missing)
        with self._lock:
            self._check_open()
            before = self._conn.execute(
                base + f"AND {column} <= ? ORDER BY {column} DESC, fragment_number LIMIT ?",
                (stream_arn, int(at_ms), limit),
            ).fetchall()
            after = self._conn.execute(
                base + f"AND {column} > ? ORDER BY {column}, fragment_number LIMIT ?",
                (stream_arn, int(at_ms), limit),
            ).fetchall()
        running = [f for f in self._filter(before) if getattr(f, column) + f.duration_ms > at_ms]
        if running:
            return running[0]
        later = self._filter(after)
        return later[0] if later else None

    def latest_fragment(self, stream_arn: str) -> Fragment | None:
        """The most recently ingested fragment of a stream (highest number), or None."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM fragments WHERE stream_arn = ? "
                "ORDER BY fragment_number DESC LIMIT ?",
                (stream_arn, 1 + len(self.missing)),
            ).fetchall()
        out = self._filter(rows)
        return out[0] if out else None

    def count(self, stream_arn: str) -> int:
        """Number of listed fragments of a stream."""
        return len(self.list_fragments(stream_arn))

    def delete_stream(self, stream_arn: str) -> int:
        """Forget every fragment of a stream (DeleteStream): rows first, then files.

        Returns the number of rows deleted.
        """
        with self._lock:
            self._check_open()
            cursor = self._conn.execute("DELETE FROM fragments WHERE stream_arn = ?", (stream_arn,))
            deleted = cursor.rowcount
            self.missing = {m for m in self.missing if m[0] != stream_arn}
        directory = self.stream_dir(stream_arn)
        if directory.is_dir():
            for path in directory.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            with contextlib.suppress(OSError):
                directory.rmdir()
            with contextlib.suppress(OSError):
                _fsync_dir(self.fragments_dir)
        return deleted

    # ------------------------------------------------------------------ notification

    def add_listener(self, listener: FragmentListener) -> Callable[[], None]:
        """Call ``listener(fragment)`` after each fragment is durably stored.

        Runs in the storing thread; must be quick and must not raise (errors are logged).
        Returns a function that removes the listener.
        """
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                with contextlib.suppress(ValueError):
                    self._listeners.remove(listener)

        return remove

    async def wait_for_fragment(
        self, stream_arn: str, *, after_number: str | None = None, timeout: float | None = None
    ) -> Fragment:
        """Wait until a fragment of ``stream_arn`` numbered above ``after_number`` is stored.

        Returns at once if one is already listed. Raises TimeoutError after ``timeout``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Fragment] = loop.create_future()

        def deliver(fragment: Fragment) -> None:
            if not future.done():
                future.set_result(fragment)

        def listener(fragment: Fragment) -> None:
            if fragment.stream_arn == stream_arn and (
                after_number is None or int(fragment.fragment_number) > int(after_number)
            ):
                loop.call_soon_threadsafe(deliver, fragment)

        remove = self.add_listener(listener)
        try:
            latest = self.latest_fragment(stream_arn)
            if latest is not None and (
                after_number is None or int(latest.fragment_number) > int(after_number)
            ):
                return latest
            return await asyncio.wait_for(future, timeout)
        finally:
            remove()

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("fragment store is closed")

    def close(self) -> None:
        """Close the index (idempotent). Stored fragments stay on disk."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> FragmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
