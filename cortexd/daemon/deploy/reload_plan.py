"""The reload decision, as a pure function: (running, new config, fingerprints) -> actions.

Kinds of action, per API:

- ``unchanged``: nothing to do (its route may still move, see below).
- ``scale``: only compute bounds changed (min/max/init replicas, target utilisation).
  Applied in place: the autoscaler's bounds change, no replica restarts.
- ``replace``: start-first rolling update. Its fingerprint changed (config, predictor file,
  model, Python files; see fingerprint.py), or compute that shapes a replica process changed
  (``cpu``, ``gpu``, ``mem``: they are its CUDA_VISIBLE_DEVICES, thread pools and memory
  limit, fixed when it starts), or the user forced it (``reload --force API``).
- ``add``: a new API. ``remove``: an API gone from the config (drain, then 404).

An endpoint change is not a reason to restart anything: ``moved_from`` is set on an
unchanged/scale/replace action and the proxy moves the route atomically (all route
changes of one reload are best applied as one swap of the routing table, so two APIs that
exchange endpoints never collide).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cortexd.daemon.deploy.fingerprint import changed_parts

if TYPE_CHECKING:
    from cortexd.config import Api, Compute

ActionKind = Literal["unchanged", "scale", "replace", "add", "remove"]

# Compute fields that only bound or steer the autoscaler; everything else in Compute
# (cpu, gpu, mem, and any field added later, to be safe) needs new replicas.
SCALE_FIELDS: frozenset[str] = frozenset(
    {"min_replicas", "max_replicas", "init_replicas", "target_cpu_utilization"}
)


@dataclass(frozen=True)
class RunningApi:
    """What the daemon runs now for one API."""

    name: str
    endpoint: str
    fingerprint: str
    compute: Compute
    steering: tuple[object, ...] = (None, None)  # autoscaling and update_strategy: applied in place


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str
    api: Api | None                    # the new definition; None for "remove"
    endpoint: str                      # the route after the reload (for "remove": the one going away)
    moved_from: str | None = None      # previous endpoint when the route moves
    reasons: tuple[str, ...] = ()      # why, for the reload report: "predictor changed", "compute.gpu 0 -> 1", "forced"

    @property
    def moved(self) -> bool:
        return self.moved_from is not None

    def describe(self) -> str:
        """One line for `cortexd reload` output, e.g. ``iris: replace (predictor changed)``."""
        verb = {
            "unchanged": "unchanged",
            "scale": "scaled in place",
            "replace": "replaced (rolling update)",
            "add": "added",
            "remove": "removed",
        }[self.kind]
        text = f"{self.name}: {verb}"
        if self.reasons:
            text += f" ({', '.join(self.reasons)})"
        if self.moved_from is not None:
            text += f"; route {self.moved_from} -> {self.endpoint}"
        return text


class PlanError(ValueError):
    """The inputs do not make a plan (unknown --force name, missing fingerprint)."""


def plan_reload(
    running: Mapping[str, RunningApi],
    new_apis: Sequence[Api],
    fingerprints: Mapping[str, str],
    force: Collection[str] = (),
) -> list[Action]:
    """Actions that take the daemon from `running` to `new_apis`.

    `fingerprints` maps every name in `new_apis` to its new fingerprint. Order: the new
    config's order, then removals by name. Raises PlanError for a forced name that is
    neither running nor configured, or a new API without a fingerprint.
    """
    new_names = [a.name for a in new_apis]
    unknown = sorted(set(force) - set(new_names) - set(running))
    if unknown:
        known = ", ".join(sorted(set(new_names) | set(running))) or "none"
        raise PlanError(f"--force: no API named {', '.join(map(repr, unknown))} (APIs: {known})")
    missing = [n for n in new_names if n not in fingerprints]
    if missing:
        raise PlanError(f"no fingerprint for {', '.join(missing)}")

    actions: list[Action] = []
    for api in new_apis:
        old = running.get(api.name)
        if old is None:
            actions.append(Action("add", api.name, api, api.endpoint))
            continue
        moved_from = old.endpoint if old.endpoint != api.endpoint else None
        reasons: list[str] = []
        replace = False
        if api.name in force:
            replace = True
            reasons.append("forced")
        parts = changed_parts(old.fingerprint, fingerprints[api.name])
        if parts:
            replace = True
            reasons.extend(f"{p} changed" for p in parts)
        diff = compute_diff(old.compute, api.compute)
        if any(field not in SCALE_FIELDS for field, _, _ in diff):
            replace = True
        reasons.extend(f"compute.{field} {a} -> {b}" for field, a, b in diff)
        if old.steering != steering(api):
            reasons.append("autoscaling or update_strategy changed")
            diff.append(("steering", old.steering, steering(api)))
        if replace:
            kind: ActionKind = "replace"
        elif diff:
            kind = "scale"
        else:
            kind = "unchanged"
        actions.append(Action(kind, api.name, api, api.endpoint, moved_from, tuple(reasons)))

    present = set(new_names)
    for name in sorted(n for n in running if n not in present):
        actions.append(Action("remove", name, None, running[name].endpoint))
    return actions


def steering(api: Api) -> tuple[object, ...]:
    """The settings of an API that only steer the daemon, compared as one value."""
    return (api.autoscaling, api.update_strategy)


def compute_diff(old: Compute, new: Compute) -> list[tuple[str, object, object]]:
    """(field, old value, new value) for each Compute field that differs, in field order."""
    return [
        (f.name, getattr(old, f.name), getattr(new, f.name))
        for f in dataclasses.fields(new)
        if getattr(old, f.name, None) != getattr(new, f.name)
    ]
