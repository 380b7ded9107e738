"""The Open Inference Protocol through a real `cortexd serve`: tritonclient over HTTP (JSON and
binary tensors) and gRPC against an ONNX and a Python API, through the daemon's queues."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import modelgen
from tests.daemon_harness import Daemon, free_port, wait_for, write_project
from tests.test_v2_clients import PYTHON_PREDICTOR, SAMPLES

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytestmark = pytest.mark.slow

YAML = """
- kind: deployment
  name: v
- kind: api
  name: iris
  onnx:
    model: linear.onnx
- kind: api
  name: batched
  onnx:
    model: linear.onnx
    server_side_batching: {max_batch_size: 8, batch_interval: 5ms}
- kind: api
  name: py
  python:
    predictor: predictor.py
    v2:
      inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
      outputs: [{name: label, datatype: INT64, shape: [-1]}, {name: name, datatype: BYTES, shape: [-1]}]
  tracker:
    model_type: classification
    key: label
"""


class Served:
    def __init__(self, root: Path) -> None:
        project = root / "p"
        project.mkdir()
        modelgen.onnx_linear(str(project / "linear.onnx"))
        write_project(str(project), YAML, {"predictor.py": PYTHON_PREDICTOR})
        self.grpc_port = free_port()
        self.daemon = Daemon(str(project), str(root / "d"), args=["--grpc-port", str(self.grpc_port)]).start()
        self.http = tritonhttp.InferenceServerClient(f"127.0.0.1:{self.daemon.port}")
        self.grpc = tritongrpc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")

    def close(self) -> None:
        self.http.close()
        self.grpc.close()
        assert self.daemon.stop() == 0, self.daemon.stderr()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("v2d"))
    try:
        yield s
    finally:
        s.close()


def own(served: Served, api: str, payload: Any) -> Any:
    r = served.daemon.client().post(f"/v/{api}", payload)
    assert r.status == 200, r.body
    return r.json()


def test_health_and_metadata(served: Served) -> None:
    for client in (served.http, served.grpc):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("iris") and client.is_model_ready("py")
    meta = served.http.get_model_metadata("iris")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["versions"] == ["1"]
    assert served.grpc.get_model_metadata("py", as_json=True)["inputs"][0]["name"] == "x"  # declared in cortex.yaml
    with pytest.raises(InferenceServerException):
        served.http.get_model_metadata("iris", "2")  # only the deployed version


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_onnx_over_http_equals_the_apis_own_endpoint(served: Served, binary: bool) -> None:
    inputs = [
        tritonhttp.InferInput("input", list(SAMPLES.shape), "FP32").set_data_from_numpy(SAMPLES, binary_data=binary)
    ]
    outputs = [tritonhttp.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "label")]
    result = served.http.infer("iris", inputs, outputs=outputs, request_id="r1")
    mine = own(served, "iris", {"input": SAMPLES.tolist()})
    assert result.as_numpy("label").tolist() == mine["label"]
    assert np.allclose(result.as_numpy("scores"), np.array(mine["scores"]), rtol=1e-5, atol=1e-6)
    assert result.get_response()["id"] == "r1"


def test_onnx_and_python_over_grpc(served: Served) -> None:
    x = np.array([[1, 1, 1, 1], [9, 9, 9, 9]], np.float32)
    result = served.grpc.infer("py", [tritongrpc.InferInput("x", [2, 4], "FP32").set_data_from_numpy(x)])
    assert result.as_numpy("label").tolist() == [0, 2]
    assert list(result.as_numpy("name")) == [b"setosa", b"virginica"]
    result = served.grpc.infer("iris", [tritongrpc.InferInput("input", [2, 4], "FP32").set_data_from_numpy(SAMPLES)])
    assert result.as_numpy("label").tolist() == own(served, "iris", {"input": SAMPLES.tolist()})["label"]


def test_shape_and_datatype_errors(served: Served) -> None:
    with pytest.raises(InferenceServerException) as err:
        served.http.infer("iris", [tritonhttp.InferInput("input", [1, 4], "FP64").set_data_from_numpy(np.ones((1, 4)))])
    assert err.value.status() == "400" and "datatype FP64 does not match the model's FP32" in err.value.message()
    bad = np.ones((1, 5), np.float32)
    with pytest.raises(InferenceServerException) as gerr:
        served.grpc.infer("iris", [tritongrpc.InferInput("input", [1, 5], "FP32").set_data_from_numpy(bad)])
    assert gerr.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_v2_requests_under_batching_each_get_their_own_answer(served: Served) -> None:
    rows = [np.random.default_rng(i).normal(size=(1, 4)).astype(np.float32) for i in range(24)]
    expected = [own(served, "batched", {"input": r.tolist()})["label"] for r in rows]

    def one(i: int) -> list[int]:
        inputs = [tritongrpc.InferInput("input", [1, 4], "FP32").set_data_from_numpy(rows[i])]
        return served.grpc.infer("batched", inputs, client_timeout=30).as_numpy("label").tolist()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(24)))
    assert got == expected


def test_get_counts_v2_requests_and_the_tracker_sees_them(served: Served) -> None:
    before = served.daemon.get("py")
    x = np.array([[9, 9, 9, 9]], np.float32)
    for _ in range(3):
        served.http.infer("py", [tritonhttp.InferInput("x", [1, 4], "FP32").set_data_from_numpy(x, binary_data=True)])
    after = wait_for(lambda: (v := served.daemon.get("py"))["metrics"]["requests"] >= before["metrics"]["requests"] + 3
                     and v, 10, what="the V2 requests counted")
    assert after["metrics"]["2xx"] == before["metrics"]["2xx"] + 3
    counts = wait_for(lambda: served.daemon.get("py")["tracker"]["total"]["counts"], 10, what="tracked predictions")
    assert counts.get("2", 0) >= 3, counts


def test_grpc_needs_the_api_key_when_keys_are_on(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    modelgen.onnx_linear(str(project / "linear.onnx"))
    write_project(str(project), YAML.split("- kind: api\n  name: batched")[0], {})
    keys = tmp_path / "keys"
    keys.write_text("k" * 32 + "\n")
    os.chmod(keys, 0o600)
    port = free_port()
    d = Daemon(str(project), str(tmp_path / "d"), args=["--grpc-port", str(port), "--api-keys", str(keys)]).start()
    try:
        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
        inputs = [tritongrpc.InferInput("input", [2, 4], "FP32").set_data_from_numpy(SAMPLES)]
        with pytest.raises(InferenceServerException) as err:
            client.infer("iris", inputs)
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        result = client.infer("iris", inputs, headers={"authorization": "Bearer " + "k" * 32})
        assert result.as_numpy("label").shape == (2,)
        assert client.is_server_live()  # like /healthz, without a key
        client.close()
    finally:
        assert d.stop() == 0
