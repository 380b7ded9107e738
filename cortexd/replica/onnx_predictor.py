"""ONNX APIs: an onnxruntime session in the replica, and the payload -> inputs conversion.

onnxruntime is imported when a client is made, not when this module is imported, so that
importing the module (tests, the daemon's describe paths) stays cheap.

Payload rule (`ONNXClient.predict`):
- a model with one input takes the payload itself, or `{input_name: value}`;
- a model with several inputs takes a dict by input name (missing or extra names -> 400);
- each value is converted to the input's dtype (ints to floats freely; floats to ints only
  when integral; strings only for string inputs), fixed dimensions are checked, dynamic ones
  take what came, and a single sample with one dimension fewer than the input gets the batch
  axis added when the input's first dimension is dynamic or 1 (see jsonable.to_array).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

from cortexd import model_shapes
from cortexd.callconv import CALL_MODULE
from cortexd.models import ModelFetchError, unpack_local_zip
from cortexd.protocol import ReplicaSpec
from cortexd.replica import batching
from cortexd.replica.conventions import user_class
from cortexd.replica.jsonable import InputMismatch, describe_shape, name_mismatch, to_array, to_jsonable
from cortexd.replica.predictors import (
    PayloadError,
    Predictor,
    PredictorLoadError,
    UserPredictor,
    construct_user_class,
    import_predictor_file,
)

# onnxruntime's type strings -> numpy dtype names (strings travel as object arrays)
ONNX_TO_NUMPY: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def _log(message: str) -> None:
    sys.stderr.write(f"onnx: {message}\n")
    sys.stderr.flush()


def session_plan(gpus: list[int], cpu: float, gpu_mem: int | None = None) -> tuple[list[Any], int]:
    """Providers and intra-op thread count for a replica: (providers, intra_op_threads).

    Threads follow the replica's cpu request, not the machine: several replicas share the
    cores, and a pool sized to the whole machine would fight the others (and inflate the CPU
    readings the autoscaler works from). With gpu_mem, the CUDA provider's arena is capped at
    it (`gpu_mem_limit`), grown by what is asked rather than by powers of two, so that a
    replica sharing a card stays inside its share.
    """
    threads = max(1, math.ceil(cpu - 1e-9))
    if gpus:
        options: dict[str, Any] = {"device_id": gpus[0]}
        if gpu_mem:
            options.update(gpu_mem_limit=gpu_mem, arena_extend_strategy="kSameAsRequested")
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"], threads
    return ["CPUExecutionProvider"], threads


def _shape(dims: list[Any]) -> tuple[int | None, ...]:
    # symbolic ('batch', 'N') and unknown (None) dimensions are both dynamic
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in dims)


class ONNXClient:
    """Runs one ONNX model; `predict(payload)` returns the outputs as session.run does."""

    def __init__(self, model_path: str, gpus: list[int], cpu: float, gpu_mem: int | None = None) -> None:
        import onnxruntime as ort

        self.model_path = _model_file(model_path)
        providers, threads = session_plan(gpus, cpu, gpu_mem)
        if gpus and hasattr(ort, "preload_dlls"):
            # loads CUDA/cuDNN from the nvidia-* pip wheels when they are installed (onnxruntime-gpu[cuda,cudnn]);
            # without them the system's libraries are used as before
            try:
                ort.preload_dlls()
            except Exception as exc:  # best effort: the provider check below reports what happened
                _log(f"preloading CUDA libraries failed: {exc}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads spin by default: that burns CPU between requests and would read
        # as load to the autoscaler. A replica serves one request at a time, so no spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self.model_path, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise PredictorLoadError(f"{self.model_path}: onnxruntime cannot load the model: {exc}") from exc
        taken = self.session.get_providers()
        if gpus:
            if taken and taken[0] == "CUDAExecutionProvider":
                _log(f"{self.model_path}: running on CUDAExecutionProvider (GPU {gpus[0]})")
            else:
                _log(
                    f"{self.model_path}: CUDAExecutionProvider unavailable for GPU {gpus[0]}, "
                    f"falling back to {taken[0] if taken else 'CPUExecutionProvider'} "
                    f"(available: {', '.join(ort.get_available_providers())})"
                )
        else:
            _log(f"{self.model_path}: running on CPUExecutionProvider with {threads} thread(s)")
        self._invalid_argument: type[BaseException] = _ort_exception("InvalidArgument")

        self._inputs = self.session.get_inputs()
        self._outputs = self.session.get_outputs()
        self.input_names: list[str] = [i.name for i in self._inputs]
        self.output_names: list[str] = [o.name for o in self._outputs]
        self.input_signature: dict[str, tuple[Any, tuple[int | None, ...]]] = {}
        for meta in self._inputs:
            if meta.type not in ONNX_TO_NUMPY:
                raise PredictorLoadError(
                    f"{self.model_path}: input {meta.name!r} has type {meta.type}; "
                    f"only tensor inputs are supported ({', '.join(ONNX_TO_NUMPY)})"
                )
            self.input_signature[meta.name] = (np.dtype(ONNX_TO_NUMPY[meta.type]), _shape(meta.shape))

    def to_inputs(self, payload: Any) -> dict[str, Any]:
        """The session's feed dict for a payload; raises PayloadError when it does not fit."""
        names = self.input_names
        if len(names) == 1:
            name = names[0]
            if isinstance(payload, dict):
                extra = sorted(str(k) for k in payload if k != name)
                if name not in payload:
                    raise PayloadError(
                        f"the model's one input is {name!r}: send its value, or an object with key {name!r}; "
                        f"got an object with keys {extra}"
                    )
                if extra:
                    raise PayloadError(f"unexpected keys {extra}; the model's one input is {name!r}")
                payload = payload[name]
            return {name: self._convert(name, payload)}
        if not isinstance(payload, dict):
            raise PayloadError(
                f"the model has {len(names)} inputs {names}: send an object by input name; "
                f"got {type(payload).__name__}"
            )
        mismatch = name_mismatch(payload, names)
        if mismatch:
            raise PayloadError(f"{mismatch} (the model's inputs are {names})")
        return {n: self._convert(n, payload[n]) for n in names}

    def _convert(self, name: str, value: Any) -> Any:
        dtype, shape = self.input_signature[name]
        try:
            return to_array(name, value, dtype, shape)
        except InputMismatch as exc:
            raise PayloadError(str(exc)) from None

    def predict(self, payload: Any) -> list[Any]:
        feeds = self.to_inputs(payload)
        try:
            outputs: list[Any] = self.session.run(None, feeds)  # one array per output, in order
            return outputs
        except self._invalid_argument as exc:
            # the inputs passed our checks but not the model's own (e.g. a dimension that a
            # later node fixes): still the payload's fault, so a 400
            raise PayloadError(f"the model rejected the inputs: {exc}") from None

    # -- server-side batching (cortexd/replica/stacking.py, gather.py) --

    def run_arrays(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """session.run on ready inputs; the outputs by name."""
        try:
            return dict(zip(self.output_names, self.session.run(None, feeds), strict=True))
        except self._invalid_argument as exc:
            raise PayloadError(f"the model rejected the inputs: {exc}") from None

    def format_outputs(self, arrays: dict[str, Any]) -> list[Any]:
        """What `predict` returns, from run_arrays' outputs: the list session.run gives."""
        return [arrays[name] for name in self.output_names]

    def batch_problem(self) -> str | None:
        """Why the model cannot take a batch stacked along its first axis, or None. Read from
        the file: onnxruntime reports scalars and unknown ranks alike."""
        try:
            return model_shapes.batch_axis_problem(*model_shapes.onnx_signature(self.model_path))
        except (OSError, ValueError):
            return None

    def describe(self) -> dict[str, Any]:
        def entry(meta: Any) -> dict[str, Any]:
            dtype = ONNX_TO_NUMPY.get(meta.type, meta.type)
            shape = list(_shape(meta.shape)) if meta.type.startswith("tensor(") else None
            return {"name": meta.name, "dtype": "string" if dtype == "object" else dtype, "shape": shape}

        return {"inputs": [entry(i) for i in self._inputs], "outputs": [entry(o) for o in self._outputs]}

    def __repr__(self) -> str:
        sig = ", ".join(f"{n}: {d} {describe_shape(s)}" for n, (d, s) in self.input_signature.items())
        return f"ONNXClient({self.model_path!r}, inputs=({sig}))"


def _ort_exception(name: str) -> type[BaseException]:
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        exc = getattr(state, name)
        if isinstance(exc, type) and issubclass(exc, BaseException):
            return exc
    except ImportError:
        pass

    class _Never(Exception):
        pass

    return _Never


def _model_file(path: str) -> str:
    """The .onnx file to load: the path itself, or the one .onnx file in a folder or a local .zip
    (the daemon unpacks remote zips; a local one is unpacked once, next to it)."""
    if path.lower().endswith(".zip") and os.path.isfile(path):
        try:
            path = unpack_local_zip(path)
        except ModelFetchError as exc:
            raise PredictorLoadError(str(exc)) from None
    if os.path.isdir(path):
        found = sorted(
            os.path.join(root, f) for root, _dirs, files in os.walk(path) for f in files if f.endswith(".onnx")
        )
        if len(found) != 1:
            raise PredictorLoadError(
                f"{path}: expected an .onnx file, got a folder with {len(found)} .onnx files"
                + (f" ({', '.join(os.path.relpath(f, path) for f in found[:5])})" if found else "")
            )
        return found[0]
    if not os.path.isfile(path):
        raise PredictorLoadError(f"{path}: model file not found")
    return path


class _OutputsByName:
    """No predictor file: the API answers {output_name: value} with plain JSON values."""

    def __init__(self, client: ONNXClient) -> None:
        self.client = client
        self._names = client.output_names

    def predict(self, payload: Any) -> Any:
        return {n: to_jsonable(v) for n, v in zip(self._names, self.client.predict(payload), strict=True)}

    def describe(self) -> dict[str, Any]:
        return self.client.describe()


def load(ctx: ReplicaSpec) -> Predictor:
    if not ctx.model_path:
        raise PredictorLoadError(f"api {ctx.api_name}: onnx.model is required")
    client = ONNXClient(ctx.model_path, ctx.gpus, ctx.cpu, ctx.gpu_mem)
    batching.require_batchable(ctx, client.batch_problem)
    if not ctx.predictor_path:
        return batching.mark_stacked(_OutputsByName(client), client, ctx)
    module = import_predictor_file(ctx.predictor_path, ctx.python_path)
    user_client, gatherer = batching.model_client_for(client, ctx)
    if ctx.call != CALL_MODULE:
        predictor = user_class(module, ctx, {"onnx_client": user_client}, client.describe)
    else:
        instance = construct_user_class(module, "ONNXPredictor", user_client, ctx.config, ("onnx_client",))
        predictor = UserPredictor(instance, client.describe)
    predictor.client = client  # the V2 endpoint runs the model itself (cortexd/v2)
    return batching.mark_gathered(predictor, gatherer)
