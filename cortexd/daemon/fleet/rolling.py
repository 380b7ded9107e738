"""Rolling updates with Cortex's update_strategy (max_surge, max_unavailable), as a pure step.

Without an update strategy (the dialects that had none) an update is start-first: the whole
new version starts beside the old one and takes over once ready. With one, the update moves
as Kubernetes' Deployment controller moves it, which matters on a machine whose GPUs or
memory hold one version only (max_surge: 0 stops an old replica before its replacement starts):

- old replicas to drain now = old live + new ready - desired + max_unavailable (at least 0,
  at most the old live ones): what can go while `desired - max_unavailable` stay ready;
- new replicas that may exist = desired + max_surge - old live replicas left (at most desired).

Each reconcile takes one step; the update is done when `desired` new replicas are ready and
no old one is left.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RollStep:
    new_target: int  # replicas of the new version that may exist now (started or ready)
    drain_old: int  # live replicas of the old version to take out now


def roll_step(desired: int, surge: int, unavailable: int, old_live: int, new_all: int, new_ready: int) -> RollStep:
    drain = max(0, min(old_live, old_live + new_ready - desired + unavailable))
    new_target = min(desired, max(new_all, desired + surge - (old_live - drain)))
    return RollStep(new_target, drain)
