"""Frame analysis throughput over a long archive: Dask with 1 and 2 workers, a plain
single-process loop (the same partition function), and the decode floor (PyAV alone on the
same media, one thread).

The archive (stamped pattern, 480p 30 fps, 2 s GOP) is made once, cached in the temp
directory, and loaded with PutMedia into a Local KVS in its own process. Each variant runs
brightness + motion over every frame (``--functions`` to change). ``--minutes`` sets the
length (30 by default; ``--minutes 1`` is a quick smoke run). Cluster start-up is not timed.
Prints figures, never passes or fails on time.

Run: ``python -m bench.bench_dask [--minutes M]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time

import av

from bench.bench_put_media import START, media_file
from bench.common import report
from kvsnb.analysis.archive import (
    TargetSpec,
    analyze_local,
    local_client,
    plan_archive,
    to_dask,
)
from kvsnb.launch import connect
from kvsnb.local.runner import LocalKvsProcess
from kvsnb.playback import get_media
from kvsnb.putmedia import import_file_async


def decode_floor_fps(target: object, stream: str, numbers: list[str]) -> tuple[float, int]:
    """Frames per second of PyAV alone (one thread) on the stored media (fetched first)."""
    media = get_media(target, stream, numbers)  # type: ignore[arg-type]
    began = time.perf_counter()
    count = 0
    with av.open(io.BytesIO(media), mode="r") as container:
        vs = container.streams.video[0]
        vs.thread_type = "NONE"
        vs.codec_context.thread_count = 1
        for _ in container.decode(vs):
            count += 1
    return count / (time.perf_counter() - began), count


def _warm_up(spec: TargetSpec) -> None:
    """What a worker does once, not per task: imports, and its boto3 session."""
    import dask.dataframe  # noqa: F401

    from kvsnb.analysis import archive

    archive._target_of(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--functions", default="brightness,motion")
    parser.add_argument("--partition-seconds", type=float, default=60.0)
    args = parser.parse_args()
    path = media_file(args.minutes)
    functions = ("timeline", *[f for f in args.functions.split(",") if f])
    figures: dict[str, object] = {"bench": "dask", "minutes": args.minutes}
    with LocalKvsProcess() as kvs:
        target = connect(endpoint_url=kvs.url)
        target.kinesisvideo.create_stream(StreamName="bench", DataRetentionInHours=24)
        asyncio.run(import_file_async(target, path, "bench", start=START, progress=False))
        plan = plan_archive(
            target, "bench", functions=functions, partition_seconds=args.partition_seconds
        )
        numbers = list(plan.fragments["fragment_number"])
        floor, frames = decode_floor_fps(target, "bench", numbers)
        figures.update(frames=frames, partitions=len(plan.partitions), decode_floor_fps=floor)
        _warm_up(plan.spec)
        began = time.perf_counter()
        local = analyze_local(plan)
        figures["plain_loop_fps"] = len(local) / (time.perf_counter() - began)
        for workers in (1, 2):
            with local_client(workers) as client:
                client.run(_warm_up, plan.spec)  # start-up in every worker, not timed
                lazy = to_dask(plan)
                began = time.perf_counter()
                result = client.compute(lazy).result()
                figures[f"dask_{workers}_workers_fps"] = len(result) / (time.perf_counter() - began)
                client.cluster.close()
            assert len(result) == len(local), "Dask and the plain loop disagree"
        target.close()
    one, two = figures["dask_1_workers_fps"], figures["dask_2_workers_fps"]
    assert isinstance(one, float) and isinstance(two, float)
    figures["dask_2_vs_1"] = two / one
    figures["dask_1_vs_decode_floor"] = one / floor
    rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    print(
        f"{frames} frames ({args.minutes:g} min, {len(plan.partitions)} partitions): decode "
        f"floor {floor:.0f} fps; plain loop {rounded['plain_loop_fps']} fps; Dask 1 worker "
        f"{one:.0f} fps, 2 workers {two:.0f} fps ({two / one:.2f}x); 1 worker at "
        f"{one / floor:.2f}x the decode floor"
    )
    print(json.dumps(rounded))
    report(
        dask_2_vs_1=two / one,
        dask_1_vs_decode_floor=one / floor,
        dask_2_workers_fps=two,
        decode_floor_fps=floor,
    )


if __name__ == "__main__":
    main()
