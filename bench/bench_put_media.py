"""PutMedia load speed: media seconds loaded per wall second and MB/s, against a plain copy
of the same file (write + fsync) as the floor.

Local KVS runs in its own process; the file (stamped pattern, H.264 + AAC, passed through)
is made once and cached in the temp directory. ``--minutes`` sets its length (10 by default;
``--minutes 0.5`` is a quick smoke run). Prints figures, never passes or fails on time.

Run: ``python -m bench.bench_put_media [--minutes M]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import report
from kvsnb.launch import connect
from kvsnb.local.runner import LocalKvsProcess
from kvsnb.putmedia import import_file_async
from kvsnb.sources.tracks import make_test_file

WIDTH, HEIGHT, FPS = 640, 480, 30
BITRATE = 1_000_000
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def media_file(minutes: float) -> Path:
    """The benchmark's media file (made once per length, cached in the temp directory)."""
    path = Path(tempfile.gettempdir()) / f"kvsnb-bench-{WIDTH}x{HEIGHT}-{minutes:g}min.mp4"
    if not path.exists():
        print(f"making {path.name} ...", flush=True)
        partial = path.with_suffix(".part.mp4")
        make_test_file(
            partial, seconds=minutes * 60, width=WIDTH, height=HEIGHT, fps=FPS,
            bitrate=BITRATE, gop=2 * FPS, start_ms=int(START.timestamp() * 1000),
        )  # fmt: skip
        partial.rename(path)
    return path


def plain_copy_s(path: Path) -> float:
    """Seconds to copy the file and fsync the copy (the floor)."""
    target_dir = Path(tempfile.mkdtemp(prefix="kvsnb-bench-copy-"))
    try:
        began = time.perf_counter()
        copy = target_dir / path.name
        shutil.copyfile(path, copy)
        with open(copy, "rb+") as f:
            os.fsync(f.fileno())
        return time.perf_counter() - began
    finally:
        shutil.rmtree(target_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    path = media_file(args.minutes)
    size_mb = path.stat().st_size / 1e6
    copy_s = plain_copy_s(path)
    with LocalKvsProcess() as kvs:
        target = connect(endpoint_url=kvs.url)
        target.kinesisvideo.create_stream(StreamName="bench", DataRetentionInHours=24)
        result = asyncio.run(import_file_async(target, path, "bench", start=START, progress=False))
        target.close()
    speed = result.media_seconds / result.wall_seconds
    figures = {
        "bench": "put_media",
        "media_s": round(result.media_seconds, 1),
        "file_mb": round(size_mb, 1),
        "fragments": len(result.fragments),
        "put_media_wall_s": round(result.wall_seconds, 2),
        "media_s_per_wall_s": round(speed, 1),
        "put_media_mb_per_s": round(result.bytes_sent / 1e6 / result.wall_seconds, 1),
        "plain_copy_mb_per_s": round(size_mb / copy_s, 1),
        "put_media_vs_copy": round(copy_s / result.wall_seconds, 3),
    }
    print(
        f"PutMedia: {result.media_seconds:.0f} media s ({size_mb:.1f} MB, "
        f"{len(result.fragments)} fragments) in {result.wall_seconds:.2f} s = "
        f"{speed:.0f}x real time, {figures['put_media_mb_per_s']} MB/s; plain copy + fsync "
        f"{figures['plain_copy_mb_per_s']} MB/s (PutMedia at {figures['put_media_vs_copy']}x "
        "the copy's speed)"
    )
    print(json.dumps(figures))
    report(
        media_s_per_wall_s=speed,
        put_media_mb_per_s=result.bytes_sent / 1e6 / result.wall_seconds,
        put_media_vs_copy=copy_s / result.wall_seconds,
    )


if __name__ == "__main__":
    main()
