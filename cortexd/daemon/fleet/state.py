"""What the supervisor owns: APIs, their generations and replicas, and the replica states.

A replica's state changes only through `advance`, which checks the transition against
ALLOWED (supervisord's `_assertInState`, as a table): a transition the table does not
allow is a bug, raised at once rather than left to surface later as a replica the proxy
and `get` disagree about.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cortexd.config import Api


class ReplicaState(str, enum.Enum):
    STARTING = "starting"  # spawned, loading its predictor
    READY = "ready"  # loaded; in the proxy's queue
    DRAINING = "draining"  # out of the queue, finishing the request it holds
    STOPPING = "stopping"  # signalled; gone when its exit is seen

    def __str__(self) -> str:
        return self.value


STARTING, READY, DRAINING, STOPPING = (
    ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING, ReplicaState.STOPPING,
)

ALLOWED: dict[ReplicaState, frozenset[ReplicaState]] = {
    STARTING: frozenset({READY, STOPPING}),
    READY: frozenset({DRAINING, STOPPING}),
    DRAINING: frozenset({STOPPING}),
    STOPPING: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


class ReplicaHandle(Protocol):
    pid: int | None

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


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
class LastError:
    message: str
    at: float  # wall-clock time (time.time()): shown as a date


@dataclass(eq=False)
class Replica:
    id: str
    api: str
    generation: int
    slot: int
    handle: ReplicaHandle
    gpus: list[int]
    started_at: float
    state: ReplicaState = STARTING
    stop_deadline: float | None = None
    restarts: int = 0  # of its slot, carried so `get` shows them per replica
    # Why the supervisor is stopping a replica that did nothing wrong by exiting: an exit
    # after this is a failure (restart with backoff, out-of-memory status), not a drain.
    failure: str | None = None
    signalled: bool = False  # the supervisor sent it a signal (so its exit code may be ours)
    over_memory: bool = False
    routed: bool = False  # handed to the proxy's queue

    def advance(self, new: ReplicaState) -> None:
        if new not in ALLOWED[self.state]:
            raise InvalidTransition(f"replica {self.id}: {self.state} -> {new} is not allowed")
        self.state = new


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
    gpu_oom: bool = False
    compute_unavailable: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the replica said of its model
    retiring: set[int] = field(default_factory=set)  # slots a rolling update drained: not refilled

    def ready_count(self) -> int:
        return sum(1 for r in self.replicas.values() if r.state is READY)

    def slot(self, n: int) -> SlotState:
        return self.slots.setdefault(n, SlotState())


Done = Callable[[bool, str], None]


@dataclass(eq=False)
class ApiEntry:
    """One API, from the moment cortex.yaml names it until it has stopped."""

    name: str
    spec: Api  # as last applied: the serving version's, or the one being prepared first
    desired: int
    current: Generation | None = None  # None until its first version is deployed
    next: Generation | None = None  # a rolling update in progress
    retired: list[Generation] = field(default_factory=list)  # old generations still draining
    preparing: str | None = None  # what the deploy pipeline is doing before the first version
    prepare_error: str | None = None  # the first version could not be prepared
    stopping: bool = False
    removed: bool = False  # stopping because cortex.yaml no longer names it (not a shutdown)
    last_error: LastError | None = None
    on_done: list[Done] = field(default_factory=list)  # told when the version deploying is live or failed

    def generations(self) -> list[Generation]:
        gens = ([self.current] if self.current is not None else []) + self.retired
        if self.next is not None:
            gens.append(self.next)
        return gens

    def replicas(self) -> list[tuple[Generation, Replica]]:
        return [(gen, rep) for gen in self.generations() for rep in gen.replicas.values()]

    def find(self, replica_id: str) -> tuple[Generation, Replica] | None:
        for gen in self.generations():
            rep = gen.replicas.get(replica_id)
            if rep is not None:
                return gen, rep
        return None

    @property
    def deploying(self) -> Generation | None:
        """The generation whose readiness answers the reload that made it."""
        return self.next or self.current
