from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from cortexd.daemon.fleet.autoscale import AutoscaleSettings, AutoscaleState, decide, initial_state, recommend

try:
    from cortexd.config import Compute
except ImportError:  # the config package is written in parallel; same fields as COMMON.md

    @dataclass(frozen=True)
    class Compute:  # type: ignore[no-redef]
        min_replicas: int = 1
        max_replicas: int = 100
        init_replicas: int = 1
        target_cpu_utilization: int = 80
        cpu: float = 0.2
        gpu: int = 0
        mem: int | None = None


SPEC = Compute(min_replicas=1, max_replicas=10, init_replicas=1, target_cpu_utilization=80)
WINDOW_60 = AutoscaleSettings(period_s=15, downscale_window_s=60, tolerance=0.1)
DEFAULT = AutoscaleSettings()
INITIAL = AutoscaleState()

Step = tuple[float, list[float], int]  # (now, CPU % of request per ready replica, expected desired)


def run(steps: list[Step], spec: Compute = SPEC, settings: AutoscaleSettings = DEFAULT,
        state: AutoscaleState = INITIAL) -> list[int]:
    got = []
    for now, readings, _ in steps:
        desired, state = decide(readings, state, spec, now, settings)
        got.append(desired)
    return got


SEQUENCES: dict[str, tuple[list[Step], Compute, AutoscaleSettings]] = {
    "steady load stays put, small wobbles inside the tolerance": ([
        (0, [80], 1), (15, [87], 1), (30, [73], 1), (45, [88], 1), (60, [72], 1),
    ], SPEC, DEFAULT),
    "steady two replicas with uneven readings (mean on target)": ([
        (0, [160], 2), (15, [70, 90], 2), (30, [60, 100], 2),
    ], SPEC, DEFAULT),
    "spike scales up at once, the lull after it waits for the window": ([
        (0, [80], 1),
        (15, [320], 4),            # ceil(1 * 320 / 80)
        (30, [80, 80, 80, 80], 4),
        (45, [10, 10, 10, 10], 4),  # recommends 1, but 4 was recommended at t=30
        (329, [10, 10, 10, 10], 4),  # t=30 still inside the 300 s window
        (330, [10, 10, 10, 10], 1),  # now outside: down to the window's highest, 1
    ], SPEC, DEFAULT),
    "spike above max is clamped": ([
        (0, [2000], 10), (15, [2000] * 10, 10),
    ], SPEC, DEFAULT),
    "flapping load keeps the high-water mark instead of flapping": ([
        (0, [160], 2),
        (15, [20, 20], 2), (30, [160, 160], 4), (45, [20] * 4, 4), (60, [160] * 4, 8),
        (75, [20] * 8, 8), (90, [160] * 8, 10), (105, [20] * 10, 10), (120, [20] * 10, 10),
        # the last 10 was recommended at t=90: a 60 s window holds it until t=150 (exclusive)
        (149, [20] * 10, 10),
        (150, [20] * 10, 3),
    ], SPEC, WINDOW_60),
    "scale-down is stepwise as higher recommendations expire": ([
        (0, [480], 6),
        (20, [40] * 6, 6),   # recommends 3
        (40, [20] * 6, 6),   # recommends 2
        (61, [20] * 6, 3),   # the 6 of t=0 expired; 3 (t=20) is now the highest
        (81, [20] * 3, 2),   # 3 expired; 2 (t=61) remains; recommends 1
        (102, [20] * 2, 2),
        (122, [20] * 2, 1),
    ], SPEC, WINDOW_60),
    "replicas still loading are not counted and do not cause a scale-down": ([
        (0, [], 1),            # nothing ready yet: init_replicas
        (15, [320], 4),        # one ready, hot: ask for 4
        (30, [320], 4),        # the 3 new ones still loading: same reading, same answer
        (45, [], 4),           # the ready one restarted: keep the previous decision
        (60, [80, 80], 4),     # 2 ready on target: recommends 2, window holds 4
        (75, [60, 60, 60, 60], 4),  # all 4 ready, 0.75 of target: ceil(3) = 3, window holds 4
    ], SPEC, WINDOW_60),
    "window expiry with no ready replicas in between keeps the decision": ([
        (0, [320], 4), (15, [], 4), (100, [], 4), (200, [10] * 4, 1),
    ], SPEC, WINDOW_60),
    "bounds: min and max, idle never goes below min": ([
        (0, [0, 0, 0], 3), (15, [0, 0, 0], 3), (30, [400] * 3, 5), (45, [800] * 5, 5),
        (500, [0] * 5, 3),
    ], Compute(min_replicas=3, max_replicas=5, init_replicas=4, target_cpu_utilization=80), DEFAULT),
    "init_replicas before the first reading, then the readings decide": ([
        (0, [], 3), (15, [], 3), (30, [80, 80, 80], 3), (45, [200, 200, 200], 8),
    ], Compute(min_replicas=1, max_replicas=10, init_replicas=3, target_cpu_utilization=80), DEFAULT),
    "another target: 50 %": ([
        (0, [100], 2), (15, [56, 54], 2), (30, [60, 60], 3),
    ], Compute(min_replicas=1, max_replicas=10, init_replicas=1, target_cpu_utilization=50), DEFAULT),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_sequences(name: str) -> None:
    steps, spec, settings = SEQUENCES[name]
    assert run(steps, spec, settings) == [expected for _, _, expected in steps]


@pytest.mark.parametrize(
    "readings, target, expected",
    [
        ([80], 80, 1),
        ([88], 80, 1),      # ratio 1.1: inside the tolerance
        ([89], 80, 2),      # ratio 1.1125: outside, ceil up
        ([72] * 10, 80, 10),  # ratio 0.9: inside
        ([71] * 10, 80, 9),   # ceil(8.875)
        ([0], 80, 0),       # idle: 0 before clamping
        ([160, 0], 80, 2),  # the mean, not the max
        ([100] * 3, 75, 4),  # 3 * 100 / 75 = 4.0000000000000001 must not become 5
        ([240] * 3, 80, 9),
    ],
)
def test_recommend(readings: list[float], target: int, expected: int) -> None:
    spec = Compute(min_replicas=1, max_replicas=100, init_replicas=1, target_cpu_utilization=target)
    assert recommend(readings, spec, 0.1) == expected


def test_initial_state_keeps_init_replicas_for_one_window() -> None:
    spec = Compute(min_replicas=1, max_replicas=10, init_replicas=4, target_cpu_utilization=80)
    state = initial_state(spec, 100.0)
    assert state == AutoscaleState(4, ((100.0, 4),))
    steps: list[Step] = [
        (115, [], 4), (130, [0, 0], 4), (159, [0] * 4, 4),
        (160, [0] * 4, 1),  # 60 s after the start
    ]
    assert run(steps, spec, WINDOW_60, state) == [4, 4, 4, 1]
    # a spike right after start still scales up at once
    assert decide([400] * 4, state, spec, 101.0, WINDOW_60)[0] == 10
    # init outside the bounds is clamped
    assert initial_state(Compute(min_replicas=2, max_replicas=3, init_replicas=5), 0.0).desired == 3


def test_bounds_shrunk_by_a_reload_apply_at_once() -> None:
    state = AutoscaleState(desired=8, recommendations=((0.0, 8),))
    small = Compute(min_replicas=1, max_replicas=3, init_replicas=1, target_cpu_utilization=80)
    assert decide([], state, small, 10.0)[0] == 3
    assert decide([80] * 8, state, small, 10.0)[0] == 3
    big_min = Compute(min_replicas=9, max_replicas=12, init_replicas=9, target_cpu_utilization=80)
    assert decide([10] * 8, state, big_min, 10.0)[0] == 9


def test_state_stays_small_however_often_it_is_called() -> None:
    rng = random.Random(4)
    spec = Compute(min_replicas=1, max_replicas=20, init_replicas=1, target_cpu_utilization=80)
    state = AutoscaleState()
    desired = 1
    for tick in range(5000):
        readings = [rng.uniform(0, 400) for _ in range(desired)] if rng.random() > 0.1 else []
        previous = desired
        desired, state = decide(readings, state, spec, tick * 0.5, DEFAULT)
        assert 1 <= desired <= 20
        assert len(state.recommendations) <= 20
        values = [v for _, v in state.recommendations]
        assert values == sorted(set(values), reverse=True)  # strictly decreasing
        if readings:
            rec = max(1, min(20, recommend(readings, spec, 0.1)))
            # scale-up is immediate; a decision never goes below the fresh recommendation
            assert desired == rec if rec >= previous else rec <= desired <= previous
