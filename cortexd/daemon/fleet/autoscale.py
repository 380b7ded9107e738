"""Autoscaling as pure decisions: the CPU rule (the seed, v0.11-v0.13 dialects) and, at the end
of this module, the in-flight request rule of Cortex v0.14-v0.35 (`decide_concurrency`).

CPU autoscaling: the Kubernetes HPA rule with its downscale window.

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
    from cortexd.config import Autoscaling, Compute

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


def _prune(
    entries: tuple[tuple[float, int], ...], now: float, settings: AutoscaleSettings
) -> tuple[tuple[float, int], ...]:
    cutoff = now - settings.downscale_window_s
    return tuple(entry for entry in entries if entry[0] > cutoff)


# ---------------------------------------------------------------------------------------------
# Request-based autoscaling (Cortex v0.14-v0.35): in-flight requests per replica.
#
# Every tick the daemon measures the API's in-flight requests (answered by no replica yet:
# being served, or waiting for a replica) and calls `decide_concurrency`, which is Cortex's
# operator rule:
#
#   raw = mean(in-flight over the last `window`) / target_replica_concurrency
#   recommendation = ceil(raw), unless raw lies within the tolerances around the current count
#   one event moves at most to ceil(current * max_downscale_factor) (but always allows -1) and
#   ceil(current * max_upscale_factor) (but always allows +1), then 1 <= r, [min, max]
#   scale down only to the highest recommendation of downscale_stabilization_period, and up
#   only to the lowest of upscale_stabilization_period; during those periods after the API
#   started, no scaling in that direction at all. The recommendations are recorded after the
#   rules that ignore history and before the two periods (Cortex's order).


@dataclass(frozen=True)
class ConcurrencyState:
    """What `decide_concurrency` remembers: its start, last decision, and two bounded windows."""

    started: float | None = None
    desired: int | None = None
    samples: tuple[tuple[float, float], ...] = ()          # (time, in-flight) within `window`
    recommendations: tuple[tuple[float, int], ...] = ()    # (time, replicas) within the longer period


# More samples than this in one window would only mean the daemon ticks absurdly often
# (at a 10 s tick, 1,000 samples cover a window of almost three hours).
MAX_SAMPLES = 1000


def concurrency_recommendation(mean_in_flight: float, current: int, spec: Compute, auto: Autoscaling) -> int:
    """One tick's recommendation before the stabilization periods (pure; Cortex's order of rules)."""
    raw = mean_in_flight / auto.target_replica_concurrency
    rec = math.ceil(raw - _SLACK)
    if current * (1 - auto.downscale_tolerance) < raw < current:
        rec = current
    if current < raw < current * (1 + auto.upscale_tolerance):
        rec = current
    floor = min(current - 1, math.ceil(current * auto.max_downscale_factor - _SLACK))   # always allow -1
    ceiling = max(current + 1, math.ceil(current * auto.max_upscale_factor - _SLACK))   # always allow +1
    rec = min(max(rec, floor), ceiling)
    return clamp(max(rec, 1), spec)


def decide_concurrency(
    in_flight: float, state: ConcurrencyState, spec: Compute, auto: Autoscaling, now: float,
) -> tuple[int, ConcurrencyState]:
    """(desired replicas, new state) from the API's in-flight requests measured at `now`."""
    started = now if state.started is None else state.started
    current = clamp(state.desired if state.desired is not None else spec.init_replicas, spec)
    samples = tuple(s for s in state.samples if s[0] > now - auto.window_s)[-(MAX_SAMPLES - 1):] + ((now, in_flight),)
    mean = sum(value for _, value in samples) / len(samples)
    rec = concurrency_recommendation(mean, current, spec, auto)
    keep = max(auto.downscale_stabilization_period_s, auto.upscale_stabilization_period_s)
    recs = tuple(r for r in state.recommendations if r[0] >= now - keep)[-(MAX_SAMPLES - 1):] + ((now, rec),)

    # Each period holds back its own direction only (as Cortex v0.35 did; earlier releases let
    # the upscale period's minimum pull a steady count down, against their own documentation).
    request = rec
    if request < current:
        if now - started < auto.downscale_stabilization_period_s:
            request = current
        else:
            request = max(request, max(r for t, r in recs if t >= now - auto.downscale_stabilization_period_s))
    elif request > current:
        if now - started < auto.upscale_stabilization_period_s:
            request = current
        else:
            request = min(request, min(r for t, r in recs if t >= now - auto.upscale_stabilization_period_s))
    desired = clamp(request, spec)
    return desired, ConcurrencyState(started, desired, samples, recs)
