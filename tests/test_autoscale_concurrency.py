"""Table tests of request-based autoscaling (Cortex v0.14-v0.35): in-flight requests per replica
over a window, tolerances, factors and the two stabilization periods."""
from __future__ import annotations

from itertools import pairwise

import pytest

from cortexd.config import Autoscaling, Compute
from cortexd.daemon.fleet.autoscale import ConcurrencyState, concurrency_recommendation, decide_concurrency

SPEC = Compute(min_replicas=1, max_replicas=20, init_replicas=2)
AUTO = Autoscaling(target_replica_concurrency=4.0)

# (mean in-flight, current replicas, autoscaling, expected recommendation)
RECOMMENDATIONS: list[tuple[float, int, Autoscaling, int]] = [
    (8.0, 2, AUTO, 2),            # at target
    (12.0, 2, AUTO, 3),           # 3 replicas' worth
    (100.0, 2, AUTO, 3),          # max_upscale_factor 1.5: ceil(2 * 1.5) = 3
    (100.0, 10, AUTO, 15),
    (100.0, 1, AUTO, 2),          # 1 * 1.5 -> 2: "always allow +1"
    (0.0, 10, AUTO, 8),           # max_downscale_factor 0.75: ceil(7.5) = 8
    (0.0, 2, AUTO, 1),            # ceil(1.5) = 2, but always allow -1
    (0.0, 1, AUTO, 1),            # never below one replica, nor min_replicas
    (41.0, 10, AUTO, 10),         # raw 10.25 is within the 5% upscale tolerance
    (42.0, 10, AUTO, 11),         # raw 10.5 is not
    (38.5, 10, AUTO, 10),         # raw 9.625 within the 5% downscale tolerance
    (37.0, 10, AUTO, 10),         # raw 9.25: ceil -> 10 anyway
    (35.0, 10, AUTO, 9),
    (30.0, 4, Autoscaling(target_replica_concurrency=1.0, max_upscale_factor=10.0), 20),  # capped at max_replicas
    (9.0, 3, Autoscaling(target_replica_concurrency=2.5), 4),
]


@pytest.mark.parametrize(("mean", "current", "auto", "expected"), RECOMMENDATIONS,
                         ids=[f"rec{i}" for i in range(len(RECOMMENDATIONS))])
def test_recommendation(mean: float, current: int, auto: Autoscaling, expected: int) -> None:
    assert concurrency_recommendation(mean, current, SPEC, auto) == expected


def run(steps: list[tuple[float, float]], auto: Autoscaling = AUTO, spec: Compute = SPEC) -> list[int]:
    state = ConcurrencyState()
    out = []
    for now, in_flight in steps:
        desired, state = decide_concurrency(in_flight, state, spec, auto, now)
        out.append(desired)
    return out


def test_no_upscale_within_the_upscale_period_after_start_then_at_most_the_periods_lowest() -> None:
    auto = Autoscaling(target_replica_concurrency=1.0, window_s=10, upscale_stabilization_period_s=60,
                       downscale_stabilization_period_s=300, max_upscale_factor=10)
    steps = [(t, 10.0) for t in range(0, 130, 10)]
    got = run(steps, auto)
    assert got[:6] == [2] * 6              # the first minute: no upscale
    assert got[6] == 10                    # then the lowest recommendation of the last minute (all 10)


def test_upscale_follows_the_lowest_recommendation_of_the_period() -> None:
    auto = Autoscaling(target_replica_concurrency=1.0, window_s=10, upscale_stabilization_period_s=30,
                       downscale_stabilization_period_s=0, max_upscale_factor=10)
    # a spike at t=40 only: the period's lowest recommendation holds the count down
    steps = [(0, 2.0), (10, 2.0), (20, 2.0), (30, 2.0), (40, 12.0), (50, 2.0)]
    assert run(steps, auto) == [2, 2, 2, 2, 2, 2]


def test_downscale_waits_for_the_window_and_the_downscale_period() -> None:
    auto = Autoscaling(target_replica_concurrency=1.0, window_s=30, upscale_stabilization_period_s=0,
                       downscale_stabilization_period_s=60, max_upscale_factor=10, max_downscale_factor=0.5)
    busy = [(t, 8.0) for t in range(0, 70, 10)]          # 8 in flight for a minute
    idle = [(t, 0.0) for t in range(70, 500, 10)]        # then nothing
    got = run(busy + idle, auto)
    assert got[:7] == [8] * 7                            # up at once (no upscale period), to 8
    after = got[7:]
    assert after[:6] == [8] * 6                          # the minute after the lull keeps 8 (highest of the period)
    assert after[-1] == 1 and after == sorted(after, reverse=True)   # then down, never up again
    steps_down = [b for a, b in pairwise(after) if b < a]
    assert all(b >= a // 2 for a, b in pairwise(after) if b < a) and steps_down


def test_the_window_averages_in_flight_requests() -> None:
    auto = Autoscaling(target_replica_concurrency=1.0, window_s=40, upscale_stabilization_period_s=0,
                       downscale_stabilization_period_s=0, max_upscale_factor=10)
    # one sample of 8 among three of 0 within 40 s: mean 2 -> 2 replicas, not 8
    assert run([(0, 0.0), (10, 0.0), (20, 0.0), (30, 8.0)], auto)[-1] == 2


def test_state_stays_bounded_however_often_it_is_called() -> None:
    auto = Autoscaling(target_replica_concurrency=1.0, window_s=60, upscale_stabilization_period_s=60,
                       downscale_stabilization_period_s=300)
    state = ConcurrencyState()
    for i in range(3_000):
        _, state = decide_concurrency(1.0, state, SPEC, auto, i * 0.001)
    assert len(state.samples) <= 1_000 and len(state.recommendations) <= 1_000


def test_bounds_change_at_reload_are_respected() -> None:
    state = ConcurrencyState(started=0.0, desired=15)
    desired, _ = decide_concurrency(60.0, state, Compute(min_replicas=1, max_replicas=4, init_replicas=1), AUTO, 1000.0)
    assert desired == 4
