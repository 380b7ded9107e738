"""How a replica is started and stopped: the spawner's interface, and the drain/terminate/
kill steps the supervisor takes (a mixin, so supervisor.py holds the decisions and this file
the mechanics of signals and deadlines)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cortexd.config import Api, Batching
from cortexd.daemon.fleet.events import ReplicaDrained
from cortexd.daemon.fleet.state import (
    DRAINING,
    READY,
    STARTING,
    STOPPING,
    ApiEntry,
    Generation,
    Replica,
    ReplicaHandle,
    Version,
)

if TYPE_CHECKING:
    from cortexd.daemon.fleet.supervisor import SupervisorSettings


@dataclass(frozen=True)
class SpawnRequest:
    replica_id: str
    api: Api
    version: Version
    gpus: list[int]


class Spawner(Protocol):
    def spawn(self, request: SpawnRequest) -> ReplicaHandle: ...

    def socket_path(self, replica_id: str) -> str: ...


class Router(Protocol):
    def replica_ready(self, api: str, replica_id: str, socket_path: str, generation: int, slots: int,
                      batching: Batching | None) -> None: ...

    def drain(self, api: str, replica_id: str, on_drained: Callable[[], None]) -> None: ...

    def replica_gone(self, api: str, replica_id: str) -> None: ...

    def set_hold_when_empty(self, api: str, hold: bool) -> None: ...


class Placer(Protocol):
    """GPU placement and cpu/mem admission (fleet/compute.py)."""

    def place(
        self, replica_id: str, api: Api, preferred_gpus: list[int] | None
    ) -> tuple[list[int] | None, str | None]: ...

    def release(self, replica_id: str) -> None: ...


class OpenPlacer:
    """Admits everything and places no GPUs: for tests of the lifecycle alone."""

    def place(self, replica_id: str, api: Api, preferred_gpus: list[int] | None) -> tuple[list[int] | None, str | None]:
        return [], None

    def release(self, replica_id: str) -> None:
        pass


class Lifecycle:
    apis: dict[str, ApiEntry]
    router: Router
    settings: SupervisorSettings

    clock: Callable[[], float]  # the supervisor's injected clock

    def _drain_all(self, entry: ApiEntry, gen: Generation, now: float) -> None:
        for rep in list(gen.replicas.values()):
            self._drain(entry, rep, now)

    def _drain(self, entry: ApiEntry, rep: Replica, now: float) -> None:
        """Out of the queue; stopped once the request it holds is answered."""
        if rep.state is READY:
            rep.advance(DRAINING)
            if rep.routed:
                rid = rep.id
                self.router.drain(entry.name, rid, lambda: self.handle(ReplicaDrained(rid)))
            else:  # never entered the queue: nothing to finish
                self._terminate(rep, now)
        elif rep.state is STARTING:
            self._terminate(rep, now)

    def handle(self, event: ReplicaDrained) -> None: ...  # the supervisor's event entry point

    def _terminate(self, rep: Replica, now: float) -> None:
        rep.advance(STOPPING)
        rep.signalled = True
        rep.handle.terminate()
        rep.stop_deadline = now + self.settings.stop_grace_s

    def _enforce_kill_deadlines(self, now: float) -> None:
        for entry in self.apis.values():
            for _, rep in entry.replicas():
                if rep.state is STOPPING and rep.stop_deadline is not None and now >= rep.stop_deadline:
                    rep.signalled = True
                    rep.handle.kill()
                    rep.stop_deadline = None

    def next_wakeup(self) -> float | None:
        """When reconcile next has something to do on its own (a backoff or grace expiring)."""
        times: list[float] = []
        now = self.clock()
        for entry in self.apis.values():
            for gen in entry.generations():
                times += [s.next_start for s in gen.slots.values() if s.next_start > now]
                times += [r.stop_deadline for r in gen.replicas.values() if r.stop_deadline is not None]
        return min(times) if times else None
