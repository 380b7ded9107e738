"""Frozen views of the supervisor's state: what every reader (get, /readyz, /metrics,
sd_notify STATUS, the proxy's 503 messages) renders, so none of them walks or edits the
supervisor's own collections and all of them agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortexd.config import Api
from cortexd.daemon.fleet.state import ApiEntry, LastError
from cortexd.daemon.observe.status import CREATING, ERROR, STOPPING, StatusFacts, derive_status


@dataclass(frozen=True)
class ReplicaSnapshot:
    id: str
    pid: int | None
    state: str
    version: int
    gpus: tuple[int, ...]
    restarts: int
    mem_limit: int | None  # bytes, from its version's spec


@dataclass(frozen=True)
class ApiSnapshot:
    name: str
    spec: Api
    status: str
    reason: str | None  # why it is not live: preparing, compute unavailable, error
    version: int  # the version serving (0 before the first)
    requested: int
    ready: int  # ready replicas of the serving version
    last_error: LastError | None
    replicas: tuple[ReplicaSnapshot, ...]
    info: dict[str, Any]  # what the serving version's replica said of its model (read only)
    stopping: bool
    restarts: int

    @property
    def endpoint(self) -> str:
        return self.spec.endpoint

    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rep in self.replicas:
            counts[rep.state] = counts.get(rep.state, 0) + 1
        return counts


Fleet = dict[str, ApiSnapshot]


def status_of(entry: ApiEntry) -> str:
    gen = entry.current
    if gen is None:
        if entry.stopping:
            return STOPPING
        return ERROR if entry.prepare_error else CREATING
    return derive_status(StatusFacts(
        stopping=entry.stopping,
        stopped=False,
        ready=gen.ready_count(),
        min_replicas=entry.spec.compute.min_replicas,
        rolling=entry.next is not None,
        error=gen.error,
        oom=gen.oom,
        gpu_oom=gen.gpu_oom,
        compute_unavailable=gen.compute_unavailable,
    ))


def reason_of(entry: ApiEntry) -> str | None:
    if entry.current is None:
        return entry.prepare_error or entry.preparing
    gen = entry.next or entry.current
    reason = gen.compute_unavailable or gen.error
    if reason is None and (gen.oom or gen.gpu_oom) and entry.last_error is not None:
        reason = entry.last_error.message  # which replica, how much memory, its limit
    return reason


def snapshot_of(entry: ApiEntry) -> ApiSnapshot:
    replicas = tuple(
        ReplicaSnapshot(rep.id, rep.handle.pid, rep.state.value, gen.version.number, tuple(rep.gpus), rep.restarts,
                        gen.spec.compute.mem_limit)
        for gen, rep in entry.replicas()
    )
    current = entry.current
    return ApiSnapshot(
        name=entry.name,
        spec=entry.spec,
        status=status_of(entry),
        reason=reason_of(entry),
        version=current.version.number if current is not None else 0,
        requested=entry.desired,
        ready=current.ready_count() if current is not None else 0,
        last_error=entry.last_error,
        replicas=replicas,
        info=current.info if current is not None else {},
        stopping=entry.stopping,
        restarts=sum(s.restarts for g in entry.generations() for s in g.slots.values()),
    )
