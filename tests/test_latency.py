from __future__ import annotations

import math
import random

import pytest

from cortexd.daemon.observe.latency import (
    GROWTH,
    MAX_SECONDS,
    MIN_SECONDS,
    N_BUCKETS,
    LatencyStats,
    bucket_index,
    bucket_middle,
)


def test_empty_snapshot() -> None:
    assert LatencyStats().snapshot() == {"requests": 0, "2xx": 0, "4xx": 0, "5xx": 0, "p50_ms": None, "p99_ms": None}


@pytest.mark.parametrize(
    "codes, expected",
    [
        ([200, 200, 201], (3, 3, 0, 0)),
        ([400, 404, 413], (3, 0, 3, 0)),
        ([500, 503, 504], (3, 0, 0, 3)),
        ([200, 301, 400, 500, 101], (5, 1, 1, 1)),   # other classes count as requests only
    ],
)
def test_counters_by_status_class(codes: list[int], expected: tuple[int, int, int, int]) -> None:
    stats = LatencyStats()
    for code in codes:
        stats.observe(0.01, code)
    snap = stats.snapshot()
    assert (snap["requests"], snap["2xx"], snap["4xx"], snap["5xx"]) == expected


def test_only_successes_count_towards_latency() -> None:
    stats = LatencyStats()
    stats.observe(0.010, 200)
    stats.observe(0.0001, 503)     # shed at once: must not pull p50 down
    stats.observe(30.0, 504)
    snap = stats.snapshot()
    assert snap["p50_ms"] == snap["p99_ms"] == 10.0


@pytest.mark.parametrize("seconds", [0.0, 1e-6, MIN_SECONDS, 0.00123, 0.5, 7.0, MAX_SECONDS, 1e6])
def test_bucket_index_brackets_the_value(seconds: float) -> None:
    index = bucket_index(seconds)
    assert 0 <= index < N_BUCKETS
    if MIN_SECONDS <= seconds < MAX_SECONDS:
        low = MIN_SECONDS * GROWTH ** (index - 1)
        assert low <= seconds * (1 + 1e-12) and seconds < low * GROWTH * (1 + 1e-12)
        assert abs(bucket_middle(index) / seconds - 1) <= math.sqrt(GROWTH) - 1 + 1e-9
    if seconds >= MAX_SECONDS * GROWTH:
        assert index == N_BUCKETS - 1


def test_quantiles_within_two_percent_of_exact() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.02), 1.0) for _ in range(20_000)]
    stats = LatencyStats()
    for value in values:
        stats.observe(value, 200)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[math.ceil(q * len(ordered)) - 1] * 1000
        got = stats.quantile(q)
        assert got is not None
        assert abs(got / exact - 1) < 0.021, (q, got, exact)


def test_a_single_value_is_reported_exactly() -> None:
    stats = LatencyStats()
    stats.observe(0.0123, 200)
    assert stats.quantile(0.5) == pytest.approx(12.3)
    assert stats.quantile(0.99) == pytest.approx(12.3)


def test_p99_of_a_known_sequence() -> None:
    stats = LatencyStats()
    for _ in range(99):
        stats.observe(0.001, 200)
    stats.observe(2.0, 200)
    assert stats.quantile(0.5) == pytest.approx(1.0, rel=0.02)
    assert stats.quantile(0.99) == pytest.approx(1.0, rel=0.02)     # nearest rank 99 of 100
    assert stats.quantile(1.0) == pytest.approx(2000.0, rel=0.02)


def test_nonsense_durations_are_ignored_for_latency() -> None:
    stats = LatencyStats()
    stats.observe(-1.0, 200)
    stats.observe(math.nan, 200)
    snap = stats.snapshot()
    assert snap["requests"] == 2 and snap["2xx"] == 2 and snap["p50_ms"] is None
