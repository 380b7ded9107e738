"""`server_side_batching` in cortex.yaml: the keys, their located errors, durations, and the
batch-axis check of local models (cortexd/model_shapes.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cortexd.config import Batching, ConfigError, ConfigIssue, load_config_text, reference_yaml
from cortexd.config.quantities import format_duration, parse_duration
from cortexd.model_shapes import batch_axis_problem, local_batch_problem, onnx_signature
from tests import modelgen
from tests.test_config import BODY_LINE, api_text  # the same one-API document


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "predictor.py").write_text("def predict(samples, metadata):\n    return samples\n")
    modelgen.onnx_linear(str(tmp_path / "batch.onnx"), batch="N")
    modelgen.onnx_linear(str(tmp_path / "unknown.onnx"), batch=None)
    modelgen.onnx_linear(str(tmp_path / "fixed.onnx"), batch=1)
    modelgen.onnx_multi(str(tmp_path / "multi.onnx"))  # its input "scale" is [1]
    return tmp_path


def load(project: Path, body: str) -> Batching | None:
    return load_config_text(api_text(body), str(project / "cortex.yaml")).apis[0].batching


def issues_of(project: Path, body: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config_text(api_text(body), str(project / "cortex.yaml"))
    return info.value.errors


PY = "python:\n  predictor: predictor.py\n  server_side_batching: {}"
ONNX = "onnx:\n  model: {}\n  server_side_batching: {{max_batch_size: 8, batch_interval: 2ms}}"


@pytest.mark.parametrize(
    "body, want",
    [
        (PY.format("{max_batch_size: 8, batch_interval: 10ms}"), Batching(8, 0.01)),
        (PY.format("{max_batch_size: 1, batch_interval: 0.5s}"), Batching(1, 0.5)),
        (PY.format("{max_batch_size: 32, batch_interval: 250us}"), Batching(32, 0.00025)),
        (PY.format("{max_batch_size: 4, batch_interval: 0s}"), Batching(4, 0.0)),
        (PY.format("{max_batch_size: 65536, batch_interval: 1m30s}"), Batching(65536, 90.0)),
        ("python: {predictor: predictor.py}", None),
        ("python: {predictor: predictor.py, server_side_batching: null}", None),
        (ONNX.format("batch.onnx"), Batching(8, 0.002)),
        (ONNX.format("unknown.onnx"), Batching(8, 0.002)),  # a first dimension with no name is dynamic
        # a remote model is checked when the replica loads it
        (ONNX.format("https://example.com/fixed.onnx"), Batching(8, 0.002)),
        # a file that does not parse as ONNX: the replica's load says so in its own words
        (ONNX.format("predictor.py"), Batching(8, 0.002)),
        ("tensorflow:\n  model: https://example.com/m.zip\n  server_side_batching: {max_batch_size: 2, batch_interval: 1ms}",
         Batching(2, 0.001)),
    ],
)
def test_batching_is_read(project: Path, body: str, want: Batching | None) -> None:
    assert load(project, body) == want


# (body, (line offset, key path, message fragment))
ERROR_CASES = [
    (PY.format("{max_batch_size: 0, batch_interval: 10ms}"),
     (2, "python.server_side_batching.max_batch_size", "must be between 1 and 65536 (got 0)")),
    (PY.format("{max_batch_size: '8', batch_interval: 10ms}"),
     (2, "python.server_side_batching.max_batch_size", 'expected an integer, got a string ("8")')),
    (PY.format("{max_batch_size: 8, batch_interval: 10}"),
     (2, "python.server_side_batching.batch_interval", 'got 10 (a unit is needed: "10s", "10ms" or "10m"?)')),
    (PY.format("{max_batch_size: 8, batch_interval: 0.01}"),
     (2, "python.server_side_batching.batch_interval", 'got 0.01 (a unit is needed: "0.01s", "0.01ms"')),
    (PY.format("{max_batch_size: 8, batch_interval: 10 ms}"),
     (2, "python.server_side_batching.batch_interval", 'expected a duration as Go writes it')),
    (PY.format("{max_batch_size: 8, batch_interval: 10sec}"),
     (2, "python.server_side_batching.batch_interval", 'got "10sec"')),
    (PY.format("{max_batch_size: 8}"),
     (2, "python.server_side_batching.batch_interval", "required: longest wait for more requests")),
    (PY.format("{batch_interval: 1ms}"),
     (2, "python.server_side_batching.max_batch_size", "required: most requests run together")),
    (PY.format("{max_batch: 8, max_batch_size: 8, batch_interval: 1ms}"),
     (2, "python.server_side_batching.max_batch", 'did you mean "max_batch_size"?')),
    (PY.format("8"), (2, "python.server_side_batching", "expected a mapping with keys: max_batch_size, batch_interval")),
    ("python: {predictor: predictor.py}\nserver_side_batching: {max_batch_size: 8, batch_interval: 1ms}",
     (1, "server_side_batching",
      "it belongs at python.server_side_batching or tensorflow.server_side_batching or onnx.server_side_batching")),
    (ONNX.format("fixed.onnx"),
     (2, "onnx.server_side_batching", "input 'input' has a fixed first dimension (shape [1, 4]); export the model "
                                      "with a dynamic first dimension")),
    (ONNX.format("multi.onnx"), (2, "onnx.server_side_batching", "input 'scale' has a fixed first dimension (shape [1])")),
]


@pytest.mark.parametrize("body, want", ERROR_CASES, ids=[f"err{i}" for i in range(len(ERROR_CASES))])
def test_one_mistake_gives_one_located_error(project: Path, body: str, want: tuple[int, str, str]) -> None:
    offset, key_path, fragment = want
    issues = issues_of(project, body)
    assert len(issues) == 1, [str(i) for i in issues]
    issue = issues[0]
    assert (issue.line, issue.api, issue.key_path) == (BODY_LINE + offset, "iris", key_path), str(issue)
    assert fragment in issue.message, str(issue)


def test_the_reference_documents_the_keys() -> None:
    ref = reference_yaml()
    assert ref.count("server_side_batching:") == 3
    assert "max_batch_size: <int>  # most requests run together as one batch; required; 1..65536" in ref
    assert 'batch_interval: <duration>  # longest wait for more requests' in ref


@pytest.mark.parametrize(
    "text, seconds",
    [("10ms", 0.01), ("0.5s", 0.5), (".5s", 0.5), ("2ms", 0.002), ("250us", 0.00025), ("250µs", 0.00025),
     ("1500ns", 1.5e-6), ("1m30s", 90.0), ("1h", 3600.0), ("0s", 0.0), ("1.s", 1.0), (" 5ms ", 0.005)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value, fragment",
    [(5, 'got 5 (a unit is needed: "5s"'), (True, "got a boolean (true)"), ("", 'got ""'), ("ms", 'got "ms"'),
     ("-1s", "must not be negative"), ("1d", 'got "1d"'), ("1 s", 'got "1 s"'), ([1], "got a list")],
)
def test_bad_durations(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "seconds, text", [(0.002, "2ms"), (1.5, "1500ms"), (0.00025, "0.25ms"), (0.01, "10ms"), (90, "1m30s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- reading shapes without the runtimes ------------------------------------------------------------


def test_onnx_signature_matches_onnxruntime(project: Path) -> None:
    import onnxruntime as ort

    for name in ("batch.onnx", "fixed.onnx", "multi.onnx"):
        path = str(project / name)
        inputs, outputs = onnx_signature(path)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def dims(shape: list[object]) -> tuple[int | None, ...]:
            return tuple(d if isinstance(d, int) else None for d in shape)

        assert inputs == {i.name: dims(i.shape) for i in session.get_inputs()}
        assert outputs == {o.name: dims(o.shape) for o in session.get_outputs()}


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "old-style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 2])],  # IR < 4 lists weights as inputs
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "old.onnx")
    onnx.save(model, path)
    assert onnx_signature(path) == ({"x": (None, 4)}, {"y": (None, 2)})
    assert local_batch_problem("onnx", path) is None


@pytest.mark.parametrize(
    "inputs, outputs, fragment",
    [
        ({"x": (None, 4)}, {"y": (None,)}, None),
        ({"x": None}, {"y": None}, None),  # unknown ranks: the runtime will tell
        ({"x": ()}, {}, "input 'x' is a scalar (shape [])"),
        ({"x": (None, 4)}, {"y": (1, 10)}, "output 'y' has a fixed first dimension (shape [1, 10])"),
        ({"x": (8, None)}, {}, "input 'x' has a fixed first dimension (shape [8, None])"),
    ],
)
def test_batch_axis_problem(inputs: dict, outputs: dict, fragment: str | None) -> None:
    problem = batch_axis_problem(inputs, outputs)
    assert (problem is None) if fragment is None else (fragment in (problem or ""))


def test_files_that_are_not_models_say_nothing(tmp_path: Path) -> None:
    for content in (b"", b"\x08\x07", b"\xff" * 20, b"not a model at all"):
        path = tmp_path / "x.onnx"
        path.write_bytes(content)
        assert local_batch_problem("onnx", str(path)) is None
    assert local_batch_problem("onnx", str(tmp_path / "missing.onnx")) is None
    assert local_batch_problem("tensorflow", str(tmp_path)) is None


@pytest.mark.slow
def test_saved_model_signatures_are_read_without_tensorflow(tmp_path: Path) -> None:
    """Shapes from saved_model.pb's bytes, compared with what TensorFlow itself reports."""
    from cortexd.model_shapes import saved_model_signatures

    path = modelgen.tf_saved_model(str(tmp_path / "tiny"), signatures=("serving_default", "add", "echo"))
    signatures = saved_model_signatures(os.path.join(path, "saved_model.pb"))
    assert signatures["add"] == ({"a": (None,), "b": (None,)}, {"sum": (None,)})
    assert signatures["serving_default"][0] == {"x": (None, 4)}
    assert signatures["serving_default"][1]["version"] == ()
    assert local_batch_problem("tensorflow", path, "add") is None
    problem = local_batch_problem("tensorflow", path, "serving_default")
    assert problem is not None and "signature 'serving_default'" in problem
    assert "output 'version' is a scalar" in problem
    # several signatures and none chosen: the replica's load reports that first
    assert local_batch_problem("tensorflow", path, None) is None
    batchable = modelgen.tf_batch_model(str(tmp_path / "versions" / "3"), batch=None)
    assert local_batch_problem("tensorflow", str(tmp_path / "versions")) is None
    fixed = modelgen.tf_batch_model(str(tmp_path / "fixed"), batch=1)
    assert "input 'x' has a fixed first dimension (shape [1, 4])" in (local_batch_problem("tensorflow", fixed) or "")
    assert batchable
