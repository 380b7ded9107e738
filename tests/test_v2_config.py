"""cortex.yaml for V2: a Python API's optional tensor declaration, and /v2 kept for the protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortexd.config import ConfigError, load_config_text

HEADER = "- kind: deployment\n  name: dep\n- kind: api\n  name: iris\n"


def load(tmp_path: Path, body: str, deployment: str = "dep") -> object:
    (tmp_path / "predictor.py").write_text("def predict(sample, metadata):\n    return 1\n")
    text = HEADER.replace("name: dep", f"name: {deployment}") + body
    return load_config_text(text, str(tmp_path / "cortex.yaml"))


def errors(tmp_path: Path, body: str, deployment: str = "dep") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body, deployment)
    return [str(issue) for issue in info.value.errors]


def test_a_python_api_declares_its_tensors(tmp_path: Path) -> None:
    config = load(tmp_path, (
        "  python:\n"
        "    predictor: predictor.py\n"
        "    v2:\n"
        "      inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]\n"
        "      outputs:\n"
        "        - {name: label, datatype: BYTES, shape: [-1]}\n"
    ))
    api = config.apis[0]  # type: ignore[attr-defined]
    assert api.v2 == {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                      "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]}]}
    plain = load(tmp_path, "  python:\n    predictor: predictor.py\n")
    assert plain.apis[0].v2 is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "v2, message",
    [
        ("{inputs: [{name: x, datatype: float32, shape: [4]}]}",
         "cortex.yaml:9:5: api \"iris\": python.v2.inputs[0].datatype: expected one of BOOL"),
        ("{inputs: [{name: x, datatype: FP32}]}", "python.v2.inputs[0].shape: expected a list of integers"),
        ("{input: []}", "python.v2: unknown keys ['input']; expected inputs and outputs"),
        ("[1]", "python.v2: expected a mapping of string keys to values"),
    ],
)
def test_bad_declarations_are_located(tmp_path: Path, v2: str, message: str) -> None:
    got = errors(
        tmp_path, f"  endpoint: /iris\n  compute: {{cpu: 1}}\n  python:\n    predictor: predictor.py\n    v2: {v2}\n"
    )
    assert any(message in e for e in got), got


def test_onnx_apis_take_their_metadata_from_the_model(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    got = errors(tmp_path, "  onnx:\n    model: model.onnx\n    v2: {inputs: []}\n")
    assert any("onnx.v2" in e for e in got), got


@pytest.mark.parametrize("body, deployment", [("  endpoint: /v2/models\n  python: {predictor: predictor.py}\n", "dep"),
                                              ("  python: {predictor: predictor.py}\n", "v2")])
def test_v2_paths_belong_to_the_protocol(tmp_path: Path, body: str, deployment: str) -> None:
    got = errors(tmp_path, body, deployment)
    assert any("/v2" in e and "reserved" in e for e in got), got


def test_the_examples_declare_the_python_apis_tensors() -> None:
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(repo, "examples", "cortex.yaml")
    with open(path) as f:
        text = f.read()
    # the TensorFlow example's model is built by `make examples`: leave that API out here
    text = text[: text.index("- kind: api\n  name: iris-tensorflow")]
    config = load_config_text(text, path)
    by_name = {api.name: api for api in config.apis}
    assert [t["name"] for t in by_name["iris-python"].v2["inputs"]] == [
        "sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert by_name["iris-onnx"].v2 is None  # from the model itself
