"""roll_step: Kubernetes-style rolling updates, one reconcile at a time (pure table)."""

from __future__ import annotations

import pytest

from cortexd.daemon.fleet.rolling import RollStep, roll_step


@pytest.mark.parametrize("desired, surge, unavailable, old_live, new_all, new_ready, step", [
    # max_surge 1, max_unavailable 0 (start one new, drain one old once it is ready, ...)
    (2, 1, 0, 2, 0, 0, RollStep(1, 0)),
    (2, 1, 0, 2, 1, 1, RollStep(2, 1)),
    (2, 1, 0, 1, 2, 2, RollStep(2, 1)),
    # max_surge 0, max_unavailable 1: one GPU, one replica: stop the old one first
    (1, 0, 1, 1, 0, 0, RollStep(1, 1)),
    (1, 0, 1, 0, 1, 0, RollStep(1, 0)),
    # 25 % / 25 % of 4: one extra, one missing
    (4, 1, 1, 4, 0, 0, RollStep(2, 1)),
    (4, 1, 1, 3, 2, 2, RollStep(4, 2)),
    # nothing ready yet: nothing more drains than max_unavailable allows
    (3, 3, 0, 3, 3, 0, RollStep(3, 0)),
    # done
    (2, 1, 0, 0, 2, 2, RollStep(2, 0)),
])
def test_roll_step(desired: int, surge: int, unavailable: int, old_live: int, new_all: int, new_ready: int,
                   step: RollStep) -> None:
    assert roll_step(desired, surge, unavailable, old_live, new_all, new_ready) == step


@pytest.mark.parametrize("desired, surge, unavailable", [(1, 0, 1), (3, 1, 0), (4, 1, 1), (5, 2, 2), (2, 0, 2)])
def test_a_rollout_always_finishes_and_keeps_its_bounds(desired: int, surge: int, unavailable: int) -> None:
    """Simulate: every started replica becomes ready at the next step; bounds hold throughout."""
    old, new_all, new_ready = desired, 0, 0
    for _ in range(4 * desired + 4):
        step = roll_step(desired, surge, unavailable, old, new_all, new_ready)
        old -= step.drain_old
        new_ready = new_all  # what was started last step is ready now
        new_all = max(new_all, step.new_target)
        assert old + new_all <= desired + surge
        assert old + new_ready >= desired - unavailable or new_ready == new_all < desired
        if old == 0 and new_ready == desired:
            return
    raise AssertionError("the rollout did not finish")
