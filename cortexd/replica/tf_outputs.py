"""TensorFlow outputs and signatures as every released Cortex handed them to predictors.

Cortex's TensorFlow client (v0.11 through v0.35) sent requests to TensorFlow Serving over
gRPC and converted the response with protobuf's JSON mapping (`MessageToDict`), keeping, per
output, only the repeated value field of its TensorProto. So a predictor received, per
output, a *flat* list of values in row-major order, whatever the tensor's shape:

- float, double, half: numbers (NaN and infinities as the strings "NaN", "Infinity", "-Infinity");
- int8, int16, int32, uint8, uint16, uint32: numbers;
- int64, uint64: decimal *strings* (the JSON mapping writes 64-bit integers as strings),
  which is why Cortex's examples read `int(prediction["class_ids"][0])`;
- bool: true/false; string: base64 of the bytes (the mapping of `bytes` fields);
- complex: real and imaginary parts interleaved.

`signature_def_map` builds the `signature` argument of v0.11's request handlers in the same
mapping: {signature_key: {"inputs": {name: {"name", "dtype": "DT_FLOAT", "tensorShape":
{"dim": [{"size": "-1"}, ...]}}}, "outputs": {...}, "methodName": ...}}.
Pure functions over numpy arrays and (name, dtype name, shape) triples.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# numpy dtype kind/size -> TensorFlow's DataType names, as the JSON mapping spells them.
_TF_DTYPE_NAMES: dict[str, str] = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "bfloat16": "DT_BFLOAT16",
    "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
    "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64",
    "bool": "DT_BOOL", "string": "DT_STRING", "complex64": "DT_COMPLEX64", "complex128": "DT_COMPLEX128",
}


def _float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def flat_values(array: Any) -> list[Any]:
    """One output tensor as the flat value list of its TensorProto in the JSON mapping."""
    arr = np.asarray(array)
    flat = arr.reshape(-1)
    kind = arr.dtype.kind
    if kind == "f":
        return [_float(float(v)) for v in flat.astype(np.float64)]
    if kind == "c":
        out: list[Any] = []
        for v in flat:
            out += [_float(float(v.real)), _float(float(v.imag))]
        return out
    if kind == "b":
        return [bool(v) for v in flat]
    if kind in ("i", "u"):
        if arr.dtype.itemsize == 8:
            return [str(int(v)) for v in flat]
        return [int(v) for v in flat]
    if kind in ("S", "O", "U"):
        return [base64.b64encode(v if isinstance(v, bytes) else str(v).encode()).decode("ascii") for v in flat]
    return [v.item() if hasattr(v, "item") else v for v in flat]


def flat_outputs(outputs: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{output name: flat value list} for a signature's outputs (numpy arrays or tensors)."""
    return {name: flat_values(value) for name, value in outputs.items()}


def tf_dtype_name(dtype_name: str) -> str:
    """'float32' -> 'DT_FLOAT' (TensorFlow's `tf.string` is named 'string')."""
    return _TF_DTYPE_NAMES.get(dtype_name, "DT_" + dtype_name.upper())


def _tensor_info(name: str, dtype_name: str, shape: Iterable[int | None] | None) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name, "dtype": tf_dtype_name(dtype_name)}
    if shape is None:
        info["tensorShape"] = {"unknownRank": True}
    else:
        # int64 sizes are strings in the mapping; an unknown size is -1
        info["tensorShape"] = {"dim": [{"size": str(-1 if d is None else int(d))} for d in shape]}
    return info


TensorSpec = tuple[str, str, "tuple[int | None, ...] | None"]   # (name, dtype name, shape)


def signature_def_map(signatures: Mapping[str, tuple[list[TensorSpec], list[TensorSpec]]]) -> dict[str, Any]:
    """{signature key: SignatureDef in the JSON mapping} from each signature's (inputs, outputs)."""
    out: dict[str, Any] = {}
    for key, (inputs, outputs) in signatures.items():
        out[key] = {
            "inputs": {name: _tensor_info(name, dtype, shape) for name, dtype, shape in inputs},
            "outputs": {name: _tensor_info(name, dtype, shape) for name, dtype, shape in outputs},
            "methodName": "tensorflow/serving/predict",
        }
    return out
