"""gRPC ModelInfer messages <-> the REST binary form the replicas speak, without numpy.

A ModelInferRequest becomes a V2 REST request in Triton's binary form: a small JSON header
(names, datatypes, shapes, parameters, `binary_data_size` per input) followed by the inputs'
bytes. `raw_input_contents` are concatenated as they are; typed contents (fp32_contents, ...)
are packed with `struct`, which is what the replica would otherwise have to parse from JSON.
Every output is requested binary, so the replica's answer maps onto `raw_output_contents`
by slicing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cortexd.v2.datatypes import DATATYPES, TensorError, pack_values

# which InferTensorContents field holds each datatype's typed values (FP16 has none: raw only)
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_INT64_MAX = (1 << 63) - 1


def param_value(param: Any) -> Any:
    """The Python value of an InferParameter (None when none of its choices is set)."""
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def params_to_json(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: param_value(value) for key, value in params.items()}


def set_params(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a protobuf map<string, InferParameter> from JSON values."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:  # lists and objects have no InferParameter form: their JSON text
            param.string_param = json.dumps(value)


def _typed_contents(tensor: Any, what: str) -> bytes:
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise TensorError(f"{what}: unknown datatype {tensor.datatype!r}; expected one of {', '.join(DATATYPES)}")
    field = CONTENTS_FIELD.get(dtype.name)
    if field is None:
        raise TensorError(f"{what}: {dtype.name} data must be sent in raw_input_contents")
    return pack_values(dtype, list(getattr(tensor.contents, field)), what)


def request_body(request: Any) -> tuple[bytes, int]:
    """(body, header length) of the REST binary request for a ModelInferRequest; TensorError
    (a message naming the input) for contents that cannot be sent."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give one per input, in order"
        )
    inputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for index, tensor in enumerate(request.inputs):
        what = f"input {tensor.name!r}"
        if raw:
            if tensor.HasField("contents"):
                raise TensorError(f"{what}: has contents although raw_input_contents is used")
            data = raw[index]
        else:
            data = _typed_contents(tensor, what)
        params = params_to_json(tensor.parameters)
        params["binary_data_size"] = len(data)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                       "parameters": params})
        chunks.append(data)
    parameters = params_to_json(request.parameters)
    parameters["binary_data_output"] = True
    doc: dict[str, Any] = {"inputs": inputs, "parameters": parameters}
    if request.id:
        doc["id"] = request.id
    if len(request.outputs):
        outputs = []
        for out in request.outputs:
            out_params = params_to_json(out.parameters)
            out_params["binary_data"] = True  # gRPC answers in raw_output_contents
            outputs.append({"name": out.name, "parameters": out_params})
        doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    return b"".join([header, *chunks]), len(header)


def _flatten(data: Any) -> Iterable[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def fill_response(response: Any, header: bytes, binary: memoryview) -> Any:
    """Fill a ModelInferResponse from a replica's answer (JSON header + binary data)."""
    doc = json.loads(header)
    response.model_name = str(doc.get("model_name", ""))
    response.model_version = str(doc.get("model_version", ""))
    if doc.get("id") is not None:
        response.id = str(doc["id"])
    set_params(response.parameters, doc.get("parameters") or {})
    at = 0
    raws: list[bytes] = []
    for entry in doc.get("outputs") or []:
        out = response.outputs.add()
        out.name = entry["name"]
        out.datatype = entry["datatype"]
        out.shape.extend(entry["shape"])
        params = dict(entry.get("parameters") or {})
        size = params.pop("binary_data_size", None)
        set_params(out.parameters, params)
        if size is not None:
            raws.append(bytes(binary[at : at + size]))
            at += size
        else:  # the replica answered JSON data: pack it as raw, like the others
            raws.append(pack_values(DATATYPES[entry["datatype"]], list(_flatten(entry.get("data"))), out.name))
    response.raw_output_contents.extend(raws)
    return response
