"""Master → viewer frame latency through a storage session, and Local KVS CPU per viewer.

Local KVS runs in its own process (``kvsnb local``) so that its CPU is measured apart from
the master and the viewers (this process). The master sends the stamped test pattern
(640x480, 30 fps) and a tone; viewers read the stamps of the frames they receive:
latency = receive time − capture time, on one machine's clock. CPU per viewer is the
increase in Local KVS's CPU over the same interval with 0, 1 and 3 viewers.

``python -m bench.bench_viewers [--quick]`` (``--quick``: 3 s windows)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench.common import Parts, pct, report
from kvsnb.client.session import JoinPolicy, MasterSession, ViewerSession
from kvsnb.launch import connect
from kvsnb.local.runner import LocalKvsProcess
from kvsnb.sources import TestPatternTrack, ToneTrack

WINDOW_S = 8.0
QUICK_WINDOW_S = 3.0
POLICY = JoinPolicy.local(offer_wait_s=1.0, connect_timeout_s=30.0)


async def _cpu_over(parts: Parts, seconds: float) -> tuple[float, float]:
    """Cores used over ``seconds``: Local KVS's own, coturn's."""
    c0, t0 = parts.cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    return Parts.cores_between(c0, parts.cpu(), time.monotonic() - t0)


async def run(window_s: float = WINDOW_S) -> dict[str, Any]:
    """Measure; returns the figures."""
    with LocalKvsProcess() as kvs:
        tg = connect(endpoint_url=kvs.url)
        tg.create_storage_channel("bench-viewers")
        master = MasterSession(
            tg,
            "bench-viewers",
            video=TestPatternTrack(640, 480, 30),
            audio=ToneTrack(),
            policy=POLICY,
        )
        await master.start(timeout=30)
        await asyncio.sleep(1.0)
        parts = Parts(kvs.pid)
        cpu, turn_cpu = {}, {}
        cpu[0], turn_cpu[0] = await _cpu_over(parts, window_s)
        viewers: list[ViewerSession] = []
        for n in (1, 3):
            while len(viewers) < n:
                v = ViewerSession(
                    tg, "bench-viewers", client_id=f"bench-{len(viewers)}", policy=POLICY
                )
                await v.start(timeout=30)
                viewers.append(v)
            await asyncio.sleep(1.0)
            marks = [len(v.received.rows) for v in viewers]
            cpu[n], turn_cpu[n] = await _cpu_over(parts, window_s)
            latencies = [
                lat
                for v, m in zip(viewers, marks, strict=True)
                for lat in v.received.frames_df().iloc[m:]["latency_ms"].dropna()
            ]
        rss, turn_rss = Parts.split(parts.rss())
        for v in viewers:
            await v.stop()
        await master.stop()
        tg.close()
    return {
        "viewers": 3,
        "master_to_viewer_latency_ms_p50": round(pct(latencies, 50), 1),
        "master_to_viewer_latency_ms_p95": round(pct(latencies, 95), 1),
        "frames_measured": len(latencies),
        "local_kvs_cpu_0_viewers": round(cpu[0], 3),
        "local_kvs_cpu_1_viewer": round(cpu[1], 3),
        "local_kvs_cpu_3_viewers": round(cpu[3], 3),
        "local_kvs_cpu_per_viewer": round((cpu[3] - cpu[0]) / 3, 3),
        "local_kvs_rss_mib": round(rss, 1),
        # coturn (the viewers and the master reach the storage peer through it), apart
        "coturn_cpu_0_viewers": round(turn_cpu[0], 3),
        "coturn_cpu_3_viewers": round(turn_cpu[3], 3),
        "coturn_cpu_per_viewer": round((turn_cpu[3] - turn_cpu[0]) / 3, 3),
        "coturn_rss_mib": round(turn_rss, 1),
        "window_s": window_s,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run and print (``--quick``: shorter windows)."""
    ap = argparse.ArgumentParser(prog="python -m bench.bench_viewers")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    figures = asyncio.run(run(QUICK_WINDOW_S if ap.parse_args(argv).quick else WINDOW_S))
    print(json.dumps(figures, indent=2))
    report(
        master_to_viewer_latency_ms_p95=figures["master_to_viewer_latency_ms_p95"],
        local_kvs_cpu_per_viewer=figures["local_kvs_cpu_per_viewer"],
    )
    return figures


if __name__ == "__main__":
    main()
