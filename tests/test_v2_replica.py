"""The replica's V2 inference (cortexd/v2/replica.py) against real predictors in process:
ONNX models made with onnx.helper, Python predictors in each form, TensorFlow (slow).
Requests are built, and responses read, by tritonclient where the binary form is used."""

from __future__ import annotations

import gzip
import json
import textwrap
import zlib
from typing import Any

import numpy as np
import pytest

from cortexd.protocol import ReplicaSpec
from cortexd.replica.main import build_handler
from cortexd.replica.predictors import Predictor, load_predictor
from cortexd.v2 import hop
from cortexd.v2.replica import V2Predictor, handle_replica_request, v2_infer
from tests import modelgen

tritonhttp = pytest.importorskip("tritonclient.http")

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def spec(kind: str, model: str | None = None, predictor: str | None = None, folder: str = "") -> ReplicaSpec:
    return ReplicaSpec("api", kind, predictor, model, None, {}, folder, [], 1.0)


def post(predictor: Predictor, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, headers, body = v2_infer(predictor, json.dumps(doc).encode(), {}, "api", "1")
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def triton_infer(predictor: Predictor, inputs: list[Any], outputs: list[Any] | None = None, **kw: Any) -> Any:
    body, hl = tritonhttp.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kw)
    headers = {"Inference-Header-Content-Length": str(hl)} if hl is not None else {}
    status, out_headers, out = v2_infer(predictor, body, headers, "api", "1")
    assert status == 200, out
    length = out_headers.get("Inference-Header-Content-Length")
    return tritonhttp.InferenceServerClient.parse_response_body(out, header_length=int(length) if length else None)


def fp32_input(name: str, arr: np.ndarray, binary: bool) -> Any:
    return tritonhttp.InferInput(name, list(arr.shape), "FP32").set_data_from_numpy(arr, binary_data=binary)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("v2onnx")
    return {
        "linear": modelgen.onnx_linear(str(d / "linear.onnx")),
        "multi": modelgen.onnx_multi(str(d / "multi.onnx")),
        "strings": modelgen.onnx_strings(str(d / "strings.onnx")),
    }


@pytest.fixture(scope="module")
def linear(models: dict[str, str]) -> Predictor:
    return load_predictor(spec("onnx", models["linear"]))


# -- ONNX ----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_onnx_results_equal_the_apis_own_endpoint(linear: Predictor, binary: bool) -> None:
    result = triton_infer(linear, [fp32_input("input", SAMPLES, binary)],
                          [tritonhttp.InferRequestedOutput("scores", binary_data=binary),
                           tritonhttp.InferRequestedOutput("label", binary_data=binary)])
    own = linear.predict({"input": SAMPLES.tolist()})
    assert np.allclose(result.as_numpy("scores"), np.array(own["scores"]), rtol=1e-5, atol=1e-6)
    assert result.as_numpy("label").tolist() == own["label"]
    outputs = result.get_response()["outputs"]
    got = [(o["name"], o["datatype"], o["shape"]) for o in outputs]
    assert got == [("scores", "FP32", [2, 3]), ("label", "INT64", [2])]


def test_onnx_outputs_select_and_order(linear: Predictor) -> None:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": SAMPLES[0].tolist()}],
           "outputs": [{"name": "label"}], "id": "q1"}
    status, out = post(linear, doc)
    assert status == 200
    assert out["id"] == "q1" and out["model_name"] == "api" and out["model_version"] == "1"
    assert [o["name"] for o in out["outputs"]] == ["label"]


@pytest.mark.parametrize(
    "inputs, outputs, message",
    [
        ([{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}], None,
         "input 'input': datatype FP64 does not match the model's FP32"),
        ([{"name": "input", "datatype": "FP32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]}], None,
         "input 'input': shape [1, 5] does not match the model's [-1, 4]"),
        ([{"name": "input", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}], None,
         "input 'input': shape [4] does not match the model's [-1, 4]"),
        ([{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], None,
         "missing input 'input'; unknown input 'x'; the model's inputs are ['input']"),
        ([{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], [{"name": "proba"}],
         "unknown output 'proba'; the model's outputs are ['scores', 'label']"),
    ],
)
def test_onnx_mismatches_are_400_naming_the_tensor(linear: Predictor, inputs: Any, outputs: Any, message: str) -> None:
    doc: dict[str, Any] = {"inputs": inputs}
    if outputs:
        doc["outputs"] = outputs
    status, out = post(linear, doc)
    assert status == 400
    assert message in out["error"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_onnx_several_inputs_of_several_datatypes(models: dict[str, str], binary: bool) -> None:
    multi = load_predictor(spec("onnx", models["multi"]))
    a = np.array([[1, 2, 3]], np.float32)
    b = np.array([[10, 20, 30]], np.int64)
    inputs = [
        fp32_input("a", a, binary),
        tritonhttp.InferInput("b", [1, 3], "INT64").set_data_from_numpy(b, binary_data=binary),
        tritonhttp.InferInput("scale", [1], "FP64").set_data_from_numpy(np.array([0.5]), binary_data=binary),
        tritonhttp.InferInput("flag", [1], "BOOL").set_data_from_numpy(np.array([True]), binary_data=binary),
    ]
    result = triton_infer(multi, inputs)  # no outputs named: all of them, binary (tritonclient's default)
    assert result.as_numpy("sum").tolist() == [[5.5, 11.0, 16.5]]
    assert result.as_numpy("not_flag").tolist() == [False]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_onnx_string_tensors(models: dict[str, str], binary: bool) -> None:
    strings = load_predictor(spec("onnx", models["strings"]))
    text = np.array(["caf\u00e9".encode(), b"tea"], dtype=object)
    inp = tritonhttp.InferInput("text", [2], "BYTES").set_data_from_numpy(text, binary_data=binary)
    result = triton_infer(strings, [inp], [tritonhttp.InferRequestedOutput("same", binary_data=binary)])
    got = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("same")]
    assert got == list(text)


def test_onnx_with_a_predictor_file_serves_the_model_itself(models: dict[str, str], tmp_path: Any) -> None:
    path = tmp_path / "predictor.py"
    path.write_text(textwrap.dedent("""
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client
            def predict(self, payload):
                return "the API's own endpoint answers this"
    """))
    predictor = load_predictor(spec("onnx", models["linear"], str(path), str(tmp_path)))
    status, out = post(predictor, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                               "data": SAMPLES[0].tolist()}]})
    assert status == 200 and [o["name"] for o in out["outputs"]] == ["scores", "label"]


def test_compressed_requests(linear: Predictor) -> None:
    doc = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": SAMPLES[0].tolist()}],
                      "outputs": [{"name": "label"}]}).encode()
    expected = linear.predict({"input": [SAMPLES[0].tolist()]})["label"]
    for encoding, body in (("gzip", gzip.compress(doc)), ("deflate", zlib.compress(doc))):
        status, _, out = v2_infer(linear, body, {"Content-Encoding": encoding})
        assert status == 200, out
        assert json.loads(out)["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1], "data": expected}]
    status, _, out = v2_infer(linear, b"not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "not valid gzip data" in json.loads(out)["error"]


# -- Python predictors ----------------------------------------------------------------------

CLASS_NUMPY = """
import numpy as np

class PythonPredictor:
    def __init__(self, config):
        pass
    def predict(self, payload):
        x = payload["x"]
        x *= 2  # the arrays are writable copies
        return {"doubled": x, "total": np.array([x.sum()], dtype=np.float64), "kind": [type(payload).__name__]}
"""

CLASS_JSON = """
class PythonPredictor:
    v2_input = "json"
    def __init__(self, config):
        pass
    def predict(self, payload):
        x = payload["inputs"][0]
        return {"outputs": [{"name": "echo", "datatype": x["datatype"], "shape": x["shape"], "data": x["data"]}],
                "parameters": {"seen_id": payload.get("id"), "seen": payload.get("parameters", {}).get("k")}}
"""

MODULE_JSON = """
v2_input = "json"
def predict(sample, metadata):
    return [i["name"] for i in sample["inputs"]]
"""

MODULE_PLAIN = """
from cortexd.replica.predictors import PayloadError
def predict(sample, metadata):
    if "bad" in sample:
        raise PayloadError("bad is not welcome")
    if "boom" in sample:
        raise RuntimeError("kaboom")
    return "setosa"
"""


def python_predictor(tmp_path: Any, source: str) -> Predictor:
    path = tmp_path / "predictor.py"
    path.write_text(source)
    return load_predictor(spec("python", None, str(path), str(tmp_path)))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_python_predictor_gets_and_returns_arrays(tmp_path: Any, binary: bool) -> None:
    predictor = python_predictor(tmp_path, CLASS_NUMPY)
    result = triton_infer(predictor, [fp32_input("x", SAMPLES, binary)], request_id="r")
    assert np.allclose(result.as_numpy("doubled"), SAMPLES * 2)
    assert result.as_numpy("total").tolist() == pytest.approx([float(SAMPLES.sum() * 2)], rel=1e-5)
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("kind")] == ["dict"]
    assert result.get_response()["id"] == "r"


def test_python_predictor_outputs_select(tmp_path: Any) -> None:
    predictor = python_predictor(tmp_path, CLASS_NUMPY)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}], "outputs": [{"name": "total"}]}
    status, out = post(predictor, doc)
    assert status == 200 and [(o["name"], o["data"]) for o in out["outputs"]] == [("total", [6.0])]
    doc["outputs"] = [{"name": "nope"}]
    status, out = post(predictor, doc)
    assert status == 400
    assert "unknown output 'nope'; the predictor returned ['doubled', 'total', 'kind']" in out["error"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_python_predictor_asking_for_json(tmp_path: Any, binary: bool) -> None:
    predictor = python_predictor(tmp_path, CLASS_JSON)
    arr = np.array([[1, 2], [3, 4]], np.int32)
    inp = tritonhttp.InferInput("x", [2, 2], "INT32").set_data_from_numpy(arr, binary_data=binary)
    result = triton_infer(predictor, [inp], [tritonhttp.InferRequestedOutput("echo", binary_data=binary)],
                          request_id="id-5", parameters={"k": "v"})
    assert result.as_numpy("echo").tolist() == arr.tolist()
    assert result.get_response()["parameters"] == {"seen_id": "id-5", "seen": "v"}


def test_module_predictors(tmp_path: Any) -> None:
    predictor = python_predictor(tmp_path, MODULE_JSON)
    status, out = post(predictor, {"inputs": [{"name": "a", "datatype": "BOOL", "shape": [1], "data": [True]}]})
    assert status == 200
    assert out["outputs"] == [{"name": "output", "datatype": "BYTES", "shape": [1], "data": ["a"]}]

    plain = python_predictor(tmp_path, MODULE_PLAIN)
    ok = {"inputs": [{"name": "sepal_length", "datatype": "FP32", "shape": [1], "data": [5.1]}]}
    status, out = post(plain, ok)
    assert status == 200
    assert out["outputs"] == [{"name": "output", "datatype": "BYTES", "shape": [], "data": ["setosa"]}]
    status, out = post(plain, {"inputs": [{"name": "bad", "datatype": "FP32", "shape": [1], "data": [1]}]})
    assert (status, out["error"]) == (400, "bad is not welcome")
    status, out = post(plain, {"inputs": [{"name": "boom", "datatype": "FP32", "shape": [1], "data": [1]}]})
    assert status == 500 and out["error"] == "prediction failed: RuntimeError: kaboom"


def test_a_wrong_v2_input_setting_is_reported(tmp_path: Any) -> None:
    code = CLASS_NUMPY.replace("    def __init__", "    v2_input = 'xml'\n    def __init__")
    predictor = python_predictor(tmp_path, code)
    status, out = post(predictor, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
    assert status == 500 and "v2_input is 'xml'; expected \"numpy\" or \"json\"" in out["error"]


# -- the replica handler's V2 path (what the daemon's hop reaches) ----------------------------


def test_the_replica_handler_answers_v2_on_its_path(linear: Predictor) -> None:
    handler = build_handler(linear)
    x = fp32_input("input", SAMPLES, True)
    body, hl = tritonhttp.InferenceServerClient.generate_request_body(
        [x], outputs=[tritonhttp.InferRequestedOutput("scores", binary_data=True)])
    target = hop.replica_target(hop.ReplicaCall("iris", "4", hl))
    path, _, query = target.partition("?")
    status, payload = handler("POST", path, query, body)
    assert status == 200
    status, headers, out = hop.read_replica_answer(status, payload)
    result = tritonhttp.InferenceServerClient.parse_response_body(
        out, header_length=int(headers["Inference-Header-Content-Length"]))
    assert result.as_numpy("scores").shape == (2, 3)
    assert result.get_response()["model_name"] == "iris" and result.get_response()["model_version"] == "4"
    status, payload = handle_replica_request(V2Predictor(linear), "m=iris&v=4", b"{}")
    assert status == 400 and b"the request has no inputs" in payload


# -- TensorFlow ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tensorflow_results_equal_the_apis_own_endpoint(tmp_path_factory: pytest.TempPathFactory, binary: bool) -> None:
    pytest.importorskip("tensorflow")
    path = modelgen.tf_saved_model(str(tmp_path_factory.mktemp("tf") / "m"))
    predictor = load_predictor(spec("tensorflow", path))
    result = triton_infer(predictor, [fp32_input("x", SAMPLES, binary)],
                          [tritonhttp.InferRequestedOutput("scores", binary_data=binary),
                           tritonhttp.InferRequestedOutput("label", binary_data=binary)])
    own = predictor.predict({"x": SAMPLES.tolist()})
    assert np.allclose(result.as_numpy("scores"), np.array(own["scores"]), rtol=1e-5, atol=1e-6)
    assert result.as_numpy("label").tolist() == own["label"]
    status, out = post(predictor, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    assert status == 400 and "input 'x': shape [1, 3] does not match the model's [-1, 4]" in out["error"]


# -- the examples docs/v2.md shows -----------------------------------------------------------


def test_the_docs_examples_answer_as_their_own_endpoints() -> None:
    import os

    pytest.importorskip("sklearn")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    examples = os.path.join(repo, "examples")
    with open(os.path.join(examples, "python-iris", "sample.json")) as f:
        sample = json.load(f)
    python = load_predictor(ReplicaSpec("iris-python", "python", os.path.join(examples, "python-iris", "predictor.py"),
                                        None, None, {"max_iter": 500}, examples, [], 1.0))
    doc = {"inputs": [{"name": k, "datatype": "FP64", "shape": [], "data": [v]} for k, v in sample.items()]}
    status, out = post(python, doc)
    assert status == 200 and out["outputs"][0]["data"] == [python.predict(sample)]
    onnx = load_predictor(ReplicaSpec("iris-onnx", "onnx", os.path.join(examples, "onnx-iris", "predictor.py"),
                                      os.path.join(examples, "onnx-iris", "iris.onnx"), None, {}, examples, [], 1.0))
    status, out = post(onnx, {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                          "data": list(sample.values())}], "outputs": [{"name": "label"}]})
    labels = ["setosa", "versicolor", "virginica"]
    assert status == 200 and labels[out["outputs"][0]["data"][0]] == onnx.predict(sample)
