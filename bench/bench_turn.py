"""What TURN costs with N masters ingesting through it (32 by default): coturn's CPU per
master (docs/design.md budget: ≤ 0.01 cores a master) and Local KVS's memory: the server
process, its storage workers and coturn, each apart.

Local KVS runs in its own process (``kvsnb local --ice turn``, coturn its child) with 2
storage workers; the masters are ``bench_concurrency``'s sender processes: kvsnb
``MasterSession``s sending pre-encoded 640x480 30 fps H.264 (~800 kbps) and Opus, which take
the TURN servers from GetIceServerConfig like any kvsnb master. Each master's selected
candidate pair is read from its timeline: every one must be a relay pair (``relay/udp``),
which is checked and printed. coturn's CPU is its user + system time (/proc/PID/stat) over a
measured window, divided by N and by the window. The same run with ``--ice host`` (the
storage peers reached directly, no coturn) gives Local KVS's own CPU and memory without TURN,
so the difference is what TURN costs the storage peers (their TURN client) besides coturn.
Memory is the resident set, the highest of one sample a second over the window. Prints
figures; never asserts on time.

``python -m bench.bench_turn [--masters N] [--seconds S] [--ice turn,host] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.bench_concurrency import make_clip, start_senders
from bench.common import Parts, report
from kvsnb.launch import connect
from kvsnb.local.runner import LocalKvsProcess

MASTERS = 32
SECONDS = 20.0
QUICK_MASTERS = 4
QUICK_SECONDS = 8.0
STORAGE_WORKERS = 2
WARM_UP_S = 3.0
MODES = ("turn", "host")
RELAY = "relay/udp"
BUDGET_COTURN_CPU_PER_MASTER = 0.01


def measure(masters: int, seconds: float, clip: Path, ice: str) -> dict[str, Any]:
    """``masters`` masters ingest into a Local KVS whose storage peers are reached as ``ice``
    says; CPU over ``seconds`` and the highest memory seen, per process kind."""
    args = ("--workers", str(STORAGE_WORKERS), "--ice", ice)
    with LocalKvsProcess(*args) as kvs:
        target = connect(endpoint_url=kvs.url)
        names = [f"turn-{i}" for i in range(masters)]
        for name in names:
            target.create_storage_channel(name)
        pairs: Counter[str] = Counter()
        senders = start_senders(
            kvs.url, names, clip, WARM_UP_S + seconds + 10.0, video_only=False, pairs=pairs
        )
        try:
            time.sleep(WARM_UP_S)  # every master past its join and ingesting
            parts = Parts(kvs.pid)
            if ice == "turn" and parts.coturn is None:
                raise RuntimeError("Local KVS runs without coturn (is it installed?)")
            cpu0, t0 = parts.cpu(), time.monotonic()
            peak = parts.rss()
            while time.monotonic() < t0 + seconds:
                time.sleep(min(1.0, max(0.0, t0 + seconds - time.monotonic())))
                peak = {k: max(v, peak[k]) for k, v in parts.rss().items()}
            window = time.monotonic() - t0
            cpu = {k: (v - cpu0[k]) / window for k, v in parts.cpu().items()}
        finally:
            for p in senders:
                p.terminate()
            for p in senders:
                p.wait(30)
            target.close()
    kvs_cpu, _ = Parts.split(cpu)
    return {
        "ice": ice,
        "masters": masters,
        "storage_workers": STORAGE_WORKERS,
        "window_s": round(window, 1),
        "selected_pairs": dict(pairs),
        "coturn_cpu_cores": round(cpu["coturn"], 4) if ice == "turn" else None,
        "coturn_cpu_cores_per_master": round(cpu["coturn"] / masters, 5) if ice == "turn" else None,
        "local_kvs_cpu_cores": round(kvs_cpu, 3),
        "local_kvs_cpu_cores_per_master": round(kvs_cpu / masters, 4),
        "server_cpu_cores": round(cpu["server"], 3),
        "workers_cpu_cores": round(cpu["workers"], 3),
        "server_rss_mib": round(peak["server"], 1),
        "workers_rss_mib": round(peak["workers"], 1),
        "coturn_rss_mib": round(peak["coturn"], 1) if ice == "turn" else None,
        "total_rss_mib": round(sum(peak.values()), 1),
        "budget_coturn_cpu_cores_per_master": BUDGET_COTURN_CPU_PER_MASTER,
    }


def relay_line(r: dict[str, Any]) -> str:
    """How many masters went through a relay pair, against what ``ice`` wants."""
    pairs: dict[str, int] = r["selected_pairs"]
    total, relayed = sum(pairs.values()), pairs.get(RELAY, 0)
    expected = total if r["ice"] == "turn" else 0
    verdict = "as expected" if relayed == expected else "NOT AS EXPECTED"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(pairs.items()))
    return f"{r['ice']}: {relayed}/{total} masters through a relay pair ({kinds}): {verdict}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Measure each ICE mode, print the figures side by side and report the headline ones
    (``coturn_cpu_cores_per_master_32_masters``, ``local_kvs_rss_mib_turn_32_masters``…)."""
    ap = argparse.ArgumentParser(prog="python -m bench.bench_turn")
    ap.add_argument("--masters", type=int, default=None, help=f"default {MASTERS}")
    ap.add_argument("--seconds", type=float, default=None, help=f"default {SECONDS:g}")
    ap.add_argument("--ice", default=",".join(MODES), help="ICE modes, comma-separated")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_MASTERS} masters, {QUICK_SECONDS:g} s",
    )
    args = ap.parse_args(argv)
    masters = args.masters or (QUICK_MASTERS if args.quick else MASTERS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    clip = Path(tempfile.mkdtemp(prefix="kvsnb-turn-")) / "clip.pkl"
    make_clip(clip)
    results: dict[str, dict[str, Any]] = {}
    for ice in [m for m in MODES if m in args.ice.split(",")]:
        r = results[ice] = measure(masters, seconds, clip, ice)
        print(json.dumps(r), flush=True)
        print(relay_line(r), flush=True)
        tag = f"{ice}_{masters}_masters"
        report(
            **{
                f"local_kvs_cpu_cores_per_master_{tag}": r["local_kvs_cpu_cores_per_master"],
                f"local_kvs_rss_mib_{tag}": r["server_rss_mib"] + r["workers_rss_mib"],
            }
        )
        if ice == "turn":
            report(
                **{
                    f"coturn_cpu_cores_per_master_{masters}_masters": r[
                        "coturn_cpu_cores_per_master"
                    ],
                    f"coturn_rss_mib_{masters}_masters": r["coturn_rss_mib"],
                }
            )
    keys = [
        "coturn_cpu_cores_per_master",
        "coturn_cpu_cores",
        "local_kvs_cpu_cores_per_master",
        "server_cpu_cores",
        "workers_cpu_cores",
        "server_rss_mib",
        "workers_rss_mib",
        "coturn_rss_mib",
        "total_rss_mib",
    ]
    width = max(map(len, keys)) + 2
    print(
        f"{masters} masters{'':{width - len(str(masters)) - 8}}"
        + "".join(f"{m:>12}" for m in results)
    )
    for key in keys:
        cells = "".join(f"{_cell(r.get(key)):>12}" for r in results.values())
        print(f"{key:{width}}{cells}", flush=True)
    return results


def _cell(value: Any) -> str:
    return "—" if value is None else f"{value:g}"


if __name__ == "__main__":
    main()
