"""tritonclient (HTTP and gRPC) against the V2 front ends, end to end below the daemon.

The REST router (behind aiohttp) and the gRPC service run on loopback ports over
tests/v2_harness.LoopbackBackend, which sends each inference over the real replica hop to
the real replica handler on a Unix socket: everything the daemon will do except its queue.
The fast tests run the replica handler in this process; the slow ones start real replica
processes (python -m cortexd.replica) as the daemon's spawner does.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cortexd.protocol import ReplicaSpec
from cortexd.replica.predictors import load_predictor
from cortexd.v2.backend import ModelEntry
from tests import modelgen
from tests.v2_harness import (
    FrontEnds,
    LoopbackBackend,
    LoopThread,
    serve_in_process,
    start_replica_process,
    stop_process,
)

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)

PYTHON_PREDICTOR = """
import numpy as np

LABELS = ["setosa", "versicolor", "virginica"]

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        x = payload["x"]
        if isinstance(x, list):  # the API's own endpoint: JSON lists
            x = np.array(x, dtype=np.float32)
        index = (x.sum(axis=1) > 15).astype(np.int64) * 2
        return {"label": index, "name": np.array([LABELS[i].encode() for i in index], dtype=object)}
"""


class Served:
    """The front ends over an ONNX API ("iris") and a Python API ("py")."""

    def __init__(self, root: str, processes: bool) -> None:
        self.root = root
        self.loop = LoopThread()
        self.backend = LoopbackBackend()
        self.procs: list[Any] = []
        self.servers: list[Any] = []
        model = modelgen.onnx_linear(os.path.join(root, "linear.onnx"))
        predictor_file = os.path.join(root, "predictor.py")
        with open(predictor_file, "w") as f:
            f.write(textwrap.dedent(PYTHON_PREDICTOR))
        specs = {
            "iris": ReplicaSpec("iris", "onnx", None, model, None, {}, root, [], 1.0),
            "py": ReplicaSpec("py", "python", predictor_file, None, None, {}, root, [], 1.0),
        }
        self.local = {name: load_predictor(s) for name, s in specs.items()}  # the APIs' own endpoints, here
        for name, spec in specs.items():
            sock = os.path.join(root, f"{name}.sock")
            if processes:
                proc, ready = start_replica_process(spec, sock)
                self.procs.append(proc)
                info = ready.info
            else:
                self.servers.append(serve_in_process(self.loop, self.local[name], sock))
                info = self.local[name].describe()
            self.backend.add(ModelEntry(name, "1", True, spec.kind, info), sock)
        self.front = FrontEnds(self.backend, self.loop).start()
        self.http = tritonhttp.InferenceServerClient(self.front.http_url)
        self.grpc = tritongrpc.InferenceServerClient(self.front.grpc_url)

    def close(self) -> None:
        self.http.close()
        self.grpc.close()
        self.front.stop()
        for server in self.servers:
            server.close()
        for proc in self.procs:
            stop_process(proc)
        self.loop.stop()


@pytest.fixture(
    scope="module", params=[False, pytest.param(True, marks=pytest.mark.slow)], ids=["in-process", "processes"]
)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    with tempfile.TemporaryDirectory(prefix="cx-v2-") as root:  # short: AF_UNIX paths are limited
        s = Served(root, request.param)
        try:
            yield s
        finally:
            s.close()


def http_input(name: str, arr: np.ndarray, datatype: str, binary: bool) -> Any:
    return tritonhttp.InferInput(name, list(arr.shape), datatype).set_data_from_numpy(arr, binary_data=binary)


def grpc_input(name: str, arr: np.ndarray, datatype: str) -> Any:
    return tritongrpc.InferInput(name, list(arr.shape), datatype).set_data_from_numpy(arr)


def test_health_and_metadata_over_http_and_grpc(served: Served) -> None:
    for client in (served.http, served.grpc):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("iris") and client.is_model_ready("py", "1")
    assert served.http.is_model_ready("nope") is False
    meta = served.http.get_model_metadata("iris")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("scores", "FP32"), ("label", "INT64")]
    gmeta = served.grpc.get_model_metadata("iris", as_json=True)
    assert gmeta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]  # int64 as JSON strings
    assert served.grpc.get_server_metadata(as_json=True)["extensions"] == ["binary_tensor_data"]
    assert served.http.get_server_metadata()["name"] == "cortexd"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        served.grpc.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_onnx_infer_over_http_equals_the_apis_own_endpoint(served: Served, binary: bool) -> None:
    outputs = [tritonhttp.InferRequestedOutput("scores", binary_data=binary),
               tritonhttp.InferRequestedOutput("label", binary_data=binary)]
    result = served.http.infer("iris", [http_input("input", SAMPLES, "FP32", binary)], outputs=outputs, request_id="h1")
    own = served.local["iris"].predict({"input": SAMPLES.tolist()})
    assert np.allclose(result.as_numpy("scores"), np.array(own["scores"]), rtol=1e-5, atol=1e-6)
    assert result.as_numpy("label").tolist() == own["label"]
    assert result.get_response()["id"] == "h1"


def test_onnx_infer_over_grpc_equals_the_apis_own_endpoint(served: Served) -> None:
    result = served.grpc.infer("iris", [grpc_input("input", SAMPLES, "FP32")], request_id="g1",
                               outputs=[tritongrpc.InferRequestedOutput("label")])
    own = served.local["iris"].predict({"input": SAMPLES.tolist()})
    assert result.as_numpy("label").tolist() == own["label"]
    assert result.as_numpy("scores") is None  # not asked for
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("g1", "iris", "1")
    every = served.grpc.infer("iris", [grpc_input("input", SAMPLES, "FP32")], model_version="1")
    assert np.allclose(every.as_numpy("scores"), np.array(own["scores"]), rtol=1e-5, atol=1e-6)


def test_python_api_over_http_and_grpc(served: Served) -> None:
    x = np.array([[1, 1, 1, 1], [9, 9, 9, 9]], np.float32)
    own = served.local["py"].predict({"x": x.tolist()})
    for binary in (False, True):
        result = served.http.infer("py", [http_input("x", x, "FP32", binary)],
                                   outputs=[tritonhttp.InferRequestedOutput("label", binary_data=binary),
                                            tritonhttp.InferRequestedOutput("name", binary_data=binary)])
        assert result.as_numpy("label").tolist() == own["label"].tolist() == [0, 2]
        assert [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("name")] == [b"setosa", b"virginica"]
    result = served.grpc.infer("py", [grpc_input("x", x, "FP32")])
    assert result.as_numpy("label").tolist() == [0, 2]
    assert list(result.as_numpy("name")) == [b"setosa", b"virginica"]


def test_errors_reach_the_clients(served: Served) -> None:
    wrong = np.ones((1, 4), np.float64)
    with pytest.raises(InferenceServerException) as http_err:
        served.http.infer("iris", [http_input("input", wrong, "FP64", True)])
    assert http_err.value.status() == "400"
    assert "input 'input': datatype FP64 does not match the model's FP32" in http_err.value.message()
    with pytest.raises(InferenceServerException) as grpc_err:
        served.grpc.infer("iris", [grpc_input("input", np.ones((1, 5), np.float32), "FP32")])
    assert grpc_err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input': shape [1, 5] does not match the model's [-1, 4]" in grpc_err.value.message()
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        served.grpc.infer("nope", [grpc_input("input", SAMPLES, "FP32")])
    with pytest.raises(InferenceServerException) as version_err:
        served.http.infer("iris", [http_input("input", SAMPLES, "FP32", True)], model_version="7")
    assert version_err.value.status() == "404"


def test_grpc_typed_contents_with_cortexds_own_stub(served: Served) -> None:
    import grpc

    from cortexd.v2.pb import inference_pb2 as pb
    from cortexd.v2.pb import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(served.front.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="iris")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 4])
        tensor.contents.fp32_contents.extend(SAMPLES.reshape(-1).tolist())
        response = stub.ModelInfer(request, timeout=30)
    label = next(i for i, o in enumerate(response.outputs) if o.name == "label")
    own = served.local["iris"].predict({"input": SAMPLES.tolist()})
    assert np.frombuffer(response.raw_output_contents[label], np.int64).tolist() == own["label"]


def test_a_model_without_ready_replicas(served: Served) -> None:
    served.backend.entries["cold"] = ModelEntry("cold", "1", False, "python")
    try:
        assert served.http.is_server_ready() is False and served.grpc.is_server_ready() is False
        assert served.grpc.is_model_ready("cold") is False
        with pytest.raises(InferenceServerException) as err:
            served.grpc.infer("cold", [grpc_input("x", SAMPLES, "FP32")])
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "no replica is ready" in err.value.message()
    finally:
        del served.backend.entries["cold"]


def test_every_request_went_through_the_backend(served: Served) -> None:
    # what the daemon's queue would count: one infer per request, nothing decoded before it
    calls = [c for c in served.backend.calls if c[0] in ("iris", "py")]
    assert calls and all(target.startswith("/v2/infer?m=") for _, target, _ in calls)


def test_concurrent_requests_each_get_their_own_answer(served: Served) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(24)]
    expected = [served.local["iris"].predict({"input": b.tolist()})["label"] for b in batches]

    def over_grpc(i: int) -> list[int]:  # the gRPC client is thread-safe: 8 threads share it
        result = served.grpc.infer("iris", [grpc_input("input", batches[i], "FP32")], request_id=str(i),
                                   client_timeout=30)
        assert result.get_response().id == str(i)
        return result.as_numpy("label").tolist()  # type: ignore[no-any-return]

    # tritonclient's HTTP client is gevent-based and not thread-safe: its own async_infer,
    # 8 requests in flight on one client, in this thread, while the gRPC threads run
    http = tritonhttp.InferenceServerClient(served.front.http_url, concurrency=8, network_timeout=30)
    try:
        with ThreadPoolExecutor(8) as pool:
            grpc_futures = {i: pool.submit(over_grpc, i) for i in range(1, len(batches), 2)}
            pending = {i: http.async_infer("iris", [http_input("input", batches[i], "FP32", i % 4 == 0)],
                                           request_id=str(i)) for i in range(0, len(batches), 2)}
            got: dict[int, list[int]] = {}
            for i, request in pending.items():
                result = request.get_result()
                assert result.get_response()["id"] == str(i)
                got[i] = result.as_numpy("label").tolist()
            got.update({i: f.result(timeout=60) for i, f in grpc_futures.items()})
    finally:
        http.close()
    assert [got[i] for i in range(len(batches))] == expected
