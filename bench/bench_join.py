"""JoinStorageSession call → first video frame at the storage peer, and → first fragment
stored, over repeated joins on an embedded Local KVS (docs/design.md budget: ≤ 100 ms p95
to the first frame). Prints figures; never asserts on time.

Both ends are read on one monotonic clock: the master's timeline (``join_call``) and the
storage peer's stats (``first_frame_at``) live in the same process (Local KVS runs on its
own event-loop thread). A second run puts the storage sessions in 2 worker processes.

Under load (docs/design.md budget: ≤ 100 ms p95 to the first frame while 32 masters
ingest): Local KVS in its own process with 2 storage workers, 32 masters with audio
already ingesting from sender processes (``bench_concurrency``'s pre-encoded senders), and
the joins made one after another from this process. The storage peer is then in another
process, so the first frame is read from what was stored: the first fragment's
ServerTimestamp is the arrival of its first frame (a keyframe, the encoder's first frame)
at the storage peer, on the same machine's wall clock as the join call."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_concurrency import make_clip, start_senders
from bench.common import pct, report
from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.client.timeline import STEPS
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig
from kvsnb.local.runner import LocalKvsProcess
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.sources import TestPatternTrack, ToneTrack

JOINS = 20
STEPS_AFTER_JOIN = STEPS[STEPS.index("join_call") + 1 :]  # the master's steps after the join
LOAD_MASTERS = 32
LOAD_WORKERS = 2
FRAGMENT_WAIT_S = 15.0


async def join_once(tg: Any, name: str, timeout: float) -> tuple[MasterSession, str, Any, float]:
    """A new storage channel ``name`` and a master that joins it with live test media: (the
    started session, the stream's ARN, its join_call event, join call → offer received, ms)."""
    _, stream_arn = tg.create_storage_channel(name)
    session = MasterSession(
        tg,
        name,
        video=TestPatternTrack(640, 480, 30),
        audio=ToneTrack(),
        policy=JoinPolicy.local(offer_wait_s=2.0, connect_timeout_s=30.0),
    )
    await session.start(timeout=timeout)
    join = session.timeline.last("join_call")
    offer = session.timeline.last("offer_received")
    assert join is not None and offer is not None
    return session, stream_arn, join, (offer.mono - join.mono) * 1000


def steps_after_join(session: MasterSession, join: Any) -> dict[str, float]:
    """ms from the join call to each later step of the master's timeline (where the time of
    a join goes)."""
    out: dict[str, float] = {}
    for step in STEPS_AFTER_JOIN:
        event = session.timeline.last(step)
        if event is not None and event.mono >= join.mono:
            out[step] = (event.mono - join.mono) * 1000
    return out


def step_medians(per_join: list[dict[str, float]]) -> dict[str, float]:
    """The median of each step over the joins, in timeline order."""
    return {
        step: round(pct([j[step] for j in per_join if step in j], 50), 1)
        for step in STEPS_AFTER_JOIN
        if any(step in j for j in per_join)
    }


async def run(joins: int = JOINS, workers: int = 0) -> dict[str, Any]:
    """Measure ``joins`` joins; returns the figures. With storage ``workers`` the storage
    peer's first frame is in another process: only the offer and the stored fragment are
    timed."""
    kvs = LocalKvs(
        LocalKvsConfig(
            storage_workers=workers,
            extra={"storage": StorageOptions(fragment_duration_s=1.0)},
        )
    )
    kvs.start_in_thread()
    tg = connect(endpoint_url=kvs.url)
    to_frame: list[float] = []
    to_offer: list[float] = []
    to_fragment: list[float] = []
    steps: list[dict[str, float]] = []
    try:
        for i in range(joins):
            session, stream_arn, join, offer_ms = await join_once(tg, f"join-{i}", timeout=20)
            to_offer.append(offer_ms)
            if not workers:
                peer = kvs.sessions.channels[session.channel_arn].master
                deadline = time.monotonic() + 5
                while peer.stats.first_frame_at is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                assert peer.stats.first_frame_at is not None
                to_frame.append((peer.stats.first_frame_at - join.mono) * 1000)
            await kvs.store.wait_for_fragment(stream_arn, timeout=10)
            to_fragment.append((time.monotonic() - join.mono) * 1000)
            steps.append(steps_after_join(session, join))
            await session.stop()
    finally:
        tg.close()
        kvs.stop_in_thread()
    return {
        "joins": joins,
        "storage_workers": workers,
        "join_to_offer_ms_p50": round(pct(to_offer, 50), 1),
        "join_to_first_frame_ms_p50": round(pct(to_frame, 50), 1) if to_frame else None,
        "join_to_first_frame_ms_p95": round(pct(to_frame, 95), 1) if to_frame else None,
        "join_to_first_fragment_stored_ms_p50": round(pct(to_fragment, 50), 1),
        "master_steps_after_join_ms_p50": step_medians(steps),
        "fragment_duration_s": 1.0,
        "budget_join_to_first_frame_ms_p95": 100,
    }


async def run_under_load(
    masters: int = LOAD_MASTERS, joins: int = JOINS, workers: int = LOAD_WORKERS
) -> dict[str, Any]:
    """Measure ``joins`` joins while ``masters`` masters with audio ingest into a Local KVS
    process with ``workers`` storage workers; returns the figures."""
    from kvsnb.playback import list_fragments

    clip = Path(tempfile.mkdtemp(prefix="kvsnb-join-")) / "clip.pkl"
    make_clip(clip)
    to_frame: list[float] = []
    to_offer: list[float] = []
    steps: list[dict[str, float]] = []
    with LocalKvsProcess("--workers", str(workers), "--fragment-seconds", "1") as kvs:
        tg = connect(endpoint_url=kvs.url)
        names = [f"load-{i}" for i in range(masters)]
        for name in names:
            tg.create_storage_channel(name)
        senders = start_senders(kvs.url, names, clip, 60.0 + joins * 5.0, video_only=False)
        try:
            await asyncio.sleep(3.0)  # every sender is past its join and ingesting
            for i in range(joins):
                name = f"join-{i}"
                session, _, join, offer_ms = await join_once(tg, name, timeout=30)
                to_offer.append(offer_ms)
                deadline = time.monotonic() + FRAGMENT_WAIT_S
                fragments = list_fragments(tg, name)
                while fragments.empty and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    fragments = list_fragments(tg, name)
                steps.append(steps_after_join(session, join))
                await session.stop()
                if fragments.empty:
                    print(f"join {i}: no fragment stored within {FRAGMENT_WAIT_S:.0f} s")
                    continue
                first = fragments["server_time"].min().timestamp()
                to_frame.append((first - join.wall) * 1000)
        finally:
            for p in senders:
                p.terminate()
            for p in senders:
                p.wait(30)
            tg.close()
    return {
        "masters_ingesting": masters,
        "storage_workers": workers,
        "joins": joins,
        "joins_measured": len(to_frame),
        "join_to_offer_ms_p50": round(pct(to_offer, 50), 1),
        "join_to_offer_ms_p95": round(pct(to_offer, 95), 1),
        "join_to_first_frame_ms_p50": round(pct(to_frame, 50), 1),
        "join_to_first_frame_ms_p95": round(pct(to_frame, 95), 1),
        "join_to_first_frame_ms_max": round(max(to_frame, default=float("nan")), 1),
        "master_steps_after_join_ms_p50": step_medians(steps),
        "budget_join_to_first_frame_ms_p95": 100,
    }


def main() -> dict[str, Any]:
    """Run and print."""
    joins = int(sys.argv[1]) if len(sys.argv) > 1 else JOINS
    figures = asyncio.run(run(joins))
    print(json.dumps(figures, indent=2))
    report(
        join_to_offer_ms_p50=figures["join_to_offer_ms_p50"],
        join_to_first_frame_ms_p50=figures["join_to_first_frame_ms_p50"],
        join_to_first_frame_ms_p95=figures["join_to_first_frame_ms_p95"],
    )
    in_workers = asyncio.run(run(joins, workers=2))
    print(json.dumps(in_workers, indent=2))
    report(workers_join_to_offer_ms_p50=in_workers["join_to_offer_ms_p50"])
    loaded = asyncio.run(run_under_load(joins=joins))
    print(json.dumps(loaded, indent=2))
    report(
        under_load_join_to_offer_ms_p50=loaded["join_to_offer_ms_p50"],
        under_load_join_to_first_frame_ms_p50=loaded["join_to_first_frame_ms_p50"],
        under_load_join_to_first_frame_ms_p95=loaded["join_to_first_frame_ms_p95"],
    )
    return figures


if __name__ == "__main__":
    main()
