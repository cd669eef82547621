"""The benchmark history: every ``make bench`` run's headline figures, with the commit and the
machine, appended to ``bench/results/history.jsonl`` (kept in git), and a table that shows each
figure beside the previous run's on a machine of the same kind and its budget, so a
regression shows at a glance (printed and written to ``bench/results/summary.md``).

Budgets are docs/design.md's, "Performance budgets"; a figure without one is still tracked.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
HISTORY = RESULTS / "history.jsonl"
SUMMARY = RESULTS / "summary.md"
README = Path(__file__).parent.parent / "README.md"
# the README's Performance table lies between these lines, regenerated from SUMMARY
README_BEGIN = "<!-- bench summary: begin (python -m bench.history readme) -->"
README_END = "<!-- bench summary: end -->"


@dataclass(frozen=True)
class Budget:
    """A figure's budget: ``at_most`` or ``at_least`` ``value`` (in the figure's unit)."""

    bound: str  # "<=" or ">="
    value: float

    def met(self, figure: float) -> bool:
        """Whether ``figure`` is within the budget."""
        return figure <= self.value if self.bound == "<=" else figure >= self.value

    def __str__(self) -> str:
        return f"{'≤' if self.bound == '<=' else '≥'} {self.value:g}"


# "bench.figure" → budget (docs/design.md, "Performance budgets")
BUDGETS: dict[str, Budget] = {
    "bench_join.join_to_first_frame_ms_p95_turn_idle": Budget("<=", 150),
    "bench_join.join_to_first_frame_ms_p95_host_idle": Budget("<=", 100),
    "bench_join.join_to_first_frame_ms_p95_turn_32_masters": Budget("<=", 100),
    "bench_join.join_to_first_frame_ms_p95_host_32_masters": Budget("<=", 100),
    "bench_turn.coturn_cpu_cores_per_master_32_masters": Budget("<=", 0.01),
    "bench_recorder.cpu_s_per_media_s": Budget("<=", 0.03),
    "bench_hls.live_stored_to_listed_ms_p95": Budget("<=", 50),
    "bench_get_images.stored_after_capture_ms_p95": Budget("<=", 100),
    "bench_get_images.ratio_1s_aligned": Budget("<=", 0.3),
    "bench_get_images.ratio_1s_midgop": Budget("<=", 0.3),
    "bench_get_images.ratio_10s_aligned": Budget("<=", 0.5),
    "bench_get_images.ratio_10s_midgop": Budget("<=", 0.5),
    "bench_concurrency.max_masters_lossless": Budget(">=", 40),
    "bench_put_media.media_s_per_wall_s": Budget(">=", 50),
    "bench_dask.dask_2_vs_1": Budget(">=", 1.7),
    "bench_dask.dask_1_vs_decode_floor": Budget(">=", 0.8),
    "bench_player.hls_capture_to_screen_ms_p50": Budget("<=", 2000),
    "bench_player.dash_capture_to_screen_ms_p50": Budget("<=", 2000),
    "bench_browser_session.browser_lab_viewer_direct_p50_ms": Budget("<=", 300),
    "bench_browser_session.browser_lab_viewer_kernel_p50_ms": Budget("<=", 1000),
}


# a figure's name now → the name earlier runs gave it: the previous column finds a figure under
# name an earlier run gave it. bench_join's figures before TURN were all of host mode
# (storage peers reached directly), the loaded ones with 32 masters.
EARLIER_NAMES: dict[str, str] = {
    "bench_join.join_to_offer_ms_p50_host_idle": "bench_join.join_to_offer_ms_p50",
    "bench_join.join_to_first_frame_ms_p50_host_idle": "bench_join.join_to_first_frame_ms_p50",
    "bench_join.join_to_first_frame_ms_p95_host_idle": "bench_join.join_to_first_frame_ms_p95",
    "bench_join.workers_join_to_offer_ms_p50_host": "bench_join.workers_join_to_offer_ms_p50",
    "bench_join.join_to_offer_ms_p50_host_32_masters": (
        "bench_join.under_load_join_to_offer_ms_p50"
    ),
    "bench_join.join_to_first_frame_ms_p50_host_32_masters": (
        "bench_join.under_load_join_to_first_frame_ms_p50"
    ),
    "bench_join.join_to_first_frame_ms_p95_host_32_masters": (
        "bench_join.under_load_join_to_first_frame_ms_p95"
    ),
}


def machine() -> dict[str, Any]:
    """What the run ran on: CPU count, processor model, platform, Python."""
    import os

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def commit() -> str:
    """The checked-out commit, with ``+dirty`` when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def collect(results: dict[str, list[Any]]) -> dict[str, float]:
    """The headline figures of a run: every ``{"figures": {...}}`` object a benchmark printed,
    as ``bench.name`` → number."""
    out: dict[str, float] = {}
    for bench, objects in results.items():
        for obj in objects:
            figures = obj.get("figures") if isinstance(obj, dict) else None
            if isinstance(figures, dict):
                for key, value in figures.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        out[f"{bench}.{key}"] = float(value)
    return out


def load() -> list[dict[str, Any]]:
    """Every run kept so far, oldest first."""
    if not HISTORY.exists():
        return []
    runs = []
    for line in HISTORY.read_text(encoding="utf-8").splitlines():
        if line.strip():
            runs.append(json.loads(line))
    return runs


def previous(runs: list[dict[str, Any]], key: str, cpus: int | None) -> float | None:
    """The figure ``key`` in the latest earlier run on a machine with as many CPUs (under its
    earlier name, ``EARLIER_NAMES``, in runs that gave it that one)."""
    names = [key, EARLIER_NAMES[key]] if key in EARLIER_NAMES else [key]
    for run in reversed(runs):
        if run.get("machine", {}).get("cpus") != cpus:
            continue
        for name in names:
            if name in run.get("figures", {}):
                return float(run["figures"][name])
    return None


def record(
    figures: dict[str, float], started: str, partial: bool, keep: bool = True
) -> dict[str, Any]:
    """This run, appended to the history when ``keep`` (a quick smoke run is not kept).
    ``partial`` marks a run of only some benchmarks."""
    run = {
        "started": started,
        "commit": commit(),
        "machine": machine(),
        "partial": partial,
        "figures": figures,
    }
    if not keep:
        return run
    RESULTS.mkdir(exist_ok=True)
    with HISTORY.open("a", encoding="utf-8") as f:
        f.write(json.dumps(run, sort_keys=True) + "\n")
    return run


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"


def table(run: dict[str, Any], earlier: list[dict[str, Any]]) -> str:
    """A Markdown table of ``run``'s figures beside the previous run's and the budgets."""
    cpus = run["machine"]["cpus"]
    lines = [
        f"Run {run['started']} at {run['commit']} on {cpus} CPUs ({run['machine']['cpu_model']})",
        "",
        "| figure | this run | previous | budget | |",
        "|---|---|---|---|---|",
    ]
    for key in sorted(run["figures"]):
        value = run["figures"][key]
        before = previous(earlier, key, cpus)
        budget = BUDGETS.get(key)
        status = "" if budget is None else ("met" if budget.met(value) else "**missed**")
        change = ""
        if before not in (None, 0) and not math.isnan(value):
            assert before is not None
            change = f" ({(value - before) / abs(before):+.0%})"
        lines.append(
            f"| {key} | {_fmt(value)} | {_fmt(before)}{change} | {budget or ''} | {status} |"
        )
    return "\n".join(lines) + "\n"


def budget_table(summary: str) -> str:
    """The rows of a summary table (``table``) that have a budget, with its heading line: the
    README's Performance table."""
    lines = summary.strip().splitlines()
    head = [line for line in lines if not line.startswith("|")]
    rows = [line for line in lines if line.startswith("|")]
    kept = rows[:2] + [r for r in rows[2:] if r.split("|")[4].strip()]
    return "\n".join([*head, *kept]) + "\n"


def readme_with(readme: str, summary: str) -> str:
    """``readme`` with the text between ``README_BEGIN`` and ``README_END`` replaced by the
    budget rows of ``summary``; ValueError when the markers are missing."""
    try:
        before, rest = readme.split(README_BEGIN + "\n", 1)
        _, after = rest.split(README_END, 1)
    except ValueError:
        raise ValueError(
            f"README.md has no {README_BEGIN!r} ... {README_END!r} block to fill"
        ) from None
    return f"{before}{README_BEGIN}\n{budget_table(summary)}{README_END}{after}"


def update_readme() -> None:
    """Regenerate the README's Performance table from ``bench/results/summary.md``."""
    README.write_text(
        readme_with(README.read_text(encoding="utf-8"), SUMMARY.read_text(encoding="utf-8")),
        encoding="utf-8",
    )


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["readme"]:
        sys.exit("usage: python -m bench.history readme")
    update_readme()
    print(f"{README}: Performance table regenerated from {SUMMARY}")
