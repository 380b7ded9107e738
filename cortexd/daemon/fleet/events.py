"""Everything that can happen to a replica, as events for the supervisor (its one writer).

Producers: the spawner (ready, load failed, exited, killed by the kernel), the proxy's
queues (connection lost, answer overdue) and the periodic readings (over memory). They only
post; the event pump hands each event to `Supervisor.handle` on the daemon's loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReplicaReady:
    replica_id: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicaLoadFailed:
    replica_id: str
    message: str


@dataclass(frozen=True)
class ReplicaExited:
    replica_id: str
    returncode: int
    pid: int | None = None


@dataclass(frozen=True)
class ReplicaDrained:
    replica_id: str


@dataclass(frozen=True)
class ReplicaOverMemory:
    replica_id: str
    rss_bytes: int
    limit_bytes: int  # 0: no limit of its own (the kernel killed it for the machine's memory)
    killed_by_kernel: bool = False  # its cgroup's memory.events counted an oom_kill; rss_bytes = peak


@dataclass(frozen=True)
class ReplicaLost:
    """The proxy's connection to the replica broke while it could have been serving."""

    replica_id: str
    reason: str


@dataclass(frozen=True)
class ReplicaOverdue:
    """A request at the replica passed its deadline: the replica is hung (or stopped)."""

    replica_id: str
    timeout_s: float


@dataclass(frozen=True)
class ReplicaOverGpuMemory:
    """NVML reads the replica's processes above its gpu_mem by more than the margin."""

    replica_id: str
    reason: str  # fleet/gpu_memory.OverGpuMemory.reason(): how much, on which GPU, the limit


Event = (
    ReplicaReady | ReplicaLoadFailed | ReplicaExited | ReplicaDrained | ReplicaOverMemory | ReplicaOverGpuMemory
    | ReplicaLost | ReplicaOverdue
)
