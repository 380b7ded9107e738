"""The replica's side of server-side batching: answering `POST /predict-batch`.

The daemon's queue forms batches and sends each as one request frame
(cortexd/batchframe.py); this module parses every request's body on its own (a body that is
not JSON gets its own 400 and stays out of the batch), runs the batch the way the API's
kind wants, and answers one status and body per request in an answer frame.

What the predictor sees (docs/batching.md):
- python: `predict` receives the list of payloads and must return a list (or tuple, or a
  numpy array split along its first axis) of as many predictions, in order. Anything else
  is a 500 for every request of the batch, with a message that says what came back.
- onnx / tensorflow without a predictor: the samples are stacked along the batch axis,
  run once and split back (cortexd/replica/stacking.py); a sample that does not fit the
  model gets its own 400.
- onnx / tensorflow with a predictor class: `predict(payload)` is called once per request,
  as without batching, and the client it holds runs the model once for the whole batch
  (cortexd/replica/gather.py): Cortex's documented behaviour for TensorFlow.

With batching on, a plain `POST /predict` is served as a batch of one, so the predictor
always sees the same form.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cortexd import batchframe
from cortexd.batchframe import FrameError, Item
from cortexd.protocol import ReplicaSpec
from cortexd.replica.bodies import BodyError, encode_prediction, parse_body
from cortexd.replica.gather import Gatherer, GatheringClient
from cortexd.replica.jsonable import to_jsonable
from cortexd.replica.predictors import PayloadError, Predictor, PredictorLoadError
from cortexd.replica.stacking import StackedModel, run_stacked

DEBUG_TRUNCATE = 2000

# payloads -> one outcome per payload: the prediction, or the exception it failed with
Runner = Callable[[list[Any]], list[Any]]
_P = TypeVar("_P")  # a predictor, marked and handed back as it came


def _log(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def _truncate(text: str) -> str:
    return text if len(text) <= DEBUG_TRUNCATE else text[:DEBUG_TRUNCATE] + f"... ({len(text)} chars)"


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": message}).encode()


class BatchFailed(Exception):
    """The whole batch failed in a way that is nobody's payload's fault (answered 500)."""


# -- runners: one per kind of predictor --------------------------------------------------


def split_predictions(result: Any, count: int) -> list[Any]:
    """The per-request predictions of a batched Python predict's return value."""
    what = "predict takes a list of payloads when server_side_batching is on and must return a list"
    if isinstance(result, (list, tuple)):
        items = list(result)
    else:
        np = sys.modules.get("numpy")
        if np is not None and isinstance(result, np.ndarray) and result.ndim >= 1:
            items = list(result)
        else:
            got = "None" if result is None else type(result).__name__
            raise BatchFailed(f"{what} with one prediction per payload, in order; it returned {got}")
    if len(items) != count:
        raise BatchFailed(
            f"{what} with one prediction per payload, in order; it returned {len(items)} predictions "
            f"for a batch of {count}"
        )
    return items


def python_runner(predict: Callable[[Any], Any]) -> Runner:
    def run(payloads: list[Any]) -> list[Any]:
        try:
            result = predict(payloads)
        except PayloadError as exc:  # the predictor says the batch's payloads are wrong
            return [exc] * len(payloads)
        except BaseException as exc:  # sys.exit() and KeyboardInterrupt too: answer, never die
            _log(f"prediction failed:\n{traceback.format_exc()}")
            return [exc] * len(payloads)
        try:
            return split_predictions(result, len(payloads))
        except BatchFailed as exc:
            _log(f"prediction failed: {exc}")
            return [exc] * len(payloads)

    return run


def stacked_runner(model: StackedModel, format_outputs: Callable[[dict[str, Any]], Any]) -> Runner:
    def run(payloads: list[Any]) -> list[Any]:
        outcomes: list[Any] = [None] * len(payloads)
        feeds, where = [], []
        for i, payload in enumerate(payloads):
            try:
                feeds.append(model.to_inputs(payload))
                where.append(i)
            except BaseException as exc:  # PayloadError: this request's 400
                outcomes[i] = exc
        for i, outcome in zip(where, run_stacked(model, feeds), strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, PayloadError):
                    _log(f"prediction failed: {type(outcome).__name__}: {outcome}")
                outcomes[i] = outcome
            else:
                outcomes[i] = format_outputs(outcome)
        return outcomes

    return run


def gather_runner(gatherer: Gatherer, predict: Callable[[Any], Any]) -> Runner:
    def run(payloads: list[Any]) -> list[Any]:
        outcomes = gatherer.run_batch(predict, payloads)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, PayloadError):
                _log("prediction failed:\n" + "".join(traceback.format_exception(outcome)))
        return outcomes

    return run


# -- the handler ----------------------------------------------------------------------------


class BatchHandler:
    """Answers batch frames (and, with batching on, single requests as batches of one)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def frame(self, body: bytes) -> tuple[int, bytes]:
        """POST /predict-batch: an answer frame, or a 400 when the frame itself is unusable."""
        try:
            items = batchframe.decode_request(body)
        except FrameError as exc:
            return _error(400, f"bad batch frame: {exc}")
        return 200, batchframe.encode_answer(self.answer(items))

    def one(self, query: str, body: bytes) -> tuple[int, bytes]:
        """POST /predict on a batching replica: a batch of one."""
        return self.answer([Item(query, b"", body)])[0]

    def answer(self, items: Sequence[Item]) -> list[tuple[int, bytes]]:
        answers: list[tuple[int, bytes] | None] = [None] * len(items)
        payloads: list[Any] = []
        where: list[int] = []
        for i, item in enumerate(items):
            try:
                payloads.append(parse_body(item.body))
            except BodyError as exc:
                answers[i] = _error(400, str(exc))
                continue
            where.append(i)
            if "debug=true" in item.query:
                _log(f"debug: sample: {_truncate(item.body.decode('utf-8', 'replace'))}")
        if payloads:
            for i, outcome in zip(where, self._runner(payloads), strict=True):
                answer = answers[i] = _answer(outcome)
                if "debug=true" in items[i].query:
                    status, body = answer
                    what = "prediction" if status == 200 else f"answer {status}"
                    _log(f"debug: {what}: {_truncate(body.decode('utf-8', 'replace'))}")
        return [a if a is not None else _error(500, "no answer") for a in answers]


def _answer(outcome: Any) -> tuple[int, bytes]:
    if isinstance(outcome, PayloadError):
        return _error(400, str(outcome))
    if isinstance(outcome, BatchFailed):
        return _error(500, f"prediction failed: {outcome}")
    if isinstance(outcome, BaseException):
        return _error(500, f"prediction failed: {type(outcome).__name__}: {outcome}")
    try:
        return 200, encode_prediction(outcome)
    except BaseException as exc:  # a result too deep to encode raises RecursionError
        _log(f"prediction failed: {type(exc).__name__}: {exc}")
        return _error(500, f"prediction failed: the result cannot be encoded as JSON: {type(exc).__name__}: {exc}")


# -- wiring ---------------------------------------------------------------------------------


def outputs_by_name(arrays: dict[str, Any]) -> dict[str, Any]:
    """A request's answer from a model without a predictor: {output name: plain JSON values}."""
    return {name: to_jsonable(arr) for name, arr in arrays.items()}


# The ONNX and TensorFlow loaders call these three; each does nothing when the API does not batch.


def require_batchable(spec: ReplicaSpec, problem: Callable[[], str | None]) -> None:
    """Refuse to load a model that cannot take a batch (`problem()` reads its shapes)."""
    if spec.max_batch_size >= 1:
        reason = problem()
        if reason is not None:
            raise PredictorLoadError(f"api {spec.api_name}: {reason}")


def mark_stacked(predictor: _P, client: Any, spec: ReplicaSpec) -> _P:
    """A model served without a predictor class: batches are stacked through `client`."""
    if spec.max_batch_size >= 1:
        marked: Any = predictor  # a mark that for_replica reads with getattr, not a declared attribute
        marked.stacked_model = client
    return predictor


def model_client_for(client: Any, spec: ReplicaSpec) -> tuple[Any, Gatherer | None]:
    """(the client to hand a predictor class, its gatherer): the client itself without
    batching; with it, a GatheringClient, so the class's predict calls of one batch share
    one model run. Mark the predictor built on it with `mark_gathered`."""
    if spec.max_batch_size < 1:
        return client, None
    gatherer = Gatherer(client, spec.max_batch_size)
    return GatheringClient(client, gatherer, client.format_outputs), gatherer


def mark_gathered(predictor: _P, gatherer: Gatherer | None) -> _P:
    if gatherer is not None:
        marked: Any = predictor  # as in mark_stacked
        marked.gatherer = gatherer
    return predictor


def for_replica(predictor: Predictor, spec: ReplicaSpec) -> BatchHandler | None:
    """The replica's batch handler, or None when its API does not batch. The ONNX and
    TensorFlow loaders mark what they built: `stacked_model` (no predictor class: the
    client itself) or `gatherer` (a predictor class holding a GatheringClient)."""
    if spec.max_batch_size < 1:
        return None
    stacked = getattr(predictor, "stacked_model", None)
    if stacked is not None:
        return BatchHandler(stacked_runner(stacked, outputs_by_name))
    gatherer = getattr(predictor, "gatherer", None)
    if gatherer is not None:
        return BatchHandler(gather_runner(gatherer, predictor.predict))
    if spec.kind != "python":
        raise PredictorLoadError(f"api {spec.api_name}: {spec.kind} predictor cannot batch")
    return BatchHandler(python_runner(predictor.predict))
