"""ratelimit.py: the per-connection token bucket, driven by explicit clocks."""

from __future__ import annotations

import pytest

from flask_realtime import ratelimit
from flask_realtime.ratelimit import RateLimiter

T0 = 1000.0


@pytest.fixture
def limiter(monkeypatch: pytest.MonkeyPatch) -> RateLimiter:
    """A 60/min bucket created at T0 on a frozen clock."""
    with monkeypatch.context() as patch:
        patch.setattr(ratelimit.time, "monotonic", lambda: T0)
        bucket = RateLimiter(60)
    assert bucket.stamp == T0
    return bucket


def drain(bucket: RateLimiter, count: int, now: float) -> list[float]:
    return [bucket.check(now) for _ in range(count)]


def test_sixty_per_minute_allows_sixty_at_once(limiter: RateLimiter) -> None:
    assert drain(limiter, 60, T0) == [0.0] * 60


def test_the_sixty_first_is_refused_for_about_a_second(limiter: RateLimiter) -> None:
    drain(limiter, 60, T0)
    wait = limiter.check(T0)
    assert wait == pytest.approx(1.0)
    # still refused a moment later, for a little less
    assert limiter.check(T0 + 0.25) == pytest.approx(0.75)


def test_refills_over_time(limiter: RateLimiter) -> None:
    drain(limiter, 60, T0)
    assert limiter.check(T0) > 0
    assert limiter.check(T0 + 1.0) == 0.0  # one token per second at 60/min
    assert limiter.check(T0 + 1.0) > 0
    # half a minute later: thirty more
    assert drain(limiter, 30, T0 + 31.0) == [0.0] * 30
    assert limiter.check(T0 + 31.0) > 0


def test_refill_is_capped_at_the_capacity(limiter: RateLimiter) -> None:
    later = T0 + 3600.0
    assert drain(limiter, 60, later) == [0.0] * 60
    assert limiter.check(later) == pytest.approx(1.0)


def test_retry_after_scales_with_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: T0)
    bucket = RateLimiter(5)
    drain(bucket, 5, T0)
    assert bucket.check(T0) == pytest.approx(12.0)


def test_strikes_count_consecutive_refusals(limiter: RateLimiter) -> None:
    drain(limiter, 60, T0)
    assert limiter.strikes == 0
    for expected in (1, 2, 3):
        assert limiter.check(T0) > 0
        assert limiter.strikes == expected


def test_strikes_reset_on_success(limiter: RateLimiter) -> None:
    drain(limiter, 60, T0)
    limiter.check(T0)
    limiter.check(T0)
    assert limiter.strikes == 2
    assert limiter.check(T0 + 1.0) == 0.0
    assert limiter.strikes == 0
    assert limiter.check(T0 + 1.0) > 0
    assert limiter.strikes == 1


def test_without_now_the_monotonic_clock_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [T0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: clock[0])
    bucket = RateLimiter(60)
    drain_results = [bucket.check() for _ in range(60)]
    assert drain_results == [0.0] * 60
    assert bucket.check() == pytest.approx(1.0)
    clock[0] += 2.0
    assert bucket.check() == 0.0
