"""``make bench`` / ``python -m bench``: run every benchmark in turn, each in its own
process, print what each prints, and keep the outputs in ``bench/results/``: the text of
each (``NAME.txt``) and every JSON object a benchmark printed on a line of its own, with
the machine it ran on (``latest.json``). Each benchmark's headline figures (a
``{"figures": {...}}`` line, ``bench.common.report``) join the history (``bench.history``):
the run is appended with its commit and machine, and a table shows each figure beside the
previous run's and its budget.

Benchmarks print figures (ratios against a baseline run in the same process where one
exists); none passes or fails on time. ``python -m bench NAME...`` runs only those."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import history

BENCHES = (
    "bench_stamp",
    "bench_recorder",
    "bench_join",
    "bench_hls",
    "bench_get_images",
    "bench_viewers",
    "bench_concurrency",
    "bench_put_media",
    "bench_dask",
    "bench_player",
)
RESULTS = Path(__file__).parent / "results"


def main(argv: list[str]) -> int:
    """Run the benchmarks named in ``argv`` (all by default); exit non-zero if one crashed."""
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
        return 2
    RESULTS.mkdir(exist_ok=True)
    failed = []
    collected: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": {},
    }
    for name in names:
        print(f"=== {name}", flush=True)
        t = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"], capture_output=True, text=True
        )
        out = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.returncode else "")
        print(out, flush=True)
        (RESULTS / f"{name}.txt").write_text(out, encoding="utf-8")
        collected["results"][name] = json_objects(done.stdout)
        print(
            f"=== {name}: {'ok' if done.returncode == 0 else 'FAILED'} "
            f"in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        if done.returncode:
            failed.append(name)
    (RESULTS / "latest.json").write_text(json.dumps(collected, indent=2), encoding="utf-8")
    earlier = history.load()
    run = history.record(
        history.collect(collected["results"]), collected["started"], partial=bool(argv)
    )
    summary = history.table(run, earlier)
    history.SUMMARY.write_text(summary, encoding="utf-8")
    print(summary, flush=True)
    return 1 if failed else 0


def json_objects(text: str) -> list[Any]:
    """Every JSON object printed by a benchmark: one per line, or one pretty-printed block."""
    found: list[Any] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            try:
                found.append(json.loads(stripped))
                continue
            except ValueError:
                pass
        if stripped == "{" or block:
            block.append(line)
            if stripped == "}":
                try:
                    found.append(json.loads("\n".join(block)))
                except ValueError:
                    pass
                block = []
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
