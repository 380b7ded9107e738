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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

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


class Gatherer:
    """Runs one batch's predict calls in threads and their model calls as stacked runs."""

    def __init__(self, model: StackedModel, threads: int) -> None:
        self._model = model
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="cortexd-batch")
        self._cond = threading.Condition()
        self._running = 0  # predict calls of the current batch that have not returned
        self._pending: list[_Call] = []  # client calls waiting for the stacked run
        self._progress = 0  # counts arrivals in the client and returns from predict
        self._local = threading.local()  # .in_batch: this thread runs a predict call of a batch

    def run_batch(self, predict: Callable[[Any], Any], payloads: list[Any]) -> list[Any]:
        """predict(payload) for each payload; one outcome each, in order: its return value or
        the exception it raised. Called from one thread at a time (the replica's loop)."""
        cond = self._cond
        with cond:
            self._running = len(payloads)
            self._pending = []
        futures = [self._pool.submit(self._one, predict, p) for p in payloads]
        while True:
            with cond:
                # until every unfinished predict call waits in the client (or none is left)
                while self._running != len(self._pending):
                    seen = self._progress
                    cond.wait(PATIENCE_S)
                    if self._progress == seen and self._pending:
                        break  # stragglers: run the waiting calls now
                if self._running == 0:
                    break
                calls, self._pending = self._pending, []
            results = run_stacked(self._model, [c.feeds for c in calls])  # outside the lock
            with cond:
                for call, result in zip(calls, results):
                    call.result, call.done = result, True
                cond.notify_all()
        outcomes: list[Any] = []
        for future in futures:
            exc = future.exception()
            outcomes.append(exc if exc is not None else future.result())
        return outcomes

    def _one(self, predict: Callable[[Any], Any], payload: Any) -> Any:
        self._local.in_batch = True
        try:
            return predict(payload)
        finally:
            self._local.in_batch = False
            with self._cond:
                self._running -= 1
                self._progress += 1
                self._cond.notify_all()

    def run(self, feeds: Feeds) -> Arrays:
        """A client's model call: gathered into the batch's stacked run when it comes from a
        predict call of a batch, else run at once."""
        if not getattr(self._local, "in_batch", False):
            return self._model.run_arrays(feeds)
        call = _Call(feeds)
        with self._cond:
            self._pending.append(call)
            self._progress += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: call.done)
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
