"""ONNX and TensorFlow APIs end to end: a real `cortexd serve`, real replicas, real HTTP.

Models are made here (tests/modelgen.py). Remote sources are real servers on loopback: a
`http.server` for http:// and moto's ThreadedMotoServer for s3:// (the daemon gets
AWS_ENDPOINT_URL and dummy credentials in its environment). One daemon serves every API of
the module, so TensorFlow is imported by as few replicas as possible (about 5 s and 580 MB
each): two that serve and one that fails for want of a signature_key.
"""

from __future__ import annotations

import functools
import os
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests import modelgen
from tests.daemon_harness import Client, Daemon, QuietFiles, http_server, write_project

pytestmark = pytest.mark.slow

SAMPLE = [5.1, 3.5, 1.4, 0.2]
LABELS = ["setosa", "versicolor", "virginica"]
LIVE = ["onnx-plain", "onnx-pred", "onnx-multi", "onnx-http", "onnx-s3", "tf-versions", "tf-zip"]


def zip_folder(folder: str, archive: str) -> str:
    with zipfile.ZipFile(archive, "w") as zf:
        for base, _dirs, files in os.walk(folder):
            for name in files:
                full = os.path.join(base, name)
                zf.write(full, os.path.relpath(full, folder))
    return archive


# ---------------------------------------------------------------- model sources


@dataclass
class Sources:
    models: str  # folder copied into the project as models/
    http_base: str
    s3_env: dict[str, str]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sources]:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    base = tmp_path_factory.mktemp("sources")
    models = base / "models"
    models.mkdir()
    modelgen.onnx_linear(str(models / "linear.onnx"))
    modelgen.onnx_multi(str(models / "multi.onnx"))
    # Versions 2 and 10: numerically 10 wins (a string sort would pick 2).
    modelgen.tf_saved_model(str(models / "versions" / "2"), version=2)
    modelgen.tf_saved_model(str(models / "versions" / "10"), version=10)
    modelgen.tf_saved_model(str(models / "several"), signatures=("classify", "add", "echo"))
    zip_folder(str(models / "several"), str(models / "several.zip"))

    served = base / "served"
    served.mkdir()
    shutil.copy(models / "linear.onnx", served / "linear.onnx")
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket="models")
    client.put_object(Bucket="models", Key="onnx/linear.onnx", Body=(models / "linear.onnx").read_bytes())
    try:
        with http_server(functools.partial(QuietFiles, directory=str(served))) as http_base:
            yield Sources(str(models), http_base, s3_env)
    finally:
        s3.stop()


# ---------------------------------------------------------------- the daemon


PROJECT_YAML = """\
- kind: deployment
  name: models

- kind: api
  name: onnx-plain
  onnx:
    model: models/linear.onnx

- kind: api
  name: onnx-pred
  onnx:
    model: models/linear.onnx
    predictor: onnx_pred.py
    config:
      labels: [setosa, versicolor, virginica]

- kind: api
  name: onnx-multi
  onnx:
    model: models/multi.onnx

- kind: api
  name: onnx-http
  onnx:
    model: {http}/linear.onnx

- kind: api
  name: onnx-s3
  onnx:
    model: s3://models/onnx/linear.onnx

- kind: api
  name: onnx-404
  onnx:
    model: {http}/missing.onnx

- kind: api
  name: tf-versions
  tensorflow:
    model: models/versions

- kind: api
  name: tf-zip
  tensorflow:
    model: models/several.zip
    signature_key: add
    predictor: tf_pred.py
    config:
      offset: 100

- kind: api
  name: tf-nokey
  tensorflow:
    model: models/several
"""

FILES = {
    "onnx_pred.py": """\
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client
                self.labels = config["labels"]

            def predict(self, payload):
                scores, labels = self.client.predict(payload)
                return [self.labels[int(i)] for i in labels]
    """,
    "tf_pred.py": """\
        class TensorFlowPredictor:
            def __init__(self, tf_client, config):
                self.client = tf_client
                self.offset = config["offset"]

            def predict(self, payload):
                out = self.client.predict(payload)
                return {"sum_plus_offset": [v + self.offset for v in out["sum"]]}
    """,
}


@pytest.fixture(scope="module")
def daemon(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("models-serving")
    project = write_project(str(base / "project"), PROJECT_YAML.format(http=sources.http_base), FILES)
    shutil.copytree(sources.models, os.path.join(project, "models"))
    d = Daemon(project, str(base / "daemon"), env=sources.s3_env).start(wait_live=False)
    try:
        for api in LIVE:
            d.wait_status(api, "live", timeout=240)
        yield d
    finally:
        code = d.stop()
    assert code == 0, d.stderr()


def api_log(d: Daemon, api: str) -> str:
    result = d.cli("logs", api)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---------------------------------------------------------------- ONNX


def test_onnx_without_predictor_answers_outputs_by_name(daemon: Daemon) -> None:
    c = daemon.client()
    scores, labels = modelgen.linear_scores([SAMPLE]), modelgen.linear_labels([SAMPLE])
    for payload in ([SAMPLE], SAMPLE, {"input": [SAMPLE]}):  # batch, single sample, by input name
        r = c.post("/models/onnx-plain", payload)
        assert r.status == 200, r.body
        body = r.json()
        assert list(body) == ["scores", "label"]
        assert np.allclose(body["scores"], scores, atol=1e-5) and body["label"] == labels


def test_onnx_dynamic_batch(daemon: Daemon) -> None:
    rows = [[float(i), 1.0, -float(i), 0.5] for i in range(7)]
    r = daemon.client().post("/models/onnx-plain", rows)
    assert r.status == 200, r.body
    scores, labels = modelgen.linear_scores(rows), modelgen.linear_labels(rows)
    assert np.asarray(r.json()["scores"]).shape == (7, 3)
    assert np.allclose(r.json()["scores"], scores, atol=1e-5) and r.json()["label"] == labels


def test_onnx_predictor_gets_the_client_and_its_config(daemon: Daemon) -> None:
    rows = [SAMPLE, [6.7, 3.0, 5.2, 2.3]]
    r = daemon.client().post("/models/onnx-pred", rows)
    assert r.status == 200, r.body
    assert r.json() == [LABELS[i] for i in modelgen.linear_labels(rows)]


def test_onnx_multi_input_with_dtypes_from_the_model(daemon: Daemon) -> None:
    payload = {"a": [[1, 2, 3], [0.5, 0, 0]], "b": [[1, 1, 1], [2, 2, 2]], "scale": [2], "flag": [True, 0]}
    r = daemon.client().post("/models/onnx-multi", payload)
    assert r.status == 200, r.body
    assert r.json() == {"sum": [[4.0, 6.0, 8.0], [5.0, 4.0, 4.0]], "not_flag": [False, True]}


def test_get_endpoint_lists_onnx_inputs_and_outputs(daemon: Daemon) -> None:
    c = daemon.client()
    body = c.get("/models/onnx-plain").json()
    assert body["api"] == "onnx-plain" and body["status"] == "live" and body["predictor"] == "onnx"
    assert body["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 4]}]
    assert body["outputs"] == [
        {"name": "scores", "dtype": "float32", "shape": [None, 3]},
        {"name": "label", "dtype": "int64", "shape": [None]},
    ]
    multi = c.get("/models/onnx-multi").json()
    assert [(i["name"], i["dtype"], i["shape"]) for i in multi["inputs"]] == [
        ("a", "float32", [None, 3]), ("b", "int64", [None, 3]), ("scale", "float64", [1]), ("flag", "bool", [None]),
    ]
    # A predictor's API still lists the model it runs.
    assert c.get("/models/onnx-pred").json()["inputs"] == body["inputs"]


GOOD_MULTI = {"a": [[1, 2, 3]], "b": [[1, 2, 3]], "scale": [2], "flag": [True]}


@pytest.mark.parametrize("path, payload, fragments", [
    # missing input name
    ("/models/onnx-multi", {k: v for k, v in GOOD_MULTI.items() if k != "flag"},
     ["missing inputs ['flag']", "the model's inputs are ['a', 'b', 'scale', 'flag']"]),
    ("/models/tf-zip", {"a": [1]}, ["missing inputs ['b']", "signature 'add' takes ['a', 'b']"]),
    # wrong shape
    ("/models/onnx-plain", [[1, 2, 3]], ["input 'input'", "expects float32 of shape [None, 4]", "got shape [1, 3]"]),
    ("/models/onnx-multi", {**GOOD_MULTI, "scale": [1, 2]},
     ["input 'scale'", "expects float64 of shape [1]", "got shape [2]"]),
    ("/models/tf-versions", [[1, 2, 3, 4, 5]], ["input 'x'", "expects float32 of shape [None, 4]", "got shape [1, 5]"]),
    ("/models/tf-zip", {"a": [[1]], "b": [2]}, ["input 'a'", "expects int64 of shape [None]", "got shape [1, 1]"]),
    # non-numeric value
    ("/models/onnx-plain", [["a", "b", "c", "d"]], ["input 'input'", "expects float32", "got strings"]),
    ("/models/onnx-pred", [[1, 2, None, 4]], ["input 'input'", "expects float32", "got mixed or null values"]),
    ("/models/tf-versions", {"x": [["x", "y", "z", "w"]]}, ["input 'x'", "expects float32", "got strings"]),
    ("/models/tf-zip", {"a": ["one"], "b": [2]}, ["input 'a'", "expects int64", "got strings"]),
])
def test_payload_that_does_not_fit_is_400_naming_input_expected_and_what_came(
    daemon: Daemon, path: str, payload: Any, fragments: list[str]
) -> None:
    r = daemon.client().post(path, payload)
    assert r.status == 400, (r.status, r.body)
    message = r.json()["error"]
    for fragment in fragments:
        assert fragment in message, message


def test_onnx_and_python_replicas_do_not_load_tensorflow(daemon: Daemon) -> None:
    def maps(api: str) -> str:
        pid = daemon.replica_pids(api)[0]
        with open(f"/proc/{pid}/maps") as f:
            return f.read()

    assert "onnxruntime" in maps("onnx-plain") and "tensorflow" not in maps("onnx-plain")
    assert "tensorflow" in maps("tf-versions")  # the check above can tell


# ---------------------------------------------------------------- remote models


def test_http_model_is_downloaded_and_served(daemon: Daemon) -> None:
    r = daemon.client().post("/models/onnx-http", [SAMPLE])
    assert r.status == 200, r.body
    assert r.json()["label"] == modelgen.linear_labels([SAMPLE])
    assert "linear.onnx" in api_log(daemon, "onnx-http")


def test_s3_model_from_an_s3_compatible_server_is_served(daemon: Daemon) -> None:
    r = daemon.client().post("/models/onnx-s3", [SAMPLE])
    assert r.status == 200, r.body
    assert r.json()["label"] == modelgen.linear_labels([SAMPLE])
    cache = os.path.join(daemon.state_dir)
    assert any("s3" in dirs for _root, dirs, _files in os.walk(cache))


def test_failed_download_puts_that_api_in_error_and_the_others_serve(daemon: Daemon, sources: Sources) -> None:
    view = daemon.wait_status("onnx-404", "error")
    reason = view["last_error"] or ""
    assert "404" in reason and f"{sources.http_base}/missing.onnx" in reason, reason
    assert view["replicas"] == []
    c = daemon.client()
    r = c.post("/models/onnx-404", [SAMPLE])
    assert r.status == 503 and r.json()["status"] == "error"
    assert c.post("/models/onnx-plain", [SAMPLE]).status == 200
    # nothing half-written is left in the model cache
    for root, dirs, files in os.walk(daemon.state_dir):
        assert not [n for n in dirs + files if n.startswith(".partial-") or n == "missing.onnx"], root


# ---------------------------------------------------------------- TensorFlow


def test_tensorflow_versions_folder_serves_the_highest_number(daemon: Daemon) -> None:
    r = daemon.client().post("/models/tf-versions", {"x": [SAMPLE]})
    assert r.status == 200, r.body
    body = r.json()
    assert body["version"] == 10
    scores, labels = modelgen.linear_scores([SAMPLE]), modelgen.linear_labels([SAMPLE])
    assert np.allclose(body["scores"], scores, atol=1e-5) and body["label"] == labels
    # one input: the value itself is accepted too
    assert daemon.client().post("/models/tf-versions", [SAMPLE]).json()["label"] == labels


def test_tensorflow_zip_with_signature_key_and_predictor(daemon: Daemon) -> None:
    r = daemon.client().post("/models/tf-zip", {"a": [1, 2], "b": [10, 20]})
    assert r.status == 200, r.body
    assert r.json() == {"sum_plus_offset": [111, 122]}


def test_get_endpoint_lists_tensorflow_inputs_and_outputs(daemon: Daemon) -> None:
    body = daemon.client().get("/models/tf-zip").json()
    assert body["predictor"] == "tensorflow" and body["signature_key"] == "add"
    assert body["inputs"] == [{"name": "a", "dtype": "int64", "shape": [None]},
                              {"name": "b", "dtype": "int64", "shape": [None]}]
    assert body["outputs"] == [{"name": "sum", "dtype": "int64", "shape": [None]}]
    versions = daemon.client().get("/models/tf-versions").json()
    assert versions["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 4]}]
    assert [o["name"] for o in versions["outputs"]] == ["label", "scores", "version"]


def test_several_signatures_without_signature_key_is_an_error_listing_them(daemon: Daemon) -> None:
    view = daemon.wait_status("tf-nokey", "error", timeout=180)
    reason = view["reason"] or ""
    assert "several signatures (add, classify, echo)" in reason and "set tensorflow.signature_key" in reason, reason
    assert daemon.client().post("/models/tf-nokey", {"a": [1], "b": [2]}).status == 503


# ---------------------------------------------------------------- without TensorFlow


def test_tensorflow_api_without_tensorflow_says_what_to_install(tmp_path: Any) -> None:
    # A `tensorflow` package that cannot be imported, first on the replicas' path.
    stub = tmp_path / "stub" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'tensorflow\'", name="tensorflow")\n'
    )
    model = tmp_path / "p" / "model"
    model.mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"")
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: notf
        - kind: api
          name: tf
          tensorflow:
            model: model
        - kind: api
          name: py
          python:
            predictor: ok.py
    """, {"ok.py": "def predict(sample, metadata):\n    return 'ok'\n"})
    d = Daemon(project, str(tmp_path / "d"), env={"PYTHONPATH": str(tmp_path / "stub")}).start(wait_live=False)
    try:
        view = d.wait_status("tf", "error", timeout=60)
        assert "install cortexd[tensorflow]" in (view["reason"] or ""), view
        d.wait_status("py", "live")
        assert Client(d.port).post("/notf/py", {}).json() == "ok"
    finally:
        assert d.stop() == 0, d.stderr()
