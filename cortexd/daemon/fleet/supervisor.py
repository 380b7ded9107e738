"""Replicas' lifecycle: spawn, reap, replace, drain, roll — the one writer of replica state.

The supervisor is synchronous and takes `now` from an injected clock: events (a replica is
ready, failed to load, exited, finished draining) come in through `handle`, and `reconcile`
compares what each API wants with what runs and acts through a Spawner (processes) and a
Router (the proxy's queues). The asyncio runner in daemon/main.py feeds it; tests drive it
with a fake spawner and a fake clock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from cortexd import protocol
from cortexd.config import Api
from cortexd.daemon.observe.status import StatusFacts, derive_status

log = logging.getLogger("cortexd.supervisor")

# A predictor that fails to load this many times in a row puts its API in `error`.
LOAD_FAILURES_FOR_ERROR = 3
BACKOFF_FIRST_S = 0.0  # a replica that served and then died is replaced at once
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long


# -- events -------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ReplicaDrained:
    replica_id: str


@dataclass(frozen=True)
class ReplicaOverMemory:
    replica_id: str
    rss_bytes: int
    limit_bytes: int  # 0: no limit of its own (the kernel killed it for the machine's memory)
    killed_by_kernel: bool = False  # its cgroup's memory.events counted an oom_kill; rss_bytes = peak


Event = ReplicaReady | ReplicaLoadFailed | ReplicaExited | ReplicaDrained | ReplicaOverMemory


# -- what the supervisor drives -----------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One immutable version of an API: what its replicas run."""

    number: int
    workdir: str  # the project snapshot the replicas run in
    model_path: str | None  # local path of the fetched model
    fingerprint: str = ""
    python: str | None = None  # interpreter (a per-deployment env), None = the daemon's
    # The predictor file and python_path inside the snapshot (the spec's point into the
    # project, which may have changed since); None: use the spec's own (tests).
    predictor_path: str | None = None
    python_path: str | None = None
    snapshot_id: str = ""
    env_key: str | None = None


@dataclass(frozen=True)
class SpawnRequest:
    replica_id: str
    api: Api
    version: Version
    gpus: list[int]


class ReplicaHandle(Protocol):
    pid: int | None

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Spawner(Protocol):
    def spawn(self, request: SpawnRequest) -> ReplicaHandle: ...

    def socket_path(self, replica_id: str) -> str: ...


class Router(Protocol):
    def replica_ready(self, api: str, replica_id: str, socket_path: str, version: int) -> None: ...

    def drain(self, api: str, replica_id: str, on_drained: Callable[[], None]) -> None: ...

    def replica_gone(self, api: str, replica_id: str) -> None: ...

    def set_hold_when_empty(self, api: str, hold: bool) -> None: ...


class Placer(Protocol):
    """GPU placement and cpu/mem admission (daemon/placement.py)."""

    def place(self, replica_id: str, api: Api, preferred_gpus: list[int] | None) -> tuple[list[int] | None, str | None]: ...

    def release(self, replica_id: str) -> None: ...


class OpenPlacer:
    """Admits everything and places no GPUs: for tests of the lifecycle alone."""

    def place(self, replica_id: str, api: Api, preferred_gpus: list[int] | None) -> tuple[list[int] | None, str | None]:
        return [], None

    def release(self, replica_id: str) -> None:
        pass


# -- state --------------------------------------------------------------------------------

STARTING = "starting"
READY = "ready"
DRAINING = "draining"
STOPPING_STATE = "stopping"


@dataclass(eq=False)
class Replica:
    id: str
    api: str
    generation: int
    slot: int
    handle: ReplicaHandle
    gpus: list[int]
    started_at: float
    state: str = STARTING
    stop_deadline: float | None = None
    restarts: int = 0  # of its slot, carried so `get` shows them per replica
    over_memory: bool = False
    routed: bool = False  # handed to the proxy's queue


@dataclass
class SlotState:
    failures: int = 0  # consecutive unexpected exits
    load_failures: int = 0  # consecutive failures to load the predictor
    next_start: float = 0.0
    gpus: list[int] | None = None  # kept across a crash so the replacement gets the same GPU
    restarts: int = 0


@dataclass(eq=False)
class Generation:
    number: int
    spec: Api
    version: Version
    replicas: dict[str, Replica] = field(default_factory=dict)
    slots: dict[int, SlotState] = field(default_factory=dict)
    error: str | None = None  # set after repeated load failures
    oom: bool = False
    compute_unavailable: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    ever_ready: bool = False

    def ready_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.state == READY)

    def slot(self, n: int) -> SlotState:
        return self.slots.setdefault(n, SlotState())


@dataclass(eq=False)
class ApiRuntime:
    name: str
    current: Generation
    desired: int
    next: Generation | None = None  # a rolling update in progress
    stopping: bool = False
    last_error: str | None = None
    retired: list[Generation] = field(default_factory=list)  # old generations still draining
    on_update_done: list[Callable[[bool, str], None]] = field(default_factory=list)

    @property
    def spec(self) -> Api:
        return self.current.spec

    def generations(self) -> list[Generation]:
        gens = [self.current] + self.retired
        if self.next is not None:
            gens.append(self.next)
        return gens

    def find(self, replica_id: str) -> tuple[Generation, Replica] | None:
        for gen in self.generations():
            rep = gen.replicas.get(replica_id)
            if rep is not None:
                return gen, rep
        return None


@dataclass
class SupervisorSettings:
    stop_grace_s: float = STOP_GRACE_S
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S
    hold_requests_max_backoff_s: float = 5.0  # queued requests wait for a replacement starting sooner


def backoff_delay(failures: int, settings: SupervisorSettings) -> float:
    """Delay before restarting a slot after `failures` consecutive unexpected exits."""
    if failures <= 1:
        return BACKOFF_FIRST_S
    return min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (failures - 2))


class Supervisor:
    def __init__(
        self,
        spawner: Spawner,
        router: Router,
        clock: Callable[[], float],
        settings: SupervisorSettings | None = None,
        placer: Placer | None = None,
        api_log: Callable[[str, str], None] | None = None,
        recent_output: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.spawner = spawner
        self.router = router
        self.clock = clock
        self.settings = settings or SupervisorSettings()
        self.placer: Placer = placer or OpenPlacer()
        self.apis: dict[str, ApiRuntime] = {}
        self._api_log = api_log or (lambda api, msg: log.info("%s: %s", api, msg))
        self._recent_output = recent_output or (lambda rid: [])
        self._counter = 0
        self._generation = 0
        self.stopped_apis: dict[str, ApiRuntime] = {}

    # -- commands ------------------------------------------------------------------------

    def _new_generation(self, spec: Api, version: Version) -> Generation:
        self._generation += 1
        return Generation(number=self._generation, spec=spec, version=version)

    def add_api(self, spec: Api, version: Version, desired: int | None = None) -> None:
        gen = self._new_generation(spec, version)
        self.apis[spec.name] = ApiRuntime(
            name=spec.name, current=gen, desired=desired if desired is not None else spec.compute.init_replicas
        )
        self._api_log(spec.name, f"deploying version {version.number} ({self._desired_text(spec)})")

    def update_api(self, spec: Api, version: Version, on_done: Callable[[bool, str], None] | None = None) -> None:
        """Start-first rolling update: the new generation serves only once fully ready."""
        api = self.apis[spec.name]
        if api.next is not None:  # a newer reload supersedes an update still rolling
            self._abandon_next(api, "superseded by a newer reload")
        api.next = self._new_generation(spec, version)
        api.desired = _clamp(api.desired, spec.compute.min_replicas, spec.compute.max_replicas)
        if on_done is not None:
            api.on_update_done.append(on_done)
        self._api_log(spec.name, f"updating to version {version.number}")

    def rescale_api(self, spec: Api) -> None:
        """Compute-only change (bounds, target, replica count): applied in place."""
        api = self.apis[spec.name]
        api.current.spec = spec
        if api.next is not None:
            api.next.spec = spec
        api.desired = _clamp(api.desired, spec.compute.min_replicas, spec.compute.max_replicas)

    def set_desired(self, name: str, desired: int) -> None:
        api = self.apis.get(name)
        if api is None or api.stopping:
            return
        c = api.spec.compute
        api.desired = _clamp(desired, c.min_replicas, c.max_replicas)

    def remove_api(self, name: str) -> None:
        api = self.apis.get(name)
        if api is None or api.stopping:
            return
        api.stopping = True
        self._api_log(name, "stopping: draining its replicas")
        if api.next is not None:
            self._abandon_next(api, "API removed")

    def stop_all(self) -> None:
        for name in list(self.apis):
            self.remove_api(name)

    def all_stopped(self) -> bool:
        return not self.apis

    # -- events --------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        now = self.clock()
        found = self._find(event.replica_id)
        if found is None:
            return
        api, gen, rep = found
        if isinstance(event, ReplicaReady):
            self._on_ready(api, gen, rep, event.info)
        elif isinstance(event, ReplicaLoadFailed):
            slot = gen.slot(rep.slot)
            slot.load_failures += 1
            api.last_error = event.message
            self._api_log(api.name, f"replica {rep.id} failed to load its predictor: {event.message}")
            if slot.load_failures >= LOAD_FAILURES_FOR_ERROR and gen.error is None:
                gen.error = event.message
        elif isinstance(event, ReplicaExited):
            self._on_exit(api, gen, rep, event.returncode, now)
        elif isinstance(event, ReplicaDrained):
            if rep.state == DRAINING:
                self._terminate(rep, now)
        elif isinstance(event, ReplicaOverMemory):
            if rep.state in (STARTING, READY, DRAINING):
                rep.over_memory = True
                gen.oom = True
                if event.killed_by_kernel:
                    api.last_error = (
                        f"replica {rep.id} was killed by the kernel for using {_mib(event.rss_bytes)} of memory, "
                        + (f"above its limit of {_mib(event.limit_bytes)} (cgroup memory.max)" if event.limit_bytes
                           else "when the machine ran out of memory")
                        + f" (at {_iso(now)})"
                    )
                else:
                    api.last_error = (
                        f"replica {rep.id} was stopped for using {_mib(event.rss_bytes)} of memory, above its limit "
                        f"of {_mib(event.limit_bytes)} (at {_iso(now)})"
                    )
                self._api_log(api.name, api.last_error)
                if rep.routed:
                    self.router.replica_gone(api.name, rep.id)
                    rep.routed = False
                self._terminate(rep, now, kill=True)

    def _on_ready(self, api: ApiRuntime, gen: Generation, rep: Replica, info: dict[str, Any]) -> None:
        if rep.state != STARTING:
            return
        rep.state = READY
        slot = gen.slot(rep.slot)
        slot.failures = 0
        slot.load_failures = 0
        gen.error = None
        gen.ever_ready = True
        if info:
            gen.info = info
        self._api_log(api.name, f"replica {rep.id} is ready (pid {rep.handle.pid})")
        if gen is api.current:
            gen.oom = gen.oom and gen.ready_count() < api.spec.compute.min_replicas
            self._route(api, rep)
        elif gen is api.next:
            self._maybe_switch(api)

    def _on_exit(self, api: ApiRuntime, gen: Generation, rep: Replica, code: int, now: float) -> None:
        del gen.replicas[rep.id]
        self.placer.release(rep.id)
        expected = rep.state in (DRAINING, STOPPING_STATE) and not rep.over_memory
        was_ready = rep.state == READY
        if rep.routed:
            self.router.replica_gone(api.name, rep.id)
        slot = gen.slot(rep.slot)
        if not expected:
            slot.failures += 1
            slot.restarts += 1
            delay = backoff_delay(slot.failures, self.settings)
            slot.next_start = now + delay
            if rep.over_memory:
                reason = api.last_error or "out of memory"
            elif code == protocol.EXIT_LOAD_FAILED:
                reason = api.last_error or "the predictor failed to load"
            else:
                reason = self._crash_reason(rep, code)
                api.last_error = reason
            self._api_log(api.name, f"replica {rep.id} exited unexpectedly (code {code}); restarting in {delay:.0f}s")
            if gen is api.current and was_ready:
                hold = gen.ready_count() == 0 and delay <= self.settings.hold_requests_max_backoff_s
                self.router.set_hold_when_empty(api.name, hold)
            log.warning("%s: %s", api.name, reason)
        if gen in api.retired and not gen.replicas:
            api.retired.remove(gen)
        if api.stopping and not any(g.replicas for g in api.generations()):
            self._api_log(api.name, "stopped")
            self.stopped_apis[api.name] = self.apis.pop(api.name)

    def _crash_reason(self, rep: Replica, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = self._recent_output(rep.id)[-8:]
        detail = ("; last output: " + " | ".join(line.strip() for line in tail)) if tail else ""
        return f"replica {rep.id} {how}{detail}"

    # -- reconcile -----------------------------------------------------------------------

    def reconcile(self) -> None:
        now = self.clock()
        for api in list(self.apis.values()):
            if api.stopping:
                for gen in api.generations():
                    self._drain_all(api, gen, now)
                continue
            if api.next is not None:
                self._reconcile_generation(api, api.next, now)
                self._maybe_switch(api)
            self._reconcile_generation(api, api.current, now)
            for gen in list(api.retired):
                self._drain_all(api, gen, now)
        self._enforce_kill_deadlines(now)

    def _reconcile_generation(self, api: ApiRuntime, gen: Generation, now: float) -> None:
        by_slot = {rep.slot: rep for rep in gen.replicas.values() if rep.state in (STARTING, READY)}
        gen.compute_unavailable = None
        for n in range(api.desired):
            if n in by_slot:
                continue
            slot = gen.slot(n)
            if slot.next_start > now:
                continue
            rid = self._next_id(api.name)
            gpus, reason = self.placer.place(rid, gen.spec, slot.gpus)
            if gpus is None:
                gen.compute_unavailable = reason
                continue
            slot.gpus = gpus
            handle = self.spawner.spawn(SpawnRequest(replica_id=rid, api=gen.spec, version=gen.version, gpus=gpus))
            gen.replicas[rid] = Replica(
                id=rid, api=api.name, generation=gen.number, slot=n, handle=handle, gpus=gpus,
                started_at=now, restarts=slot.restarts,
            )
        for n, rep in by_slot.items():
            if n >= api.desired:  # scale down: highest slots go first, after their request
                self._drain(api, rep, now)
        for n in [n for n in gen.slots if n >= api.desired and n not in by_slot]:
            del gen.slots[n]

    def _maybe_switch(self, api: ApiRuntime) -> None:
        nxt = api.next
        if nxt is None:
            return
        if nxt.error is not None:
            self._abandon_next(api, nxt.error)
            return
        if nxt.ready_count() < max(1, min(api.desired, nxt.spec.compute.max_replicas)):
            return
        # Switch atomically: every new replica enters the queue, then every old one drains.
        old = api.current
        api.current, api.next = nxt, None
        for rep in nxt.replicas.values():
            if rep.state == READY:
                self._route(api, rep)
        api.retired.append(old)
        now = self.clock()
        self._drain_all(api, old, now)
        api.last_error = None
        self._api_log(api.name, f"now serving version {nxt.version.number}")
        self._finish_update(api, True, f"now serving version {nxt.version.number}")

    def _abandon_next(self, api: ApiRuntime, reason: str) -> None:
        nxt = api.next
        if nxt is None:
            return
        api.next = None
        api.retired.append(nxt)
        now = self.clock()
        self._drain_all(api, nxt, now)
        api.last_error = f"update failed, still serving version {api.current.version.number}: {reason}"
        self._api_log(api.name, api.last_error)
        self._finish_update(api, False, api.last_error)

    def _finish_update(self, api: ApiRuntime, ok: bool, message: str) -> None:
        callbacks, api.on_update_done = api.on_update_done, []
        for cb in callbacks:
            cb(ok, message)

    def _drain_all(self, api: ApiRuntime, gen: Generation, now: float) -> None:
        for rep in list(gen.replicas.values()):
            self._drain(api, rep, now)

    def _drain(self, api: ApiRuntime, rep: Replica, now: float) -> None:
        if rep.state == READY:
            rep.state = DRAINING
            if rep.routed:
                rid = rep.id
                self.router.drain(api.name, rid, lambda: self._post_drained(rid))
            else:  # never entered the queue: nothing to finish
                self._terminate(rep, now)
        elif rep.state == STARTING:
            self._terminate(rep, now)

    def _route(self, api: ApiRuntime, rep: Replica) -> None:
        rep.routed = True
        self.router.replica_ready(api.name, rep.id, self.spawner.socket_path(rep.id), rep.generation)
        self.router.set_hold_when_empty(api.name, False)

    def _post_drained(self, replica_id: str) -> None:
        self.handle(ReplicaDrained(replica_id))

    def _terminate(self, rep: Replica, now: float, kill: bool = False) -> None:
        rep.state = STOPPING_STATE
        if kill:
            rep.handle.kill()
            rep.stop_deadline = now
            return
        rep.handle.terminate()
        rep.stop_deadline = now + self.settings.stop_grace_s

    def _enforce_kill_deadlines(self, now: float) -> None:
        for api in self.apis.values():
            for gen in api.generations():
                for rep in gen.replicas.values():
                    if rep.state == STOPPING_STATE and rep.stop_deadline is not None and now >= rep.stop_deadline:
                        rep.handle.kill()
                        rep.stop_deadline = None

    def next_wakeup(self) -> float | None:
        """When reconcile next has something to do on its own (a backoff or grace expiring)."""
        times: list[float] = []
        now = self.clock()
        for api in self.apis.values():
            for gen in api.generations():
                times += [s.next_start for s in gen.slots.values() if s.next_start > now]
                times += [r.stop_deadline for r in gen.replicas.values() if r.stop_deadline is not None]
        return min(times) if times else None

    # -- views ---------------------------------------------------------------------------

    def status(self, name: str) -> str:
        api = self.apis.get(name)
        if api is None:
            return "stopped"
        gen = api.current
        return derive_status(
            StatusFacts(
                stopping=api.stopping,
                stopped=False,
                ready=gen.ready_count(),
                min_replicas=api.spec.compute.min_replicas,
                rolling=api.next is not None,
                error=gen.error,
                oom=gen.oom,
                compute_unavailable=gen.compute_unavailable,
            )
        )

    def status_reason(self, name: str) -> str | None:
        api = self.apis.get(name)
        if api is None:
            return None
        gen = api.next or api.current
        return gen.compute_unavailable or gen.error

    # -- helpers -------------------------------------------------------------------------

    def _next_id(self, api: str) -> str:
        self._counter += 1
        return f"{api}-{self._counter}"

    def _find(self, replica_id: str) -> tuple[ApiRuntime, Generation, Replica] | None:
        for api in self.apis.values():
            found = api.find(replica_id)
            if found is not None:
                return api, found[0], found[1]
        return None

    @staticmethod
    def _desired_text(spec: Api) -> str:
        c = spec.compute
        return f"{c.init_replicas} replica(s), min {c.min_replicas}, max {c.max_replicas}"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))

