"""The V2 pieces the daemon uses, as tables: the replica hop's framing, metadata from what
replicas describe and what cortex.yaml declares, and gRPC messages <-> the REST binary form."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from cortexd.v2 import hop, metadata
from cortexd.v2.backend import ModelEntry
from cortexd.v2.codec import encode_response, parse_request
from cortexd.v2.datatypes import TensorError
from cortexd.v2.grpc_convert import fill_response, request_body
from cortexd.v2.pb import inference_pb2 as pb

# -- the hop ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        hop.ReplicaCall("iris", "3"),
        hop.ReplicaCall("iris", "3", header_length=120, content_encoding="gzip", debug=True),
        hop.ReplicaCall("a model/with?odd&chars", "v=1", header_length=0),
    ],
)
def test_replica_target_round_trip(call: hop.ReplicaCall) -> None:
    target = hop.replica_target(call)
    path, _, query = target.partition("?")
    assert path == hop.REPLICA_PATH
    assert hop.parse_query(query) == call


def test_replica_answers_are_framed_only_when_binary() -> None:
    assert hop.frame(b'{"outputs":[]}', []) == b'{"outputs":[]}'
    framed = hop.frame(b'{"h":1}', [b"\x01\x02", b"\x03"])
    assert framed == b'7\n{"h":1}\x01\x02\x03'
    status, headers, body = hop.read_replica_answer(200, framed)
    assert (status, body) == (200, b'{"h":1}\x01\x02\x03')
    assert headers == {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "7"}
    header, binary = hop.split_answer(framed)
    assert (header, bytes(binary)) == (b'{"h":1}', b"\x01\x02\x03")


@pytest.mark.parametrize("payload", [b'{"error": "no replica is ready"}', b"", b"not json at all"])
def test_json_and_daemon_errors_pass_through(payload: bytes) -> None:
    assert hop.read_replica_answer(503, payload) == (503, {"Content-Type": "application/json"}, payload)
    assert hop.split_answer(payload)[0] == payload


def test_tracker_prediction_reads_json_and_binary_outputs() -> None:
    outputs = [("label", np.array([2], np.int64)), ("name", np.array([b"virginica"], dtype=object)),
               ("scores", np.array([[0.25, 0.5]], np.float32))]
    for binary in (False, True):
        encoded = encode_response("iris", "1", outputs, lambda _n, binary=binary: binary)
        got = hop.tracker_prediction(hop.frame(encoded.header, encoded.binary))
        assert got == {"label": 2, "name": "virginica", "scores": [0.25, 0.5]}
    assert hop.tracker_prediction(b"not json") is None
    assert hop.tracker_prediction(b'{"outputs": [{"name": "x"}]}') == {"x": None}


def test_the_daemon_side_never_imports_numpy() -> None:
    code = ("import sys; import cortexd.v2.rest, cortexd.v2.grpc_service, cortexd.v2.hop, cortexd.v2.metadata; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- metadata --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"name": "input", "dtype": "float32", "shape": [None, 4]}, {"name": "input", "datatype": "FP32", "shape": [-1, 4]}),
        ({"name": "s", "dtype": "string", "shape": [None]}, {"name": "s", "datatype": "BYTES", "shape": [-1]}),
        ({"name": "b", "dtype": "bool", "shape": []}, {"name": "b", "datatype": "BOOL", "shape": []}),
        ({"name": "t", "dtype": "int64", "shape": None}, {"name": "t", "datatype": "INT64", "shape": [-1]}),
        ({"name": "h", "dtype": "half", "shape": [2]}, {"name": "h", "datatype": "FP16", "shape": [2]}),
        ({"name": "c", "dtype": "complex64", "shape": [1]}, {"name": "c", "datatype": "COMPLEX64", "shape": [1]}),
    ],
)
def test_tensor_metadata_from_describe(entry: dict[str, Any], expected: dict[str, Any]) -> None:
    assert metadata.tensor_from_describe(entry) == expected


def test_model_metadata_for_each_kind() -> None:
    onnx_info = {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}],
                 "outputs": [{"name": "label", "dtype": "int64", "shape": [None]}]}
    doc = metadata.model_metadata(ModelEntry("iris", "2", True, "onnx", onnx_info))
    assert doc == {"name": "iris", "versions": ["2"], "platform": "onnxruntime_onnx",
                   "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
                   "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}]}
    python = metadata.model_metadata(ModelEntry("py", "1", False, "python"))
    assert (python["platform"], python["inputs"], python["outputs"]) == ("python", [], [])
    declared = metadata.parse_declaration({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})
    doc = metadata.model_metadata(ModelEntry("py", "1", True, "python", {}, declared))
    assert (doc["inputs"], doc["outputs"]) == ([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], [])
    assert metadata.server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "v2: expected a mapping with keys inputs and outputs, got list"),
        ({"input": []}, "v2: unknown keys ['input']; expected inputs and outputs"),
        ({"inputs": {}}, "v2.inputs: expected a list of tensors, got dict"),
        ({"inputs": ["x"]}, "v2.inputs[0]: expected a mapping with name, datatype and shape"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "dims": 1}]}, "v2.inputs[0]: unknown keys ['dims']"),
        ({"outputs": [{"datatype": "FP32", "shape": [1]}]}, "v2.outputs[0].name: expected a non-empty string"),
        ({"inputs": [{"name": "x", "datatype": "float32", "shape": [1]}]}, "v2.inputs[0].datatype: expected one of BOOL"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}, "v2.inputs[0].shape: expected a list of integers"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}, {"name": "x", "datatype": "FP32", "shape": [1]}]},
         "v2.inputs[1].name: 'x' is declared twice"),
    ],
)
def test_declarations_are_checked(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        metadata.parse_declaration(value)
    assert message in str(err.value)


# -- gRPC messages <-> the REST binary form --------------------------------------------------

TYPED: list[tuple[str, str, list[Any], np.ndarray]] = [
    ("BOOL", "bool_contents", [True, False], np.array([True, False])),
    ("INT8", "int_contents", [-128, 127], np.array([-128, 127], np.int8)),
    ("INT16", "int_contents", [-3, 3], np.array([-3, 3], np.int16)),
    ("INT32", "int_contents", [-(2**31), 5], np.array([-(2**31), 5], np.int32)),
    ("INT64", "int64_contents", [-(2**63), 5], np.array([-(2**63), 5], np.int64)),
    ("UINT8", "uint_contents", [0, 255], np.array([0, 255], np.uint8)),
    ("UINT16", "uint_contents", [0, 65535], np.array([0, 65535], np.uint16)),
    ("UINT32", "uint_contents", [0, 2**32 - 1], np.array([0, 2**32 - 1], np.uint32)),
    ("UINT64", "uint64_contents", [0, 2**64 - 1], np.array([0, 2**64 - 1], np.uint64)),
    ("FP32", "fp32_contents", [1.5, -2.25], np.array([1.5, -2.25], np.float32)),
    ("FP64", "fp64_contents", [1e300, -2.5], np.array([1e300, -2.5])),
    ("BYTES", "bytes_contents", [b"a", b"\xff"], np.array([b"a", b"\xff"], dtype=object)),
]


@pytest.mark.parametrize("datatype, field, values, expected", TYPED, ids=[t[0] for t in TYPED])
def test_grpc_typed_contents_become_binary_inputs(
    datatype: str, field: str, values: list[Any], expected: np.ndarray
) -> None:
    request = pb.ModelInferRequest(model_name="m", id="r1")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend(values)
    request.parameters["k"].int64_param = 4
    request.outputs.add(name="y")
    body, header_length = request_body(request)
    parsed = parse_request(body, header_length)
    got = parsed.inputs[0].array
    assert got.shape == (2,) and got.dtype == expected.dtype and list(got) == list(expected)
    assert parsed.id == "r1" and parsed.parameters == {"k": 4}
    assert parsed.binary_for("y") and parsed.binary_for("z")  # every output comes back raw


def test_grpc_raw_contents_pass_through_unchanged() -> None:
    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[x.tobytes(), b"\x02\0\0\0hi"])
    request.inputs.add(name="x", datatype="FP16", shape=[2, 3])
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    body, header_length = request_body(request)
    assert body.endswith(x.tobytes() + b"\x02\0\0\0hi")
    parsed = parse_request(body, header_length).arrays()
    assert np.array_equal(parsed["x"], x) and list(parsed["s"]) == [b"hi"]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda r: r.inputs.add(name="h", datatype="FP16", shape=[1]), "input 'h': FP16 data must be sent in raw_input_contents"),
        (lambda r: r.inputs.add(name="q", datatype="FP8", shape=[1]), "input 'q': unknown datatype 'FP8'"),
        (lambda r: r.inputs.add(name="i", datatype="INT8", shape=[1]).contents.int_contents.append(300),
         "input 'i': values do not fit INT8"),
        (lambda r: (r.inputs.add(name="a", datatype="FP32", shape=[1]), r.inputs.add(name="b", datatype="FP32", shape=[1]),
                    r.raw_input_contents.append(b"\0" * 4)),
         "raw_input_contents has 1 entries for 2 inputs"),
    ],
)
def test_grpc_requests_that_cannot_be_sent(build: Any, message: str) -> None:
    request = pb.ModelInferRequest(model_name="m")
    build(request)
    with pytest.raises(TensorError) as err:
        request_body(request)
    assert message in str(err.value)


def test_replica_answers_fill_grpc_responses() -> None:
    outputs = [("scores", np.array([[0.5, 1.5]], np.float32)), ("label", np.array([1], np.int64)),
               ("name", np.array([b"versicolor"], dtype=object))]
    encoded = encode_response("iris", "2", outputs, lambda n: n != "label", request_id="r9", parameters={"t": 1.5})
    header, binary = hop.split_answer(hop.frame(encoded.header, encoded.binary))
    response = fill_response(pb.ModelInferResponse(), header, binary)
    assert (response.model_name, response.model_version, response.id) == ("iris", "2", "r9")
    assert response.parameters["t"].double_param == 1.5
    assert [o.name for o in response.outputs] == ["scores", "label", "name"]
    assert [list(o.shape) for o in response.outputs] == [[1, 2], [1], [1]]
    assert "binary_data_size" not in response.outputs[0].parameters
    raw = response.raw_output_contents
    assert np.frombuffer(raw[0], np.float32).tolist() == [0.5, 1.5]
    assert np.frombuffer(raw[1], np.int64).tolist() == [1]  # sent as JSON data, packed raw here
    assert raw[2] == b"\x0a\0\0\0versicolor"
    json.loads(header)  # the header the replica sent is plain JSON
