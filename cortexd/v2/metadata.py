"""V2 server and model metadata, from what replicas report and what cortex.yaml declares.

ONNX and TensorFlow replicas describe their model when they are ready (`describe()`:
inputs and outputs with numpy dtype names and shapes, None for a dynamic dimension, a None
shape for an unknown rank). Python predictors describe nothing; their API may declare its
tensors in cortex.yaml (`parse_declaration` checks that declaration), otherwise the lists
are empty, as the protocol allows.
"""

from __future__ import annotations

from typing import Any

from cortexd import __version__
from cortexd.v2.backend import ModelEntry
from cortexd.v2.datatypes import DATATYPES, v2_name

SERVER_NAME = "cortexd"
EXTENSIONS = ["binary_tensor_data"]

PLATFORMS: dict[str, str] = {
    "onnx": "onnxruntime_onnx",
    "tensorflow": "tensorflow_savedmodel",
    "python": "python",
}


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def _shape(shape: Any) -> list[int]:
    # V2 writes a dynamic dimension as -1; a tensor of unknown rank gets [-1] (one dynamic
    # dimension is the closest the protocol can say)
    if shape is None:
        return [-1]
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def tensor_from_describe(entry: dict[str, Any]) -> dict[str, Any]:
    """One describe() entry ({"name", "dtype", "shape"}) as V2 tensor metadata."""
    return {
        "name": str(entry.get("name", "")),
        "datatype": v2_name(str(entry.get("dtype", ""))),
        "shape": _shape(entry.get("shape")),
    }


def model_metadata(entry: ModelEntry) -> dict[str, Any]:
    """GET /v2/models/<name>: name, versions, platform, inputs and outputs."""
    if entry.declared is not None:
        inputs = [dict(t) for t in entry.declared.get("inputs", [])]
        outputs = [dict(t) for t in entry.declared.get("outputs", [])]
    else:
        inputs = [tensor_from_describe(t) for t in entry.info.get("inputs") or [] if isinstance(t, dict)]
        outputs = [tensor_from_describe(t) for t in entry.info.get("outputs") or [] if isinstance(t, dict)]
    return {
        "name": entry.name,
        "versions": [entry.version],
        "platform": PLATFORMS.get(entry.kind, entry.kind),
        "inputs": inputs,
        "outputs": outputs,
    }


class DeclarationError(ValueError):
    """A declaration's first problem: `path` is its key path ("v2.inputs[0].shape"), `problem` what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def parse_declaration(value: Any, where: str = "v2") -> dict[str, list[dict[str, Any]]]:
    """A Python API's declared tensors, checked: {"inputs": [...], "outputs": [...]}, each
    tensor {"name": str, "datatype": one of the V2 datatypes, "shape": [int, ...]} with -1
    for a dynamic dimension. Raises DeclarationError for the first problem."""
    if not isinstance(value, dict):
        raise DeclarationError(where, f"expected a mapping with keys inputs and outputs, got {type(value).__name__}")
    extra = sorted(str(k) for k in value if k not in ("inputs", "outputs"))
    if extra:
        raise DeclarationError(where, f"unknown keys {extra}; expected inputs and outputs")
    out: dict[str, list[dict[str, Any]]] = {}
    for side in ("inputs", "outputs"):
        tensors = value.get(side)
        if tensors is None:  # a side left out (or written empty in YAML) has no tensors
            tensors = []
        if not isinstance(tensors, list):
            raise DeclarationError(f"{where}.{side}", f"expected a list of tensors, got {type(tensors).__name__}")
        parsed: list[dict[str, Any]] = []
        for i, t in enumerate(tensors):
            at = f"{where}.{side}[{i}]"
            if not isinstance(t, dict):
                raise DeclarationError(at, "expected a mapping with name, datatype and shape")
            unknown = sorted(str(k) for k in t if k not in ("name", "datatype", "shape"))
            if unknown:
                raise DeclarationError(at, f"unknown keys {unknown}; expected name, datatype, shape")
            name, dtype, shape = t.get("name"), t.get("datatype"), t.get("shape")
            if not isinstance(name, str) or not name:
                raise DeclarationError(f"{at}.name", "expected a non-empty string")
            if any(p["name"] == name for p in parsed):
                raise DeclarationError(f"{at}.name", f"{name!r} is declared twice")
            if dtype not in DATATYPES:
                raise DeclarationError(f"{at}.datatype", f"expected one of {', '.join(DATATYPES)}, got {dtype!r}")
            if not isinstance(shape, list) or not all(type(d) is int and d >= -1 for d in shape):
                raise DeclarationError(
                    f"{at}.shape", f"expected a list of integers, -1 for a dynamic dimension, got {shape!r}"
                )
            parsed.append({"name": name, "datatype": dtype, "shape": list(shape)})
        out[side] = parsed
    return out
