"""The soak's memory figures (``bench.soak``): cycles between re-joins, and frames lost
outside them, on synthetic samples."""

from __future__ import annotations

from typing import Any

import pytest

from bench.soak import lost_frames, rejoin_cycles


def saw_tooth(minutes: int, leak_mib_per_min: float = 0.0) -> list[dict[str, Any]]:
    """Samples every 30 s: memory climbing 1 MiB a minute between re-joins every 10 min
    (falling back at each), plus a steady leak."""
    return [
        {"t_s": float(t), "rss_mib": 100 + (t % 600) / 60 + leak_mib_per_min * t / 60}
        for t in range(30, minutes * 60 + 1, 30)
    ]


REJOINS = [600.0, 601.5, 604.0, 1200.0, 1202.0, 1800.0, 1801.0]  # every master's


def test_a_flat_saw_tooth_has_cycles_of_equal_means() -> None:
    cycles = rejoin_cycles(saw_tooth(40), REJOINS)
    assert [(c["from_s"], c["to_s"]) for c in cycles] == [(600, 1200), (1200, 1800), (1800, 2401)]
    means = [c["mean_mib"] for c in cycles]
    assert max(means) - min(means) < 0.5 and all(c["max_mib"] < 110 for c in cycles)


def test_a_leak_raises_each_cycle_s_mean() -> None:
    means = [c["mean_mib"] for c in rejoin_cycles(saw_tooth(40, 0.5), REJOINS)]
    assert means == sorted(means)
    assert means[-1] - means[0] == pytest.approx(10.0, abs=0.5)  # 0.5 MiB/min over 20 min


def test_the_first_cycle_and_a_short_last_stretch_are_left_out() -> None:
    # the run ends 4 min after its last re-join: that stretch is no cycle
    cycles = rejoin_cycles(saw_tooth(24), REJOINS[:5])
    assert [(c["from_s"], c["to_s"]) for c in cycles] == [(600, 1200)]


def test_frames_lost_in_a_rejoin_s_gap_are_told_apart() -> None:
    times = [i / 30 for i in range(90)] + [4 + i / 30 for i in range(30)]  # 1 s missing at 3 s
    assert lost_frames(times, rejoins=[3.5]) == (30, 0)
    assert lost_frames(times, rejoins=[30.0]) == (30, 30)
