"""JoinStorageSession call → first video frame at the storage peer, and → first fragment
stored, over repeated joins on an embedded Local KVS (docs/design.md budget: ≤ 100 ms p95
to the first frame). Prints figures; never asserts on time.

Both ends are read on one monotonic clock: the master's timeline (``join_call``) and the
storage peer's stats (``first_frame_at``) live in the same process (Local KVS runs on its
own event-loop thread). A second run puts the storage sessions in 2 worker processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.common import pct, report
from kvsnb.local import LocalKvs, LocalKvsConfig
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.media import TestPatternTrack, ToneTrack
from kvsnb.session import JoinPolicy, MasterSession
from kvsnb.target import connect

JOINS = 20


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
    try:
        for i in range(joins):
            name = f"join-{i}"
            _, stream_arn = tg.create_storage_channel(name)
            session = MasterSession(
                tg,
                name,
                video=TestPatternTrack(640, 480, 30),
                audio=ToneTrack(),
                policy=JoinPolicy(offer_wait_s=2.0),
            )
            await session.start(timeout=20)
            join = session.timeline.last("join_call")
            assert join is not None
            offer = session.timeline.last("offer_received")
            assert offer is not None
            to_offer.append((offer.mono - join.mono) * 1000)
            if not workers:
                peer = kvs.sessions.channels[session.channel_arn].master
                deadline = time.monotonic() + 5
                while peer.stats.first_frame_at is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                assert peer.stats.first_frame_at is not None
                to_frame.append((peer.stats.first_frame_at - join.mono) * 1000)
            await kvs.store.wait_for_fragment(stream_arn, timeout=10)
            to_fragment.append((time.monotonic() - join.mono) * 1000)
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
        "fragment_duration_s": 1.0,
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
    return figures


if __name__ == "__main__":
    main()
