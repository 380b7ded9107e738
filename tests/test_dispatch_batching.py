"""The per-API queue with batching replicas , with fake replica connections as in test_dispatch.py.

"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from cortexd import batchframe
from cortexd.config.objects import Batching
from cortexd.daemon.serving import dispatch
from cortexd.daemon.serving.dispatch import ApiQueue, ReplicaLink
from tests import test_dispatch
from tests.test_dispatch import FAR, deadline, outcome, run


class FakeConn(test_dispatch.FakeConn):
    """test_dispatch's fake replica connection, which can also read and answer batch frames."""

    def batches(self) -> list[list[bytes]]:
        """The bodies of each batch sent, in order."""
        out = []
        for target, body in self.sent:
            assert target == batchframe.BATCH_PATH, target
            out.append([item.body for item in batchframe.decode_request(body)])
        return out

    def answer_batch(self, answers: list[tuple[int, bytes]] | None = None) -> None:
        """Answer the last batch: by default 200 and each body echoed back."""
        items = batchframe.decode_request(self.sent[-1][1])
        answers = answers or [(200, item.body) for item in items]
        self.on_response(200, batchframe.encode_answer(answers))


def queue(batching: list[Batching | None], max_queue: int = 100) -> tuple[ApiQueue, list[FakeConn], list[Any]]:
    q = ApiQueue("api", max_queue)
    seen: list[Any] = []
    q.on_batch = lambda jobs, trigger, now: seen.append(([j.body for j in jobs], trigger))
    conns = [FakeConn() for _ in batching]
    for i, (c, b) in enumerate(zip(conns, batching, strict=True)):
        q.add(ReplicaLink(f"r{i}", c, 1, batching=b))  # type: ignore[arg-type]
    return q, conns, seen


def test_a_full_batch_goes_at_once_and_each_job_gets_its_own_answer() -> None:
    async def body() -> None:
        q, (c,), seen = queue([Batching(3, FAR)])
        jobs = [q.submit("/predict?debug=true" if i == 1 else "/predict", str(i).encode(), deadline(FAR))
                for i in range(3)]
        assert c.batches() == [[b"0", b"1", b"2"]] and q.in_flight == 3 and q.queued == 0
        assert [i.query for i in batchframe.decode_request(c.sent[0][1])] == ["", "debug=true", ""]
        assert seen == [([b"0", b"1", b"2"], "full")]
        c.answer_batch([(200, b"a"), (400, b'{"error": "x"}'), (200, b"c")])
        assert [await j.future for j in jobs] == [(200, b"a"), (400, b'{"error": "x"}'), (200, b"c")]
        assert q.in_flight == 0

    run(body)


def test_a_lone_job_waits_for_the_interval_then_goes_alone() -> None:
    async def body() -> None:
        q, (c,), seen = queue([Batching(8, 0.05)])
        job = q.submit("/predict", b"1", deadline(FAR))
        assert c.sent == [] and q.queued == 1  # the interval has not passed
        for _ in range(200):
            if c.sent:
                break
            await asyncio.sleep(0.01)
        assert c.batches() == [[b"1"]] and seen == [([b"1"], "interval")]
        assert job.dispatched_at is not None and job.dispatched_at - job.arrived >= 0.05 - 1e-3
        c.answer_batch()
        assert await job.future == (200, b"1")

    run(body)


def test_jobs_arriving_within_the_interval_share_the_batch() -> None:
    async def body() -> None:
        q, (c,), _ = queue([Batching(8, 0.05)])
        jobs = [q.submit("/predict", b"1", deadline(FAR)), q.submit("/predict", b"2", deadline(FAR))]
        for _ in range(200):
            if c.sent:
                break
            await asyncio.sleep(0.01)
        assert c.batches() == [[b"1", b"2"]]
        c.answer_batch()
        assert [(await j.future)[1] for j in jobs] == [b"1", b"2"]

    run(body)


def test_a_replica_that_finishes_takes_what_waits_at_once() -> None:
    async def body() -> None:
        q, (c,), seen = queue([Batching(2, FAR)])
        first = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(2)]
        rest = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(2, 5)]
        assert c.batches() == [[b"0", b"1"]] and q.queued == 3
        c.answer_batch()
        # in the answer's own callback: the next (full) batch is already on its way
        assert c.batches()[1] == [b"2", b"3"] and q.queued == 1
        c.answer_batch()
        assert c.batches()[2] == [b"4"]  # freed: no interval wait for the last one
        assert [t for _, t in seen] == ["full", "full", "freed"]
        c.answer_batch()
        assert [(await j.future)[1] for j in first + rest] == [b"0", b"1", b"2", b"3", b"4"]

    run(body)


def test_each_replica_gets_its_own_batches() -> None:
    async def body() -> None:
        q, (a, b), _ = queue([Batching(2, FAR), Batching(2, FAR)])
        for i in range(5):
            q.submit("/predict", str(i).encode(), deadline(FAR))
        assert a.batches() == [[b"0", b"1"]] and b.batches() == [[b"2", b"3"]] and q.queued == 1

    run(body)


@pytest.mark.parametrize(
    "status, payload, want",
    [
        (404, b'{"error": "POST /predict-batch is not served here"}', 404),  # a replica that does not batch
        (400, b'{"error": "bad batch frame"}', 400),
        (200, b"CXR1garbage", 500),
    ],
)
def test_an_answer_that_is_not_a_frame_stands_for_every_job(status: int, payload: bytes, want: int) -> None:
    async def body() -> None:
        q, (c,), _ = queue([Batching(2, FAR)])
        jobs = [q.submit("/predict", b"1", deadline(FAR)), q.submit("/predict", b"2", deadline(FAR))]
        c.on_response(status, payload)
        answers = [await j.future for j in jobs]
        assert [s for s, _ in answers] == [want, want]
        if want == 500:
            assert "the replica's answer to the batch is malformed" in json.loads(answers[0][1])["error"]
        assert q.in_flight == 0

    run(body)


def test_a_replica_lost_with_a_batch_retries_its_jobs_once_then_fails_them() -> None:
    async def body() -> None:
        q, (a, b), _ = queue([Batching(2, FAR), Batching(2, FAR)])
        jobs = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(4)]
        assert a.batches() == [[b"0", b"1"]] and b.batches() == [[b"2", b"3"]]
        a.fail(sent=True)  # retried, in order, ahead of later arrivals
        assert q.queued == 2 and not jobs[0].future.done()
        b.answer_batch()  # b takes the retried batch at once
        assert b.batches()[-1] == [b"0", b"1"]
        b.fail(sent=True)  # the second loss fails them
        assert [await outcome(j) for j in jobs[:2]] == [dispatch.ReplicaFailed] * 2
        assert [(await j.future)[1] for j in jobs[2:]] == [b"2", b"3"]

    run(body)


def test_a_batch_that_never_reached_its_replica_is_retried_in_order() -> None:
    async def body() -> None:
        q, (a, b), _ = queue([Batching(2, FAR), Batching(3, FAR)])
        jobs = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(2)]
        assert a.batches() == [[b"0", b"1"]]
        a.fail(sent=False)
        assert b.batches() == [[b"0", b"1"]]  # at once: it waited for its batch already
        b.answer_batch()
        assert [(await j.future)[1] for j in jobs] == [b"0", b"1"]

    run(body)


def test_deadlines_hold_while_waiting_for_a_batch_and_in_one() -> None:
    async def body() -> None:
        q, (c,), _ = queue([Batching(8, 5.0)])
        waiting = q.submit("/predict", b"1", deadline(0.05))
        assert await outcome(waiting) is dispatch.DeadlineExceeded and q.queued == 0 and c.sent == []
        q2, (c2,), _ = queue([Batching(1, FAR)])
        running = q2.submit("/predict", b"1", deadline(0.05))
        assert c2.batches() == [[b"1"]]
        assert await outcome(running) is dispatch.PredictionTimeout
        c2.answer_batch()  # the late answer goes nowhere; the overdue replica gets nothing more
        assert q2.in_flight == 0 and len(q2.idle) == 0

    run(body)


def test_a_client_that_leaves_takes_its_job_out_of_the_forming_batch() -> None:
    async def body() -> None:
        q, (c,), _ = queue([Batching(3, FAR)])
        a = q.submit("/predict", b"a", deadline(FAR))
        b = q.submit("/predict", b"b", deadline(FAR))
        q.abandon(a)
        a.future.cancel()
        q.submit("/predict", b"c", deadline(FAR))
        assert c.sent == [] and q.queued == 2
        q.submit("/predict", b"d", deadline(FAR))
        assert c.batches() == [[b"b", b"c", b"d"]]
        assert not b.future.done()

    run(body)


def test_replicas_without_batching_still_take_one_job_each() -> None:
    """During a reload that turns batching on, old and new replicas serve side by side."""
    async def body() -> None:
        q, (old, new), _ = queue([None, Batching(2, FAR)])
        q.submit("/predict?x=1", b"0", deadline(FAR))
        assert old.sent == [("/predict?x=1", b"0")]
        q.submit("/predict", b"1", deadline(FAR))
        q.submit("/predict", b"2", deadline(FAR))
        assert new.batches() == [[b"1", b"2"]]

    run(body)


def test_a_drained_batching_replica_finishes_its_batch_first() -> None:
    async def body() -> None:
        q, (c,), _ = queue([Batching(2, FAR)])
        jobs = [q.submit("/predict", str(i).encode(), deadline(FAR)) for i in range(2)]
        drained: list[bool] = []
        q.drain("r0", lambda: drained.append(True))
        assert drained == [] and not c.closed
        c.answer_batch()
        assert drained == [True] and c.closed
        assert [(await j.future)[0] for j in jobs] == [200, 200]

    run(body)


def test_an_idle_batching_replica_that_is_drained_leaves_at_once() -> None:
    async def body() -> None:
        q, (c,), _ = queue([Batching(2, FAR)])
        drained: list[bool] = []
        q.drain("r0", lambda: drained.append(True))
        assert drained == [True] and list(q.idle) == []

    run(body)
