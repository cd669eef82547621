"""Soak: 4 masters and 2 viewers on one Local KVS for a long time (default 1 h), sampling
Local KVS's memory and CPU, the fragments stored and the viewers' frames every interval,
then frames lost per master: in all, and outside re-joins (a gap in a stream's stored frames
counts as a re-join's when one of that master's re-joins falls within it, give or take
``REJOIN_SLACK_S``: a new session stores from the next keyframe). Memory is read at 10 min
and at the end; docs/design.md asks for growth after the first 10 min within 5 %. Prints a
table as it goes and a JSON summary at the end; never asserts on time.

Memory is a saw-tooth: it climbs while sessions live and falls at each re-join (every 10 min,
as signaling sockets idle out), when the ended sessions' memory is trimmed, so the sample at
10 min is a trough. The summary also gives each whole cycle between re-joins from the first
re-join on (mean and peak) and the growth of the cycles' means, first to last (a run of 30
min or more).

``--memory`` takes a census of Local KVS's Python objects at 10 min (half-way in a shorter run)
and at the end and shows which types grew, beside its resident memory (what the census does
not explain is native: libav, OpenSSL, libsrtp, the allocator); ``--tracemalloc N`` runs
Local KVS under tracemalloc (``N`` frames a traceback) and shows the source lines instead,
but slows it several times over (see ``kvsnb.local.core.heap``). Each snapshot holds the server
still for about a second, so a profiled run's loss figures are not the plain soak's.

``make soak`` or ``python -m bench.soak [--minutes M] [--interval S] [--workers N]
[--memory] [--tracemalloc N]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_concurrency import (
    AUDIO_TB,
    FPS,
    VIDEO_TB,
    PacketTrack,
    make_clip,
    stored_frame_times,
)
from bench.common import Parts
from kvsnb.client.session import JoinPolicy, MasterSession, ViewerSession
from kvsnb.launch import connect
from kvsnb.local.core.heap import Snapshot, memory_growth
from kvsnb.local.runner import LocalKvsProcess

MASTERS = 4
VIEWERS = 2
SETTLED_S = 600.0  # memory growth is measured from here on
REJOIN_SLACK_S = 2.0
CYCLE_MERGE_S = 60.0  # re-joins this close together start one memory cycle
WHOLE_CYCLE = 0.9  # the run's last stretch counts as a cycle at this fraction of the one before


def lost_frames(times: list[float], rejoins: list[float]) -> tuple[int, int]:
    """Frames missing from a stream's stored frame times (gaps longer than 1.5 frame
    intervals): (missing in all, missing in gaps with no re-join near them)."""
    interval = 1.0 / FPS
    missing = outside = 0
    for a, b in itertools.pairwise(times):
        gap = round((b - a) / interval) - 1
        if (b - a) <= 1.5 * interval or gap <= 0:
            continue
        missing += gap
        if not any(a - REJOIN_SLACK_S <= r <= b + REJOIN_SLACK_S for r in rejoins):
            outside += gap
    return missing, outside


def rss_at(samples: list[dict[str, Any]], t_s: float) -> float | None:
    """The memory sample nearest ``t_s`` seconds into the run."""
    if not samples:
        return None
    return float(min(samples, key=lambda s: abs(s["t_s"] - t_s))["rss_mib"])


def rejoin_cycles(samples: list[dict[str, Any]], rejoins_s: list[float]) -> list[dict[str, float]]:
    """Local KVS's memory between re-joins (``rejoins_s``: seconds into the run, every
    master's; those within ``CYCLE_MERGE_S`` of each other are one), for each whole cycle
    that a re-join starts (the first, the joins' and the warm-up's, is left out; with AWS's
    10 min idle sockets the first re-join comes at 10 min): its span, mean and peak. The
    run's end closes a last cycle at least ``WHOLE_CYCLE`` as long as the one before.
    Memory is a saw-tooth (it
    climbs while sessions live and falls when they end and their memory is trimmed), so
    like is compared with like: a leak raises the cycles' means, not only a late sample."""
    starts: list[float] = [0.0]  # the first joins, just before the run's clock starts
    for t in sorted(rejoins_s):
        if t - starts[-1] > CYCLE_MERGE_S:
            starts.append(t)
    end = samples[-1]["t_s"] if samples else 0.0
    if len(starts) >= 2 and end - starts[-1] >= WHOLE_CYCLE * (starts[-1] - starts[-2]):
        starts.append(end + 1)
    cycles = []
    for a, b in itertools.pairwise(starts):
        if a == 0.0:
            continue
        rss = [x["rss_mib"] for x in samples if a + CYCLE_MERGE_S <= x["t_s"] < b]
        if rss:
            cycles.append(
                {
                    "from_s": round(a),
                    "to_s": round(b),
                    "mean_mib": round(sum(rss) / len(rss), 1),
                    "max_mib": max(rss),
                }
            )
    return cycles


def mean_of(samples: list[dict[str, Any]], key: str) -> float | None:
    """The mean of one figure over the samples, or None when there are none."""
    return round(sum(s[key] for s in samples) / len(samples), 3) if samples else None


async def soak(
    minutes: float,
    interval_s: float,
    workers: int = 0,
    memory: bool = False,
    trace_frames: int = 0,
) -> dict[str, Any]:
    """Run the soak (storage sessions in ``workers`` processes, or in the server process;
    with ``memory``, memory snapshots of Local KVS compared, tracemalloc's with
    ``trace_frames`` frames when > 0); returns the samples and the summary."""
    import pickle

    clip = Path(tempfile.mkdtemp(prefix="kvsnb-soak-")) / "clip.pkl"
    make_clip(clip)
    data = pickle.loads(clip.read_bytes())
    video_packets = [p for p, _ in data["video"]]
    samples: list[dict[str, Any]] = []
    env = {"PYTHONTRACEMALLOC": str(trace_frames)} if trace_frames else None
    memory = memory or trace_frames > 0
    snapshots: list[Snapshot] = []
    with LocalKvsProcess("--workers", str(workers), env=env) as kvs:
        target = connect(endpoint_url=kvs.url)
        names = [f"soak-{i}" for i in range(MASTERS)]
        streams = {n: target.create_storage_channel(n)[1] for n in names}
        tracks = []
        masters = []
        policy = JoinPolicy.local(offer_wait_s=3.0, connect_timeout_s=30.0)
        for n in names:
            video = PacketTrack("video", video_packets, FPS, 90_000 // FPS, VIDEO_TB)
            audio = PacketTrack("audio", data["audio"], 50, 960, AUDIO_TB)
            tracks.append(video)
            m = MasterSession(target, n, video=video, audio=audio, policy=policy)
            await m.start(timeout=60)
            masters.append(m)
        viewers = []
        for i in range(VIEWERS):
            v = ViewerSession(target, names[0], client_id=f"soak-viewer-{i}", policy=policy)
            await v.start(timeout=60)
            viewers.append(v)
        t0, t0_wall = time.monotonic(), time.time()
        parts = Parts(kvs.pid)  # Local KVS's own figures; coturn's apart
        c_prev, t_prev = parts.cpu(), t0
        print(
            f"{'t_s':>7} {'rss_mib':>8} {'cpu':>6} {'turn_mib':>8} {'turn_cpu':>8} "
            f"{'viewer_fps':>10} {'states':>20}",
            flush=True,
        )
        while time.monotonic() - t0 < minutes * 60:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            c = parts.cpu()
            own_cores, turn_cores = Parts.cores_between(c_prev, c, now - t_prev)
            own_mib, turn_mib = Parts.split(parts.rss())
            states = [m.state for m in masters] + [v.state for v in viewers]
            sample: dict[str, Any] = {
                "t_s": round(now - t0, 1),
                "rss_mib": round(own_mib, 1),
                "cpu_cores": round(own_cores, 3),
                "coturn_rss_mib": round(turn_mib, 1),
                "coturn_cpu_cores": round(turn_cores, 3),
                "viewer_fps": [round(v.received.rate(interval_s), 1) for v in viewers],
                "states": states,
            }
            c_prev, t_prev = c, now
            samples.append(sample)
            # the first snapshot at 10 min (half-way in a run shorter than 20 min)
            if memory and not snapshots and now - t0 >= min(SETTLED_S, minutes * 30):
                snapshots.append(await asyncio.to_thread(kvs.memory_snapshot))
            print(
                f"{sample['t_s']:>7} {sample['rss_mib']:>8} {sample['cpu_cores']:>6} "
                f"{sample['coturn_rss_mib']:>8} {sample['coturn_cpu_cores']:>8} "
                f"{sample['viewer_fps']!s:>10} {sorted(set(states))!s:>20}",
                flush=True,
            )
        if snapshots:
            snapshots.append(await asyncio.to_thread(kvs.memory_snapshot))
        for t in tracks:
            t.stop()
        await asyncio.sleep(0.5)
        for s in [*viewers, *masters]:
            await s.stop()
        await asyncio.sleep(1.0)
        times = {n: await asyncio.to_thread(stored_frame_times, target, streams[n]) for n in names}
        target.close()
    stored = {n: len(times[n]) for n in names}
    rejoins = {
        n: [e.wall for e in m.timeline.events if e.step == "join_call"][1:]
        for n, m in zip(names, masters, strict=True)
    }
    gaps = {n: lost_frames(times[n], rejoins[n]) for n in names}
    sent = {n: t.sent for n, t in zip(names, tracks, strict=True)}
    loss = {n: round(100 * (sent[n] - stored[n]) / sent[n], 3) for n in names if sent[n]}
    rss = [s["rss_mib"] for s in samples]
    settled, last = rss_at(samples, SETTLED_S), (rss[-1] if rss else None)
    cycles = rejoin_cycles(samples, [t - t0_wall for r in rejoins.values() for t in r])
    summary = {
        "minutes": minutes,
        "masters": MASTERS,
        "viewers": VIEWERS,
        "storage_workers": workers,
        "frames_sent": sent,
        "frames_stored": stored,
        "loss_pct": loss,
        "rejoins": {n: len(r) for n, r in rejoins.items()},
        "frames_missing_in_gaps": {n: g[0] for n, g in gaps.items()},
        "frames_missing_outside_rejoins": {n: g[1] for n, g in gaps.items()},
        "rss_mib_at_10_min": settled,
        "rss_growth_after_10_min_pct": round(100 * (last - settled) / settled, 2)
        if settled and last and samples[-1]["t_s"] > SETTLED_S
        else None,
        "rss_by_rejoin_cycle": cycles,
        "rss_cycle_mean_growth_pct": round(
            100 * (cycles[-1]["mean_mib"] - cycles[0]["mean_mib"]) / cycles[0]["mean_mib"], 2
        )
        if len(cycles) >= 2
        else None,
        "rss_mib_first": rss[0] if rss else None,
        "rss_mib_last": rss[-1] if rss else None,
        "rss_mib_max": max(rss) if rss else None,
        "cpu_cores_mean": mean_of(samples, "cpu_cores"),
        "turn": parts.coturn is not None,
        "coturn_rss_mib_first": samples[0]["coturn_rss_mib"] if samples else None,
        "coturn_rss_mib_last": samples[-1]["coturn_rss_mib"] if samples else None,
        "coturn_cpu_cores_mean": mean_of(samples, "coturn_cpu_cores"),
    }
    if len(snapshots) == 2:
        summary["memory_growth"] = memory_growth(snapshots[0], snapshots[1])
    return {"summary": summary, "samples": samples}


def main() -> dict[str, Any]:
    """Run the soak and print its summary."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=0, help="Local KVS storage worker processes")
    ap.add_argument("--memory", action="store_true", help="show which object types grew")
    ap.add_argument(
        "--tracemalloc", type=int, default=0, metavar="N",
        help="trace Local KVS's allocations (N frames) and show the lines that grew",
    )  # fmt: skip
    args = ap.parse_args()
    result = asyncio.run(
        soak(args.minutes, args.interval, args.workers, args.memory, args.tracemalloc)
    )
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
