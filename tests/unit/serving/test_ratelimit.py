"""The per-key moving-window rate limit (limits library), in-process and with Redis unreachable."""

from __future__ import annotations

import pytest

from chatforge.serving.ratelimit import KeyRateLimiter


def test_burst_then_wait_for_the_window_per_key():
    limiter = KeyRateLimiter(per_minute=60, burst=3)  # 3 requests per 3 s: 60 per minute
    assert limiter.window_s == 3 and limiter.kind == "in-process"
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(3.0, abs=0.2)
    assert limiter.acquire("other") == 0.0  # keys are limited separately


@pytest.mark.parametrize(("per_minute", "burst", "window_s"), [(120, 20, 10), (6, 20, 200), (600, 50, 5), (7, 1, 9)])
def test_window_keeps_the_sustained_rate_at_or_below_the_param(per_minute, burst, window_s):
    limiter = KeyRateLimiter(per_minute=per_minute, burst=burst)
    assert limiter.window_s == window_s
    assert burst * 60 / limiter.window_s <= per_minute


def test_unreachable_redis_counts_in_process_and_reports_it():
    errors = []
    limiter = KeyRateLimiter(per_minute=60, burst=2, redis_url="redis://127.0.0.1:1/0", on_error=lambda: errors.append(1))
    assert limiter.kind == "redis (shared)"
    assert [limiter.acquire("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("k") > 0  # still limited while Redis is down
    assert len(errors) == 1  # Redis is retried only after RETRY_SHARED_S


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="per_minute > 0 and burst >= 1"):
        KeyRateLimiter(per_minute=0, burst=1)
