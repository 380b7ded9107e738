"""V2 inference requests in, V2 inference responses out (REST JSON and Triton's binary form).

A request body is a JSON header, optionally followed by binary tensor data (Triton's binary
tensor data extension): the `Inference-Header-Content-Length` header says where the JSON
ends, each input carrying `"parameters": {"binary_data_size": n}` takes the next n bytes, in
the order the inputs are listed. `parse_request` turns either form into named numpy arrays,
checking each input's datatype, shape and size; every problem is a `V2Error` (400) whose
message names the input.

`encode_response` builds the response's JSON header and binary parts. An output goes binary
when its requested-output parameter `binary_data` is true, or, when that is absent, when the
request's `binary_data_output` parameter is. The request `id` is echoed; request parameters
stay on the parsed request for the predictor, and response parameters are whatever the
caller passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cortexd.v2.datatypes import (
    Datatype,
    TensorError,
    as_datatype,
    check_shape,
    datatype,
    from_raw,
    json_array,
    json_data,
    to_raw,
)

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"  # request parameter: every output binary by default
BINARY_DATA = "binary_data"  # requested-output parameter


class V2Error(Exception):
    """A request the protocol answers with an error: `status` and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


@dataclass
class InputTensor:
    name: str
    datatype: Datatype
    shape: list[int]
    array: Any  # numpy array of `shape`; read-only when it views binary data
    parameters: dict[str, Any] = field(default_factory=dict)  # without binary_data_size


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None  # the output's own binary_data parameter, None when absent
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # without binary_data_output
    outputs: list[RequestedOutput] | None = None  # None: every output the model has
    binary_default: bool = False  # the request's binary_data_output
    header: dict[str, Any] = field(default_factory=dict)  # the parsed JSON header, as sent

    def binary_for(self, name: str) -> bool:
        for out in self.outputs or ():
            if out.name == name and out.binary is not None:
                return out.binary
        return self.binary_default

    def arrays(self) -> dict[str, Any]:
        return {t.name: t.array for t in self.inputs}


def _loads(header: bytes) -> Any:
    from cortexd.replica.bodies import (  # depth-checked JSON, as /predict
        BodyError,
        parse_body,
    )

    try:
        return parse_body(header)
    except BodyError as exc:
        raise V2Error(400, f"the request's JSON: {exc}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(400, f"{what} must be an object, got {type(value).__name__}")
    return value


def _name(entry: Any, index: int, what: str) -> str:
    if not isinstance(entry, dict):
        raise V2Error(400, f"{what} {index} must be an object, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise V2Error(400, f"{what} {index} has no name")
    return name


def parse_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """The V2 request in `body`; header_length is the Inference-Header-Content-Length
    header's value, None when the request had none (the whole body is JSON)."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise V2Error(400, f"{HEADER_LENGTH} is {header_length}; the body has {len(body)} bytes")
    end = len(body) if header_length is None else header_length
    doc = _loads(body[:end] if header_length is not None else body)
    if not isinstance(doc, dict):
        raise V2Error(400, f"the request must be a JSON object, got {type(doc).__name__}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise V2Error(
            400, "the request has no inputs: expected \"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}, ...]"
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(400, f"the request id must be a string, got {type(request_id).__name__}")
    parameters = dict(_object(doc.get("parameters"), "the request's parameters"))
    binary_default = parameters.pop(BINARY_OUTPUT, False)
    if not isinstance(binary_default, bool):
        raise V2Error(400, f"parameter {BINARY_OUTPUT} must be true or false")

    view = memoryview(body)
    at = end  # where the next binary input starts
    inputs: list[InputTensor] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw_inputs):
        name = _name(entry, index, "input")
        what = f"input {name!r}"
        if name in seen:
            raise V2Error(400, f"{what} is given twice")
        seen.add(name)
        params = dict(_object(entry.get("parameters"), f"{what}: parameters"))
        size = params.pop(BINARY_SIZE, None)
        try:
            dtype = datatype(entry.get("datatype"), what) if isinstance(entry.get("datatype"), str) else None
            if dtype is None:
                raise TensorError(f"{what}: datatype is missing or not a string")
            shape = check_shape(entry.get("shape"), what)
            if size is not None:
                if "data" in entry:
                    raise TensorError(f"{what}: has both data and {BINARY_SIZE}")
                if header_length is None:
                    raise TensorError(f"{what}: has {BINARY_SIZE} but the request has no {HEADER_LENGTH} header")
                if type(size) is not int or size < 0:
                    raise TensorError(f"{what}: {BINARY_SIZE} must be a non-negative integer, got {size!r}")
                if at + size > len(body):
                    raise TensorError(
                        f"{what}: {BINARY_SIZE} is {size} but only {len(body) - at} bytes of binary data remain"
                    )
                array = from_raw(dtype, view[at : at + size], shape, what)
                at += size
            elif "data" in entry:
                array = json_array(dtype, entry["data"], shape, what)
            else:
                raise TensorError(f"{what}: has no data (give \"data\", or binary data with {BINARY_SIZE})")
        except TensorError as exc:
            raise V2Error(400, str(exc)) from None
        inputs.append(InputTensor(name, dtype, shape, array, params))
    if at != len(body):
        raise V2Error(400, f"the body has {len(body) - at} bytes after the last binary input's data")

    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise V2Error(400, f"outputs must be a list, got {type(raw_outputs).__name__}")
        outputs = []
        for index, entry in enumerate(raw_outputs):
            name = _name(entry, index, "output")
            if any(o.name == name for o in outputs):
                raise V2Error(400, f"output {name!r} is requested twice")
            params = dict(_object(entry.get("parameters"), f"output {name!r}: parameters"))
            binary = params.pop(BINARY_DATA, None)
            if binary is not None and not isinstance(binary, bool):
                raise V2Error(400, f"output {name!r}: parameter {BINARY_DATA} must be true or false")
            outputs.append(RequestedOutput(name, binary, params))
    return InferRequest(inputs, request_id, parameters, outputs, binary_default, doc)


# ---------------------------------------------------------------- responses


@dataclass
class EncodedResponse:
    """A response's JSON header and the binary data that follows it (maybe none)."""

    header: bytes
    binary: list[bytes]

    @property
    def header_length(self) -> int | None:
        return len(self.header) if self.binary else None

    def http(self) -> tuple[dict[str, str], bytes]:
        """(headers, body) as a V2 REST server sends them."""
        if not self.binary:
            return {"Content-Type": JSON_CONTENT_TYPE}, self.header
        headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(self.header))}
        return headers, b"".join([self.header, *self.binary])


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_response(
    model_name: str,
    model_version: str | None,
    outputs: Sequence[tuple[str, Any]],
    binary_for: Callable[[str], bool],
    request_id: str | None = None,
    parameters: dict[str, Any] | None = None,
    output_parameters: dict[str, dict[str, Any]] | None = None,
) -> EncodedResponse:
    """Encode (name, value) outputs; a value is a numpy array or anything np.asarray takes.
    A value that has no V2 datatype, or BYTES that are not text asked for as JSON, raises
    V2Error 500 naming the output (the predictor's answer, not the request, is at fault)."""
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    entries: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for name, value in outputs:
        what = f"output {name!r}"
        try:
            dtype, arr = as_datatype(value, what)
            entry: dict[str, Any] = {"name": name, "datatype": dtype.name, "shape": list(arr.shape)}
            params = dict((output_parameters or {}).get(name) or {})
            if binary_for(name):
                raw = to_raw(arr, dtype)
                params[BINARY_SIZE] = len(raw)
                binary.append(raw)
            else:
                entry["data"] = json_data(arr, dtype, what)
        except TensorError as exc:
            raise V2Error(500, str(exc)) from None
        if params:
            entry["parameters"] = params
        entries.append(entry)
    doc["outputs"] = entries
    return EncodedResponse(_ENCODER.encode(doc).encode(), binary)
