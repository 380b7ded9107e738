"""How each era of Cortex called a predictor's methods, and answered when they raised.

- v0.12-v0.16: `predict(self, payload)`, payload positional.
- v0.17-v0.33: `predict(self, payload, query_params, headers)`, each argument passed by name
  and only when the method declares it (any subset, in any order); v0.25+ also
  `post_predict(self, response, payload, query_params, headers)` run after the answer.
- v0.34-v0.35: class `Handler`, `handle_post(...)` with the same arguments; it may return
  (result, callback), the callback run after the answer.

With server_side_batching (v0.19+), each request argument the method declares is a list, one
entry per request, in order, and it returns one answer per request (`predict_batch`); post_predict
still runs once per request, with that request's own response, payload, query_params and headers.

Constructors take their arguments by name too (config, tensorflow_client, onnx_client, ...).
A predictor exception answers 406 in v0.11-v0.13 ("prediction failed"), 500 from v0.14,
or the status of a Starlette/FastAPI HTTPException it raised (v0.14+).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

from cortexd.callconv import CALL_CLASS, CALL_CLASS_KWARGS, CALL_HANDLER, CALL_V011
from cortexd.replica.predictors import PredictorLoadError, split_predictions

REQUEST_ARGS: tuple[str, ...] = ("payload", "query_params", "headers")


class QueryParams(dict[str, str]):
    """The query string as Starlette's QueryParams reads: [key] is the last value, getlist all."""

    def __init__(self, query: str = "") -> None:
        pairs = parse_qsl(query, keep_blank_values=True)
        super().__init__(pairs)
        self._pairs = pairs

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key]

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._pairs)


class Headers(dict[str, str]):
    """Request headers as Starlette's Headers reads them: names are case-insensitive."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        items = [(k.lower(), v) for k, v in pairs]
        super().__init__(items)
        self._pairs = items

    def __getitem__(self, key: str) -> str:
        return str(super().__getitem__(key.lower()))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key.lower()]


def request_params(method: Callable[..., Any], where: str, accepted: tuple[str, ...] = REQUEST_ARGS) -> tuple[str, ...]:
    """The request arguments a predict/handle method declares, in order.

    A method with a single argument of another name gets the payload (v0.12-v0.16 called it
    positionally); any other unknown argument is a load error naming the accepted ones."""
    try:
        params = [p for p in inspect.signature(method).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        return ("payload",)
    if params and params[0].name == "self":   # an unbound function from the class
        params = params[1:]
    names = tuple(p.name for p in params)
    unknown = [n for n in names if n not in accepted]
    if not unknown:
        return names
    if len(names) == 1:
        return ("payload",)   # predict(self, sample): the payload, positionally
    required = [p.name for p in params if p.name in unknown and p.default is p.empty]
    if not required:
        return tuple(n for n in names if n in accepted)
    raise PredictorLoadError(
        f"{where}{inspect.signature(method)}: unknown argument {required[0]!r}; "
        f"accepted: {', '.join(accepted)} (each optional, passed by name)"
    )


def construct(cls: type, available: dict[str, Any], where: str) -> Any:
    """Instantiate a predictor class passing, by name, the arguments its __init__ declares.

    `available` maps accepted argument names to values (config, tensorflow_client, ...); a
    required argument outside it is a load error."""
    try:
        shown = str(inspect.signature(cls))
        params = list(inspect.signature(cls).parameters.values())   # the constructor's, without self
    except (TypeError, ValueError):
        shown, params = "(...)", []
    kwargs: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in available:
            kwargs[p.name] = available[p.name]
        elif p.default is p.empty:
            raise PredictorLoadError(
                f"{where}.__init__{shown}: unknown argument {p.name!r}; "
                f"accepted: {', '.join(available)}"
            )
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise PredictorLoadError(f"{where}.__init__ raised {type(exc).__name__}: {exc}") from exc


class RequestPredictor:
    """A predictor instance called the v0.17+ way: request arguments by name, afterwards work.

    `wants` tells the replica which of query_params / headers to gather for it."""

    def __init__(self, method: Callable[..., Any], params: tuple[str, ...], describe: Callable[[], dict[str, Any]],
                 after: Callable[..., Any] | None = None, callbacks: bool = False) -> None:
        self._method = method
        self._params = params
        self.describe = describe
        self._after = after                      # post_predict (v0.25+)
        self._after_params = (
            request_params(after, "post_predict", ("response",) + REQUEST_ARGS) if after is not None else ()
        )
        self.wants = (frozenset(params) | frozenset(self._after_params)) - {"payload", "response"}
        self._callbacks = callbacks              # handle_post may return (result, callback) (v0.34+)
        self._background: ThreadPoolExecutor | None = None
        self.client: Any = None  # the model client of an ONNX/TensorFlow API, as UserPredictor.client

    def predict(self, payload: Any) -> Any:
        return self.predict_request(payload, "", None)

    def predict_request(self, payload: Any, query: str, headers: Iterable[tuple[str, str]] | None) -> Any:
        values = {"payload": payload, "query_params": QueryParams(query), "headers": Headers(headers or ())}
        result = self._call(values)
        if self._after is not None:
            self._post_predict({**values, "response": result})
        return result

    def predict_batch(self, payloads: list[Any], queries: list[str],
                      headers: list[Iterable[tuple[str, str]] | None]) -> list[Any]:
        """One call for a batch (server_side_batching): payload, query_params and headers are
        lists, one entry per request, in order, as Cortex passed them. Returns one prediction
        per request; raises BatchFailed when the method returned anything else."""
        values: dict[str, Any] = {
            "payload": payloads,
            "query_params": [QueryParams(q) for q in queries],
            "headers": [Headers(h or ()) for h in headers],
        }
        predictions = split_predictions(self._call(values), len(payloads))
        if self._after is not None:
            for i, prediction in enumerate(predictions):   # each request its own post_predict
                self._post_predict({name: value[i] for name, value in values.items()} | {"response": prediction})
        return predictions

    def _call(self, values: dict[str, Any]) -> Any:
        if self._params == ("payload",):
            result = self._method(values["payload"])
        else:
            result = self._method(**{name: values[name] for name in self._params})
        if self._callbacks and isinstance(result, tuple) and len(result) == 2 and callable(result[1]):
            result, callback = result
            self._run_later(callback)
        return result

    def _post_predict(self, values: dict[str, Any]) -> None:
        after = self._after
        assert after is not None
        args = {name: values[name] for name in self._after_params if name in values}
        self._run_later(lambda: after(**args))

    def _run_later(self, work: Callable[[], Any]) -> None:
        """Work that Cortex ran after answering: on a thread of its own, errors logged, never answered."""
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="post-predict")
        future = self._background.submit(work)
        future.add_done_callback(_log_failure)


def _log_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        import sys

        sys.stderr.write(f"post-response work failed: {type(exc).__name__}: {exc}\n")


def error_status(call: str, exc: BaseException) -> int:
    """The status a predictor exception answered with in the API's release (body: {"error": ...}):
    v0.11-v0.13 (their interfaces: CALL_V011, CALL_CLASS) 406, v0.17+ 500 or the status of an
    HTTPException the predictor raised, the seed 500 (cortexd's own)."""
    if call in (CALL_CLASS_KWARGS, CALL_HANDLER):
        status = getattr(exc, "status_code", None)
        if type(exc).__name__ == "HTTPException" and isinstance(status, int) and 400 <= status <= 599:
            return status
        return 500
    if call in (CALL_V011, CALL_CLASS):
        return 406
    return 500
