"""The one latency definition (chatforge.runtime.quality.request_latency) that distill, prune and
evaluate report: warm-up untimed, milliseconds, percentiles over the timed requests."""

from __future__ import annotations

import math

import pytest

from chatforge.runtime import quality


class Clock:
    """A perf_counter that a request advances by its own cost in seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_warm_up_is_untimed_and_numbers_are_milliseconds_and_percentiles(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(quality.time, "perf_counter", clock)
    served: list[int] = []
    cost = {1: 10.0, 2: 0.010, 3: 0.020, 4: 0.030}  # request 1 is slow the first time only (warm-up)

    def serve(request: int) -> str:
        clock.now += cost[request] if not (request == 1 and served) else 0.040
        served.append(request)
        return f"answer {request}"

    stats, results = quality.request_latency(serve, [1, 2, 3, 4])
    assert served == [1, 1, 2, 3, 4]  # one warm-up request (the first), then each request once, in order
    assert results == ["answer 1", "answer 2", "answer 3", "answer 4"]
    assert stats["latency_p50_ms"] == pytest.approx(25.0)  # median of 40, 10, 20, 30 ms: the 10 s warm-up is not in it
    assert stats["latency_p95_ms"] == pytest.approx(38.5)  # numpy's linear interpolation
    assert "tokens_per_s" not in stats


def test_runs_cycle_through_requests_and_tokens_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(quality.time, "perf_counter", clock)

    def serve(request: str) -> list[int]:
        clock.now += 0.5
        return [0] * len(request)  # "tokens": one per character

    stats, results = quality.request_latency(serve, ["ab", "abcd"], runs=3, warmup_runs=2, tokens=len)
    assert [len(r) for r in results] == [2, 4, 2]
    assert stats["latency_p50_ms"] == pytest.approx(500.0)
    assert stats["tokens_per_s"] == pytest.approx(8 / 1.5)


def test_nothing_to_time_gives_nan_and_runs_without_requests_are_an_error() -> None:
    stats, results = quality.request_latency(lambda r: r, [])
    assert results == [] and math.isnan(stats["latency_p50_ms"]) and math.isnan(stats["latency_p95_ms"])
    with pytest.raises(ValueError, match="3 runs asked for, but there are no requests"):
        quality.request_latency(lambda r: r, [], runs=3)
