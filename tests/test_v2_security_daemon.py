"""The Open Inference Protocol's ports under the security options, through a real `cortexd
serve`: the gRPC port speaks TLS with --tls-cert/--tls-key (the HTTP port's certificate), and
with --api-keys the V2 health checks stay open, on REST and on gRPC, as /healthz does, while
everything else under /v2 and every other gRPC call needs the key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cortexd.v2.pb import inference_pb2 as pb
from cortexd.v2.pb import inference_pb2_grpc as pb_grpc
from tests import modelgen
from tests.daemon_harness import Daemon, Never, free_port, write_project
from tests.test_security_access import self_signed

pytestmark = pytest.mark.slow

YAML = """
- kind: deployment
  name: sec
- kind: api
  name: iris
  onnx:
    model: linear.onnx
"""

SAMPLES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
KEY = "k" * 32
CALL_S = 30  # a deadline on every gRPC call: a test never hangs on a port that does not answer


def project(root: Path) -> str:
    folder = root / "project"
    folder.mkdir()
    modelgen.onnx_linear(str(folder / "linear.onnx"))
    return write_project(str(folder), YAML, {})


def infer_request() -> Any:
    request = pb.ModelInferRequest(model_name="iris", raw_input_contents=[SAMPLES.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(SAMPLES.shape))
    request.outputs.add(name="label")
    return request


def labels(answer: Any) -> list[int]:
    names = [o.name for o in answer.outputs]
    return np.frombuffer(answer.raw_output_contents[names.index("label")], np.int64).tolist()  # type: ignore[no-any-return]


def refusal(call: Any, request: Any, metadata: Sequence[tuple[str, str]] = ()) -> grpc.StatusCode:
    """The status a call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=CALL_S, metadata=metadata)
    code: grpc.StatusCode = err.value.code()
    return code


# ---------------------------------------------------------------- TLS on the gRPC port


def test_the_grpc_port_speaks_tls_with_the_http_ports_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    grpc_port = free_port()
    daemon = Daemon(project(tmp_path), str(tmp_path / "d"),
                    args=["--tls-cert", cert, "--tls-key", key, "--grpc-port", str(grpc_port)])
    daemon.start()
    try:
        target = f"127.0.0.1:{grpc_port}"
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(cert).read_bytes())
        with grpc.secure_channel(target, credentials) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_S).live
            assert labels(stub.ModelInfer(infer_request(), timeout=CALL_S)) == modelgen.linear_labels(SAMPLES)
        with grpc.insecure_channel(target) as channel:  # plaintext is refused, not served
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert refusal(stub.ServerLive, pb.ServerLiveRequest()) == grpc.StatusCode.UNAVAILABLE

        tritongrpc = pytest.importorskip("tritonclient.grpc")
        client = tritongrpc.InferenceServerClient(target, ssl=True, root_certificates=cert)
        try:
            assert client.is_server_live() and client.is_model_ready("iris")
            inputs = [tritongrpc.InferInput("input", list(SAMPLES.shape), "FP32").set_data_from_numpy(SAMPLES)]
            assert client.infer("iris", inputs).as_numpy("label").tolist() == modelgen.linear_labels(SAMPLES)
        finally:
            client.close()
        tritonhttp = pytest.importorskip("tritonclient.http")  # REST over HTTPS, as docs/v2.md shows it
        rest = tritonhttp.InferenceServerClient(f"localhost:{daemon.port}", ssl=True, ssl_options={"ca_certs": cert})
        try:
            assert rest.is_server_ready()
            inputs = [tritonhttp.InferInput("input", list(SAMPLES.shape), "FP32").set_data_from_numpy(SAMPLES)]
            assert rest.infer("iris", inputs).as_numpy("label").tolist() == modelgen.linear_labels(SAMPLES)
        finally:
            rest.close()
        # the log says what an operator would check: both ports encrypted
        log = daemon.stderr()
        assert f"listening on https://127.0.0.1:{daemon.port}" in log and "over gRPC with TLS on" in log, log
    finally:
        assert daemon.stop() == 0, daemon.stderr()


def test_an_unreadable_tls_key_stops_a_daemon_with_a_grpc_port_at_start(tmp_path: Path) -> None:
    cert, _key = self_signed(tmp_path)
    missing = str(tmp_path / "no-such-key.pem")
    daemon = Daemon(project(tmp_path), str(tmp_path / "d"),
                    args=["--tls-cert", cert, "--tls-key", missing, "--grpc-port", str(free_port())])
    with pytest.raises(Never, match="daemon exited with 2"):  # before it listens
        daemon.start(wait_live=False)
    assert daemon.proc is not None and daemon.proc.returncode == 2
    assert f"{missing}: no such file" in daemon.stderr()


# ---------------------------------------------------------------- API keys: health open, the rest closed


def test_with_api_keys_v2_health_is_open_and_everything_else_needs_the_key(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    grpc_port = free_port()
    daemon = Daemon(project(tmp_path), str(tmp_path / "d"),
                    args=["--api-keys", str(keys), "--grpc-port", str(grpc_port)]).start()
    try:
        client = daemon.client()
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/health/ready/", "/healthz"):
            assert client.get(path).status == 200, path  # what kubelet and load balancer probes call
        for path in ("/v2", "/v2/models/iris", "/v2/models/iris/ready", "/v2/models/iris/versions/1/ready",
                     "/v2/health", "/v2/health/other", "/readyz"):
            assert client.get(path).status == 401, path
            assert client.request("GET", path, None, {"X-API-Key": KEY}).status in (200, 404), path
        infer = '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'
        assert client.request("POST", "/v2/models/iris/infer", infer).status == 401
        assert client.request("POST", "/v2/models/iris/infer", infer, {"Authorization": "Bearer " + KEY}).status == 200

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_S).live
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=CALL_S).ready
            closed = [
                (stub.ModelReady, pb.ModelReadyRequest(name="iris")),
                (stub.ServerMetadata, pb.ServerMetadataRequest()),
                (stub.ModelMetadata, pb.ModelMetadataRequest(name="iris")),
                (stub.ModelInfer, infer_request()),
            ]
            for call, request in closed:
                assert refusal(call, request) == grpc.StatusCode.UNAUTHENTICATED, call
                assert refusal(call, request, [("x-api-key", "x" * 32)]) == grpc.StatusCode.UNAUTHENTICATED, call
            bearer = [("authorization", "Bearer " + KEY)]
            assert stub.ModelReady(pb.ModelReadyRequest(name="iris"), timeout=CALL_S, metadata=bearer).ready
            answer = stub.ModelInfer(infer_request(), timeout=CALL_S, metadata=[("x-api-key", KEY)])
            assert labels(answer) == modelgen.linear_labels(SAMPLES)

        tritongrpc = pytest.importorskip("tritonclient.grpc")
        triton = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            assert triton.is_server_live() and triton.is_server_ready()  # no key: a probe's view
            assert triton.is_model_ready("iris", headers={"authorization": "Bearer " + KEY})
        finally:
            triton.close()
    finally:
        assert daemon.stop() == 0, daemon.stderr()
