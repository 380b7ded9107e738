"""ONNX APIs in process: payload -> inputs, outputs, predictor forms; and jsonable conversions."""

from __future__ import annotations

import json
import math
import os
import textwrap
from typing import Any

import numpy as np
import pytest

from cortexd.protocol import ReplicaSpec
from cortexd.replica import onnx_predictor
from cortexd.replica.jsonable import InputMismatch, to_array, to_jsonable
from cortexd.replica.onnx_predictor import ONNXClient, session_plan
from cortexd.replica.predictors import PayloadError, PredictorLoadError
from tests import modelgen

SAMPLE = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "linear": modelgen.onnx_linear(str(d / "linear.onnx")),
        "fixed": modelgen.onnx_linear(str(d / "fixed.onnx"), batch=1),
        "multi": modelgen.onnx_multi(str(d / "multi.onnx")),
        "strings": modelgen.onnx_strings(str(d / "strings.onnx")),
    }


@pytest.fixture(scope="module")
def linear(models: dict[str, str]) -> ONNXClient:
    return ONNXClient(models["linear"], [], 0.2)


@pytest.fixture(scope="module")
def multi(models: dict[str, str]) -> ONNXClient:
    return ONNXClient(models["multi"], [], 1)


def ctx(model: str | None, predictor: str | None = None, config: dict[str, Any] | None = None,
        gpus: list[int] | None = None, cpu: float = 0.2, python_path: str = "") -> ReplicaSpec:
    return ReplicaSpec(api_name="iris", kind="onnx", predictor_path=predictor, model_path=model,
                          signature_key=None, config=config or {}, python_path=python_path,
                          gpus=gpus or [], cpu=cpu)


# ---------------------------------------------------------------- session setup


@pytest.mark.parametrize(
    "gpus, cpu, providers, threads",
    [
        ([], 0.2, ["CPUExecutionProvider"], 1),
        ([], 1.0, ["CPUExecutionProvider"], 1),
        ([], 1.5, ["CPUExecutionProvider"], 2),
        ([], 4, ["CPUExecutionProvider"], 4),
        ([], 0, ["CPUExecutionProvider"], 1),
        ([1, 2], 2, [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"], 2),
    ],
)
def test_session_plan(gpus: list[int], cpu: float, providers: list[Any], threads: int) -> None:
    assert session_plan(gpus, cpu) == (providers, threads)


def test_session_plan_caps_the_cuda_arena_at_gpu_mem() -> None:
    providers, _ = session_plan([0], 1, 6 * 2**30)
    assert providers == [
        ("CUDAExecutionProvider",
         {"device_id": 0, "gpu_mem_limit": 6 * 2**30, "arena_extend_strategy": "kSameAsRequested"}),
        "CPUExecutionProvider",
    ]
    assert session_plan([], 1, 6 * 2**30) == (["CPUExecutionProvider"], 1)  # no GPU, no limit


def test_session_threads_follow_the_cpu_request(models: dict[str, str]) -> None:
    client = ONNXClient(models["linear"], [], 2.5)
    options = client.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)


def test_cpu_only_replica_uses_the_cpu_provider(linear: ONNXClient) -> None:
    assert linear.session.get_providers() == ["CPUExecutionProvider"]


def test_gpu_replica_takes_cuda_or_logs_the_fallback(models: dict[str, str], capfd: pytest.CaptureFixture[str]) -> None:
    client = ONNXClient(models["linear"], [0], 1)
    err = capfd.readouterr().err
    taken = client.session.get_providers()[0]
    if taken == "CUDAExecutionProvider":
        assert "running on CUDAExecutionProvider (GPU 0)" in err
    else:
        assert "CUDAExecutionProvider unavailable for GPU 0, falling back to CPUExecutionProvider" in err
    np.testing.assert_allclose(client.predict(SAMPLE)[0], modelgen.linear_scores([SAMPLE]), rtol=1e-4)


@pytest.mark.gpu
def test_gpu_replica_runs_on_cuda(models: dict[str, str]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    client = ONNXClient(models["linear"], [0], 1)
    if client.session.get_providers()[0] != "CUDAExecutionProvider":
        pytest.skip("CUDA provider could not start (no GPU or CUDA libraries)")
    np.testing.assert_allclose(client.predict(SAMPLE)[0], modelgen.linear_scores([SAMPLE]), rtol=1e-3)


def test_unloadable_model_is_a_load_error(tmp_path: Any) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(PredictorLoadError, match="bad.onnx: onnxruntime cannot load the model"):
        ONNXClient(str(bad), [], 1)
    with pytest.raises(PredictorLoadError, match="model file not found"):
        ONNXClient(str(tmp_path / "missing.onnx"), [], 1)


def test_folder_with_one_onnx_file_is_accepted(tmp_path: Any) -> None:
    (tmp_path / "sub").mkdir()
    modelgen.onnx_linear(str(tmp_path / "sub" / "m.onnx"))
    assert ONNXClient(str(tmp_path), [], 1).model_path == str(tmp_path / "sub" / "m.onnx")
    modelgen.onnx_linear(str(tmp_path / "other.onnx"))
    with pytest.raises(PredictorLoadError, match="2 .onnx files"):
        ONNXClient(str(tmp_path), [], 1)


def test_local_zip_is_unpacked(tmp_path: Any) -> None:
    import zipfile

    model = modelgen.onnx_linear(str(tmp_path / "m.onnx"))
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as zf:
        zf.write(model, "model/m.onnx")
    client = ONNXClient(str(tmp_path / "m.zip"), [], 1)
    assert client.model_path.endswith(os.path.join("model", "m.onnx"))
    np.testing.assert_allclose(client.predict(SAMPLE)[0], modelgen.linear_scores([SAMPLE]), rtol=1e-5)
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(PredictorLoadError, match="bad.zip: not a valid zip file"):
        ONNXClient(str(tmp_path / "bad.zip"), [], 1)


# ---------------------------------------------------------------- payload -> inputs


def test_input_signature_and_describe(linear: ONNXClient, multi: ONNXClient) -> None:
    assert linear.input_signature == {"input": (np.dtype("float32"), (None, 4))}
    assert linear.describe() == {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [
            {"name": "scores", "dtype": "float32", "shape": [None, 3]},
            {"name": "label", "dtype": "int64", "shape": [None]},
        ],
    }
    assert [(i["name"], i["dtype"], i["shape"]) for i in multi.describe()["inputs"]] == [
        ("a", "float32", [None, 3]), ("b", "int64", [None, 3]), ("scale", "float64", [1]), ("flag", "bool", [None]),
    ]


def test_single_sample_gets_the_batch_axis(linear: ONNXClient) -> None:
    scores, label = linear.predict(SAMPLE)
    assert scores.shape == (1, 3) and label.shape == (1,)
    np.testing.assert_allclose(scores, modelgen.linear_scores([SAMPLE]), rtol=1e-5)
    assert label[0] == modelgen.linear_labels([SAMPLE])[0]


def test_batch_and_dict_forms(linear: ONNXClient) -> None:
    rows = [SAMPLE, [6.7, 3.0, 5.2, 2.3], [1, 2, 3, 4]]
    by_value = linear.predict(rows)
    by_name = linear.predict({"input": rows})
    np.testing.assert_allclose(by_value[0], modelgen.linear_scores(rows), rtol=1e-5)
    np.testing.assert_array_equal(by_value[1], by_name[1])
    assert by_value[0].shape == (3, 3)


def test_numpy_payload_of_the_right_dtype_is_not_copied(linear: ONNXClient) -> None:
    arr = np.asarray([SAMPLE], dtype=np.float32)
    assert linear.to_inputs(arr)["input"] is arr


def test_fixed_batch_of_one(models: dict[str, str]) -> None:
    client = ONNXClient(models["fixed"], [], 1)
    np.testing.assert_allclose(client.predict(SAMPLE)[0], modelgen.linear_scores([SAMPLE]), rtol=1e-5)
    with pytest.raises(PayloadError, match=r"expects float32 of shape \[1, 4\]; got shape \[2, 4\]"):
        client.predict([SAMPLE, SAMPLE])


def test_multi_input_with_dtype_coercion(multi: ONNXClient) -> None:
    # ints for a float input, integral floats for an int64 input, 0/1 for bool, a scalar for shape [1]
    total, not_flag = multi.predict({"a": [1, 2, 3], "b": [1.0, 2.0, 3.0], "scale": 2, "flag": [1, 0]})
    assert total.dtype == np.float32 and total.tolist() == [[4.0, 8.0, 12.0]]
    assert not_flag.tolist() == [False, True]
    feeds = multi.to_inputs({"a": [[1, 2, 3]], "b": [[1, 2, 3]], "scale": [0.5], "flag": [True]})
    assert {n: (v.dtype.name, v.shape) for n, v in feeds.items()} == {
        "a": ("float32", (1, 3)), "b": ("int64", (1, 3)), "scale": ("float64", (1,)), "flag": ("bool", (1,)),
    }


def test_string_input(models: dict[str, str]) -> None:
    client = ONNXClient(models["strings"], [], 1)
    (same,) = client.predict(["héllo", "b"])
    assert same.tolist() == ["héllo", "b"]
    assert to_jsonable(same) == ["héllo", "b"]
    with pytest.raises(PayloadError, match="expects strings of shape"):
        client.predict([1, 2])


GOOD_MULTI = {"a": [1, 2, 3], "b": [1, 2, 3], "scale": [2], "flag": [True]}


@pytest.mark.parametrize(
    "model, payload, message",
    [
        ("linear", [1, 2, 3], r"input 'input' expects float32 of shape \[None, 4\]; got shape \[3\]"),
        ("linear", [[[1, 2, 3, 4]]], r"expects float32 of shape \[None, 4\]; got shape \[1, 1, 4\]"),
        ("linear", [["a", "b", "c", "d"]], r"input 'input' expects float32 .*; got strings"),
        ("linear", [1, 2, None, 4], r"got mixed or null values"),
        ("linear", [[1, 2, 3, 4], [1, 2]], r"got nested lists whose rows differ in length"),
        ("linear", {"x": SAMPLE}, r"the model's one input is 'input'.*got an object with keys \['x'\]"),
        ("linear", {"input": SAMPLE, "extra": 1}, r"unexpected keys \['extra'\]; the model's one input is 'input'"),
        ("linear", "text", r"got strings"),
        ("multi", [1, 2, 3],
         r"the model has 4 inputs \['a', 'b', 'scale', 'flag'\]: send an object by input name; got list"),
        ("multi", {"a": [1, 2, 3]}, r"missing inputs \['b', 'scale', 'flag'\]"),
        ("multi", {**GOOD_MULTI, "c": 1, "d": 2}, r"unexpected keys \['c', 'd'\]"),
        ("multi", {**GOOD_MULTI, "b": [1.5, 2, 3]},
         r"input 'b' expects int64 of shape \[None, 3\]; got numbers that are not whole"),
        ("multi", {**GOOD_MULTI, "flag": [2]}, r"input 'flag' expects bool .*; got integers other than 0 and 1"),
        ("multi", {**GOOD_MULTI, "flag": [0.5]}, r"input 'flag' expects bool .*; got numbers"),
        ("multi", {**GOOD_MULTI, "scale": [1, 2]}, r"input 'scale' expects float64 of shape \[1\]; got shape \[2\]"),
        ("multi", {**GOOD_MULTI, "a": {"x": 1}}, r"input 'a' expects float32 .*; got an object with keys \['x'\]"),
        ("multi", {**GOOD_MULTI, "b": [2**70, 1, 1]}, r"input 'b' expects int64"),
    ],
)
def test_payload_errors(models: dict[str, str], linear: ONNXClient, multi: ONNXClient,
                        model: str, payload: Any, message: str) -> None:
    client = {"linear": linear, "multi": multi}[model]
    with pytest.raises(PayloadError, match=message):
        client.predict(payload)


@pytest.mark.parametrize(
    "value, dtype, shape, expected",
    [
        ([1, 2], "float32", (None,), np.array([1, 2], np.float32)),
        ([True, False], "float64", (2,), np.array([1.0, 0.0])),
        (3, "int32", (1,), np.array([3], np.int32)),
        ([[1, 2]], "int64", (None, None), np.array([[1, 2]])),
        ([], "float32", (None,), np.zeros((0,), np.float32)),
        ([1.0, 2.0], "int8", (2,), np.array([1, 2], np.int8)),
        (7, "float32", None, np.array(7, np.float32)),  # unknown rank: nothing checked
        ([[1], [2]], "float32", (), np.array([[1], [2]], np.float32)),  # onnxruntime's [] (unknown): passed on
    ],
)
def test_to_array_accepts(value: Any, dtype: str, shape: Any, expected: np.ndarray) -> None:
    got = to_array("x", value, np.dtype(dtype), shape)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "value, dtype, shape, message",
    [
        ([300], "int8", (1,), r"got values out of its range \(300 \.\. 300\)"),
        ([-1], "uint8", (1,), r"out of its range"),
        ([float("nan")], "int32", (1,), r"got numbers that are not whole"),
        ([[1, 2]], "float32", (2, 2), r"expects float32 of shape \[2, 2\]; got shape \[1, 2\]"),
        ([1, 2, 3], "float32", (None, 2), r"got shape \[3\]"),
        (["1.5"], "float32", (1,), r"got strings"),
    ],
)
def test_to_array_rejects(value: Any, dtype: str, shape: Any, message: str) -> None:
    with pytest.raises(InputMismatch, match=message):
        to_array("x", value, np.dtype(dtype), shape)


def test_scalar_input(tmp_path: Any) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])], "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    client = ONNXClient(modelgen._save_onnx(graph, str(tmp_path / "scalar.onnx")), [], 1)
    assert client.predict(3)[0].tolist() == -3.0
    assert client.predict({"x": 2.5})[0].tolist() == -2.5


# ---------------------------------------------------------------- load(ctx): the API's forms


def test_no_predictor_returns_outputs_by_name(models: dict[str, str]) -> None:
    predictor = onnx_predictor.load(ctx(models["linear"]))
    result = predictor.predict(SAMPLE)
    assert set(result) == {"scores", "label"}
    assert json.loads(json.dumps(result)) == result  # plain JSON, no encoder help needed
    assert result["label"] == [modelgen.linear_labels([SAMPLE])[0]]
    assert predictor.describe()["inputs"][0]["name"] == "input"


def write(path: Any, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_predictor_gets_the_client_and_config(models: dict[str, str], tmp_path: Any) -> None:
    (tmp_path / "labels.py").write_text("LABELS = ['setosa', 'versicolor', 'virginica']\n")
    path = write(tmp_path / "predictor.py", """
        from labels import LABELS  # python_path puts the project on sys.path

        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client
                self.prefix = config["prefix"]
                assert list(onnx_client.input_signature) == ["input"]
                assert onnx_client.session.get_inputs()[0].name == "input"

            def predict(self, payload):
                sample = [payload[k] for k in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
                scores, label = self.client.predict(sample)
                return self.prefix + LABELS[int(label[0])]
    """)
    predictor = onnx_predictor.load(ctx(models["linear"], path, {"prefix": "iris-"}, python_path=str(tmp_path)))
    payload = dict(zip(("sepal_length", "sepal_width", "petal_length", "petal_width"), SAMPLE, strict=True))
    want = ["setosa", "versicolor", "virginica"][modelgen.linear_labels([SAMPLE])[0]]
    assert predictor.predict(payload) == "iris-" + want
    assert predictor.describe()["outputs"][1]["name"] == "label"


def test_predictor_payload_error_propagates(models: dict[str, str], tmp_path: Any) -> None:
    path = write(tmp_path / "passthrough.py", """
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client

            def predict(self, payload):
                return self.client.predict(payload)[1]
    """)
    predictor = onnx_predictor.load(ctx(models["linear"], path))
    with pytest.raises(PayloadError, match=r"got shape \[2\]"):
        predictor.predict([1, 2])


def test_predictor_with_wrong_constructor_is_a_load_error(models: dict[str, str], tmp_path: Any) -> None:
    path = write(tmp_path / "wrong.py", """
        class ONNXPredictor:
            def __init__(self, config):
                pass

            def predict(self, payload):
                return 1
    """)
    expected = r"wrong.py: expected a class ONNXPredictor with __init__\(self, onnx_client, config\)"
    with pytest.raises(PredictorLoadError, match=expected):
        onnx_predictor.load(ctx(models["linear"], path))


def test_missing_model_is_a_load_error() -> None:
    with pytest.raises(PredictorLoadError, match="onnx.model is required"):
        onnx_predictor.load(ctx(None))


def test_importing_the_module_does_not_import_onnxruntime() -> None:
    import subprocess
    import sys

    code = "import sys, cortexd.replica.onnx_predictor; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- to_jsonable


def test_to_jsonable_passes_plain_values_through_unchanged() -> None:
    payload = {"a": [1, 2.5, "x", None, True], "b": {"c": [[1, 2], [3, 4]]}}
    assert to_jsonable(payload) is payload
    big = [float(i) for i in range(10000)]
    assert to_jsonable(big) is big


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.float32(1.5), 1.5),
        (np.int64(3), 3),
        (np.bool_(True), True),
        (np.array([[1, 2], [3, 4]], np.int32), [[1, 2], [3, 4]]),
        (np.array(2.5), 2.5),
        (np.array([b"a", b"b"], dtype=object), ["a", "b"]),
        ([1, np.float64(2.0), (3, np.int8(4))], [1, 2.0, [3, 4]]),
        ({"x": np.array([1.0]), "y": 1}, {"x": [1.0], "y": 1}),
        ({np.int64(1): "one", (1, 2): "pair"}, {1: "one", "[1, 2]": "pair"}),
        (b"bytes \xff", "bytes \ufffd"),
        ({"nested": [{"deep": np.arange(2)}]}, {"nested": [{"deep": [0, 1]}]}),
    ],
)
def test_to_jsonable_converts_numpy(value: Any, expected: Any) -> None:
    got = to_jsonable(value)
    assert got == expected
    json.dumps(got)  # no TypeError: all plain


def test_to_jsonable_keeps_the_order_of_a_changed_dict() -> None:
    got = to_jsonable({"a": 1, "b": np.int8(2), "c": 3})
    assert list(got) == ["a", "b", "c"] and all(type(v) is int for v in got.values())


def test_to_jsonable_leaves_unknown_objects_for_the_encoder() -> None:
    marker = object()
    assert to_jsonable([1, marker])[1] is marker
    assert math.isnan(to_jsonable(np.float32("nan")))


# ---------------------------------------------------------------- the example


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "onnx-iris")


def test_onnx_iris_example_classifies_its_sample() -> None:
    predictor = onnx_predictor.load(ctx(os.path.join(EXAMPLE, "iris.onnx"), os.path.join(EXAMPLE, "predictor.py"),
                                        python_path=EXAMPLE))
    with open(os.path.join(EXAMPLE, "sample.json")) as f:
        assert predictor.predict(json.load(f)) == "setosa"


def test_onnx_iris_example_model_is_accurate_and_rebuilds_equivalently(tmp_path: Any) -> None:
    """The committed model and one rebuilt by build_model.py are the same model: same graph,
    same answers. Not the same bytes: training's last bits differ between processors."""
    import importlib.util

    import onnx
    from sklearn.datasets import load_iris

    iris = load_iris()
    client = ONNXClient(os.path.join(EXAMPLE, "iris.onnx"), [], 1)
    label, probabilities = client.predict(iris.data.tolist())
    assert (label == iris.target).mean() > 0.95
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    spec = importlib.util.spec_from_file_location("onnx_iris_build", os.path.join(EXAMPLE, "build_model.py"))
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    onnx.save(build.to_onnx(build.train()), str(tmp_path / "iris.onnx"))
    committed, rebuilt = onnx.load(os.path.join(EXAMPLE, "iris.onnx")), onnx.load(str(tmp_path / "iris.onnx"))
    assert [n.op_type for n in rebuilt.graph.node] == [n.op_type for n in committed.graph.node]
    assert [i.name for i in rebuilt.graph.input] == [i.name for i in committed.graph.input]
    assert [o.name for o in rebuilt.graph.output] == [o.name for o in committed.graph.output]
    again_label, again_probabilities = ONNXClient(str(tmp_path / "iris.onnx"), [], 1).predict(iris.data.tolist())
    assert (again_label == label).mean() >= 0.98
    np.testing.assert_allclose(again_probabilities, probabilities, atol=1e-3)
