"""TensorFlow APIs in process.

Finding the SavedModel, picking the version and the signature are tested without TensorFlow.
Everything that runs a model shares module-scoped fixtures, because importing TensorFlow
alone takes several seconds; those tests are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from typing import Any

import numpy as np
import pytest

from cortexd.protocol import ReplicaSpec
from cortexd.replica import tf_predictor
from cortexd.replica.predictors import PayloadError, PredictorLoadError
from cortexd.replica.tf_predictor import choose_signature, find_saved_model, threads_for
from cortexd.savedmodel import pick_version
from tests import modelgen

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = [5.1, 3.5, 1.4, 0.2]


def ctx(model: str | None, signature_key: str | None = None, predictor: str | None = None,
        config: dict[str, Any] | None = None, python_path: str = "") -> ReplicaSpec:
    return ReplicaSpec(api_name="iris", kind="tensorflow", predictor_path=predictor, model_path=model,
                          signature_key=signature_key, config=config or {}, python_path=python_path,
                          gpus=[], cpu=1)


def zip_folder(folder: str, archive: str, inside: str = "") -> str:
    """Zip folder's contents; `inside` puts them under that folder name in the archive."""
    with zipfile.ZipFile(archive, "w") as zf:
        for root, _dirs, files in os.walk(folder):
            for f in files:
                full = os.path.join(root, f)
                zf.write(full, os.path.join(inside, os.path.relpath(full, folder)))
    return archive


# ---------------------------------------------------------------- pure decisions (no TensorFlow)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["1", "2", "3"], "3"),
        (["9", "10"], "10"),  # numeric, not lexical
        (["1568244606"], "1568244606"),
        (["variables", "assets"], None),
        ([], None),
        (["2", "latest", "1"], "2"),
    ],
)
def test_pick_version(names: list[str], expected: str | None) -> None:
    assert pick_version(names) == expected


@pytest.mark.parametrize(
    "available, requested, expected, error",
    [
        (["serving_default"], None, "serving_default", None),
        (["serving_default"], "serving_default", "serving_default", None),
        (["add", "classify"], "add", "add", None),
        (["add", "classify"], None, None,
         r"m: the model has several signatures \(add, classify\); set tensorflow.signature_key"),
        (["add", "classify"], "predict", None, r"m: signature_key 'predict' not found; the model has: add, classify"),
        ([], None, None, r"m: the SavedModel has no signatures"),
    ],
)
def test_choose_signature(available: list[str], requested: str | None, expected: str | None, error: str | None) -> None:
    if error:
        with pytest.raises(PredictorLoadError, match=error):
            choose_signature(available, requested, "m")
    else:
        assert choose_signature(available, requested, "m") == expected


@pytest.mark.parametrize("cpu, threads", [(0.2, 1), (1, 1), (1.01, 2), (3, 3)])
def test_threads_for(cpu: float, threads: int) -> None:
    assert threads_for(cpu) == threads


def fake_saved_model(path: Any) -> Any:
    path.mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_bytes(b"")
    (path / "variables").mkdir(exist_ok=True)
    return path


def test_find_saved_model_layouts(tmp_path: Any) -> None:
    plain = fake_saved_model(tmp_path / "plain")
    assert find_saved_model(str(plain)) == str(plain)

    versions = tmp_path / "versions"
    for v in ("1", "9", "10"):
        fake_saved_model(versions / v)
    (versions / "11").mkdir()  # no saved_model.pb: not a version
    (versions / "README").write_text("x")
    assert find_saved_model(str(versions)) == str(versions / "10")

    wrapped = tmp_path / "wrapped"
    fake_saved_model(wrapped / "model" / "3")
    assert find_saved_model(str(wrapped)) == str(wrapped / "model" / "3")

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    expected = r"empty: no saved_model.pb here nor in a numbered version folder \(found: a, b\)"
    with pytest.raises(PredictorLoadError, match=expected):
        find_saved_model(str(empty))
    with pytest.raises(PredictorLoadError, match="model not found"):
        find_saved_model(str(tmp_path / "missing"))
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(PredictorLoadError, match="expected a SavedModel folder"):
        find_saved_model(str(tmp_path / "model.onnx"))


def test_find_saved_model_unpacks_a_local_zip_once(tmp_path: Any) -> None:
    src = tmp_path / "src"
    fake_saved_model(src / "1568244606")
    archive = zip_folder(str(src), str(tmp_path / "bert.zip"))
    found = find_saved_model(archive)
    assert found.endswith(os.path.join("1568244606")) and os.path.isfile(os.path.join(found, "saved_model.pb"))
    assert os.path.dirname(os.path.dirname(found)).startswith(str(tmp_path))  # unpacked next to the zip
    assert find_saved_model(archive) == found  # reused, not unpacked again
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".partial-")]


def test_importing_the_module_does_not_import_tensorflow() -> None:
    code = "import sys, cortexd.replica.tf_predictor; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_missing_tensorflow_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` raise ImportError
    with pytest.raises(PredictorLoadError, match=r"install cortexd\[tensorflow\]"):
        tf_predictor.load(ctx("/nonexistent"))


# ---------------------------------------------------------------- real SavedModels (TensorFlow)


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("tensorflow")
    d = tmp_path_factory.mktemp("tf")
    single = modelgen.tf_saved_model(str(d / "single"), version=1)
    several = modelgen.tf_saved_model(str(d / "several"), version=2, signatures=("classify", "add", "echo"))
    versions = d / "versions"
    modelgen.tf_saved_model(str(versions / "3"), version=3)
    modelgen.tf_saved_model(str(versions / "10"), version=10)
    shutil.copytree(str(versions / "3"), str(versions / "9"))
    (versions / "11").mkdir()  # a version still being written: no saved_model.pb
    zipped_versions = zip_folder(str(versions), str(d / "versions.zip"), inside="bert")
    zipped_single = zip_folder(single, str(d / "single.zip"))
    return {"single": single, "several": several, "versions": str(versions),
            "versions_zip": zipped_versions, "single_zip": zipped_single}


@pytest.mark.slow
def test_single_signature_without_signature_key(tf_models: dict[str, str]) -> None:
    predictor = tf_predictor.load(ctx(tf_models["single"]))
    result = predictor.predict({"x": [SAMPLE, [1, 2, 3, 4]]})
    assert json.loads(json.dumps(result)) == result  # plain JSON
    assert set(result) == {"scores", "label", "version"}
    np.testing.assert_allclose(result["scores"], modelgen.linear_scores([SAMPLE, [1, 2, 3, 4]]), rtol=1e-5)
    assert np.asarray(result["scores"]).shape == (2, 3)  # shapes kept
    assert result["label"] == modelgen.linear_labels([SAMPLE, [1, 2, 3, 4]])
    assert result["version"] == 1
    assert predictor.describe() == {
        "signature_key": "serving_default",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [
            {"name": "label", "dtype": "int64", "shape": [None]},
            {"name": "scores", "dtype": "float32", "shape": [None, 3]},
            {"name": "version", "dtype": "int32", "shape": []},
        ],
    }


@pytest.mark.slow
def test_single_input_takes_the_value_itself_and_a_single_sample(tf_models: dict[str, str]) -> None:
    client = tf_predictor.TensorFlowClient(tf_models["single"], None, 1)
    assert client.predict(SAMPLE)["scores"] == client.predict({"x": [SAMPLE]})["scores"]
    assert np.asarray(client.predict(SAMPLE)["scores"]).shape == (1, 3)
    assert client.input_signature == {"x": (np.dtype("float32"), (None, 4))}


@pytest.mark.slow
def test_highest_numbered_version_wins(tf_models: dict[str, str]) -> None:
    client = tf_predictor.TensorFlowClient(tf_models["versions"], None, 1)
    assert client.model_dir == os.path.join(tf_models["versions"], "10")
    assert client.predict({"x": SAMPLE})["version"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("which, version", [("versions_zip", 10), ("single_zip", 1)])
def test_zipped_models(tf_models: dict[str, str], which: str, version: int) -> None:
    client = tf_predictor.TensorFlowClient(tf_models[which], None, 1)
    assert client.predict({"x": SAMPLE})["version"] == version


@pytest.mark.slow
def test_several_signatures_need_a_signature_key(tf_models: dict[str, str]) -> None:
    expected = r"several signatures \(add, classify, echo\); set tensorflow.signature_key"
    with pytest.raises(PredictorLoadError, match=expected):
        tf_predictor.load(ctx(tf_models["several"]))
    with pytest.raises(PredictorLoadError, match=r"signature_key 'nope' not found; the model has: add, classify, echo"):
        tf_predictor.load(ctx(tf_models["several"], signature_key="nope"))
    add = tf_predictor.load(ctx(tf_models["several"], signature_key="add"))
    assert add.predict({"a": [1, 2], "b": [10, 20]}) == {"sum": [11, 22]}
    assert [i["name"] for i in add.describe()["inputs"]] == ["a", "b"]
    classify = tf_predictor.load(ctx(tf_models["several"], signature_key="classify"))
    assert classify.predict({"x": SAMPLE})["version"] == 2
    echo = tf_predictor.load(ctx(tf_models["several"], signature_key="echo"))
    assert echo.predict({"text": ["héllo", "b"]}) == {"text": ["héllo", "b"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload, message",
    [
        ({"a": [1]}, r"missing inputs \['b'\] \(signature 'add' takes \['a', 'b'\]\)"),
        ({"a": [1], "b": [2], "c": [3]}, r"unexpected keys \['c'\]"),
        ({"b": [2], "z": 1}, r"missing inputs \['a'\]; unexpected keys \['z'\]"),
        ([1, 2], r"signature 'add' has inputs \['a', 'b'\]: send an object by input name; got list"),
        ({"a": [1.5], "b": [2]}, r"input 'a' expects int64 of shape \[None\]; got numbers that are not whole"),
        ({"a": [[1]], "b": [2]}, r"input 'a' expects int64 of shape \[None\]; got shape \[1, 1\]"),
        ({"a": ["x"], "b": [2]}, r"input 'a' expects int64 .*; got strings"),
    ],
)
def test_payload_errors(tf_models: dict[str, str], payload: Any, message: str) -> None:
    client = tf_predictor.TensorFlowClient(tf_models["several"], "add", 1)
    with pytest.raises(PayloadError, match=message):
        client.predict(payload)


@pytest.mark.slow
def test_graph_refusal_is_a_payload_error(tf_models: dict[str, str]) -> None:
    # a and b pass their own checks ([None] each) but cannot be added: the graph says so
    client = tf_predictor.TensorFlowClient(tf_models["several"], "add", 1)
    with pytest.raises(PayloadError, match="the model rejected the inputs"):
        client.predict({"a": [1, 2, 3], "b": [1, 2]})


def write(path: Any, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["tensorflow_client", "tf_client"])
def test_predictor_form(tf_models: dict[str, str], tmp_path: Any, arg: str) -> None:
    path = write(tmp_path / "predictor.py", f"""
        LABELS = ["setosa", "versicolor", "virginica"]

        class TensorFlowPredictor:
            def __init__(self, {arg}, config):
                self.client = {arg}
                self.config = config

            def predict(self, payload):
                out = self.client.predict({{"x": [payload["sample"]]}})
                return {{"label": LABELS[out["label"][0]], "who": self.config["who"]}}
    """)
    predictor = tf_predictor.load(ctx(tf_models["single"], predictor=path, config={"who": arg}))
    want = ["setosa", "versicolor", "virginica"][modelgen.linear_labels([SAMPLE])[0]]
    assert predictor.predict({"sample": SAMPLE}) == {"label": want, "who": arg}
    assert predictor.describe()["inputs"][0]["name"] == "x"


@pytest.mark.slow
def test_predictor_with_wrong_class_name_is_a_load_error(tf_models: dict[str, str], tmp_path: Any) -> None:
    path = write(tmp_path / "wrong.py", """
        class Predictor:
            def __init__(self, tf_client, config):
                pass
            def predict(self, payload):
                return 1
    """)
    with pytest.raises(PredictorLoadError, match=r"wrong.py: expected a class TensorFlowPredictor"):
        tf_predictor.load(ctx(tf_models["single"], predictor=path))


@pytest.mark.slow
def test_broken_saved_model_is_a_load_error(tf_models: dict[str, str], tmp_path: Any) -> None:
    fake_saved_model(tmp_path / "broken")
    (tmp_path / "broken" / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(PredictorLoadError, match="broken: TensorFlow cannot load the SavedModel"):
        tf_predictor.TensorFlowClient(str(tmp_path / "broken"), None, 1)


# ---------------------------------------------------------------- the example


@pytest.mark.slow
def test_tensorflow_iris_example(tf_models: dict[str, str], tmp_path: Any) -> None:
    import importlib.util

    example = os.path.join(REPO, "examples", "tensorflow-iris")
    spec = importlib.util.spec_from_file_location("tf_iris_build", os.path.join(example, "build_model.py"))
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out = str(tmp_path / "model")
    assert build.build(out) == os.path.join(out, "1")
    assert build.build(out) == os.path.join(out, "1")  # an existing model is left alone
    assert build.build(out, new_version=True) == os.path.join(out, "2")

    predictor = tf_predictor.load(ctx(out))
    with open(os.path.join(example, "sample.json")) as f:
        result = predictor.predict(json.load(f))
    assert result["class_ids"] == [0] and abs(sum(result["probabilities"][0]) - 1) < 1e-5
    assert predictor.describe()["signature_key"] == "serving_default"
