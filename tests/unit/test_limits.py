"""Local KVS's token bucket (kvsnb.local.core.limits) on a clock the test moves."""

from __future__ import annotations

from kvsnb.local.core.limits import TokenBucket


def test_a_burst_of_rate_then_rate_a_second() -> None:
    now = [100.0]
    bucket = TokenBucket(5.0, lambda: now[0])
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.1  # half a call's worth
    assert not bucket.take()
    now[0] += 0.15
    assert bucket.take() and not bucket.take()
    now[0] += 60  # a long pause refills only up to the burst
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_a_clock_stepping_back_refills_nothing() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, lambda: now[0])
    assert bucket.take() and bucket.take() and not bucket.take()
    now[0] -= 30
    assert not bucket.take()
    now[0] += 0.6  # from the stepped-back time on, the rate holds
    assert bucket.take() and not bucket.take()
