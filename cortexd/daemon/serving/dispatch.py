"""Per-API request queue and dispatch to idle ready replicas (the proxy's hot path).

Each API has one bounded FIFO of waiting requests (jobs) and a set of idle replicas. A
replica takes one request at a time: a job goes to an idle replica at once, or waits in the
queue until one is free, or until its deadline passes. The queue itself sends: when a
replica's answer arrives, the next waiting job is written to that replica in the same loop
callback, before the answered request's coroutine even resumes, so a busy API's replica
does not sit idle for a trip through the event loop between requests.

Replicas enter when they are ready (`add`), leave when they die (`remove`) or are drained
(`drain`: they finish the request they hold, then the callback fires). A request that never
reached its replica (the connection could not be made) is retried once on another.
Everything here runs on the daemon's one event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from cortexd.daemon.serving.upstream import UpstreamConnection, UpstreamError


class QueueFull(Exception):
    pass


class NoReplicas(Exception):
    pass


class DeadlineExceeded(Exception):
    """The request waited in the queue until its deadline."""


class PredictionTimeout(Exception):
    """The request reached a replica but had no answer by its deadline (the replica goes on)."""


class ReplicaFailed(Exception):
    """The replica hung up while it had the request (it exited, or was killed)."""


class Unreachable(Exception):
    """The request could not be delivered to any replica (after its one retry)."""


class Job:
    """One request on its way through the queue: its outcome is `future`."""

    __slots__ = ("target", "body", "future", "deadline", "dispatched_at", "link", "timer", "retried")

    def __init__(self, target: str, body: bytes, future: asyncio.Future[tuple[int, bytes]], deadline: float) -> None:
        self.target = target
        self.body = body
        self.future = future
        self.deadline = deadline
        self.dispatched_at: float | None = None  # loop time it was written to a replica
        self.link: ReplicaLink | None = None  # the replica holding it
        self.timer: asyncio.TimerHandle | None = None
        self.retried = False


@dataclass(eq=False)
class ReplicaLink:
    """The proxy's view of one ready replica."""

    replica_id: str
    conn: UpstreamConnection
    version: int
    busy: bool = False
    active: bool = True  # False once drained or removed: never handed out again
    on_drained: Callable[[], None] | None = None
    served: int = 0
    job: Job | None = None  # the request it holds


@dataclass(eq=False)
class ApiQueue:
    name: str
    max_queue: int
    links: dict[str, ReplicaLink] = field(default_factory=dict)
    idle: deque[ReplicaLink] = field(default_factory=deque)
    waiting: deque[Job] = field(default_factory=deque)
    in_flight: int = 0  # jobs written to a replica and not answered yet (timed-out ones included)
    # While a replacement for a crashed replica is starting, requests wait for it (up to
    # their deadline) instead of failing with 503; the supervisor turns this on and off.
    hold_when_empty: bool = False

    @property
    def queued(self) -> int:
        return len(self.waiting)

    # -- the hot path -------------------------------------------------------------------

    def submit(self, target: str, body: bytes, deadline: float) -> Job:
        """Start a request: sent to an idle replica now, or queued. Its outcome is job.future.

        Raises NoReplicas or QueueFull at once when it can be neither sent nor queued.
        The future fails with NoReplicas, DeadlineExceeded, PredictionTimeout, ReplicaFailed
        or Unreachable; call `abandon` if the caller stops waiting for it.
        """
        loop = asyncio.get_running_loop()
        link = None
        idle = self.idle
        while idle and link is None:
            candidate = idle.popleft()
            if candidate.active:
                link = candidate
        if link is None:
            if not self.links and not self.hold_when_empty:
                raise NoReplicas()
            if len(self.waiting) >= self.max_queue:
                raise QueueFull()
        job = Job(target, body, loop.create_future(), deadline)
        job.timer = loop.call_at(deadline, self._expire, job)
        if link is not None:
            self._send(link, job, loop.time())
        else:
            self.waiting.append(job)
        return job

    def abandon(self, job: Job) -> None:
        """The caller went away: a queued job leaves the queue; a sent one runs to its end
        (the replica is released when it answers)."""
        _stop_timer(job)
        if job.link is None:
            self._unqueue(job)

    def _unqueue(self, job: Job) -> None:
        try:
            self.waiting.remove(job)
        except ValueError:
            pass

    def _send(self, link: ReplicaLink, job: Job, now: float) -> None:
        link.busy = True
        link.job = job
        job.link = link
        job.dispatched_at = now
        self.in_flight += 1
        link.conn.send(job.target, job.body)

    def _answered(self, link: ReplicaLink, status: int, payload: bytes) -> None:
        job = link.job
        if job is None:
            return
        link.job = None
        self.in_flight -= 1
        link.served += 1
        _stop_timer(job)
        if not job.future.done():  # else it timed out or its client left: the answer goes nowhere
            job.future.set_result((status, payload))
        self.release(link)

    def _failed(self, link: ReplicaLink, error: UpstreamError) -> None:
        job = link.job
        link.job = None
        if job is not None:
            self.in_flight -= 1
            job.link = None
        self.remove(link.replica_id)
        if job is None or job.future.done():
            return
        if error.sent:
            self._settle(job, ReplicaFailed(str(error)))
        elif job.retried:
            self._settle(job, Unreachable(str(error)))
        elif not self.links and not self.hold_when_empty:
            self._settle(job, NoReplicas())
        else:  # it never reached the replica: once more, at the head of the queue
            job.retried = True
            job.dispatched_at = None
            self.waiting.appendleft(job)
            self._pump()

    def _expire(self, job: Job) -> None:
        job.timer = None
        if job.future.done():
            return
        if job.link is None:
            self._unqueue(job)
            job.future.set_exception(DeadlineExceeded())
        else:
            job.future.set_exception(PredictionTimeout())

    def _settle(self, job: Job, exc: Exception) -> None:
        _stop_timer(job)
        if not job.future.done():
            job.future.set_exception(exc)

    def _pump(self) -> None:
        """Hand waiting jobs to idle replicas (after a job was put back at the head)."""
        while self.waiting and self.idle:
            link = self.idle.popleft()
            if link.active and not link.busy:
                self.release(link)

    def release(self, link: ReplicaLink) -> None:
        """The replica is free: give it the next waiting job, else mark it idle."""
        link.busy = False
        if not link.active:
            self._finish_drain(link)
            return
        waiting = self.waiting
        while waiting:
            job = waiting.popleft()
            if not job.future.done():
                self._send(link, job, asyncio.get_running_loop().time())
                return
        self.idle.append(link)

    # -- membership (driven by the supervisor) ------------------------------------------

    def add(self, link: ReplicaLink) -> None:
        self.links[link.replica_id] = link
        link.conn.on_response = lambda status, payload, link=link: self._answered(link, status, payload)
        link.conn.on_failure = lambda error, link=link: self._failed(link, error)
        self.release(link)

    def drain(self, replica_id: str, on_drained: Callable[[], None]) -> None:
        """Stop handing the replica out; call on_drained once its current request is done."""
        link = self.links.pop(replica_id, None)
        if link is None:
            on_drained()
            return
        link.active = False
        link.on_drained = on_drained
        if not link.busy:
            self._finish_drain(link)
        if not self.links and not self.hold_when_empty:
            self._fail_waiters()

    def remove(self, replica_id: str) -> None:
        """The replica died: forget it at once (a request it held fails on its own)."""
        link = self.links.pop(replica_id, None)
        if link is not None:
            link.active = False
            link.conn.close()
        if not self.links and not self.hold_when_empty:
            self._fail_waiters()

    def set_hold_when_empty(self, hold: bool) -> None:
        self.hold_when_empty = hold
        if not hold and not self.links:
            self._fail_waiters()

    def _finish_drain(self, link: ReplicaLink) -> None:
        link.conn.close()
        callback, link.on_drained = link.on_drained, None
        if callback is not None:
            callback()

    def _fail_waiters(self) -> None:
        """No replica is left to serve the queue: answer waiters now rather than at their deadline."""
        while self.waiting:
            self._settle(self.waiting.popleft(), NoReplicas())


def _stop_timer(job: Job) -> None:
    if job.timer is not None:
        job.timer.cancel()
        job.timer = None
