"""Replicas' lifecycle — spawn, reap, replace, drain, roll — and the one owner of API state.

The supervisor is synchronous and takes `now` from an injected clock: commands (declare,
deploy, rescale, remove) come from the reloader and the autoscaler, events (fleet/events.py)
from the spawner, the proxy and the periodic readings, all through the daemon's one loop.
`reconcile` compares what each API wants with what runs and acts through a Spawner
(processes), a Router (the proxy's queues) and a Placer (GPUs, cpu/mem admission). Readers
get frozen snapshots (`snapshot`); nothing else walks or edits these collections. Tests
drive it with a fake spawner, router and clock (tests/test_supervisor.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cortexd.config import Api
from cortexd.daemon.fleet.events import (
    Event,
    ReplicaDrained,
    ReplicaExited,
    ReplicaLoadFailed,
    ReplicaLost,
    ReplicaOverdue,
    ReplicaOverGpuMemory,
    ReplicaOverMemory,
    ReplicaReady,
)
from cortexd.daemon.fleet.failures import LOAD_FAILURES_FOR_ERROR, Failures, SupervisorSettings, backoff_delay
from cortexd.daemon.fleet.lifecycle import OpenPlacer, Placer, Router, Spawner, SpawnRequest
from cortexd.daemon.fleet.rolling import roll_step
from cortexd.daemon.fleet.snapshot import Fleet, reason_of, snapshot_of, status_of
from cortexd.daemon.fleet.state import (
    DRAINING,
    READY,
    STARTING,
    ApiEntry,
    Done,
    Generation,
    LastError,
    Replica,
    Version,
)
from cortexd.daemon.observe.status import STOPPED

__all__ = [
    "LOAD_FAILURES_FOR_ERROR", "Event", "OpenPlacer", "Placer", "ReplicaDrained", "ReplicaExited", "ReplicaLoadFailed",
    "ReplicaLost", "ReplicaOverMemory", "ReplicaOverdue", "ReplicaReady", "Router", "SpawnRequest", "Spawner",
    "Supervisor", "SupervisorSettings", "Version", "backoff_delay",
]

log = logging.getLogger("cortexd.supervisor")



class Supervisor(Failures):
    def __init__(
        self,
        spawner: Spawner,
        router: Router,
        clock: Callable[[], float],
        settings: SupervisorSettings | None = None,
        placer: Placer | None = None,
        api_log: Callable[[str, str], None] | None = None,
        recent_output: Callable[[str], list[str]] | None = None,
        on_stopped: Callable[[str, bool], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.spawner = spawner
        self.router = router
        self.clock = clock
        self.wall = wall  # for the dates in messages; `clock` may be monotonic
        self.settings = settings or SupervisorSettings()
        self.placer: Placer = placer or OpenPlacer()
        self.apis: dict[str, ApiEntry] = {}
        self._api_log = api_log or (lambda api, msg: log.info("%s: %s", api, msg))
        self._recent_output = recent_output or (lambda rid: [])
        self._on_stopped = on_stopped or (lambda name, removed: None)  # removed: gone from cortex.yaml
        self._counter = 0
        self._generation = 0

    # -- commands (the reloader, the autoscaler, shutdown) ------------------------------------

    def declare(self, spec: Api, preparing: str) -> None:
        """A new API: known (and `creating`) while its first version is prepared."""
        if spec.name not in self.apis:
            self.apis[spec.name] = ApiEntry(
                name=spec.name, spec=spec, desired=spec.compute.init_replicas, preparing=preparing
            )

    def preparing(self, name: str, what: str | None) -> None:
        entry = self.apis.get(name)
        if entry is not None and entry.current is None:
            entry.preparing = what

    def prepare_failed(self, name: str, reason: str) -> None:
        """The deploy pipeline could not make a version (model fetch, environment, deadline)."""
        entry = self.apis.get(name)
        if entry is None:
            return
        entry.preparing = None
        if entry.current is None:
            entry.prepare_error = reason
            self._error(entry, reason)
        else:
            self._error(entry, f"update failed, still serving version {entry.current.version.number}: {reason}")

    def deploy(self, spec: Api, version: Version, on_done: Done | None = None) -> None:
        """Run `version`: the first one at once; later ones as a start-first rolling update."""
        self.declare(spec, "starting")
        entry = self.apis[spec.name]
        entry.spec = spec
        entry.desired = _clamp(entry.desired, spec.compute.min_replicas, spec.compute.max_replicas)
        if on_done is not None:
            entry.on_done.append(on_done)
        if entry.current is None:
            entry.preparing, entry.prepare_error = None, None
            entry.current = self._new_generation(spec, version)
            self._api_log(spec.name, f"deploying version {version.number} ({_desired_text(spec)})")
            return
        if entry.next is not None:  # a newer reload supersedes an update still rolling
            self._abandon_next(entry, "superseded by a newer reload")
        entry.next = self._new_generation(spec, version)
        self._api_log(spec.name, f"updating to version {version.number}")

    def rescale(self, spec: Api) -> None:
        """Compute-only change (bounds, target, replica count) or a moved route: applied in place."""
        entry = self.apis[spec.name]
        entry.spec = spec
        for gen in (entry.current, entry.next):
            if gen is not None:
                gen.spec = spec
        entry.desired = _clamp(entry.desired, spec.compute.min_replicas, spec.compute.max_replicas)

    def set_desired(self, name: str, desired: int) -> None:
        entry = self.apis.get(name)
        if entry is None or entry.stopping:
            return
        c = entry.spec.compute
        entry.desired = _clamp(desired, c.min_replicas, c.max_replicas)

    def remove(self, name: str, removed: bool = True) -> None:
        """Drain and stop an API in any state; it leaves `apis` (and `on_stopped` is called)
        once its last replica has exited. `removed`: gone from cortex.yaml (its tracked
        figures go too), not a daemon shutdown."""
        entry = self.apis.get(name)
        if entry is None or entry.stopping:
            return
        entry.stopping = True
        entry.removed = removed
        self._api_log(name, "stopping: draining its replicas")
        if entry.next is not None:
            self._abandon_next(entry, "API removed")
        self._settle(entry, False, "API removed")

    def stop_all(self) -> None:
        for name in list(self.apis):
            self.remove(name, removed=False)

    def all_stopped(self) -> bool:
        return not self.apis

    # -- events ------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        now = self.clock()
        found = self._find(event.replica_id)
        if found is None:
            return
        entry, gen, rep = found
        if isinstance(event, ReplicaReady):
            self._on_ready(entry, gen, rep, event.info)
        elif isinstance(event, ReplicaLoadFailed):
            self._on_load_failed(entry, gen, rep, event.message)
        elif isinstance(event, ReplicaExited):
            self._on_exit(entry, gen, rep, event.returncode, now)
        elif isinstance(event, ReplicaDrained):
            if rep.state is DRAINING:
                self._terminate(rep, now)
        elif isinstance(event, ReplicaOverMemory):
            self._on_over_memory(entry, gen, rep, event, now)
        elif isinstance(event, ReplicaOverGpuMemory):
            if rep.failure is None:
                gen.gpu_oom = True
                self._fail_replica(entry, gen, rep, event.reason, now, signal="kill")
        elif isinstance(event, ReplicaLost):
            self._fail_replica(entry, gen, rep, f"replica {rep.id} lost its connection to the daemon ({event.reason})",
                               now, signal=None)
        elif isinstance(event, ReplicaOverdue):
            self._fail_replica(entry, gen, rep, f"replica {rep.id} did not answer within the request timeout "
                               f"({event.timeout_s:g}s): stopped and replaced", now, signal="term")

    def _on_ready(self, entry: ApiEntry, gen: Generation, rep: Replica, info: dict[str, object]) -> None:
        if rep.state is not STARTING:
            return
        rep.advance(READY)
        slot = gen.slot(rep.slot)
        slot.failures = 0
        slot.load_failures = 0
        gen.error = None
        if info:
            gen.info = dict(info)
        self._api_log(entry.name, f"replica {rep.id} is ready (pid {rep.handle.pid})")
        if gen is entry.current:
            short = gen.ready_count() < entry.spec.compute.min_replicas
            gen.oom, gen.gpu_oom = gen.oom and short, gen.gpu_oom and short
            self._route(entry, gen, rep)
            self._settle_first(entry)
        elif gen is entry.next:
            if gen.spec.update_strategy is not None:  # a rolling update serves new replicas as they come
                self._route(entry, gen, rep)
            self._maybe_switch(entry)

    # -- reconcile ---------------------------------------------------------------------------

    def reconcile(self) -> None:
        now = self.clock()
        for entry in list(self.apis.values()):
            if entry.stopping:
                for gen in entry.generations():
                    self._drain_all(entry, gen, now)
                self._maybe_stopped(entry)
                continue
            if entry.current is None:
                continue
            if entry.next is not None:
                limit = self._roll(entry, entry.current, entry.next, now)
                self._reconcile_generation(entry, entry.next, now, limit)
                self._maybe_switch(entry)
            self._reconcile_generation(entry, entry.current, now)
            self._settle_first(entry)
            for gen in list(entry.retired):
                self._drain_all(entry, gen, now)
        self._enforce_kill_deadlines(now)

    def _roll(self, entry: ApiEntry, old: Generation, new: Generation, now: float) -> int | None:
        """One step of a rolling update with an update_strategy (fleet/rolling.py): drain the
        old replicas it allows; how many new ones may exist. None: start-first, all at once."""
        strategy = new.spec.update_strategy
        if strategy is None:
            return None
        surge, unavailable = strategy.resolve(entry.desired)
        old_live = [r for r in old.replicas.values() if r.state in (STARTING, READY) and r.slot not in old.retiring]
        new_live = [r for r in new.replicas.values() if r.state in (STARTING, READY)]
        step = roll_step(entry.desired, surge, unavailable, len(old_live), len(new_live), new.ready_count())
        # Not-yet-ready old replicas go first, then the highest slots.
        for rep in sorted(old_live, key=lambda r: (r.state is READY, -r.slot))[:step.drain_old]:
            old.retiring.add(rep.slot)
            self._drain(entry, rep, now)
        return step.new_target

    def _reconcile_generation(self, entry: ApiEntry, gen: Generation, now: float, limit: int | None = None) -> None:
        """Start what `gen` lacks of `entry.desired` replicas (at most `limit` of them exist);
        drain what is above it. Slots an update is retiring stay empty."""
        by_slot = {rep.slot: rep for rep in gen.replicas.values() if rep.state in (STARTING, READY)}
        gen.compute_unavailable = None
        room = None if limit is None else limit - len(by_slot)
        for n in range(entry.desired):
            if n in by_slot or n in gen.retiring:
                continue
            if room is not None:
                if room <= 0:
                    break
                room -= 1
            slot = gen.slot(n)
            if slot.next_start > now:
                continue
            rid = self._next_id(entry.name)
            gpus, reason = self.placer.place(rid, gen.spec, slot.gpus)
            if gpus is None:
                gen.compute_unavailable = reason
                continue
            slot.gpus = gpus
            try:
                handle = self.spawner.spawn(SpawnRequest(replica_id=rid, api=gen.spec, version=gen.version, gpus=gpus))
            except OSError as exc:  # its working folder or interpreter is gone: a failure of the slot, with backoff
                self.placer.release(rid)
                slot.failures += 1
                slot.load_failures += 1
                slot.next_start = now + backoff_delay(slot.failures + 1, self.settings)
                message = f"cannot start a replica: {exc}"
                self._error(entry, message)
                log.warning("%s: %s", entry.name, message)
                if slot.load_failures >= LOAD_FAILURES_FOR_ERROR:
                    gen.error = message
                continue
            gen.replicas[rid] = Replica(
                id=rid, api=entry.name, generation=gen.number, slot=n, handle=handle, gpus=gpus,
                started_at=now, restarts=slot.restarts,
            )
        for n, rep in by_slot.items():
            if n >= entry.desired:  # scale down: highest slots go first, after their request
                self._drain(entry, rep, now)
        for n in [n for n in gen.slots if n >= entry.desired and n not in by_slot]:
            del gen.slots[n]

    def _maybe_switch(self, entry: ApiEntry) -> None:
        nxt = entry.next
        if nxt is None:
            return
        if nxt.error is not None:
            self._abandon_next(entry, nxt.error)
            return
        if nxt.ready_count() < max(1, min(entry.desired, nxt.spec.compute.max_replicas)):
            return
        old = entry.current
        if nxt.spec.update_strategy is not None and old is not None and any(
                r.state in (STARTING, READY) and r.slot not in old.retiring for r in old.replicas.values()):
            return  # a rolling update is done when no old replica is left
        # Switch atomically: every new replica enters the queue, then every old one drains.
        entry.current, entry.next = nxt, None
        for rep in nxt.replicas.values():
            if rep.state is READY and not rep.routed:
                self._route(entry, nxt, rep)
        if old is not None:
            entry.retired.append(old)
            self._drain_all(entry, old, self.clock())
        entry.last_error = None
        self._api_log(entry.name, f"now serving version {nxt.version.number}")
        self._settle(entry, True, f"now serving version {nxt.version.number}")

    def _abandon_next(self, entry: ApiEntry, reason: str) -> None:
        nxt = entry.next
        if nxt is None or entry.current is None:
            return
        entry.next = None
        entry.retired.append(nxt)
        self._drain_all(entry, nxt, self.clock())
        entry.current.retiring.clear()  # the old version fills its slots again
        message = f"update failed, still serving version {entry.current.version.number}: {reason}"
        self._error(entry, message)
        self._api_log(entry.name, message)
        self._settle(entry, False, message)

    def _settle_first(self, entry: ApiEntry) -> None:
        """Answer the reload that deployed an API's first version: live, or why not."""
        gen = entry.current
        if gen is None or entry.next is not None or not entry.on_done:
            return
        if gen.ready_count() >= entry.spec.compute.min_replicas:
            self._settle(entry, True, "live")
        elif gen.error is not None:
            self._settle(entry, False, f"error: {gen.error}")
        elif gen.compute_unavailable is not None and not gen.replicas:
            self._settle(entry, False, f"compute unavailable: {gen.compute_unavailable}")

    def _settle(self, entry: ApiEntry, ok: bool, message: str) -> None:
        callbacks, entry.on_done = entry.on_done, []
        for cb in callbacks:
            cb(ok, message)

    def _maybe_stopped(self, entry: ApiEntry) -> None:
        if entry.stopping and not any(g.replicas for g in entry.generations()) and entry.name in self.apis:
            self._api_log(entry.name, "stopped")
            del self.apis[entry.name]
            self._on_stopped(entry.name, entry.removed)

    def _route(self, entry: ApiEntry, gen: Generation, rep: Replica) -> None:
        rep.routed = True
        # One connection per request the replica serves at once (threads_per_process); a
        # batching replica takes one batch at a time per process (its threads make the batch).
        # Batching as its own version was configured (a reload may turn it on or off beside it).
        spec = gen.spec
        slots = spec.processes_per_replica if spec.batching is not None else spec.threads_per_process
        self.router.replica_ready(entry.name, rep.id, self.spawner.socket_path(rep.id), rep.generation, slots,
                                  spec.batching)
        self.router.set_hold_when_empty(entry.name, False)

    def _unroute(self, entry: ApiEntry, gen: Generation, rep: Replica, restarting: bool) -> None:
        """Take a replica out of the queue; while its replacement starts, requests wait for it."""
        if not rep.routed:
            return
        rep.routed = False
        if restarting and gen is entry.current and not any(
            r.routed and r.state is READY for r in gen.replicas.values() if r is not rep
        ):
            self.router.set_hold_when_empty(entry.name, gen.error is None)
        self.router.replica_gone(entry.name, rep.id)

    def _error(self, entry: ApiEntry, message: str) -> None:
        entry.last_error = LastError(message, self.wall())

    # -- views (fleet/snapshot.py renders the entries) ---------------------------------------

    def status(self, name: str) -> str:
        entry = self.apis.get(name)
        return STOPPED if entry is None else status_of(entry)

    def status_reason(self, name: str) -> str | None:
        entry = self.apis.get(name)
        return None if entry is None else reason_of(entry)

    def snapshot(self) -> Fleet:
        return {name: snapshot_of(entry) for name, entry in self.apis.items()}

    def replica_pids(self) -> dict[str, int]:
        """Every running replica's pid, for the periodic readings."""
        return {rep.id: rep.handle.pid for e in self.apis.values() for _, rep in e.replicas() if rep.handle.pid}

    def versions_in_use(self) -> list[Version]:
        return [gen.version for e in self.apis.values() for gen in e.generations()]

    # -- helpers -----------------------------------------------------------------------------

    def _new_generation(self, spec: Api, version: Version) -> Generation:
        self._generation += 1
        return Generation(number=self._generation, spec=spec, version=version)

    def _next_id(self, api: str) -> str:
        self._counter += 1
        return f"{api}-{self._counter}"

    def _find(self, replica_id: str) -> tuple[ApiEntry, Generation, Replica] | None:
        for entry in self.apis.values():
            found = entry.find(replica_id)
            if found is not None:
                return entry, found[0], found[1]
        return None


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _desired_text(spec: Api) -> str:
    c = spec.compute
    return f"{c.init_replicas} replica(s), min {c.min_replicas}, max {c.max_replicas}"
