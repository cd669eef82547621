"""``make bench`` / ``python -m bench``: run every benchmark in turn, each in its own
process, print what each prints, and keep the outputs in ``bench/results/``.

Benchmarks print figures (ratios against a baseline run in the same process where one
exists); none passes or fails on time. ``python -m bench NAME...`` runs only those."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = (
    "bench_stamp",
    "bench_recorder",
    "bench_join",
    "bench_hls",
    "bench_get_images",
    "bench_viewers",
    "bench_concurrency",
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
    for name in names:
        print(f"=== {name}", flush=True)
        t = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"], capture_output=True, text=True
        )
        out = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.returncode else "")
        print(out, flush=True)
        (RESULTS / f"{name}.txt").write_text(out, encoding="utf-8")
        print(
            f"=== {name}: {'ok' if done.returncode == 0 else 'FAILED'} "
            f"in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        if done.returncode:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
