"""Soak: 4 masters and 2 viewers on one Local KVS for a long time (default 1 h), sampling
Local KVS's memory and CPU, the fragments stored and the viewers' frames every interval,
then frames lost per master. Prints a table as it goes and a JSON summary at the end; never
asserts on time.

``make soak`` or ``python -m bench.soak [--minutes M] [--interval S] [--workers N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_concurrency import AUDIO_TB, FPS, VIDEO_TB, PacketTrack, make_clip, stored_frames
from bench.common import LocalKvsProcess, cpu_seconds, rss_mib
from kvsnb.session import JoinPolicy, MasterSession, ViewerSession
from kvsnb.target import connect

MASTERS = 4
VIEWERS = 2


async def soak(minutes: float, interval_s: float, workers: int = 0) -> dict[str, Any]:
    """Run the soak (storage sessions in ``workers`` processes, or in the server process);
    returns the samples and the summary."""
    import pickle

    clip = Path(tempfile.mkdtemp(prefix="kvsnb-soak-")) / "clip.pkl"
    make_clip(clip)
    data = pickle.loads(clip.read_bytes())
    video_packets = [p for p, _ in data["video"]]
    samples: list[dict[str, Any]] = []
    with LocalKvsProcess("--workers", str(workers)) as kvs:
        target = connect(endpoint_url=kvs.url)
        names = [f"soak-{i}" for i in range(MASTERS)]
        streams = {n: target.create_storage_channel(n)[1] for n in names}
        tracks = []
        masters = []
        policy = JoinPolicy(offer_wait_s=3.0)
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
        t0 = time.monotonic()
        c_prev, t_prev = cpu_seconds(kvs.pid), t0
        print(f"{'t_s':>7} {'rss_mib':>8} {'cpu':>6} {'viewer_fps':>10} {'states':>20}", flush=True)
        while time.monotonic() - t0 < minutes * 60:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            c = cpu_seconds(kvs.pid)
            states = [m.state for m in masters] + [v.state for v in viewers]
            sample: dict[str, Any] = {
                "t_s": round(now - t0, 1),
                "rss_mib": round(rss_mib(kvs.pid), 1),
                "cpu_cores": round((c - c_prev) / (now - t_prev), 3),
                "viewer_fps": [round(v.received.rate(interval_s), 1) for v in viewers],
                "states": states,
            }
            c_prev, t_prev = c, now
            samples.append(sample)
            print(
                f"{sample['t_s']:>7} {sample['rss_mib']:>8} {sample['cpu_cores']:>6} "
                f"{sample['viewer_fps']!s:>10} {sorted(set(states))!s:>20}",
                flush=True,
            )
        for t in tracks:
            t.stop()
        await asyncio.sleep(0.5)
        for s in [*viewers, *masters]:
            await s.stop()
        await asyncio.sleep(1.0)
        stored = {n: await asyncio.to_thread(stored_frames, target, streams[n]) for n in names}
        target.close()
    sent = {n: t.sent for n, t in zip(names, tracks, strict=True)}
    loss = {n: round(100 * (sent[n] - stored[n]) / sent[n], 3) for n in names if sent[n]}
    rss = [s["rss_mib"] for s in samples]
    summary = {
        "minutes": minutes,
        "masters": MASTERS,
        "viewers": VIEWERS,
        "storage_workers": workers,
        "frames_sent": sent,
        "frames_stored": stored,
        "loss_pct": loss,
        "rss_mib_first": rss[0] if rss else None,
        "rss_mib_last": rss[-1] if rss else None,
        "rss_mib_max": max(rss) if rss else None,
        "cpu_cores_mean": round(sum(s["cpu_cores"] for s in samples) / len(samples), 3)
        if samples
        else None,
    }
    return {"summary": summary, "samples": samples}


def main() -> dict[str, Any]:
    """Run the soak and print its summary."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=0, help="Local KVS storage worker processes")
    args = ap.parse_args()
    result = asyncio.run(soak(args.minutes, args.interval, args.workers))
    print(json.dumps(result["summary"], indent=2))
    return result


if __name__ == "__main__":
    main()
