"""Batching for ONNX and TensorFlow APIs with a predictor class, the way Cortex documented it
for TensorFlow: "No modifications to your TensorFlowPredictor implementation are required."

The user's `predict(payload)` still takes ONE payload. For a batch of N requests the replica
calls it N times, each in a pool thread; the client the predictor holds is a
`GatheringClient`, whose `predict` does not run the model at once but hands its inputs to
the `Gatherer` and waits. When every predict call of the batch is either waiting in the
client or finished, the gatherer runs all waiting inputs as one stacked batch
(cortexd/replica/stacking.py) and hands each call its own rows; a predictor that calls the
client twice per payload gets two rounds. Pre- and post-processing stay per request, in the
user's code; only the model runs batched.

A predict call that never reaches the client (it waits on something else, e.g. a lock a
waiting call holds) would stall the batch; so when nothing has moved for PATIENCE_S, the
calls already waiting run without the stragglers.

Outside a batch (the predictor's constructor, a replica without batching) the client runs
the model directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cortexd.replica.stacking import Arrays, Feeds, StackedModel, run_stacked

# How long no predict call may arrive in the client or return before the waiting ones run.
# Long next to a call's way to the client (the GIL runs the calls' own code one at a time),
# short next to a request timeout.
PATIENCE_S = 0.02


class _Call:
    __slots__ = ("feeds", "result", "done")

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = feeds
        self.result: Any = None
        self.done = False


class _Batch:
    """The state of one batch's predict calls; batches may run side by side (a replica
    serving several requests at once), each with its own."""

    def __init__(self, count: int) -> None:
        self.cond = threading.Condition()
        self.running = count  # predict calls that have not returned
        self.pending: list[_Call] = []  # client calls waiting for the stacked run
        self.progress = 0  # counts arrivals in the client and returns from predict


class Gatherer:
    """Runs one batch's predict calls in threads and their model calls as stacked runs."""

    def __init__(self, model: StackedModel, threads: int) -> None:
        self._model = model
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="cortexd-batch")
        self._local = threading.local()  # .batch: the batch whose predict call this thread runs

    def run_batch(self, predict: Callable[[Any], Any], payloads: list[Any]) -> list[Any]:
        """predict(payload) for each payload; one outcome each, in order: its return value or
        the exception it raised."""
        batch = _Batch(len(payloads))
        cond = batch.cond
        futures = [self._pool.submit(self._one, batch, predict, p) for p in payloads]
        while True:
            with cond:
                # until every unfinished predict call waits in the client (or none is left)
                while batch.running != len(batch.pending):
                    seen = batch.progress
                    cond.wait(PATIENCE_S)
                    if batch.progress == seen and batch.pending:
                        break  # stragglers: run the waiting calls now
                if batch.running == 0:
                    break
                calls, batch.pending = batch.pending, []
            results = run_stacked(self._model, [c.feeds for c in calls])  # outside the lock
            with cond:
                for call, result in zip(calls, results, strict=True):
                    call.result, call.done = result, True
                cond.notify_all()
        outcomes: list[Any] = []
        for future in futures:
            exc = future.exception()
            outcomes.append(exc if exc is not None else future.result())
        return outcomes

    def _one(self, batch: _Batch, predict: Callable[[Any], Any], payload: Any) -> Any:
        self._local.batch = batch
        try:
            return predict(payload)
        finally:
            self._local.batch = None
            with batch.cond:
                batch.running -= 1
                batch.progress += 1
                batch.cond.notify_all()

    def run(self, feeds: Feeds) -> Arrays:
        """A client's model call: gathered into its batch's stacked run when it comes from a
        predict call of a batch, else run at once."""
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is None:
            return self._model.run_arrays(feeds)
        call = _Call(feeds)
        with batch.cond:
            batch.pending.append(call)
            batch.progress += 1
            batch.cond.notify_all()
            batch.cond.wait_for(lambda: call.done)
        if isinstance(call.result, BaseException):
            raise call.result
        result: Arrays = call.result
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class GatheringClient:
    """What a predictor class gets as its onnx_client / tensorflow_client when the API batches:
    the real client, except that `predict` goes through the gatherer. Every other attribute
    (input_names, session, describe, ...) is the real client's."""

    def __init__(self, client: Any, gatherer: Gatherer, format_outputs: Callable[[Arrays], Any]) -> None:
        self._client = client
        self._gatherer = gatherer
        self._format = format_outputs

    def predict(self, payload: Any) -> Any:
        return self._format(self._gatherer.run(self._client.to_inputs(payload)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __repr__(self) -> str:
        return f"GatheringClient({self._client!r})"
