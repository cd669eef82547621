"""``make bench`` / ``python -m bench``: run every benchmark in turn, each in its own
process, print what each prints, and keep the outputs in ``bench/results/``: the text of
each (``NAME.txt``) and every JSON object a benchmark printed on a line of its own, with
the machine it ran on (``latest.json``). Each benchmark's headline figures (a
``{"figures": {...}}`` line, ``bench.common.report``) join the history (``bench.history``):
the run is appended with its commit and machine, and a table shows each figure beside the
previous run's and its budget; the README's Performance table is regenerated from it
(``python -m bench.history readme``).

Benchmarks print figures (ratios against a baseline run in the same process where one
exists); none passes or fails on time. ``python -m bench NAME...`` runs only those.

``python -m bench --quick [NAME...]``: each benchmark with its quick setting (``QUICK_ARGS``:
fewer joins, levels, repetitions and seconds), the whole in a few minutes, for smoke figures.
Their outputs go to ``bench/results/quick/`` and they do not join the history."""

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
    "bench_turn",
    "bench_put_media",
    "bench_dask",
    "bench_player",
    "bench_browser_session",
)
RESULTS = Path(__file__).parent / "results"
QUICK = "--quick"
# a benchmark's quick setting: its arguments for a smoke figure in well under a minute
QUICK_ARGS: dict[str, tuple[str, ...]] = {
    "bench_put_media": ("--minutes", "0.5"),
    "bench_dask": ("--minutes", "1", "--partition-seconds", "10"),
    "bench_player": ("--seconds", "10", "--protocol", "HLS"),
    "bench_browser_session": ("--seconds", "6"),
}


def main(argv: list[str]) -> int:
    """Run the benchmarks named in ``argv`` (all by default; ``--quick``: each with its
    quick setting, kept apart from the history); exit non-zero if one crashed."""
    quick = QUICK in argv
    argv = [a for a in argv if a != QUICK]
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
        return 2
    results = RESULTS / "quick" if quick else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    collected: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "results": {},
    }
    for name in names:
        print(f"=== {name}", flush=True)
        t = time.monotonic()
        args = QUICK_ARGS.get(name, (QUICK,)) if quick else ()
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", *args], capture_output=True, text=True
        )
        out = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.returncode else "")
        print(out, flush=True)
        (results / f"{name}.txt").write_text(out, encoding="utf-8")
        collected["results"][name] = json_objects(done.stdout)
        print(
            f"=== {name}: {'ok' if done.returncode == 0 else 'FAILED'} "
            f"in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        if done.returncode:
            failed.append(name)
    (results / "latest.json").write_text(json.dumps(collected, indent=2), encoding="utf-8")
    earlier = history.load()
    run = history.record(
        history.collect(collected["results"]),
        collected["started"],
        partial=bool(argv),
        keep=not quick,
    )
    summary = history.table(run, earlier)
    (results / "summary.md" if quick else history.SUMMARY).write_text(summary, encoding="utf-8")
    if not quick:
        history.update_readme()  # the README's Performance table is this summary's budget rows
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
