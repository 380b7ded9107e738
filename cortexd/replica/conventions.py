"""Finding and calling the user's predictor class the way the API's Cortex release did.

`user_class` serves the class conventions (cortexd/callconv.py): v0.12-v0.16 positional
(`PythonPredictor(config)`, `predict(self, payload)`), v0.17-v0.33 by name
(`predict(self, payload, query_params, headers)`, any subset), and v0.34-v0.35's `Handler`
with `handle_post`. Module-level functions (the seed and v0.11) are loaded elsewhere.
"""
from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from cortexd.callconv import CALL_CLASS, CALL_HANDLER
from cortexd.protocol import ReplicaSpec
from cortexd.replica.calls import RequestPredictor, construct, request_params
from cortexd.replica.predictors import PredictorLoadError, UserPredictor, construct_user_class

CLASS_NAMES: dict[str, str] = {
    "python": "PythonPredictor", "tensorflow": "TensorFlowPredictor", "onnx": "ONNXPredictor",
}
_CLIENT_ARGS: dict[str, tuple[str, ...]] = {"python": (), "tensorflow": ("tensorflow_client", "tf_client"),
                                            "onnx": ("onnx_client",)}


class _NoMetrics:
    """v0.27+ handed predictors a `metrics_client` for custom CloudWatch/Prometheus metrics;
    cortexd keeps none, so its calls are accepted and dropped."""

    def put_metric(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _expected_class(module: types.ModuleType, name: str, method: str, where: str) -> type:
    cls = getattr(module, name, None)
    if inspect.isclass(cls):
        if not callable(getattr(cls, method, None)):
            raise PredictorLoadError(f"{where}: {name} has no method {method}")
        return cls
    others = [n for n in ("Handler", *CLASS_NAMES.values()) if n != name and inspect.isclass(getattr(module, n, None))]
    hint = ""
    if others:
        hint = f" (it has {others[0]}"
        hint += (": a Handler is written under `handler:`, the others under `predictor:`)"
                 if "Handler" in (name, others[0]) else ": check the predictor's type)")
    elif callable(getattr(module, "predict", None)):
        hint = " (it has a predict function: that is Cortex v0.11's interface, whose cortex.yaml has a deployment)"
    raise PredictorLoadError(f"{where}: expected a class {name} with a {method} method; no class {name} found{hint}")


def user_class(module: types.ModuleType, ctx: ReplicaSpec, clients: dict[str, Any],
               describe: Callable[[], dict[str, Any]]) -> UserPredictor | RequestPredictor:
    """The user's predictor instance, wrapped to be called as its release called it."""
    where = getattr(module, "__file__", None) or ctx.predictor_path or "?"
    handler = ctx.call == CALL_HANDLER
    name = "Handler" if handler else CLASS_NAMES[ctx.kind]
    method_name = "handle_post" if handler else "predict"
    cls = _expected_class(module, name, method_name, where)
    if ctx.call == CALL_CLASS:   # v0.12-v0.16: constructor and predict positional
        client = next(iter(clients.values()), None)
        instance = construct_user_class(module, name, client, ctx.config, _CLIENT_ARGS[ctx.kind])
        return UserPredictor(instance, describe)
    available: dict[str, Any] = {"config": ctx.config, **clients}
    if ctx.kind == "python":
        # optional clients of multi-model APIs (not served): None when a constructor declares them
        available.update({"python_client": None, "model_client": None})
    available["metrics_client"] = _NoMetrics()
    instance = construct(cls, available, f"{where}: {name}")
    method = getattr(instance, method_name)
    params = request_params(method, f"{where}: {name}.{method_name}")
    after = None if handler else getattr(instance, "post_predict", None)
    return RequestPredictor(method, params, describe, after if callable(after) else None, callbacks=handler)
