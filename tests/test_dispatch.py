"""The per-API queue (cortexd/daemon/serving/dispatch.py) with fake replica connections.

Each test runs on a real event loop; a FakeConn records what was sent and lets the test
answer or fail it, so every path is driven by hand: no replica process, no sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cortexd.daemon.fleet.events import ReplicaLost, ReplicaOverdue
from cortexd.daemon.serving.dispatch import (
    ApiQueue,
    DeadlineExceeded,
    Job,
    NoReplicas,
    PredictionTimeout,
    QueueFull,
    ReplicaLink,
    Unreachable,
)
from cortexd.daemon.serving.upstream import UpstreamError

FAR = 3600.0  # a deadline no test reaches


class FakeConn:
    """Stands in for UpstreamConnection: the queue sets the callbacks, the test answers."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.closed = False
        self.on_response: Callable[[int, bytes], None] = lambda s, p: None
        self.on_failure: Callable[[UpstreamError], None] = lambda e: None

    def send(self, target: str, body: bytes, headers: bytes = b"") -> None:
        self.sent.append((target, body))

    def close(self) -> None:
        self.closed = True

    def answer(self, status: int = 200, payload: bytes = b"{}") -> None:
        self.on_response(status, payload)

    def fail(self, sent: bool) -> None:
        self.on_failure(UpstreamError("gone", sent=sent))


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 10))


def queue_with(n: int, max_queue: int = 10, report: Callable[[Any], None] = lambda e: None
               ) -> tuple[ApiQueue, list[FakeConn]]:
    q = ApiQueue("api", max_queue, report)
    conns = [FakeConn() for _ in range(n)]
    for i, c in enumerate(conns):
        q.add(ReplicaLink(f"r{i}", c, 1))  # type: ignore[arg-type]
    return q, conns


def deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def outcome(job: Job) -> Any:
    try:
        return await job.future
    except Exception as exc:
        return type(exc)


def test_an_idle_replica_gets_the_request_at_once_and_its_answer_resolves_it() -> None:
    async def body() -> None:
        q, (c,) = queue_with(1)
        job = q.submit("/predict", b"[1]", deadline(FAR))
        assert c.sent == [("/predict", b"[1]")] and q.in_flight == 1 and q.queued == 0
        c.answer(200, b'{"y": 1}')
        assert await job.future == (200, b'{"y": 1}')
        assert q.in_flight == 0 and job.dispatched_at is not None

    run(body)


def test_the_next_waiting_request_is_sent_in_the_same_callback_as_the_answer() -> None:
    async def body() -> None:
        q, (c,) = queue_with(1)
        first = q.submit("/predict", b"1", deadline(FAR))
        second = q.submit("/predict", b"2", deadline(FAR))
        assert q.queued == 1 and len(c.sent) == 1
        c.answer()
        # No loop iteration in between: the replica already has the next request.
        assert [b for _, b in c.sent] == [b"1", b"2"] and q.queued == 0 and q.in_flight == 1
        assert not second.future.done()
        c.answer()
        assert (await first.future)[0] == (await second.future)[0] == 200

    run(body)


def test_requests_go_to_replicas_in_turn_and_wait_in_fifo_order() -> None:
    async def body() -> None:
        q, (a, b) = queue_with(2)
        jobs = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(4)]
        assert [x for _, x in a.sent] == [b"0"] and [x for _, x in b.sent] == [b"1"] and q.queued == 2
        b.answer()
        a.answer()
        assert [x for _, x in b.sent] == [b"1", b"2"] and [x for _, x in a.sent] == [b"0", b"3"]
        a.answer()
        b.answer()
        assert [(await j.future)[0] for j in jobs] == [200] * 4

    run(body)


@pytest.mark.parametrize(
    "replicas, hold, max_queue, submitted, expected",
    [
        (0, False, 10, 1, NoReplicas),   # nothing to serve it and nothing coming
        (1, False, 2, 4, QueueFull),     # 1 sent, 2 queued, the 4th does not fit
        (1, False, 0, 2, QueueFull),     # no queue at all: busy means full
    ],
)
def test_refused_at_once(replicas: int, hold: bool, max_queue: int, submitted: int, expected: type) -> None:
    async def body() -> None:
        q, _ = queue_with(replicas, max_queue)
        q.set_hold_when_empty(hold)
        for _ in range(submitted - 1):
            q.submit("/predict", b"", deadline(FAR))
        with pytest.raises(expected):
            q.submit("/predict", b"", deadline(FAR))

    run(body)


def test_held_request_waits_for_a_replica_that_becomes_ready() -> None:
    async def body() -> None:
        q, _ = queue_with(0)
        q.set_hold_when_empty(True)
        job = q.submit("/predict", b"x", deadline(FAR))
        assert q.queued == 1
        c = FakeConn()
        q.add(ReplicaLink("late", c, 2))  # type: ignore[arg-type]
        assert c.sent == [("/predict", b"x")]
        c.answer()
        assert (await job.future)[0] == 200

    run(body)


def test_hold_turned_off_with_no_replica_answers_the_waiters_now() -> None:
    async def body() -> None:
        q, _ = queue_with(0)
        q.set_hold_when_empty(True)
        job = q.submit("/predict", b"x", deadline(FAR))
        q.set_hold_when_empty(False)
        assert await outcome(job) is NoReplicas and q.queued == 0

    run(body)


def test_deadline_while_queued_is_deadline_exceeded_and_leaves_the_queue() -> None:
    async def body() -> None:
        q, (c,) = queue_with(1)
        q.submit("/predict", b"1", deadline(FAR))
        waiting = q.submit("/predict", b"2", deadline(0.01))
        assert await outcome(waiting) is DeadlineExceeded
        assert q.queued == 0 and waiting.dispatched_at is None
        c.answer()  # the replica goes idle: nothing was sent for the expired request
        assert len(c.sent) == 1 and list(q.idle)

    run(body)


def test_deadline_at_the_replica_is_prediction_timeout_and_the_replica_is_reported_overdue() -> None:
    async def body() -> None:
        events: list[object] = []
        q, (a, b) = queue_with(2, report=events.append)
        slow = q.submit("/predict", b"slow", deadline(0.01))
        assert await outcome(slow) is PredictionTimeout
        assert events == [ReplicaOverdue("r0", 0.01)]  # the supervisor replaces the hung replica
        assert q.in_flight == 1  # the replica still holds it
        nxt = q.submit("/predict", b"next", deadline(FAR))
        assert b.sent == [("/predict", b"next")]  # never again to the overdue replica
        a.answer()  # a late answer goes nowhere, and r0 gets nothing more
        assert a.sent == [("/predict", b"slow")] and q.queued == 0
        b.answer()
        assert (await nxt.future)[0] == 200

    run(body)


def test_replica_hanging_up_is_reported_and_its_request_retried_once_on_another() -> None:
    async def body() -> None:
        events: list[object] = []
        q, (a, b) = queue_with(2, report=events.append)
        job = q.submit("/predict", b"x", deadline(FAR))
        a.fail(sent=True)
        assert events == [ReplicaLost("r0", "gone")]
        assert b.sent == [("/predict", b"x")]  # retried at once on the other replica
        b.answer()
        assert (await job.future)[0] == 200
        q.remove("r0")  # the supervisor's answer: r0 is being replaced
        assert "r0" not in q.links and a.closed and q.in_flight == 0
        again = q.submit("/predict", b"y", deadline(FAR))
        b.fail(sent=True)  # a request that takes down two replicas is not tried a third time
        assert q.queued == 1  # ...this one had not been retried: it waits for a replica
        q.remove("r1")
        assert await outcome(again) is NoReplicas

    run(body)


def test_request_failing_on_two_replicas_is_answered_with_the_failure() -> None:
    async def body() -> None:
        q, (a, b, c) = queue_with(3)
        jobs = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(3)]
        a.fail(sent=False)  # job 0 goes back to the head of the queue
        assert q.queued == 1
        b.answer()  # b is free: job 0 goes there first
        assert [x for _, x in b.sent] == [b"1", b"0"]
        b.fail(sent=False)  # the second time it is not retried
        assert await outcome(jobs[0]) is Unreachable
        c.answer()
        assert (await jobs[1].future)[0] == (await jobs[2].future)[0] == 200
        sent_twice = q.submit("/predict", b"3", deadline(FAR))
        c.fail(sent=True)
        q.set_hold_when_empty(True)  # the supervisor: replacements are starting
        assert not sent_twice.future.done() and q.queued == 1

    run(body)


def test_lost_last_replica_holds_requests_until_the_supervisor_decides() -> None:
    async def body() -> None:
        q, (a,) = queue_with(1)
        job = q.submit("/predict", b"x", deadline(FAR))
        queued = q.submit("/predict", b"y", deadline(FAR))
        a.fail(sent=True)
        assert not job.future.done() and q.queued == 2  # no 503 before the supervisor has a say
        q.set_hold_when_empty(True)
        q.remove("r0")  # being replaced: the requests wait for the replacement
        assert q.queued == 2
        fresh = FakeConn()
        q.add(ReplicaLink("r1", fresh, 1))  # type: ignore[arg-type]
        fresh.answer()
        fresh.answer()
        assert (await job.future)[0] == (await queued.future)[0] == 200

    run(body)


def test_abandoned_queued_request_leaves_the_queue() -> None:
    async def body() -> None:
        q, (c,) = queue_with(1)
        q.submit("/predict", b"1", deadline(FAR))
        gone = q.submit("/predict", b"2", deadline(FAR))
        gone.future.cancel()
        q.abandon(gone)
        assert q.queued == 0
        c.answer()
        assert len(c.sent) == 1 and list(q.idle)

    run(body)


def test_abandoned_sent_request_keeps_the_replica_until_it_answers() -> None:
    async def body() -> None:
        q, (c,) = queue_with(1)
        gone = q.submit("/predict", b"1", deadline(FAR))
        gone.future.cancel()
        q.abandon(gone)
        waiting = q.submit("/predict", b"2", deadline(FAR))
        assert q.queued == 1 and q.in_flight == 1
        c.answer()
        assert [b for _, b in c.sent] == [b"1", b"2"]
        c.answer()
        assert (await waiting.future)[0] == 200

    run(body)


def test_drain_of_an_idle_replica_calls_back_at_once_a_busy_one_after_its_answer() -> None:
    async def body() -> None:
        q, (a, b) = queue_with(2)
        drained: list[str] = []
        job = q.submit("/predict", b"x", deadline(FAR))  # goes to r0
        q.drain("r1", lambda: drained.append("r1"))
        assert drained == ["r1"] and b.closed
        q.drain("r0", lambda: drained.append("r0"))
        assert drained == ["r1"] and not a.closed
        a.answer()
        assert drained == ["r1", "r0"] and a.closed
        assert (await job.future)[0] == 200

    run(body)


def test_draining_the_last_replica_fails_the_waiters_unless_held() -> None:
    async def body() -> None:
        q, (a,) = queue_with(1)
        q.submit("/predict", b"x", deadline(FAR))
        waiting = q.submit("/predict", b"y", deadline(FAR))
        q.drain("r0", lambda: None)
        assert await outcome(waiting) is NoReplicas

        q2, (c,) = queue_with(1)
        q2.set_hold_when_empty(True)
        q2.submit("/predict", b"x", deadline(FAR))
        held = q2.submit("/predict", b"y", deadline(FAR))
        q2.drain("r0", lambda: None)
        assert not held.future.done() and q2.queued == 1

    run(body)


def test_a_replica_with_several_slots_serves_that_many_requests_at_once() -> None:
    async def body() -> None:
        q = ApiQueue("api", 10)
        conns = [FakeConn() for _ in range(3)]
        q.add(ReplicaLink("r0", conns, 1))  # type: ignore[arg-type]  # threads_per_process: 3
        jobs = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(4)]
        assert [c.sent for c in conns] == [[("/predict", b"0")], [("/predict", b"1")], [("/predict", b"2")]]
        assert q.in_flight == 3 and q.queued == 1
        conns[1].answer()  # the first slot to finish takes the waiting request
        assert conns[1].sent[-1] == ("/predict", b"3")
        for c in conns:
            c.answer()
        assert [(await j.future)[0] for j in jobs] == [200] * 4
        drained: list[str] = []
        q.drain("r0", lambda: drained.append("r0"))
        assert drained == ["r0"] and all(c.closed for c in conns)

    run(body)
