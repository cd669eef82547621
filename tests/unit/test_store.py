"""FragmentStore: durability, recovery, numbering and queries on real fragment files."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from kvsnb.local.storage.passthrough import EncodedFrame
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.local.store.fragments import (
    FRAGMENT_NUMBER_DIGITS,
    TEMP_PREFIX,
    Fragment,
    FragmentMeta,
    FragmentStore,
    StoreError,
)

STREAM_A = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/cam-a/1700000000000"
STREAM_B = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/../evil/1700000000001"
BASE_MS = 1_700_000_000_000


async def _record_fragment_bytes(tmp: Path) -> bytes:
    """One real 1 s H.264 fragment file, made by the recorder from libx264 packets."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuv420p"
    enc.time_base = fractions.Fraction(1, 90_000)
    enc.framerate = fractions.Fraction(30)
    enc.gop_size = 30
    enc.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast"}
    with FragmentStore(tmp) as scratch:
        rec = FragmentRecorder(scratch, "arn:x:stream/scratch/1", audio=False)
        for i in range(30):
            img = np.full((240, 320, 3), (i * 7) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts = i * 3000
            for p in enc.encode(frame):
                assert p.pts is not None
                rec.add_video(
                    EncodedFrame(
                        data=bytes(p),
                        rtp_timestamp=p.pts,
                        timestamp=p.pts,
                        keyframe=p.is_keyframe,
                        producer_time=BASE_MS / 1000 + p.pts / 90_000,
                        arrival_time=time.time(),
                    )
                )
        (fragment,) = await rec.close()
        return scratch.resolve(fragment).read_bytes()


@pytest.fixture(scope="module")
def fragment_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return asyncio.run(_record_fragment_bytes(tmp_path_factory.mktemp("scratch")))


def _meta(producer_ms: int, server_ms: int | None = None) -> FragmentMeta:
    return FragmentMeta(
        producer_start_ms=producer_ms,
        server_start_ms=producer_ms + 150 if server_ms is None else server_ms,
        duration_ms=1000,
        width=320,
        height=240,
        frame_count=30,
        keyframe_offsets_ms=(0,),
        video_codec="avc1.42c00d",
    )


def _put(store: FragmentStore, stream: str, data: bytes, producer_ms: int) -> Fragment:
    return store.put_fragment(stream, store.reserve_fragment_number(), data, _meta(producer_ms))


def _frames_in(store: FragmentStore, fragment: Fragment) -> int:
    with av.open(str(store.resolve(fragment))) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FragmentStore]:
    s = FragmentStore(tmp_path)
    yield s
    s.close()


def test_put_is_durable_and_listed(store: FragmentStore, fragment_bytes: bytes) -> None:
    seen: list[Fragment] = []
    remove = store.add_listener(seen.append)
    f = _put(store, STREAM_A, fragment_bytes, BASE_MS)
    remove()
    _put(store, STREAM_A, fragment_bytes, BASE_MS + 1000)
    assert seen == [f]
    assert f.size_bytes == len(fragment_bytes)
    path = store.resolve(f)
    assert path.read_bytes() == fragment_bytes
    assert path.parent.parent == store.fragments_dir
    assert not [p for p in path.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert store.get_fragments(STREAM_A, [f.fragment_number]) == [f]
    assert _frames_in(store, f) == 30
    assert (store.data_dir / "fragments.sqlite").is_file()
    with contextlib.closing(sqlite3.connect(store.data_dir / "fragments.sqlite")) as db:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"  # kept in the database file: every connection sees it


def test_reopen_lists_the_same_fragments_and_they_decode(
    tmp_path: Path, fragment_bytes: bytes
) -> None:
    with FragmentStore(tmp_path) as first:
        stored = [_put(first, STREAM_A, fragment_bytes, BASE_MS + i * 1000) for i in range(3)]
    with FragmentStore(tmp_path) as again:
        listed = again.list_fragments(STREAM_A)
        assert listed == stored
        assert all(_frames_in(again, f) == 30 for f in listed)
        assert again.latest_fragment(STREAM_A) == stored[-1]


def test_crash_leftovers_are_never_listed(tmp_path: Path, fragment_bytes: bytes) -> None:
    with FragmentStore(tmp_path) as first:
        kept = _put(first, STREAM_A, fragment_bytes, BASE_MS)
        gone = _put(first, STREAM_A, fragment_bytes, BASE_MS + 1000)
        directory = first.stream_dir(STREAM_A)
    # a crash mid-write leaves a temp file; a crash after rename but before commit an
    # unindexed file; a lost file leaves a row without file
    temp = directory / f"{TEMP_PREFIX}99-abc.mkv"
    temp.write_bytes(fragment_bytes[:1000])
    orphan = directory / ("9" * FRAGMENT_NUMBER_DIGITS + ".mkv")
    orphan.write_bytes(fragment_bytes)
    (tmp_path / gone.path).unlink()
    with FragmentStore(tmp_path) as again:
        assert not temp.exists()
        assert temp in again.removed_temp_files
        assert again.missing == {(STREAM_A, gone.fragment_number)}
        assert again.list_fragments(STREAM_A) == [kept]
        assert again.get_fragments(STREAM_A, [gone.fragment_number]) == []
        assert again.latest_fragment(STREAM_A) == kept


def test_fragment_numbers_increase_across_reopen(tmp_path: Path, fragment_bytes: bytes) -> None:
    numbers: list[str] = []
    for _ in range(3):
        with FragmentStore(tmp_path) as s:
            numbers.append(_put(s, STREAM_A, fragment_bytes, BASE_MS).fragment_number)
            numbers.append(s.reserve_fragment_number())  # reserved, never stored: a gap
    assert all(len(n) == FRAGMENT_NUMBER_DIGITS and n.isdigit() for n in numbers)
    assert numbers == sorted(numbers)
    assert [int(n) for n in numbers] == sorted(int(n) for n in numbers)
    assert len(set(numbers)) == len(numbers)


def test_time_range_is_inclusive_on_fragment_start(
    store: FragmentStore, fragment_bytes: bytes
) -> None:
    fs = [
        store.put_fragment(
            STREAM_A,
            store.reserve_fragment_number(),
            fragment_bytes,
            _meta(BASE_MS + i * 2000, server_ms=BASE_MS + 500_000 - i * 10),
        )
        for i in range(4)
    ]
    sel = store.list_fragments
    assert sel(STREAM_A, "PRODUCER_TIMESTAMP", BASE_MS + 2000, BASE_MS + 4000) == fs[1:3]
    assert sel(STREAM_A, "PRODUCER_TIMESTAMP", BASE_MS + 2001, BASE_MS + 3999) == []
    # a fragment that started before the range but overlaps it is not selected
    assert sel(STREAM_A, "PRODUCER_TIMESTAMP", BASE_MS + 500, BASE_MS + 2000) == [fs[1]]
    assert sel(STREAM_A, "PRODUCER_TIMESTAMP", None, None) == fs
    assert sel(STREAM_A, "PRODUCER_TIMESTAMP", limit=2) == fs[:2]
    # by server timestamp: ordered by server start (reverse of producer order here)
    by_server = sel(STREAM_A, "SERVER_TIMESTAMP", BASE_MS + 500_000 - 20, BASE_MS + 500_000)
    assert by_server == [fs[2], fs[1], fs[0]]
    with pytest.raises(StoreError):
        sel(STREAM_A, "ARRIVAL", None, None)


def test_delete_stream_and_stream_isolation(store: FragmentStore, fragment_bytes: bytes) -> None:
    a = _put(store, STREAM_A, fragment_bytes, BASE_MS)
    b = _put(store, STREAM_B, fragment_bytes, BASE_MS)
    # a hostile stream name stays inside the data directory
    assert store.resolve(b).is_relative_to(store.fragments_dir)
    assert ".." not in store.stream_dir(STREAM_B).name
    assert store.delete_stream(STREAM_A) == 1
    assert store.list_fragments(STREAM_A) == []
    assert not store.resolve(a).exists()
    assert store.list_fragments(STREAM_B) == [b]
    assert store.latest_fragment(STREAM_A) is None


def test_paths_and_numbers_are_validated(store: FragmentStore, fragment_bytes: bytes) -> None:
    with pytest.raises(StoreError):
        store.resolve("../fragments.sqlite")
    with pytest.raises(StoreError):
        store.resolve("fragments/../../etc/passwd")
    for bad in ("", "12a", "1" * 129, "../1"):
        with pytest.raises(StoreError):
            store.put_fragment(STREAM_A, bad, fragment_bytes, _meta(BASE_MS))
    number = store.reserve_fragment_number()
    store.put_fragment(STREAM_A, number, fragment_bytes, _meta(BASE_MS))
    with pytest.raises(StoreError):
        store.put_fragment(STREAM_A, number, fragment_bytes, _meta(BASE_MS))
    assert len(store.list_fragments(STREAM_A)) == 1
    assert not [p for p in store.stream_dir(STREAM_A).iterdir() if p.name.startswith(".tmp")]


async def test_wait_for_fragment_wakes_on_store_from_another_thread(
    store: FragmentStore, fragment_bytes: bytes
) -> None:
    waiter = asyncio.ensure_future(store.wait_for_fragment(STREAM_A, timeout=5))
    # one turn of the loop: the waiter registers its listener and finds nothing stored
    done, _ = await asyncio.wait({waiter}, timeout=0)
    assert not done
    stored: list[Fragment] = []
    thread = threading.Thread(
        target=lambda: stored.append(_put(store, STREAM_A, fragment_bytes, BASE_MS))
    )
    thread.start()
    got = await waiter
    thread.join()
    assert got == stored[0]
    later = await store.wait_for_fragment(STREAM_A, after_number=None, timeout=1)
    assert later == got
    with pytest.raises(TimeoutError):
        await store.wait_for_fragment(STREAM_A, after_number=got.fragment_number, timeout=0.1)


def test_concurrent_writers_get_unique_increasing_numbers(
    store: FragmentStore, fragment_bytes: bytes
) -> None:
    results: list[Fragment] = []
    lock = threading.Lock()

    def writer(stream: str) -> None:
        for i in range(5):
            f = _put(store, stream, fragment_bytes, BASE_MS + i)
            with lock:
                results.append(f)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (STREAM_A, STREAM_B)] * 1
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = [f.fragment_number for f in results]
    assert len(set(numbers)) == 10
    for stream in (STREAM_A, STREAM_B):
        mine = [f.fragment_number for f in results if f.stream_arn == stream]
        assert mine == sorted(mine)
        assert len(store.list_fragments(stream)) == 5
    assert os.listdir(store.stream_dir(STREAM_A))
