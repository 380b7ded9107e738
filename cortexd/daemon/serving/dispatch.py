"""Per-API request queue and dispatch to idle replica slots (the proxy's hot path).

Each API has one bounded FIFO of waiting requests (jobs) and a set of idle slots. A slot is
one connection to a replica and carries one request at a time; a replica has as many slots
as requests it serves at once (`threads_per_process`, else one). A job goes to an idle slot
at once, or waits in the queue until one is free, or until its deadline passes. The queue
itself sends: when a slot's answer arrives, the next waiting job is written to that slot in
the same loop callback, so a busy API's replica does not sit idle for a trip through the
event loop between requests.

The queue never decides a replica's fate; it reports what it sees to the supervisor (the one
owner of replica state) and takes the supervisor's word:
- a connection lost while the replica could be serving: `ReplicaLost`; the replica gets no
  more requests and the job it held is retried once on another replica (a request that takes
  down two replicas gets an error);
- a request past its deadline at a replica: the client gets 504 and `ReplicaOverdue` is
  reported (the supervisor kills and replaces the hung replica); no more requests go there;
- the supervisor adds replicas when ready (`add`), takes them out when they die (`remove`)
  or drain (`drain`: they finish what they hold, then the callback fires), and says whether
  requests should wait for a replacement while there is none (`set_hold_when_empty`).

Server-side batching is a property of each replica (`ReplicaLink.batching`: its version's
server_side_batching, so during a reload that turns batching on or off old and new replicas
serve side by side). A batching replica's slot takes several waiting jobs at once, as one
`POST /predict-batch` (cortexd/batchframe.py); which jobs and when is decided by the pure
former in batcher.py, asked when a job arrives while a batching slot is idle, when a batching
slot finishes, and when the former's wake-up timer fires. Jobs keep their deadlines while
they wait for a batch and while their batch runs.
Everything here runs on the daemon's one event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import deque
from collections.abc import Callable, Sequence

from cortexd import batchframe
from cortexd.daemon.fleet.events import Event, ReplicaLost, ReplicaOverdue
from cortexd.daemon.serving.batcher import next_batch
from cortexd.daemon.serving.jobs import (
    BatchObserver,
    DeadlineExceeded,
    Job,
    LinkState,
    NoReplicas,
    PredictionTimeout,
    QueueFull,
    ReplicaFailed,
    ReplicaLink,
    Slot,
    Unreachable,
)
from cortexd.daemon.serving.upstream import UpstreamError

# The queue's vocabulary (serving/jobs.py) is imported from here by its users.
__all__ = [
    "ApiQueue", "BatchObserver", "DeadlineExceeded", "Job", "LinkState", "NoReplicas", "PredictionTimeout",
    "QueueFull", "ReplicaFailed", "ReplicaLink", "Slot", "Unreachable",
]

def _ignore(event: Event) -> None:
    pass


class ApiQueue:
    def __init__(self, name: str, max_queue: int, report: Callable[[Event], None] = _ignore) -> None:
        self.name = name
        self.max_queue = max_queue
        self.report = report  # observations for the supervisor (through the event pump)
        self.links: dict[str, ReplicaLink] = {}  # serving or failed-and-not-yet-removed
        self.idle: deque[Slot] = deque()
        self.waiting: deque[Job] = deque()
        self.in_flight = 0  # jobs written to a replica and not answered yet (timed-out ones included)
        # While a replacement for a lost replica is starting, requests wait for it (up to
        # their deadline) instead of failing with 503; the supervisor turns this on and off.
        self.hold_when_empty = False
        # Requests in flight or waiting per ready replica beyond which new ones get 503
        # (autoscaling.max_replica_concurrency); None: only max_queue bounds the queue.
        self.max_concurrency: int | None = None
        self.on_batch: BatchObserver | None = None  # told of every batch sent (metrics, `cortexd get`)
        self._batch_timer: asyncio.TimerHandle | None = None  # the former's wake-up, if one is due
        self._batch_timer_at = 0.0

    @property
    def queued(self) -> int:
        return len(self.waiting)

    # -- the hot path -------------------------------------------------------------------

    def submit(self, target: str, body: bytes, deadline: float, headers: bytes = b"") -> Job:
        """Start a request: sent to an idle slot now, or queued. Its outcome is job.future.

        Raises NoReplicas or QueueFull at once when it can be neither sent nor queued.
        The future fails with NoReplicas, DeadlineExceeded, PredictionTimeout, ReplicaFailed
        or Unreachable; call `abandon` if the caller stops waiting for it.
        """
        if self.max_concurrency is not None:
            serving = sum(1 for link in self.links.values() if link.state is LinkState.SERVING)
            if self.in_flight + len(self.waiting) >= self.max_concurrency * max(1, serving):
                raise QueueFull(f"the API's replicas hold max_replica_concurrency ({self.max_concurrency}) "
                                "requests each")
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = None
        idle = self.idle
        while idle and slot is None:
            candidate = idle.popleft()
            if candidate.link.state is LinkState.SERVING and not candidate.jobs:
                slot = candidate
        batching_idle = False
        if slot is not None and slot.link.batching is not None:
            idle.appendleft(slot)  # a batching slot takes jobs through the former
            slot, batching_idle = None, True
        if slot is None:
            if not self.links and not self.hold_when_empty:
                raise NoReplicas()
            if len(self.waiting) >= self.max_queue:
                raise QueueFull()
        job = Job(target, body, loop.create_future(), deadline, now, headers)
        job.timer = loop.call_at(deadline, self._expire, job)
        if slot is not None:
            self._send(slot, job)
        else:
            self.waiting.append(job)
            if batching_idle:
                self._form_batches(now)
        return job

    def abandon(self, job: Job) -> None:
        """The caller went away: a queued job leaves the queue; a sent one runs to its end
        (the slot is released when the replica answers)."""
        _stop_timer(job)
        if job.slot is None:
            self._unqueue(job)

    def _unqueue(self, job: Job) -> None:
        try:
            self.waiting.remove(job)
        except ValueError:
            pass

    def _send(self, slot: Slot, job: Job) -> None:
        slot.jobs = [job]
        slot.framed = False
        job.slot = slot
        job.dispatched_at = time.perf_counter()
        self.in_flight += 1
        slot.conn.send(job.target, job.body, job.headers)

    def _send_batch(self, slot: Slot, jobs: list[Job], now: float, trigger: str | None) -> None:
        slot.jobs = jobs
        slot.framed = True
        stamp = time.perf_counter()
        for job in jobs:
            job.slot = slot
            job.dispatched_at = stamp
        self.in_flight += len(jobs)
        # The bodies go as the clients sent them: no JSON is parsed or built here.
        frame = batchframe.encode_request([(job.target.partition("?")[2], job.headers, job.body) for job in jobs])
        slot.conn.send(batchframe.BATCH_PATH, frame)
        if self.on_batch is not None:
            self.on_batch(jobs, trigger, now)

    def _answered(self, slot: Slot, status: int, payload: bytes) -> None:
        jobs = slot.jobs
        if not jobs:
            return
        slot.jobs = []
        self.in_flight -= len(jobs)
        answers = _batch_answers(status, payload, len(jobs)) if slot.framed else ((status, payload),)
        for job, answer in zip(jobs, answers, strict=True):
            _stop_timer(job)
            if not job.future.done():  # else it timed out or its client left: the answer goes nowhere
                job.future.set_result(answer)
        self.release(slot)

    def _failed(self, slot: Slot, error: UpstreamError) -> None:
        link, jobs = slot.link, slot.jobs
        slot.jobs = []
        if link.state is LinkState.SERVING:
            link.state = LinkState.FAILED
            self.report(ReplicaLost(link.replica_id, str(error)))
        self._finish_drain_if_idle(link)
        self.in_flight -= len(jobs)
        retry: list[Job] = []
        for job in jobs:
            job.slot = None
            if job.future.done():
                continue
            if job.retried:
                self._settle(job, ReplicaFailed(str(error)) if error.sent else Unreachable(str(error)))
                continue
            # Once more, at the head of the queue: the replica died under it (or was never reached).
            job.retried = True
            job.dispatched_at = None
            retry.append(job)
        if not retry:
            return
        self.waiting.extendleft(reversed(retry))  # in their order, ahead of later arrivals
        self._pump()
        if not self.links and not self.hold_when_empty:
            self._fail_waiters()

    def _expire(self, job: Job) -> None:
        job.timer = None
        if job.future.done():
            return
        slot = job.slot
        if slot is None:
            self._unqueue(job)
            job.future.set_exception(DeadlineExceeded())
            return
        job.future.set_exception(PredictionTimeout())
        link = slot.link
        if not link.overdue_reported and link.state is not LinkState.FAILED:
            link.overdue_reported = True
            if link.state is LinkState.SERVING:
                link.state = LinkState.FAILED
            self.report(ReplicaOverdue(link.replica_id, round(job.timeout_s, 3)))

    def _settle(self, job: Job, exc: Exception) -> None:
        _stop_timer(job)
        if not job.future.done():
            job.future.set_exception(exc)

    def _pump(self) -> None:
        """Hand waiting jobs to idle slots (after jobs were put back at the head)."""
        for slot in [s for s in self.idle if s.link.batching is None]:
            if not self.waiting:
                return
            self.idle.remove(slot)
            if slot.link.state is LinkState.SERVING and not slot.jobs:
                self.release(slot)
        if self.waiting:  # jobs put back have waited their interval already: they go at once
            self._form_batches(asyncio.get_running_loop().time(), freed=True)

    def release(self, slot: Slot) -> None:
        """The slot is free: give it the next waiting job (or batch), else mark it idle."""
        link = slot.link
        if link.state is not LinkState.SERVING:
            self._finish_drain_if_idle(link)
            return
        if link.batching is not None:
            now = asyncio.get_running_loop().time()
            if self.waiting and self._offer(slot, now, freed=True):
                self._form_batches(now)  # more may be due for other idle batching slots
            else:
                self.idle.append(slot)
            return
        waiting = self.waiting
        while waiting:
            job = waiting.popleft()
            if not job.future.done():
                self._send(slot, job)
                return
        self.idle.append(slot)

    # -- server-side batching -------------------------------------------------------------

    def _offer(self, slot: Slot, now: float, freed: bool) -> bool:
        """Ask the former whether the batching slot takes a batch now; send it if so.
        False: nothing sent (and the former's wake-up is armed when jobs wait)."""
        batching = slot.link.batching
        assert batching is not None
        waiting = self.waiting
        while waiting and not waiting[0].alive:
            waiting.popleft()
        if waiting and not waiting[0].framable:  # a V2 request at the head: on its own, at once
            self._send(slot, waiting.popleft())
            return True
        decision = next_batch(waiting, max_batch_size=batching.max_batch_size,
                              interval_s=batching.batch_interval_s, now=now, freed=freed)
        for _ in range(decision.scanned):
            waiting.popleft()
        for job in decision.expired:  # its own timer is due in this very loop turn: answer it now
            _stop_timer(job)
            self._settle(job, DeadlineExceeded())
        if not decision.send:
            self._arm_batch_timer(decision.wake_at)
            return False
        batch = list(decision.send)
        cut = next((i for i, job in enumerate(batch) if not job.framable), len(batch))
        if cut < len(batch):  # the batch ends before a V2 request; it and the rest wait their turn
            waiting.extendleft(reversed(batch[cut:]))
            batch = batch[:cut]
        self._send_batch(slot, batch, now, decision.trigger)
        return True

    def _form_batches(self, now: float, freed: bool = False) -> None:
        """Idle batching slots take batches while the former says so (`freed`: as if each had
        just finished: whatever waits goes at once)."""
        while self.waiting:
            slot = next((s for s in self.idle if s.link.state is LinkState.SERVING and not s.jobs
                         and s.link.batching is not None), None)
            if slot is None or not self._offer(slot, now, freed=freed):
                return
            self.idle.remove(slot)

    def _arm_batch_timer(self, wake_at: float | None) -> None:
        if wake_at is None:
            return
        if self._batch_timer is not None:
            if self._batch_timer_at <= wake_at:
                return  # an earlier wake-up is set; it re-arms for this one if still needed
            self._batch_timer.cancel()
        self._batch_timer_at = wake_at
        self._batch_timer = asyncio.get_running_loop().call_at(wake_at, self._batch_timer_fired)

    def _batch_timer_fired(self) -> None:
        self._batch_timer = None
        self._form_batches(asyncio.get_running_loop().time())

    # -- membership (driven by the supervisor) ------------------------------------------

    def add(self, link: ReplicaLink) -> None:
        self.links[link.replica_id] = link
        for slot in link.slots:
            slot.conn.on_response = functools.partial(self._answered, slot)
            slot.conn.on_failure = functools.partial(self._failed, slot)
            self.release(slot)

    def drain(self, replica_id: str, on_drained: Callable[[], None]) -> None:
        """Stop handing the replica out; call on_drained once what it holds is answered."""
        link = self.links.pop(replica_id, None)
        if link is None:
            on_drained()
            return
        if link.state is LinkState.SERVING:
            link.state = LinkState.DRAINING
        self._forget_idle(link)
        link.on_drained = on_drained
        self._finish_drain_if_idle(link)
        if not self.links and not self.hold_when_empty:
            self._fail_waiters()

    def remove(self, replica_id: str) -> None:
        """The replica is gone (or being killed): forget it at once; a request it held is
        retried once on another replica."""
        link = self.links.pop(replica_id, None)
        if link is not None:
            link.state = LinkState.FAILED
            link.on_drained = None
            self._forget_idle(link)
            for slot in link.slots:
                slot.conn.close()
        if not self.links and not self.hold_when_empty:
            self._fail_waiters()

    def set_hold_when_empty(self, hold: bool) -> None:
        self.hold_when_empty = hold
        if not hold and not self.links:
            self._fail_waiters()

    def _forget_idle(self, link: ReplicaLink) -> None:
        if any(slot.link is link for slot in self.idle):
            self.idle = deque(slot for slot in self.idle if slot.link is not link)

    def _finish_drain_if_idle(self, link: ReplicaLink) -> None:
        if link.state is LinkState.SERVING or link.busy:
            return
        callback, link.on_drained = link.on_drained, None
        if callback is not None:
            for slot in link.slots:
                slot.conn.close()
            callback()

    def _fail_waiters(self) -> None:
        """No replica is left to serve the queue: answer waiters now rather than at their deadline."""
        while self.waiting:
            self._settle(self.waiting.popleft(), NoReplicas())


def _batch_answers(status: int, payload: bytes, count: int) -> Sequence[tuple[int, bytes]]:
    """Each job's (status, body) from a batch exchange's answer. A non-200 answer (the replica
    refused the frame) stands for every job of the batch."""
    if status != 200:
        return [(status, payload)] * count
    try:
        return batchframe.decode_answer(payload, expected=count)
    except batchframe.FrameError as exc:
        body = json.dumps({"error": f"the replica's answer to the batch is malformed: {exc}"}).encode()
        return [(500, body)] * count


def _stop_timer(job: Job) -> None:
    if job.timer is not None:
        job.timer.cancel()
        job.timer = None
