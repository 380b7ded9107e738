"""TensorFlow APIs: a SavedModel signature run in process.

TensorFlow is imported only when a client is made (inside `_import_tf`), never at module
import: only a tensorflow replica pays its memory and start-up time.

The model path may be a SavedModel folder, a folder of numbered versions (the highest number
holding a saved_model.pb wins), a folder holding exactly one of those (a zip of `bert/`), or a
local .zip of any of them (unpacked once next to it, or into a temp folder when that place is
read-only; the daemon unpacks remote zips itself).
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
from typing import Any

from cortexd import model_shapes, savedmodel
from cortexd.callconv import CALL_MODULE
from cortexd.models import ModelFetchError, unpack_local_zip
from cortexd.protocol import ReplicaSpec
from cortexd.replica import batching
from cortexd.replica.conventions import user_class
from cortexd.replica.gpu_limits import tensorflow_limit
from cortexd.replica.jsonable import InputMismatch, name_mismatch, to_array, to_jsonable
from cortexd.replica.predictors import (
    PayloadError,
    Predictor,
    PredictorLoadError,
    UserPredictor,
    construct_user_class,
    import_predictor_file,
)
from cortexd.replica.tf_outputs import flat_outputs, signature_def_map


def _log(message: str) -> None:
    sys.stderr.write(f"tensorflow: {message}\n")
    sys.stderr.flush()


def _import_tf() -> Any:
    # TF's C++ INFO lines (oneDNN notices, CPU feature guards) would open every replica log
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise PredictorLoadError(
            f"tensorflow APIs need TensorFlow, which cannot be imported ({exc}): install cortexd[tensorflow]"
        ) from None
    return tf


# ---------------------------------------------------------------- pure decisions


def choose_signature(available: list[str], requested: str | None, where: str, prefer_predict: bool = False) -> str:
    """The signature to serve; raises PredictorLoadError listing what the model has.

    `prefer_predict`: without a signature_key, a model with several signatures serves
    "predict" when it has one, as every released Cortex did (estimators export it)."""
    listed = ", ".join(sorted(available)) or "none"
    if requested:
        if requested not in available:
            raise PredictorLoadError(f"{where}: signature_key {requested!r} not found; the model has: {listed}")
        return requested
    if len(available) == 1:
        return available[0]
    if not available:
        raise PredictorLoadError(f"{where}: the SavedModel has no signatures to serve")
    if prefer_predict and "predict" in available:
        return "predict"
    raise PredictorLoadError(f"{where}: the model has several signatures ({listed}); set tensorflow.signature_key")


def threads_for(cpu: float) -> int:
    return max(1, math.ceil(cpu - 1e-9))


# ---------------------------------------------------------------- finding the SavedModel


def find_saved_model(path: str) -> str:
    """The SavedModel folder to load for a model path (see the module doc)."""
    if os.path.isfile(path):
        if not zipfile.is_zipfile(path):
            raise PredictorLoadError(
                f"{path}: expected a SavedModel folder, a folder of numbered versions, or a .zip of one"
            )
        try:
            path = unpack_local_zip(path)
        except ModelFetchError as exc:
            raise PredictorLoadError(str(exc)) from None
    if not os.path.isdir(path):
        raise PredictorLoadError(f"{path}: model not found")
    try:
        return savedmodel.locate(path)
    except savedmodel.NotASavedModel as exc:
        raise PredictorLoadError(str(exc)) from None


# ---------------------------------------------------------------- the client


def configure_runtime(tf: Any, cpu: float, gpu_mem: int | None = None) -> None:
    """Thread pools from the replica's cpu request; GPU memory grown on demand, or with gpu_mem
    one logical device of that size per GPU (TensorFlow cannot have both on one device).

    Must run before TensorFlow executes anything; CUDA_VISIBLE_DEVICES (set by the daemon)
    already limits which GPUs TensorFlow sees.
    """
    threads = threads_for(cpu)
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) != (threads, 1):
        try:
            threading.set_intra_op_parallelism_threads(threads)
            threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the runtime started already (a second model in one process)
            _log("runtime already initialised: thread settings left as they are")
    gpus = tf.config.list_physical_devices("GPU")
    if gpu_mem and gpus:
        _log(tensorflow_limit(tf, gpu_mem))
    else:
        for gpu in gpus:
            try:
                # without it TensorFlow takes nearly all of the GPU's memory at the first op
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError):
                pass
    _log(f"{threads} intra-op thread(s); GPUs: {', '.join(g.name for g in gpus) or 'none'}")


class TensorFlowClient:
    """Runs one signature of a SavedModel; `predict(dict)` returns {output: nested lists}, or with
    outputs="flat" {output: flat value list} as every released Cortex gave it (tf_outputs.py)."""

    def __init__(self, model_path: str, signature_key: str | None = None, cpu: float = 1.0,
                 gpu_mem: int | None = None, outputs: str = "shaped") -> None:
        import numpy as np

        self._flat = outputs == "flat"
        tf = _import_tf()
        self._tf = tf
        configure_runtime(tf, cpu, gpu_mem)
        self.model_dir = find_saved_model(model_path)
        try:
            self.model = tf.saved_model.load(self.model_dir)
        except Exception as exc:  # TF raises a zoo of types for a broken SavedModel
            raise PredictorLoadError(f"{self.model_dir}: TensorFlow cannot load the SavedModel: {exc}") from exc
        self.signatures: list[str] = sorted(self.model.signatures.keys())
        self.signature_key = choose_signature(self.signatures, signature_key, self.model_dir, prefer_predict=self._flat)
        self._fn = self.model.signatures[self.signature_key]
        args, kwargs = self._fn.structured_input_signature
        specs = dict(kwargs)
        for spec in args:  # signatures take keywords; positional specs are keyed by their name
            specs[spec.name] = spec
        specs = dict(sorted(specs.items()))  # a loaded signature's order is arbitrary: messages stay stable
        self._input_specs = specs
        self._output_specs = dict(self._fn.structured_outputs)
        self.input_signature: dict[str, tuple[Any, tuple[int | None, ...] | None]] = {
            name: (np.dtype(spec.dtype.as_numpy_dtype), _spec_shape(spec)) for name, spec in specs.items()
        }
        self._errors: tuple[type[BaseException], ...] = (tf.errors.InvalidArgumentError, TypeError, ValueError)
        _log(f"{self.model_dir}: serving signature {self.signature_key!r}")

    def to_inputs(self, payload: Any) -> dict[str, Any]:
        names = list(self.input_signature)
        if not isinstance(payload, dict):
            if len(names) != 1:
                raise PayloadError(
                    f"signature {self.signature_key!r} has inputs {names}: send an object by input name; "
                    f"got {type(payload).__name__}"
                )
            payload = {names[0]: payload}
        mismatch = name_mismatch(payload, names)
        if mismatch:
            raise PayloadError(f"{mismatch} (signature {self.signature_key!r} takes {names})")
        inputs = {}
        for name in names:
            dtype, shape = self.input_signature[name]
            try:
                inputs[name] = to_array(name, payload[name], dtype, shape)
            except InputMismatch as exc:
                raise PayloadError(str(exc)) from None
        return inputs

    def predict(self, payload: Any) -> dict[str, Any]:
        return self.format_outputs(self.run(self.to_inputs(payload)))

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The signature's outputs as numpy arrays, for inputs already converted (to_inputs,
        or the V2 endpoint's own checks)."""
        try:
            outputs = self._fn(**inputs)
        except self._errors as exc:
            # our checks passed but the graph refused (a shape a later op fixes): the payload's fault
            raise PayloadError(f"the model rejected the inputs: {_first_line(exc)}") from None
        return {name: value.numpy() for name, value in outputs.items()}

    # -- server-side batching (cortexd/replica/stacking.py, gather.py) --

    def run_arrays(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """The signature on ready inputs (stacked batches): `run`."""
        return self.run(feeds)

    def format_outputs(self, arrays: dict[str, Any]) -> dict[str, Any]:
        """What `predict` returns, from run_arrays' outputs."""
        if self._flat:
            return flat_outputs(arrays)
        return {name: to_jsonable(value) for name, value in arrays.items()}

    def batch_problem(self) -> str | None:
        """Why the signature cannot take a batch stacked along its first axis, or None."""
        inputs = {name: shape for name, (_dtype, shape) in self.input_signature.items()}
        outputs = {name: _spec_shape(spec) for name, spec in self._output_specs.items()}
        problem = model_shapes.batch_axis_problem(inputs, outputs)
        return None if problem is None else f"signature {self.signature_key!r}: {problem}"

    def signature_def_map(self) -> dict[str, Any]:
        """Every signature of the model as a SignatureDef map in protobuf's JSON mapping (v0.11's
        request handlers got it as `signature`)."""

        def specs(structure: Any) -> list[tuple[str, str, tuple[int | None, ...] | None]]:
            return [(name, spec.dtype.name, _spec_shape(spec)) for name, spec in sorted(structure.items())]

        signatures = {}
        for key, fn in self.model.signatures.items():
            args, kwargs = fn.structured_input_signature
            inputs = dict(kwargs)
            for spec in args:
                inputs[spec.name] = spec
            signatures[key] = (specs(inputs), specs(dict(fn.structured_outputs)))
        return signature_def_map(signatures)

    def describe(self) -> dict[str, Any]:
        def entry(name: str, spec: Any) -> dict[str, Any]:
            shape = _spec_shape(spec)
            return {"name": name, "dtype": spec.dtype.name, "shape": list(shape) if shape is not None else None}

        return {
            "signature_key": self.signature_key,
            "inputs": [entry(n, s) for n, s in self._input_specs.items()],
            "outputs": [entry(n, s) for n, s in sorted(self._output_specs.items())],
        }


def _spec_shape(spec: Any) -> tuple[int | None, ...] | None:
    if spec.shape.rank is None:
        return None
    return tuple(spec.shape.as_list())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load(ctx: ReplicaSpec) -> Predictor:
    if not ctx.model_path:
        raise PredictorLoadError(f"api {ctx.api_name}: tensorflow.model is required")
    client = TensorFlowClient(ctx.model_path, ctx.signature_key, ctx.cpu, ctx.gpu_mem if ctx.gpus else None,
                              outputs="shaped" if ctx.call == CALL_MODULE else "flat")
    batching.require_batchable(ctx, client.batch_problem)
    if not ctx.predictor_path:  # the API answers the signature's outputs by name
        return batching.mark_stacked(UserPredictor(client, client.describe, client), client, ctx)
    module = import_predictor_file(ctx.predictor_path, ctx.python_path)
    user_client, gatherer = batching.model_client_for(client, ctx)
    if ctx.call != CALL_MODULE:
        clients = {"tensorflow_client": user_client, "tf_client": user_client}
        predictor = user_class(module, ctx, clients, client.describe)
    else:
        instance = construct_user_class(
            module, "TensorFlowPredictor", user_client, ctx.config, ("tensorflow_client", "tf_client")
        )
        predictor = UserPredictor(instance, client.describe)
    predictor.client = client  # the V2 endpoint runs the model itself (cortexd/v2)
    return batching.mark_gathered(predictor, gatherer)
