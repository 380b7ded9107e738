"""CPU autoscaling: a pure decision, the Kubernetes HPA rule with its downscale window.

Every `period_s` the daemon measures each READY replica's CPU use as a percentage of
its cpu request and calls `decide`. Replicas still loading are left out by the
caller: they burn CPU importing models, which says nothing about the load.

    recommendation = ceil(ready * mean(readings) / target), clamped to [min, max]
                     (= ready when the mean is within `tolerance` of target)
    scale up at once; scale down only to the highest recommendation of the last
    `downscale_window_s` seconds, so a short lull does not throw away replicas that
    the next burst needs again (and a flapping load does not flap replicas).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the fields are read; keeps this module importable on its own
    from cortexd.config import Compute

# Float noise must not cross a boundary: 88 / 80 is 1.1000000000000001 (still inside a
# 10 % tolerance) and 3 * 100 / 75 may come out a hair above 4 (still 4 replicas).
_SLACK = 1e-9


@dataclass(frozen=True)
class AutoscaleSettings:
    period_s: float = 15.0  # how often the daemon calls decide (the daemon's timer, not used here)
    downscale_window_s: float = 300.0
    tolerance: float = 0.1  # no change while mean/target is within 1 +- tolerance


@dataclass(frozen=True)
class AutoscaleState:
    """What `decide` remembers between calls.

    `recommendations` holds (time, replicas) of the downscale window, oldest first,
    with values strictly decreasing: an older recommendation no higher than a newer
    one can never be the window's maximum again, so it is dropped. The first entry
    is the window's maximum, and the tuple stays at most max_replicas long however
    often decide is called.
    """

    desired: int | None = None  # None: no decision yet (the daemon starts init_replicas)
    recommendations: tuple[tuple[float, int], ...] = ()


def initial_state(spec: Compute, now: float) -> AutoscaleState:
    """State for an API started at `now` with init_replicas.

    init_replicas counts as a recommendation made at start, so the replicas a user
    asked for are not cut on the first idle reading but kept for one downscale
    window (a bare AutoscaleState() has no such memory).
    """
    start = clamp(spec.init_replicas, spec)
    return AutoscaleState(start, ((now, start),))


def clamp(n: int, spec: Compute) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, n))


def recommend(readings: Sequence[float], spec: Compute, tolerance: float) -> int:
    """Replicas the current readings ask for, before the window and bounds. Needs readings."""
    current = len(readings)
    ratio = (sum(readings) / current) / max(spec.target_cpu_utilization, 1)  # config forbids 0; never divide by it
    if abs(ratio - 1.0) <= tolerance + _SLACK:
        return current
    return math.ceil(current * ratio - _SLACK)


def decide(
    readings: Sequence[float],
    state: AutoscaleState,
    spec: Compute,
    now: float,
    settings: AutoscaleSettings = AutoscaleSettings(),
) -> tuple[int, AutoscaleState]:
    """(desired replicas, new state) from the CPU % of cpu request of each ready replica.

    No readings (nothing ready yet) keeps the previous decision, or init_replicas
    before the first one, and records no recommendation: time spent loading is
    not a reason to scale either way.
    """
    previous = clamp(state.desired if state.desired is not None else spec.init_replicas, spec)
    if not readings:
        return previous, AutoscaleState(previous, _prune(state.recommendations, now, settings))

    rec = clamp(recommend(readings, spec, settings.tolerance), spec)
    window = _prune(state.recommendations, now, settings)
    window = tuple(entry for entry in window if entry[1] > rec) + ((now, rec),)
    if rec >= previous:
        desired = rec  # scale up (or stay) at once
    else:
        # Scale down, but not below anything recommended within the window, and never
        # up through the window: bounds may have shrunk since (a reload).
        desired = clamp(min(previous, window[0][1]), spec)
    return desired, AutoscaleState(desired, window)


def _prune(entries: tuple[tuple[float, int], ...], now: float, settings: AutoscaleSettings) -> tuple[tuple[float, int], ...]:
    cutoff = now - settings.downscale_window_s
    return tuple(entry for entry in entries if entry[0] > cutoff)
