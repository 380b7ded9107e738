"""What the per-API queue (dispatch.py) moves: jobs (one request each), replica links and
their slots (one connection each), and how a job can fail."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence

from cortexd import protocol
from cortexd.config.objects import Batching
from cortexd.daemon.serving.upstream import UpstreamConnection


class QueueFull(Exception):
    pass


class NoReplicas(Exception):
    pass


class DeadlineExceeded(Exception):
    """The request waited in the queue until its deadline."""


class PredictionTimeout(Exception):
    """The request reached a replica but had no answer by its deadline."""


class ReplicaFailed(Exception):
    """The replicas holding the request hung up while they had it (twice: it was retried once)."""


class Unreachable(Exception):
    """The request could not be delivered to any replica (after its one retry)."""


class Job:
    """One request on its way through the queue: its outcome is `future`."""

    __slots__ = ("target", "body", "headers", "future", "deadline", "arrived", "timeout_s", "created",
                 "dispatched_at", "slot", "timer", "retried")

    def __init__(self, target: str, body: bytes, future: asyncio.Future[tuple[int, bytes]], deadline: float,
                 arrived: float, headers: bytes = b"") -> None:
        self.target = target
        self.body = body
        self.headers = headers  # the client's header lines, for predictors that take them
        self.future = future
        self.deadline = deadline  # loop time
        self.arrived = arrived  # loop time it entered the queue (a batch interval counts from it)
        self.timeout_s = deadline - arrived
        # perf_counter stamps (the loop's clock has millisecond resolution under uvloop)
        self.created = time.perf_counter()
        self.dispatched_at: float | None = None  # when it was written to a replica
        self.slot: Slot | None = None  # the slot holding it
        self.timer: asyncio.TimerHandle | None = None
        self.retried = False

    @property
    def alive(self) -> bool:
        """Still waiting for its outcome (for the batch former)."""
        return not self.future.done()

    @property
    def framable(self) -> bool:
        """A prediction that can go in a batch frame (a V2 request goes on its own)."""
        return self.target.startswith(protocol.PREDICT_PATH)


# (the jobs of a batch just sent, why it was sent: "full" | "interval" | "freed", loop time)
BatchObserver = Callable[[list[Job], "str | None", float], None]


class LinkState(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"  # finishing what it holds, then on_drained
    FAILED = "failed"  # reported to the supervisor; waiting for it to `remove` the replica


class Slot:
    """One connection to a replica, carrying one exchange at a time: a request, or a batch."""

    __slots__ = ("link", "conn", "jobs", "framed")

    def __init__(self, link: ReplicaLink, conn: UpstreamConnection) -> None:
        self.link = link
        self.conn = conn
        self.jobs: list[Job] = []  # what it holds (empty: free)
        self.framed = False  # the exchange is a batch frame


class ReplicaLink:
    """The proxy's view of one ready replica: its slots (connections) and state."""

    def __init__(self, replica_id: str, conns: UpstreamConnection | Sequence[UpstreamConnection], generation: int,
                 batching: Batching | None = None) -> None:
        self.replica_id = replica_id
        self.generation = generation
        self.batching = batching  # it takes batches (POST /predict-batch), formed by batcher.py
        if isinstance(conns, UpstreamConnection) or not isinstance(conns, Sequence):
            conns = [conns]
        self.slots = [Slot(self, conn) for conn in conns]
        self.state = LinkState.SERVING
        self.on_drained: Callable[[], None] | None = None
        self.overdue_reported = False

    @property
    def busy(self) -> bool:
        return any(slot.jobs for slot in self.slots)
