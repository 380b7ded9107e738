"""The replica's side of server-side batching: answering `POST /predict-batch`.

The daemon's queue forms batches and sends each as one request frame
(cortexd/batchframe.py). A batched request gets exactly what it would get unbatched, apart
from the predictor seeing lists:

- its body is read on its own, as the API's dialect reads a single request: by its own
  Content-Type for Cortex v0.17+ (cortexd/replica/payloads.py), else as JSON. A body that
  cannot be read gets its own 400 and stays out of the batch;
- its prediction is rendered on its own as a single one is (bodies.render_prediction: NaN,
  text, bytes, Response objects), and the answer frame carries its status, content type and
  headers; a prediction that cannot be sent is that request's 500 alone;
- a predictor exception answers the status its release answered (calls.error_status).

What the predictor sees (docs/batching.md):
- python: `predict` receives the list of payloads and must return a list (or tuple, or a
  numpy array split along its first axis) of as many predictions, in order. Anything else
  is a 500 for every request of the batch, with a message that says what came back. The
  v0.17+ form gets `query_params` and `headers` as lists too, one per payload
  (calls.RequestPredictor.predict_batch).
- onnx / tensorflow without a predictor: the samples are stacked along the batch axis,
  run once and split back (cortexd/replica/stacking.py); a sample that does not fit the
  model gets its own 400.
- onnx / tensorflow with a predictor class: `predict(payload)` is called once per request,
  with that request's query_params and headers, as without batching, and the client it holds
  runs the model once for the whole batch (cortexd/replica/gather.py): Cortex's documented
  behaviour for TensorFlow.

With batching on, a plain `POST /predict` is served as a batch of one, so the predictor
always sees the same form.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from cortexd import batchframe
from cortexd.batchframe import FrameError
from cortexd.callconv import CALL_CLASS_KWARGS, CALL_HANDLER, CALL_MODULE
from cortexd.daemon.serving.access import debug_requested
from cortexd.protocol import ReplicaSpec
from cortexd.replica.bodies import BodyError, PredictionError, Rendered, parse_body, render_prediction
from cortexd.replica.calls import error_status
from cortexd.replica.gather import Gatherer, GatheringClient
from cortexd.replica.jsonable import to_jsonable
from cortexd.replica.packages import missing_package_hint
from cortexd.replica.payloads import header, payload_of
from cortexd.replica.predictors import (
    BatchFailed,
    PayloadError,
    Predictor,
    PredictorLoadError,
    split_predictions,
)
from cortexd.replica.stacking import StackedModel, run_stacked

DEBUG_TRUNCATE = 2000

HeaderPairs = list[tuple[str, str]]  # (name, value) as the client sent them


class Request(NamedTuple):
    """One request of a batch, its body read as a single request's would be (a tuple: one
    is made per request on the hot path)."""

    payload: Any
    query: str
    headers: HeaderPairs


# requests -> one outcome per request: its prediction, or the exception it failed with
Runner = Callable[[list[Request]], list[Any]]
_P = TypeVar("_P")  # a predictor, marked and handed back as it came


def _log(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def _truncate(text: str) -> str:
    return text if len(text) <= DEBUG_TRUNCATE else text[:DEBUG_TRUNCATE] + f"... ({len(text)} chars)"


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": message}).encode()


def header_pairs(block: bytes) -> HeaderPairs:
    """The (name, value) pairs of a frame's headers slot, as the replica's server reads the
    header lines of a single request (server.parse_headers)."""
    out: HeaderPairs = []
    if not block:  # the daemon forwards headers only to the dialects that read them
        return out
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    return out


# -- runners: one per kind of predictor --------------------------------------------------


def python_runner(predictor: Predictor) -> Runner:
    """A Python predictor: one predict call with the list of payloads (and, for the v0.17+
    form, the lists of query parameters and headers)."""
    predict_batch = getattr(predictor, "predict_batch", None)

    def run(requests: list[Request]) -> list[Any]:
        payloads = [r.payload for r in requests]
        try:
            if predict_batch is not None:
                return list(predict_batch(payloads, [r.query for r in requests], [r.headers for r in requests]))
            return split_predictions(predictor.predict(payloads), len(payloads))
        except PayloadError as exc:  # the predictor says the batch's payloads are wrong
            return [exc] * len(payloads)
        except BatchFailed as exc:
            _log(f"prediction failed: {exc}")
            return [exc] * len(payloads)
        except BaseException as exc:  # sys.exit() and KeyboardInterrupt too: answer, never die
            _log(f"prediction failed:\n{traceback.format_exc()}")
            return [exc] * len(payloads)

    return run


def stacked_runner(model: StackedModel, format_outputs: Callable[[dict[str, Any]], Any]) -> Runner:
    def run(requests: list[Request]) -> list[Any]:
        outcomes: list[Any] = [None] * len(requests)
        feeds, where = [], []
        for i, request in enumerate(requests):
            try:
                feeds.append(model.to_inputs(request.payload))
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


def gather_runner(gatherer: Gatherer, predictor: Predictor) -> Runner:
    """A predictor class holding a GatheringClient: predict per request, side by side."""
    predict_request = getattr(predictor, "predict_request", None)

    def one(request: Request) -> Any:
        if predict_request is not None:
            return predict_request(request.payload, request.query, request.headers)
        return predictor.predict(request.payload)

    def run(requests: list[Request]) -> list[Any]:
        outcomes = gatherer.run_batch(one, requests)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, PayloadError):
                _log("prediction failed:\n" + "".join(traceback.format_exception(outcome)))
        return outcomes

    return run


# -- the handler ----------------------------------------------------------------------------


class BatchHandler:
    """Answers batch frames (and, with batching on, single requests as batches of one).

    `call`, `nan_as_null`, `str_as_text`: the API's dialect and rendering options, as the
    replica's single-request path uses them. `lists`: whether the predictor's predict takes
    lists (a Python predictor); the replica's V2 path then calls it with a list of one."""

    def __init__(self, runner: Runner, call: str = CALL_MODULE, nan_as_null: bool = False,
                 str_as_text: bool = False, lists: bool = False) -> None:
        self._runner = runner
        self._call = call
        # Cortex v0.17+ handed predict the body by its Content-Type (cortexd/replica/payloads.py).
        self._by_content_type = call in (CALL_CLASS_KWARGS, CALL_HANDLER)
        self._nan_as_null = nan_as_null
        self._str_as_text = str_as_text
        self.lists = lists

    def frame(self, body: bytes) -> tuple[int, bytes]:
        """POST /predict-batch: an answer frame, or a 400 when the frame itself is unusable."""
        try:
            items = batchframe.decode_request(body)
        except FrameError as exc:
            return _error(400, f"bad batch frame: {exc}")
        answers = self.answer([(item.query, header_pairs(item.headers), item.body) for item in items])
        return 200, batchframe.encode_answer(answers)

    def one(self, query: str, body: bytes, headers: HeaderPairs | None = None) -> Rendered:
        """POST /predict on a batching replica: a batch of one (`headers`: the request's, for
        the dialects that read them)."""
        return self.answer([(query, headers or [], body)])[0]

    def answer(self, requests: Sequence[tuple[str, HeaderPairs, bytes]]) -> list[Rendered]:
        """One answer per (query, headers, body), in order."""
        answers: list[Rendered | None] = [None] * len(requests)
        parsed: list[Request] = []
        where: list[int] = []
        for i, (query, headers, body) in enumerate(requests):
            try:
                payload = payload_of(body, header(headers, "content-type")) if self._by_content_type \
                    else parse_body(body)
            except BodyError as exc:
                answers[i] = _error(400, str(exc))
                continue
            parsed.append(Request(payload, query, headers))
            where.append(i)
            if query and debug_requested(query):
                _log(f"debug: sample: {_truncate(body.decode('utf-8', 'replace'))}")
        if parsed:
            for i, outcome in zip(where, self._runner(parsed), strict=True):
                answer = answers[i] = self._render(outcome)
                query = requests[i][0]
                if query and debug_requested(query):
                    _log(f"debug: {_shown(answer, outcome)}")
        return [a if a is not None else _error(500, "no answer") for a in answers]

    def _render(self, outcome: Any) -> Rendered:
        """One request's answer, as the single-request path answers (replica/main.py)."""
        if isinstance(outcome, BaseException):  # one check for the usual case, a prediction
            if isinstance(outcome, PayloadError):
                return _error(400, str(outcome))
            if isinstance(outcome, BatchFailed):
                return _error(500, f"prediction failed: {outcome}")
            hint = missing_package_hint(outcome)
            return _error(error_status(self._call, outcome),
                          f"prediction failed: {type(outcome).__name__}: {outcome}" + (f"; {hint}" if hint else ""))
        try:
            return render_prediction(outcome, self._nan_as_null, self._str_as_text)
        except PredictionError as exc:
            _log(f"prediction failed: {exc}")
            return _error(500, str(exc))
        except BaseException as exc:  # a result too deep to encode raises RecursionError
            _log(f"prediction failed: {type(exc).__name__}: {exc}")
            return _error(500, f"prediction failed: the result cannot be encoded as JSON: {type(exc).__name__}: {exc}")


def _shown(answer: Rendered, outcome: Any) -> str:
    """A debug line's account of one answer: the JSON itself, or what else it is."""
    status, body = answer[0], answer[1]
    if len(answer) == 3:
        return f"prediction: {type(outcome).__name__} of {len(body)} bytes (status {status})"
    what = "prediction" if status == 200 else f"answer {status}"
    return f"{what}: {_truncate(body.decode('utf-8', 'replace'))}"


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
    options: dict[str, Any] = {"call": spec.call, "nan_as_null": spec.nan_as_null, "str_as_text": spec.str_as_text}
    stacked = getattr(predictor, "stacked_model", None)
    if stacked is not None:
        return BatchHandler(stacked_runner(stacked, outputs_by_name), **options)
    gatherer = getattr(predictor, "gatherer", None)
    if gatherer is not None:
        return BatchHandler(gather_runner(gatherer, predictor), **options)
    if spec.kind != "python":
        raise PredictorLoadError(f"api {spec.api_name}: {spec.kind} predictor cannot batch")
    return BatchHandler(python_runner(predictor), lists=True, **options)
