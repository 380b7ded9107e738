"""Fixture projects in every dialect (tests/fixtures/dialects), served by a real daemon and
answered as their Cortex release answered; and each one after `cortexd convert`, which must
serve the same answers.

Models are made here, into a copy of the fixture: an iris classifier pickled from
scikit-learn's bundled data, the linear ONNX model of tests/modelgen.py and, for v0.12, a
small TensorFlow SavedModel.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cortexd.config import load_config, validate_report
from cortexd.config.convert import convert_main, convert_text
from tests import modelgen
from tests.daemon_harness import REPO, Client, Daemon, Load, wait_for

FIXTURES = os.path.join(REPO, "tests", "fixtures", "dialects")
IRIS = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}
ROW = [IRIS["sepal_length"], IRIS["sepal_width"], IRIS["petal_length"], IRIS["petal_width"]]
ROW_LABEL = modelgen.linear_labels([ROW])[0]  # what the fixtures' linear ONNX model answers
DIALECTS = {"v011": "v0.11", "seed": "seed", "v012": "v0.12", "v013": "v0.12", "realtime": "realtime"}


def make_project(name: str, dest: Path) -> Path:
    """A copy of the fixture with its models made."""
    project = dest / name
    shutil.copytree(os.path.join(FIXTURES, name), project)
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    model = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    with open(project / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    modelgen.onnx_linear(str(project / "model.onnx"))
    if name == "v012":
        pytest.importorskip("tensorflow")
        modelgen.tf_saved_model(str(project / "tf" / "1"), version=1)
    return project


def answers(name: str, client: Client) -> dict[str, Any]:
    """What each fixture's APIs answer: (status, JSON or text) per request. A str prediction is
    text/plain in Cortex v0.17+ (a JSON string before)."""
    def ask(path: str, body: Any = IRIS, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        resp = client.request("POST", path, json.dumps(body), headers)
        if resp.headers.get("content-type", "").startswith("text/plain"):
            return resp.status, ("text", resp.body.decode())
        return resp.status, resp.json()

    if name == "v011":
        return {
            "classifier": ask("/iris/classifier"),
            "fails": ask("/iris/classifier", {"fail": True})[0],
            "onnx-classifier": ask("/iris/onnx-classifier"),
            "onnx-raw": ask("/iris/onnx-raw", [ROW]),
            # the Open Inference Protocol runs the model itself, past the request handler
            "v2": ask("/v2/models/onnx-classifier/infer",
                      {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}),
        }
    if name == "seed":
        return {"classifier": ask("/iris/classifier"), "onnx-raw": ask("/iris/onnx-raw", [ROW])}
    if name == "v012":
        return {
            "classifier": ask("/iris/classifier"),
            "fails": ask("/iris/classifier", {"fail": True})[0],
            "tensorflow": ask("/iris/tensorflow", ROW),
            "tensorflow-raw": ask("/iris/tensorflow-raw", {"x": [ROW, [1, 2, 3, 4]]}),
        }
    if name == "v013":
        return {"classifier": ask("/classifier"), "onnx": ask("/v1/onnx")}
    return {
        "classifier": ask("/classifier"),
        "fails": ask("/classifier", {"fail": True})[0],
        "echo": ask("/v1/echo?model=iris&n=2", [1, 2]),
        "handler": ask("/handler", {}),
        "onnx": ask("/onnx"),
    }


EXPECTED: dict[str, dict[str, Any]] = {
    "v011": {
        "classifier": (200, "setosa"),
        "fails": 406,                                       # v0.11 answered a predictor error with 406
        "onnx-classifier": (200, "abc"[ROW_LABEL]),
        "onnx-raw": (200, None),                            # the list of outputs; checked below
        "v2": (200, None),                                  # the model's tensors; checked below
    },
    "seed": {"classifier": (200, "setosa"), "onnx-raw": (200, None)},
    "v012": {
        "classifier": (200, {"greeting": "hello", "label": "setosa"}),
        "fails": 406,
        "tensorflow": (200, "abc"[ROW_LABEL]),
        "tensorflow-raw": (200, None),
    },
    "v013": {"classifier": (200, {"greeting": "hi", "label": "setosa"}), "onnx": (200, "abc"[ROW_LABEL])},
    "realtime": {
        "classifier": (200, ("text", "setosa")),            # a str goes out as text/plain from v0.17
        "fails": 500,                                       # from v0.14 a predictor error is a 500
        "echo": (200, {"payload": [1, 2], "query": {"model": "iris", "n": "2"}, "client": None}),
        "handler": (200, ("text", "from the handler")),
        "onnx": (200, ("text", "abc"[ROW_LABEL])),
    },
}


def check(name: str, got: dict[str, Any]) -> None:
    for key, want in EXPECTED[name].items():
        if isinstance(want, tuple) and want[1] is None:
            assert got[key][0] == 200, (key, got[key])
        else:
            assert got[key] == want, (key, got[key])
    if name == "v011":   # v0.11's ONNX API without a handler: session.run's list of outputs
        scores, labels = got["onnx-raw"][1]
        assert np.asarray(scores).shape == (1, 3) and labels == [ROW_LABEL]
        outputs = {o["name"]: o for o in got["v2"][1]["outputs"]}
        assert outputs["label"]["data"] == [ROW_LABEL] and outputs["scores"]["shape"] == [1, 3]
    if name == "seed":   # the seed's: outputs by name, shaped
        assert got["onnx-raw"][1]["label"] == [ROW_LABEL]
    if name == "v012":   # Cortex's TensorFlow client: per output a flat list, int64 as strings
        raw = got["tensorflow-raw"][1]
        assert raw["label"] == [str(v) for v in modelgen.linear_labels([ROW, [1, 2, 3, 4]])]
        assert len(raw["scores"]) == 6 and raw["version"] == [1]


def serve(project: Path, base: Path, name: str) -> dict[str, Any]:
    daemon = Daemon(str(project), str(base)).start(timeout=180)
    try:
        return answers(name, daemon.client())
    finally:
        daemon.stop()


@pytest.mark.parametrize("name", ["v011", "seed", "v013"])
def test_fixture_validates_in_its_dialect(tmp_path: Path, name: str) -> None:
    project = make_project(name, tmp_path)
    report = validate_report(str(project / "cortex.yaml"))
    assert report.errors == [] and report.dialect is not None and report.dialect.id == DIALECTS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DIALECTS))
def test_fixture_project_serves_and_its_conversion_serves_the_same(tmp_path: Path, name: str) -> None:
    project = make_project(name, tmp_path)
    config = load_config(str(project / "cortex.yaml"))
    assert config.dialect == DIALECTS[name]
    original = serve(project, tmp_path / "d1", name)
    check(name, original)
    converted = convert_text((project / "cortex.yaml").read_text(), str(project / "cortex.yaml"))
    assert converted.text is not None, converted.problems
    (project / "cortex.yaml").write_text(converted.text)
    assert load_config(str(project / "cortex.yaml")).dialect == "realtime"
    assert serve(project, tmp_path / "d2", name) == original


def test_convert_main_prints_and_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project("v011", tmp_path)
    assert convert_main(str(project / "cortex.yaml")) == 0
    out = capsys.readouterr().out
    assert out.startswith("# cortex.yaml in the Cortex v0.14\u2013v0.35 dialect, converted by `cortexd convert` "
                          "from the Cortex v0.11 dialect.")
    assert "interface: v0.11  # cortexd: called as in v0.11" in out
    assert "endpoint: /iris/classifier  # the default of a file with a deployment" in out
    assert "model_type: classification" in out and "monitoring:  # was tracker" in out
    (project / "cortex.yaml").write_text(out)
    again = convert_text(out, str(project / "cortex.yaml"))
    assert again.text is not None and again.text.startswith("# Cortex v0.14\u2013v0.35 dialect: already the newest")
    (project / "cortex.yaml").write_text("- kind: deployment\n")
    assert convert_main(str(project / "cortex.yaml")) == 2
    assert "deployment.name: required" in capsys.readouterr().err


@pytest.mark.slow
def test_headers_reach_a_predictor_that_takes_them(tmp_path: Path) -> None:
    project = make_project("realtime", tmp_path)
    daemon = Daemon(str(project), str(tmp_path / "d")).start(timeout=120)
    try:
        resp = daemon.client().request("POST", "/v1/echo", "[1]", {"X-Client": "tests"})
        assert resp.status == 200 and resp.json()["client"] == "tests"
    finally:
        daemon.stop()


@pytest.mark.slow
def test_threads_per_process_4_serves_four_slow_requests_at_once(tmp_path: Path) -> None:
    """Four requests meet at a barrier in one replica: they all pass only if served at once."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "cortex.yaml").write_text(
        "- name: slow\n  kind: RealtimeAPI\n  predictor: {type: python, path: slow.py, threads_per_process: 4}\n"
        "  autoscaling: {min_replicas: 1, max_replicas: 1}\n")
    (project / "slow.py").write_text(
        "import threading\nBARRIER = threading.Barrier(4, timeout=30)\n"
        "class PythonPredictor:\n    def __init__(self, config): pass\n"
        "    def predict(self, payload):\n        BARRIER.wait()\n        return payload\n")
    daemon = Daemon(str(project), str(tmp_path / "d")).start(timeout=120)
    results: list[int] = []
    try:
        def one(i: int) -> None:
            results.append(Client(daemon.port).post("/slow", i).status)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [200] * 4
        assert len(daemon.replica_pids("slow")) == 1
    finally:
        daemon.stop()


@pytest.mark.slow
def test_mem_is_a_request_and_mem_limit_the_limit(tmp_path: Path) -> None:
    project = make_project("v013", tmp_path)
    text = (project / "cortex.yaml").read_text().replace("    max_surge: 1\n", "    max_surge: 1\n    mem: 20M\n")
    (project / "cortex.yaml").write_text(text)
    daemon = Daemon(str(project), str(tmp_path / "d")).start(timeout=120)
    try:
        assert daemon.client().post("/classifier", IRIS).status == 200   # well above 20M, and served
    finally:
        daemon.stop()
    (project / "cortex.yaml").write_text(text.replace("    mem: 20M\n", "    mem_limit: 20M\n"))
    daemon = Daemon(str(project), str(tmp_path / "d2")).start(wait_live=False)
    try:
        view = daemon.wait_status("classifier", "error (out of memory)", timeout=120)
        assert "above its limit of 19 MiB" in (view["reason"] or ""), view
    finally:
        daemon.stop()


@pytest.mark.slow
def test_traffic_splitter_weights_within_five_percent_over_2000_requests(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "cortex.yaml").write_text(
        "- {name: a, kind: RealtimeAPI, predictor: {type: python, path: a.py}}\n"
        "- {name: b, kind: RealtimeAPI, predictor: {type: python, path: b.py}}\n"
        "- name: ab\n  kind: TrafficSplitter\n  apis: [{name: a, weight: 30}, {name: b, weight: 70}]\n")
    for name in ("a", "b"):
        (project / f"{name}.py").write_text(
            "class PythonPredictor:\n    def __init__(self, config): pass\n"
            f"    def predict(self, payload): return {name!r}\n")
    daemon = Daemon(str(project), str(tmp_path / "d")).start(timeout=120)
    try:
        client = daemon.client()
        answers = [client.post("/ab", {}).body.decode() for _ in range(2000)]  # str: text/plain (v0.17+)
        assert abs(answers.count("a") / 2000 - 0.30) <= 0.05 and abs(answers.count("b") / 2000 - 0.70) <= 0.05
        weights = {s["api"]: s["weight"] for s in daemon.get("ab")["apis"]}   # the weights, visible in `get`
        assert weights == {"a": 30, "b": 70}
    finally:
        daemon.stop()


@pytest.mark.slow
def test_target_replica_concurrency_scales_up_under_load_and_down_after_the_window(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "cortex.yaml").write_text(
        "- name: slow\n  kind: RealtimeAPI\n  predictor: {type: python, path: slow.py}\n"
        "  autoscaling: {min_replicas: 1, max_replicas: 4, target_replica_concurrency: 1, window: 10s,\n"
        "                upscale_stabilization_period: 0s, downscale_stabilization_period: 8s}\n")
    (project / "slow.py").write_text(
        "import time\nclass PythonPredictor:\n    def __init__(self, config): pass\n"
        "    def predict(self, payload):\n        time.sleep(0.5)\n        return 1\n")
    # Decisions every second (the default period is 15 s), so the test waits seconds, not minutes.
    daemon = Daemon(str(project), str(tmp_path / "d"), args=["--autoscale-period", "1"]).start(timeout=120)
    try:
        with Load(daemon.port, ["/slow"], threads=4, started=0):
            wait_for(lambda: len(daemon.replica_pids("slow")) >= 3, timeout=120, what="scale up to >= 3 replicas")
        wait_for(lambda: len(daemon.replica_pids("slow")) == 1, timeout=180, what="scale down to 1 replica")
    finally:
        daemon.stop()
