"""The benchmark history's tables: the summary beside the previous run and the budgets, and
the README's Performance table, which is the summary's rows that have a budget."""

from __future__ import annotations

import pytest

from bench import history

RUN = {
    "started": "2026-12-06T22:00:00Z",
    "commit": "abc1234",
    "machine": {"cpus": 2, "cpu_model": "test CPU"},
    "figures": {
        "bench_recorder.cpu_s_per_media_s": 0.02,
        "bench_stamp.read_stamp_us_640x480": 59.0,
        "bench_concurrency.max_masters_lossless": 32.0,
    },
}
EARLIER = [{**RUN, "figures": {"bench_concurrency.max_masters_lossless": 16.0}}]


def test_the_summary_shows_each_figure_beside_the_previous_run_and_its_budget() -> None:
    lines = history.table(RUN, EARLIER).splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("|")}
    masters = rows["bench_concurrency.max_masters_lossless"]
    assert "| 32 | 16 (+100%) | ≥ 40 | **missed** |" in masters
    assert "| 0.02 | — | ≤ 0.03 | met |" in rows["bench_recorder.cpu_s_per_media_s"]
    assert rows["bench_stamp.read_stamp_us_640x480"].endswith("| 59 | — |  |  |")


def test_the_readme_table_keeps_the_rows_with_a_budget() -> None:
    kept = history.budget_table(history.table(RUN, EARLIER))
    assert kept.startswith("Run 2026-12-06T22:00:00Z at abc1234 on 2 CPUs")
    assert "bench_concurrency.max_masters_lossless" in kept
    assert "bench_recorder.cpu_s_per_media_s" in kept
    assert "bench_stamp" not in kept  # tracked, but without a budget
    assert "| figure | this run | previous | budget | |" in kept


def test_the_readme_block_is_replaced_and_nothing_else() -> None:
    readme = f"# t\n\nbefore\n{history.README_BEGIN}\nold table\n{history.README_END}\nafter\n"
    new = history.readme_with(readme, history.table(RUN, EARLIER))
    assert new.startswith("# t\n\nbefore\n") and new.endswith(f"{history.README_END}\nafter\n")
    assert "old table" not in new and "max_masters_lossless" in new
    with pytest.raises(ValueError, match=r"no .* block to fill"):
        history.readme_with("# no markers\n", history.table(RUN, EARLIER))


def test_the_readme_performance_table_is_the_last_summary() -> None:
    """README.md's Performance table is regenerated from bench/results/summary.md
    (``python -m bench.history readme``; ``make bench`` does it after each run)."""
    readme = history.README.read_text(encoding="utf-8")
    summary = history.SUMMARY.read_text(encoding="utf-8")
    assert history.readme_with(readme, summary) == readme, (
        "README.md's Performance table differs from bench/results/summary.md: run "
        "`python -m bench.history readme`"
    )
