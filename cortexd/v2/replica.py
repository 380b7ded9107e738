"""The replica's V2 inference: decode the request, run the predictor, encode the response.

Which code a V2 request runs:
- ONNX and TensorFlow APIs: the model itself, by input name (cortexd/v2/model_runner.py),
  even when the API has a predictor file: V2 clients speak the model's tensors, the ones the
  model metadata lists. A predictor class that sets `v2_input` (below) takes the requests
  instead, like a Python predictor.
- Python predictors: `predict(payload)` (or the module form's `predict(sample, metadata)`);
  with server-side batching, whose predict takes a list of payloads and returns a list,
  `predict([payload])` and the one prediction it returned (v0.17+: query_params and headers
  are lists of one too, both empty).
  The payload is a dict of input name -> numpy array (a writable copy; BYTES as object arrays
  of bytes). A predictor that sets `v2_input = "json"` (a class attribute, or a module-level
  variable for the module form) gets the V2 request object instead: the parsed JSON with
  binary inputs filled in as flat `data` lists, `id` and `parameters` included.

A predictor returns a dict of output name -> value (numpy arrays, lists, scalars, strings);
in "json" mode it may return a V2 response object (`{"outputs": [{"name", "datatype",
"shape", "data"}], "parameters": {...}}`) instead. Anything else is returned as one output
named "output". The request's `outputs` pick among what came back.
"""

from __future__ import annotations

import sys
import traceback
import zlib
from collections.abc import Mapping
from typing import Any

from cortexd.v2 import hop
from cortexd.v2.codec import (
    HEADER_LENGTH,
    EncodedResponse,
    InferRequest,
    V2Error,
    encode_response,
    error_body,
    parse_request,
)
from cortexd.v2.datatypes import TensorError, datatype, json_array, json_data
from cortexd.v2.model_runner import ModelRunner, runner_for

V2_INPUT_ATTRIBUTE = "v2_input"
V2_INPUT_MODES = ("numpy", "json")
DEFAULT_OUTPUT = "output"
MAX_INFLATED_BYTES = 1 << 30  # a compressed request may not inflate past 1 GiB
DEBUG_TRUNCATE = 2000


def _log(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def v2_input_mode(predictor: Any) -> str | None:
    """The predictor's `v2_input` setting ("numpy" or "json"), None when it sets none."""
    for owner in (getattr(predictor, "instance", None), getattr(predictor, "module", None)):
        if owner is not None:
            mode = getattr(owner, V2_INPUT_ATTRIBUTE, None)
            if mode is not None:
                if mode not in V2_INPUT_MODES:
                    raise V2Error(
                        500, f"the predictor's {V2_INPUT_ATTRIBUTE} is {mode!r}; expected \"numpy\" or \"json\""
                    )
                return str(mode)
    return None


class V2Predictor:
    """A replica's V2 side, made once per predictor (the model runner is built on first use)."""

    def __init__(self, predictor: Any, batched: bool = False) -> None:
        self.predictor = predictor
        self.batched = batched  # predict takes a list (a Python predictor under server-side batching)
        self._runner: ModelRunner | None = None
        self._resolved = False

    def runner(self) -> ModelRunner | None:
        if not self._resolved:
            mode = v2_input_mode(self.predictor)
            self._runner = None if mode is not None else runner_for(getattr(self.predictor, "client", None))
            self._resolved = True
        return self._runner

    def infer(self, request: InferRequest, model: str, version: str) -> EncodedResponse:
        runner = self.runner()
        parameters: dict[str, Any] | None = None
        if runner is not None:
            outputs = runner.infer(request)
        else:
            outputs, parameters = self._python(request)
        return encode_response(model, version, outputs, request.binary_for, request.id, parameters)

    def _predict(self, payload: Any) -> Any:
        if not self.batched:
            return self.predictor.predict(payload)
        from cortexd.replica.predictors import split_predictions

        predict_batch = getattr(self.predictor, "predict_batch", None)
        if predict_batch is not None:  # the v0.17+ form: query_params and headers are lists too
            return predict_batch([payload], [""], [[]])[0]
        return split_predictions(self.predictor.predict([payload]), 1)[0]

    def _python(self, request: InferRequest) -> tuple[list[tuple[str, Any]], dict[str, Any] | None]:
        from cortexd.replica.predictors import BatchFailed, PayloadError

        json_mode = v2_input_mode(self.predictor) == "json"
        payload: Any = json_request(request) if json_mode else {
            t.name: t.array.copy() for t in request.inputs  # writable: user code may change them in place
        }
        try:
            result = self._predict(payload)
        except PayloadError as exc:
            raise V2Error(400, str(exc)) from None
        except V2Error:
            raise
        except BatchFailed as exc:
            _log(f"prediction failed: {exc}")
            raise V2Error(500, f"prediction failed: {exc}") from None
        except BaseException as exc:  # sys.exit() too: answer, never die
            _log(f"prediction failed:\n{traceback.format_exc()}")
            raise V2Error(500, f"prediction failed: {type(exc).__name__}: {exc}") from None
        named, parameters = result_outputs(result, json_mode)
        if request.outputs is None:
            return named, parameters
        by_name = dict(named)
        for out in request.outputs:
            if out.name not in by_name:
                raise V2Error(400, f"unknown output {out.name!r}; the predictor returned {list(by_name)}")
        return [(o.name, by_name[o.name]) for o in request.outputs], parameters


def json_request(request: InferRequest) -> dict[str, Any]:
    """The V2 request object a "json" predictor receives: binary inputs as flat data lists."""
    doc = dict(request.header)
    inputs = []
    for tensor, raw in zip(request.inputs, request.header["inputs"], strict=True):
        entry = {k: v for k, v in raw.items() if k != "parameters"}
        if tensor.parameters:
            entry["parameters"] = tensor.parameters
        if "data" not in entry:
            try:
                entry["data"] = json_data(tensor.array, tensor.datatype, f"input {tensor.name!r}")
            except TensorError:  # bytes that are not text stay bytes
                entry["data"] = tensor.array.reshape(-1).tolist()
        inputs.append(entry)
    doc["inputs"] = inputs
    return doc


def result_outputs(result: Any, json_mode: bool) -> tuple[list[tuple[str, Any]], dict[str, Any] | None]:
    """(name, value) outputs and response parameters of what a Python predictor returned."""
    if json_mode and isinstance(result, dict) and isinstance(result.get("outputs"), list):
        outputs = []
        for index, entry in enumerate(result["outputs"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise V2Error(500, f"the predictor's outputs[{index}] has no name")
            outputs.append((entry["name"], _output_value(entry)))
        params = result.get("parameters")
        return outputs, params if isinstance(params, dict) else None
    if isinstance(result, dict):
        return [(str(k), v) for k, v in result.items()], None
    return [(DEFAULT_OUTPUT, result)], None


def _output_value(entry: dict[str, Any]) -> Any:
    import numpy as np

    name, data = entry["name"], entry.get("data")
    what = f"output {name!r}"
    shape = entry.get("shape")
    try:
        if isinstance(entry.get("datatype"), str):
            if not isinstance(shape, list):
                shape = list(np.shape(np.asarray(data)))
            return json_array(datatype(entry["datatype"], what), data, shape, what)
        value = np.asarray(data)
        return value.reshape(shape) if isinstance(shape, list) else value
    except (TensorError, ValueError) as exc:
        raise V2Error(500, f"the predictor's {exc}") from None


def _inflate(body: bytes, encoding: str) -> bytes:
    # Triton's "deflate" is zlib's format; gzip has its own header (wbits 31)
    inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise V2Error(400, f"the body is not valid {encoding} data: {exc}") from None
    if inflater.unconsumed_tail:
        raise V2Error(413, f"the {encoding} body inflates past {MAX_INFLATED_BYTES} bytes")
    return out


def _summary(request: InferRequest) -> str:
    return ", ".join(f"{t.name} {t.datatype.name} {t.shape}" for t in request.inputs)


def answer(v2: V2Predictor, call: hop.ReplicaCall, body: bytes) -> tuple[int, EncodedResponse | bytes]:
    """(status, encoded response or JSON error body) for one V2 request."""
    try:
        if call.content_encoding:
            body = _inflate(body, call.content_encoding)
        request = parse_request(body, call.header_length)
        if call.debug:
            text = bytes(body[: call.header_length or len(body)]).decode("utf-8", "replace")
            if len(text) > DEBUG_TRUNCATE:
                text = text[:DEBUG_TRUNCATE] + f"... ({len(text)} chars)"
            _log(f"debug: v2 request: {_summary(request)}: {text}")
        encoded = v2.infer(request, call.model, call.version)
        if call.debug:
            _log(f"debug: v2 response: {encoded.header.decode('utf-8', 'replace')[:DEBUG_TRUNCATE]}")
        return 200, encoded
    except V2Error as exc:
        return exc.status, error_body(exc.message)
    except Exception as exc:  # the model runtime's own failures: answer them, with the traceback logged
        _log(f"prediction failed:\n{traceback.format_exc()}")
        return 500, error_body(f"prediction failed: {type(exc).__name__}: {exc}")


def handle_replica_request(v2: V2Predictor, query: str, body: bytes) -> tuple[int, bytes]:
    """The replica handler's answer for POST hop.REPLICA_PATH (see cortexd/v2/hop.py)."""
    try:
        call = hop.parse_query(query)
    except ValueError as exc:
        return 400, error_body(f"malformed V2 replica request: {exc}")
    status, result = answer(v2, call, body)
    if isinstance(result, EncodedResponse):
        return status, hop.frame(result.header, result.binary)
    return status, result


def v2_infer(
    predictor: Any, body: bytes, headers: Mapping[str, str], model: str = "", version: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One V2 REST inference against a predictor, in process: (status, headers, body) as
    a V2 server answers. `headers` needs Inference-Header-Content-Length for binary
    requests and Content-Encoding for compressed ones (any case)."""
    lower = {k.lower(): v for k, v in headers.items()}
    length = lower.get(HEADER_LENGTH.lower())
    try:
        header_length = int(length) if length is not None else None
    except ValueError:
        return 400, {"Content-Type": "application/json"}, error_body(f"{HEADER_LENGTH} must be an integer")
    encoding = (lower.get("content-encoding") or "").lower() or None
    call = hop.ReplicaCall(model, version, header_length, None if encoding == "identity" else encoding)
    status, result = answer(V2Predictor(predictor), call, body)
    if isinstance(result, EncodedResponse):
        out_headers, out = result.http()
        return status, out_headers, out
    return status, {"Content-Type": "application/json"}, result
