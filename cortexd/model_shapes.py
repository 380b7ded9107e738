"""Input and output shapes of ONNX models and TensorFlow SavedModels, read without their runtimes.

`cortexd validate` (and the daemon, before it starts replicas) checks that a model served
with `server_side_batching` can take a batch: a batch is stacked along the first axis, so
that axis must be dynamic on every input and output. Importing onnxruntime or TensorFlow
to learn that would cost seconds and hundreds of MB, so the few fields needed are read
straight from the protobuf wire format (the file is memory-mapped; weights are skipped by
their length, never read).

Shapes are tuples with None for a dynamic dimension, or None for an unknown rank.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

from cortexd import savedmodel

Dims = tuple[int | None, ...]
Signature = dict[str, "Dims | None"]  # tensor name -> shape (None: rank unknown)


class ModelFormatError(ValueError):
    """The file is not the protobuf it should be."""


# -- the protobuf wire format --------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(buf: memoryview, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise ModelFormatError("truncated or malformed varint")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end or the varint's value) of a message.

    For _LEN fields the value is buf[start:end]; for varints `start` is the value itself."""
    at = start
    while at < end:
        key, at = _varint(buf, at, end)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, at = _varint(buf, at, end)
            yield field, wire, value, at
        elif wire == _LEN:
            length, at = _varint(buf, at, end)
            if at + length > end:
                raise ModelFormatError("a length-delimited field runs past its message")
            yield field, wire, at, at + length
            at += length
        elif wire == _I64:
            at += 8
        elif wire == _I32:
            at += 4
        else:
            raise ModelFormatError(f"unsupported wire type {wire}")
    if at != end:
        raise ModelFormatError("a field runs past its message")


def _submessages(buf: memoryview, start: int, end: int, number: int) -> Iterator[tuple[int, int]]:
    for field, wire, a, b in _fields(buf, start, end):
        if field == number and wire == _LEN:
            yield a, b


def _string(buf: memoryview, start: int, end: int, number: int) -> str | None:
    for field, wire, a, b in _fields(buf, start, end):
        if field == number and wire == _LEN:
            return bytes(buf[a:b]).decode("utf-8", "replace")
    return None


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Mapped:
    """A file memory-mapped for reading (an empty file maps to no bytes)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.view = memoryview(self._map) if self._map is not None else memoryview(b"")

    def __enter__(self) -> memoryview:
        return self.view

    def __exit__(self, *exc: object) -> None:
        self.view.release()
        if self._map is not None:
            self._map.close()
        self._file.close()


# -- ONNX ----------------------------------------------------------------------------------
# ModelProto.graph = 7; GraphProto.initializer = 5, input = 11, output = 12;
# TensorProto.name = 8; ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1;
# TypeProto.Tensor.shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1, dim_param = 2.


def _onnx_shape(buf: memoryview, start: int, end: int) -> Dims | None:
    for type_start, type_end in _submessages(buf, start, end, 2):  # ValueInfoProto.type
        for tensor_start, tensor_end in _submessages(buf, type_start, type_end, 1):  # tensor_type
            for shape_start, shape_end in _submessages(buf, tensor_start, tensor_end, 2):  # shape
                dims: list[int | None] = []
                for dim_start, dim_end in _submessages(buf, shape_start, shape_end, 1):
                    value: int | None = None
                    for field, wire, a, _b in _fields(buf, dim_start, dim_end):
                        if field == 1 and wire == _VARINT:
                            value = _signed(a)
                    dims.append(value if value is not None and value >= 0 else None)
                return tuple(dims)
            return None  # a tensor without a shape: rank unknown
        return None  # not a tensor (sequence, map): nothing to say
    return None


def onnx_signature(path: str) -> tuple[Signature, Signature]:
    """(inputs, outputs) of an ONNX model file, by name. Initializers listed among the
    inputs (older exporters do that) are left out, as onnxruntime leaves them out."""
    with _Mapped(path) as buf:
        graphs = list(_submessages(buf, 0, len(buf), 7))
        if not graphs:
            raise ModelFormatError(f"{path}: no graph in the file (not an ONNX model?)")
        g_start, g_end = graphs[-1]
        initializers = {_string(buf, a, b, 8) for a, b in _submessages(buf, g_start, g_end, 5)}
        inputs: Signature = {}
        outputs: Signature = {}
        for field, wire, a, b in _fields(buf, g_start, g_end):
            if wire != _LEN or field not in (11, 12):
                continue
            name = _string(buf, a, b, 1) or ""
            if field == 11 and name not in initializers:
                inputs[name] = _onnx_shape(buf, a, b)
            elif field == 12:
                outputs[name] = _onnx_shape(buf, a, b)
        return inputs, outputs


# -- TensorFlow SavedModel -----------------------------------------------------------------
# SavedModel.meta_graphs = 2; MetaGraphDef.meta_info_def = 1 (MetaInfoDef.tags = 4),
# signature_def = 5 (map entry: key = 1, value = 2); SignatureDef.inputs = 1, outputs = 2
# (map<string, TensorInfo>); TensorInfo.tensor_shape = 3; TensorShapeProto.dim = 2,
# unknown_rank = 3; Dim.size = 1 (-1: unknown).


def _tf_shape(buf: memoryview, start: int, end: int) -> Dims | None:
    for shape_start, shape_end in _submessages(buf, start, end, 3):  # TensorInfo.tensor_shape
        dims: list[int | None] = []
        for field, wire, a, b in _fields(buf, shape_start, shape_end):
            if field == 3 and wire == _VARINT and a:
                return None  # unknown_rank
            if field == 2 and wire == _LEN:
                size = -1
                for f, w, value, _ in _fields(buf, a, b):
                    if f == 1 and w == _VARINT:
                        size = _signed(value)
                dims.append(size if size >= 0 else None)
        return tuple(dims)
    return None  # written without a shape: say nothing


def _tf_map(buf: memoryview, start: int, end: int, number: int) -> Signature:
    out: Signature = {}
    for a, b in _submessages(buf, start, end, number):
        key = _string(buf, a, b, 1) or ""
        values = list(_submessages(buf, a, b, 2))
        out[key] = _tf_shape(buf, *values[0]) if values else None
    return out


def saved_model_signatures(saved_model_pb: str) -> dict[str, tuple[Signature, Signature]]:
    """Signature name -> (inputs, outputs) of a saved_model.pb, from its "serve" meta graph
    (else its first). Internal signatures ("__saved_model_init_op") are left out."""
    with _Mapped(saved_model_pb) as buf:
        metas = list(_submessages(buf, 0, len(buf), 2))
        if not metas:
            raise ModelFormatError(f"{saved_model_pb}: no meta graph in the file (not a SavedModel?)")
        chosen = metas[0]
        for m_start, m_end in metas:
            tags: list[str] = []
            for info_start, info_end in _submessages(buf, m_start, m_end, 1):
                for field, wire, a, b in _fields(buf, info_start, info_end):
                    if field == 4 and wire == _LEN:
                        tags.append(bytes(buf[a:b]).decode("utf-8", "replace"))
            if "serve" in tags:
                chosen = (m_start, m_end)
                break
        signatures: dict[str, tuple[Signature, Signature]] = {}
        for a, b in _submessages(buf, chosen[0], chosen[1], 5):
            name = _string(buf, a, b, 1) or ""
            if name.startswith("__"):
                continue
            values = list(_submessages(buf, a, b, 2))
            if values:
                v_start, v_end = values[0]
                signatures[name] = (_tf_map(buf, v_start, v_end, 1), _tf_map(buf, v_start, v_end, 2))
            else:
                signatures[name] = ({}, {})
        return signatures


# -- the batch axis --------------------------------------------------------------------------


def describe(shape: Dims) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def batch_axis_problem(inputs: Signature, outputs: Signature) -> str | None:
    """Why the model cannot take a batch stacked along the first axis, or None.

    Every input and output with a known shape needs a dynamic first dimension; unknown
    ranks pass (the runtime will tell)."""
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for name, shape in tensors.items():
            if shape is None:
                continue
            if len(shape) == 0:
                reason = f"{kind} {name!r} is a scalar (shape []), so it has no batch dimension"
            elif shape[0] is not None:
                reason = f"{kind} {name!r} has a fixed first dimension (shape {describe(shape)})"
            else:
                continue
            return (
                f"server_side_batching stacks requests along the first dimension, but {reason}; "
                "export the model with a dynamic first dimension on every input and output "
                "(None in TensorFlow, a name such as \"N\" in ONNX)"
            )
    return None


def local_batch_problem(kind: str, path: str, signature_key: str | None = None) -> str | None:
    """For a local model: why it cannot be served with server_side_batching, or None (also
    None when that cannot be told without loading it: a .zip, a text SavedModel, a file
    that does not parse, several signatures and no signature_key)."""
    try:
        if kind == "onnx":
            if not os.path.isfile(path) or path.lower().endswith(".zip"):
                return None
            return batch_axis_problem(*onnx_signature(path))
        if kind == "tensorflow":
            pb = _saved_model_pb(path)
            if pb is None:
                return None
            signatures = saved_model_signatures(pb)
            if signature_key is None and len(signatures) == 1:
                signature_key = next(iter(signatures))
            if signature_key not in signatures:
                return None
            problem = batch_axis_problem(*signatures[signature_key])
            return None if problem is None else f"signature {signature_key!r}: {problem}"
    except (OSError, ModelFormatError, ValueError):
        return None  # the replica's load reports a model it cannot read, in its words
    return None


def _saved_model_pb(path: str) -> str | None:
    """saved_model.pb of the SavedModel the replica would load from `path` (savedmodel.locate)."""
    if not os.path.isdir(path):
        return None
    try:
        pb = os.path.join(savedmodel.locate(path), "saved_model.pb")
    except (savedmodel.NotASavedModel, OSError):
        return None
    return pb if os.path.isfile(pb) else None
