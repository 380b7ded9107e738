"""The replica's batch path in process (cortexd/replica/batching.py): real predictors loaded
from files written here, ONNX models made with onnx.helper, batch frames through the
replica's own request handler (no daemon, no sockets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cortexd import batchframe
from cortexd.protocol import ReplicaSpec
from cortexd.replica import batching
from cortexd.replica.main import build_handler
from cortexd.replica.predictors import PredictorLoadError, load_predictor
from tests import modelgen
from tests.test_batching_parity import write

Handler = Any


def spec(kind: str, tmp: Path, predictor: str | None = None, model: str | None = None, size: int = 8,
         signature_key: str | None = None) -> ReplicaSpec:
    return ReplicaSpec(api_name="api", kind=kind, predictor_path=predictor, model_path=model,
                       signature_key=signature_key, config={}, python_path=str(tmp), cpu=1.0, max_batch_size=size)


def handler_for(s: ReplicaSpec) -> tuple[Handler, Any]:
    predictor = load_predictor(s)
    return build_handler(predictor, batching.for_replica(predictor, s)), predictor


def send(handle: Handler, bodies: list[Any], queries: list[str] | None = None) -> list[tuple[int, Any]]:
    """One batch frame through the handler; (status, parsed JSON body) per request."""
    raw = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
    frame = batchframe.encode_request([(q, b"", b) for q, b in zip(queries or [""] * len(raw), raw, strict=True)])
    status, answer = handle("POST", batchframe.BATCH_PATH, "", frame)
    assert status == 200, answer
    return [(s, json.loads(b)) for s, b in batchframe.decode_answer(answer, expected=len(raw))]


# -- Python predictors ------------------------------------------------------------------------

MODULE_FORM = """\
    import numpy as np
    seen = []

    def predict(samples, metadata):
        seen.append(len(samples))
        if any(s == "boom" for s in samples):
            raise ValueError("boom requested")
        mode = samples[0].get("mode") if isinstance(samples[0], dict) else None
        if mode == "short":
            return samples[:-1]
        if mode == "dict":
            return {"not": "a list"}
        if mode == "none":
            return None
        if mode == "array":
            return np.arange(len(samples)) * 10
        return [{"echo": s, "batch": len(samples)} for s in samples]
"""


@pytest.fixture()
def module_form(tmp_path: Path) -> tuple[Handler, Any]:
    return handler_for(spec("python", tmp_path, write(tmp_path, "module_form.py", MODULE_FORM)))


def test_python_predict_gets_the_list_and_each_request_its_own_answer(module_form: tuple[Handler, Any]) -> None:
    handle, _ = module_form
    answers = send(handle, [{"i": 0}, {"i": 1}, [2], "three"])
    assert answers == [(200, {"echo": {"i": 0}, "batch": 4}), (200, {"echo": {"i": 1}, "batch": 4}),
                       (200, {"echo": [2], "batch": 4}), (200, {"echo": "three", "batch": 4})]


def test_a_body_that_is_not_json_gets_its_own_400_and_stays_out_of_the_batch(tmp_path: Path) -> None:
    path = write(tmp_path, "p.py", MODULE_FORM)
    handle, _ = handler_for(spec("python", tmp_path, path))
    answers = send(handle, [{"i": 0}, b"{not json", {"i": 2}])
    assert answers[0] == (200, {"echo": {"i": 0}, "batch": 2}) and answers[2] == (200, {"echo": {"i": 2}, "batch": 2})
    assert answers[1][0] == 400 and "body is not valid JSON" in answers[1][1]["error"]


@pytest.mark.parametrize(
    "mode, fragment",
    [
        ("short", "it returned 2 predictions for a batch of 3"),
        ("dict", "it returned dict"),
        ("none", "it returned None"),
    ],
)
def test_a_wrong_length_or_a_non_list_is_a_500_for_the_whole_batch(
    module_form: tuple[Handler, Any], mode: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handle, _ = module_form
    answers = send(handle, [{"mode": mode}, {}, {}])
    assert [s for s, _ in answers] == [500, 500, 500]
    for _, body in answers:
        assert body["error"].startswith("prediction failed: predict takes a list of payloads when "
                                        "server_side_batching is on and must return a list")
        assert fragment in body["error"]
    assert fragment in capsys.readouterr().err


def test_a_numpy_array_counts_as_a_list(module_form: tuple[Handler, Any]) -> None:
    handle, _ = module_form
    assert send(handle, [{"mode": "array"}, {}, {}]) == [(200, 0), (200, 10), (200, 20)]


def test_an_exception_fails_the_batch_with_its_message(module_form: tuple[Handler, Any]) -> None:
    handle, _ = module_form
    answers = send(handle, [{"i": 0}, "boom"])
    assert answers == [(500, {"error": "prediction failed: ValueError: boom requested"})] * 2


def test_a_single_request_is_a_batch_of_one(module_form: tuple[Handler, Any]) -> None:
    handle, _ = module_form
    status, body = handle("POST", "/predict", "", b'{"i": 7}')
    assert (status, json.loads(body)) == (200, {"echo": {"i": 7}, "batch": 1})


def test_debug_logs_each_request_and_its_own_answer(module_form: tuple[Handler, Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    handle, _ = module_form
    send(handle, [{"i": 0}, {"i": 1}, b"[oops"], ["", "debug=true", "debug=true"])
    err = capsys.readouterr().err
    assert 'debug: sample: {"i": 1}' in err
    assert 'debug: prediction: {"echo":{"i":1},"batch":2}' in err
    assert '"i": 0' not in err  # the request without debug is not logged
    assert "debug: sample: [oops" not in err  # a body that did not parse never became a sample
    assert "debug: answer 400" not in err


def test_class_form_gets_the_list_too(tmp_path: Path) -> None:
    path = write(tmp_path, "cls.py", """\
        class PythonPredictor:
            def __init__(self, config):
                pass

            def predict(self, payload):
                return [sum(p) for p in payload]
    """)
    handle, _ = handler_for(spec("python", tmp_path, path))
    assert send(handle, [[1, 2], [3, 4, 5]]) == [(200, 3), (200, 12)]


def test_without_batching_the_batch_path_is_not_served(tmp_path: Path) -> None:
    s = spec("python", tmp_path, write(tmp_path, "p.py", MODULE_FORM), size=0)
    handle, _ = handler_for(s)
    frame = batchframe.encode_request([("", b"", b"1")])
    assert handle("POST", batchframe.BATCH_PATH, "", frame)[0] == 404
    # the predictor gets the payload itself (a string it then iterates), not a list of one
    status, body = handle("POST", "/predict", "", b'"xy"')
    assert status == 200 and json.loads(body) == [{"echo": "x", "batch": 2}, {"echo": "y", "batch": 2}]


def test_a_broken_frame_is_a_400_for_the_exchange(module_form: tuple[Handler, Any]) -> None:
    handle, _ = module_form
    status, body = handle("POST", batchframe.BATCH_PATH, "", b"CXB1\x00")
    assert status == 400 and json.loads(body)["error"].startswith("bad batch frame: ")


# -- ONNX -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("onnx-batch")
    return {
        "linear": modelgen.onnx_linear(str(d / "linear.onnx")),
        "fixed": modelgen.onnx_linear(str(d / "fixed.onnx"), batch=1),
        "multi": modelgen.onnx_multi(str(d / "multi.onnx")),
    }


def unbatched(model: str, tmp: Path, body: Any, predictor: str | None = None) -> tuple[int, Any]:
    handle, _ = handler_for(spec("onnx", tmp, predictor, model, size=0))
    status, answer = handle("POST", "/predict", "", json.dumps(body).encode())
    return status, json.loads(answer)


def close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-5, atol=1e-6))


def test_onnx_samples_are_stacked_run_once_and_split(onnx_models: dict[str, str], tmp_path: Path) -> None:
    handle, predictor = handler_for(spec("onnx", tmp_path, model=onnx_models["linear"]))
    client = predictor.stacked_model
    runs: list[int] = []
    real = client.run_arrays
    client.run_arrays = lambda feeds: (runs.append(feeds["input"].shape[0]), real(feeds))[1]
    bodies: list[Any] = [
        [5.1, 3.5, 1.4, 0.2],                          # one sample: the batch axis is added
        {"input": [6.0, 2.2, 5.0, 1.5]},               # by input name
        [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]],  # a request that is itself 2 samples
        [1.0, 2.0],                                    # does not fit: its own 400
        {"wrong": [1, 2, 3, 4]},                       # neither
        [7.7, 3.0, 6.1, 2.3],
    ]
    answers = send(handle, bodies)
    assert runs == [5]  # four good requests, five samples, one run
    assert [s for s, _ in answers] == [200, 200, 200, 400, 400, 200]
    assert "expects float32 of shape [None, 4]; got shape [2]" in answers[3][1]["error"]
    assert "the model's one input is 'input'" in answers[4][1]["error"]
    for body, (status, answer) in zip(bodies, answers, strict=True):
        if status == 200:
            alone = unbatched(onnx_models["linear"], tmp_path, body)
            assert alone[0] == 200 and close(answer, alone[1]), (answer, alone)
    assert np.asarray(answers[2][1]["scores"]).shape == (2, 3)


def test_onnx_model_with_a_fixed_first_dimension_does_not_load(onnx_models: dict[str, str], tmp_path: Path) -> None:
    for model, fragment in ((onnx_models["fixed"], "input 'input' has a fixed first dimension (shape [1, 4])"),
                            (onnx_models["multi"], "input 'scale' has a fixed first dimension (shape [1])")):
        with pytest.raises(PredictorLoadError) as info:
            load_predictor(spec("onnx", tmp_path, model=model))
        assert str(info.value).startswith("api api: server_side_batching stacks requests along the first dimension")
        assert fragment in str(info.value)
    load_predictor(spec("onnx", tmp_path, model=onnx_models["fixed"], size=0))  # fine without batching


ONNX_CLASS = """\
    import threading
    import numpy as np

    calls = []
    lock = threading.Lock()

    class ONNXPredictor:
        def __init__(self, onnx_client, config):
            self.client = onnx_client
            self.labels = ["a", "b", "c"]

        def predict(self, payload):
            with lock:
                calls.append(payload)
            scores, label = self.client.predict({"input": payload["x"]})
            return {"label": self.labels[int(label[0])], "top": float(np.max(scores))}
"""


def test_onnx_predictor_class_keeps_one_payload_per_call_and_the_model_runs_once(
    onnx_models: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path, "onnx_pred.py", ONNX_CLASS)
    handle, predictor = handler_for(spec("onnx", tmp_path, path, onnx_models["linear"]))
    model = predictor.gatherer._model
    runs: list[int] = []
    real = model.run_arrays
    model.run_arrays = lambda feeds: (runs.append(feeds["input"].shape[0]), real(feeds))[1]
    bodies = [{"x": [5.1, 3.5, 1.4, 0.2]}, {"x": [6.0, 2.2, 5.0, 1.5]}, {"x": [1, 2]}, {"x": [7.7, 3.0, 6.1, 2.3]}]
    answers = send(handle, bodies)
    assert runs == [3]
    assert [s for s, _ in answers] == [200, 200, 400, 200]
    for body, (status, answer) in zip(bodies, answers, strict=True):
        if status == 200:
            alone = unbatched(onnx_models["linear"], tmp_path, body, path)
            assert answer["label"] == alone[1]["label"] and close(answer["top"], alone[1]["top"])


# -- TensorFlow (slow: importing TensorFlow alone takes seconds) --------------------------------


@pytest.mark.slow
def test_tensorflow_stacked_gathered_and_refused(tmp_path: Path) -> None:
    model = modelgen.tf_batch_model(str(tmp_path / "linear"))
    fixed = modelgen.tf_batch_model(str(tmp_path / "fixed"), batch=1)
    handle, predictor = handler_for(spec("tensorflow", tmp_path, model=model))
    bodies: list[Any] = [[5.1, 3.5, 1.4, 0.2], {"x": [[1, 2, 3, 4], [4, 3, 2, 1]]}, [1, 2, 3], [6.0, 2.2, 5.0, 1.5]]
    answers = send(handle, bodies)
    assert [s for s, _ in answers] == [200, 200, 400, 200]
    alone_handle, _ = handler_for(spec("tensorflow", tmp_path, model=model, size=0))
    for body, (status, answer) in zip(bodies, answers, strict=True):
        if status == 200:
            s, alone = alone_handle("POST", "/predict", "", json.dumps(body).encode())
            assert s == 200 and close(answer, json.loads(alone))

    path = write(tmp_path, "tf_pred.py", """\
        class TensorFlowPredictor:
            def __init__(self, tensorflow_client, config):
                self.client = tensorflow_client

            def predict(self, payload):
                return {"label": self.client.predict({"x": payload})["label"][0]}
    """)
    handle, predictor = handler_for(spec("tensorflow", tmp_path, path, model))
    answers = send(handle, [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 5.0, 1.5]])
    assert [s for s, _ in answers] == [200, 200]
    for body, (_, answer) in zip([[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 5.0, 1.5]], answers, strict=True):
        s, alone = alone_handle("POST", "/predict", "", json.dumps(body).encode())
        assert answer["label"] == json.loads(alone)["label"][0]

    with pytest.raises(PredictorLoadError, match="signature 'serving_default': server_side_batching stacks"):
        load_predictor(spec("tensorflow", tmp_path, model=fixed))
    assert os.path.isdir(fixed)
