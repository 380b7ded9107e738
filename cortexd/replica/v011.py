"""Cortex v0.11's predictor interfaces.

Python APIs: a module with `init(model_path, metadata)` (optional, called once with the
model fetched to a local path, or None without a model) and `predict(sample, metadata)`.

ONNX and TensorFlow APIs: the model answers by itself; an optional request handler module
has `pre_inference(sample, signature, metadata)` (returns the model's inputs) and/or
`post_inference(prediction, signature, metadata)` (returns the answer). The signature is,
for ONNX, the session's inputs (pre) or outputs (post) as onnxruntime NodeArg lists; for
TensorFlow, the model's SignatureDef map in protobuf's JSON mapping (tf_outputs.py).
Without post_inference, an ONNX API answers the list of its outputs and a TensorFlow API
its outputs by name as flat value lists, as v0.11 did.
"""
from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from cortexd.protocol import ReplicaSpec
from cortexd.replica.jsonable import to_jsonable
from cortexd.replica.packages import missing_package_hint
from cortexd.replica.predictors import PredictorLoadError, import_predictor_file

_V012_HINT = (
    "; this file defines a {cls} class, the v0.12 interface: write `type: {kind}` in the API's predictor "
    "section (and move metadata to config) to serve it as a class"
)


def _function(module: types.ModuleType, name: str, count: int, where: str, required: bool) -> Callable[..., Any] | None:
    fn = getattr(module, name, None)
    if fn is None:
        if required:
            hint = ""
            classes = (("PythonPredictor", "python"), ("ONNXPredictor", "onnx"), ("TensorFlowPredictor", "tensorflow"))
            for cls, kind in classes:
                if hasattr(module, cls):
                    hint = _V012_HINT.format(cls=cls, kind=kind)
            raise PredictorLoadError(f"{where}: expected a function {name}{_ARGS[name]}{hint}")
        return None
    if not callable(fn):
        raise PredictorLoadError(f"{where}: {name} is not a function")
    try:
        inspect.signature(fn).bind(*([None] * count))
    except TypeError:
        raise PredictorLoadError(
            f"{where}: expected {name}{_ARGS[name]}; found {name}{inspect.signature(fn)}"
        ) from None
    except ValueError:
        pass
    found: Callable[..., Any] = fn
    return found


_ARGS = {
    "init": "(model_path, metadata)",
    "predict": "(sample, metadata)",
    "pre_inference": "(sample, signature, metadata)",
    "post_inference": "(prediction, signature, metadata)",
}


class ModulePredictor:
    """v0.11 Python API: predict(sample, metadata) after init(model_path, metadata)."""

    def __init__(self, ctx: ReplicaSpec) -> None:
        if not ctx.predictor_path:
            raise PredictorLoadError(f"api {ctx.api_name}: predictor.path is required")
        where = ctx.predictor_path
        module = import_predictor_file(where, ctx.python_path)
        self._predict = _function(module, "predict", 2, where, required=True)
        self._metadata = ctx.config
        init = _function(module, "init", 2, where, required=False)
        if init is not None:
            try:
                init(ctx.model_path, ctx.config)
            except Exception as exc:
                hint = missing_package_hint(exc)
                raise PredictorLoadError(f"{where}: init(model_path, metadata) raised {type(exc).__name__}: {exc}"
                                         + (f"; {hint}" if hint else "")) from exc

    def predict(self, payload: Any) -> Any:
        assert self._predict is not None
        return self._predict(payload, self._metadata)

    def describe(self) -> dict[str, Any]:
        return {}


class HandledModel:
    """v0.11 ONNX / TensorFlow API: pre_inference -> the model -> post_inference."""

    def __init__(self, ctx: ReplicaSpec, run: Callable[[Any], Any], describe: Callable[[], dict[str, Any]],
                 in_signature: Any, out_signature: Any) -> None:
        self._run = run
        self.describe = describe
        self.client: Any = None  # the model client; the V2 endpoint runs the model itself (cortexd/v2)
        self._in, self._out = in_signature, out_signature
        self._metadata = ctx.config
        self._pre: Callable[..., Any] | None = None
        self._post: Callable[..., Any] | None = None
        if ctx.predictor_path:
            module = import_predictor_file(ctx.predictor_path, ctx.python_path)
            self._pre = _function(module, "pre_inference", 3, ctx.predictor_path, required=False)
            self._post = _function(module, "post_inference", 3, ctx.predictor_path, required=False)
            if self._pre is None and self._post is None:
                raise PredictorLoadError(
                    f"{ctx.predictor_path}: a request handler needs pre_inference(sample, signature, metadata) "
                    "and/or post_inference(prediction, signature, metadata); it has neither"
                )

    def predict(self, payload: Any) -> Any:
        sample = payload
        if self._pre is not None:
            sample = self._pre(payload, self._in, self._metadata)
        prediction = self._run(to_jsonable_inputs(sample))
        if self._post is not None:
            return self._post(prediction, self._out, self._metadata)
        return prediction


def to_jsonable_inputs(sample: Any) -> Any:
    """pre_inference may return numpy arrays; the clients take lists and numbers."""
    if isinstance(sample, dict):
        return {k: to_jsonable(v) if hasattr(v, "tolist") else v for k, v in sample.items()}
    return to_jsonable(sample) if hasattr(sample, "tolist") else sample


def load(ctx: ReplicaSpec) -> Any:
    if ctx.kind == "python":
        return ModulePredictor(ctx)
    if ctx.kind == "onnx":
        from cortexd.replica.onnx_predictor import ONNXClient

        if not ctx.model_path:
            raise PredictorLoadError(f"api {ctx.api_name}: onnx.model is required")
        client = ONNXClient(ctx.model_path, ctx.gpus, ctx.cpu, ctx.gpu_mem)
        handled = HandledModel(
            ctx, client.predict, client.describe, client.session.get_inputs(), client.session.get_outputs()
        )
        handled.client = client
        return handled
    if ctx.kind == "tensorflow":
        from cortexd.replica.tf_predictor import TensorFlowClient

        if not ctx.model_path:
            raise PredictorLoadError(f"api {ctx.api_name}: tensorflow.model is required")
        tf_client = TensorFlowClient(ctx.model_path, ctx.signature_key, ctx.cpu, ctx.gpu_mem if ctx.gpus else None,
                                     outputs="flat")
        signature = tf_client.signature_def_map()
        handled = HandledModel(ctx, tf_client.predict, tf_client.describe, signature, signature)
        handled.client = tf_client
        return handled
    raise PredictorLoadError(f"api {ctx.api_name}: unknown predictor kind {ctx.kind!r}")
