"""The V2 REST router (cortexd/v2/rest.py) against a fake backend: every route, status code
and error, and what it hands the daemon for an inference."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from cortexd.v2 import hop, rest
from cortexd.v2.backend import ModelEntry
from tests.v2_harness import LoopbackBackend

ONNX_INFO = {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}],
             "outputs": [{"name": "label", "dtype": "int64", "shape": [None]}]}


class FakeBackend(LoopbackBackend):
    """v2_harness's backend (health, models and metadata from `entries`) with a canned answer
    to every inference instead of a replica."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = {
            "iris": ModelEntry("iris", "3", True, "onnx", ONNX_INFO),
            "cold": ModelEntry("cold", "1", False, "python"),
        }
        self.infers: list[tuple[str, str, bytes]] = []
        self.answer: tuple[int, dict[str, str], bytes] = (200, {}, b'{"outputs":[]}')

    async def infer(self, model: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.infers.append((model, target, body))
        return self.answer


def call(backend: FakeBackend, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         query: str = "") -> tuple[int, dict[str, str], Any]:
    status, out_headers, out = asyncio.run(rest.handle(method, path, headers or {}, body, backend, query))
    if out_headers.get("Content-Type") == "application/json":
        return status, out_headers, json.loads(out)
    return status, out_headers, out


@pytest.mark.parametrize("path, v2", [("/v2", True), ("/v2/", True), ("/v2/models/x/infer", True), ("/v20", False),
                                      ("/v2x/y", False), ("/iris/v2", False)])
def test_which_paths_are_v2(path: str, v2: bool) -> None:
    assert rest.is_v2_path(path) is v2


def test_server_metadata_and_health() -> None:
    backend = FakeBackend()
    status, _, doc = call(backend, "GET", "/v2")
    assert status == 200 and doc["name"] == "cortexd" and doc["extensions"] == ["binary_tensor_data"]
    assert call(backend, "GET", "/v2/health/live") == (200, {}, b"")
    assert call(backend, "GET", "/v2/health/ready") == (400, {}, b"")  # "cold" has no ready replica
    backend.entries["cold"] = ModelEntry("cold", "1", True, "python")
    assert call(backend, "GET", "/v2/health/ready")[0] == 200
    backend.is_live = False
    assert call(backend, "GET", "/v2/health/live")[0] == 400


@pytest.mark.parametrize(
    "path, status, expected",
    [
        ("/v2/models/iris", 200, {"name": "iris", "versions": ["3"], "platform": "onnxruntime_onnx"}),
        ("/v2/models/iris/versions/3", 200, {"name": "iris"}),
        ("/v2/models/iris/", 200, {"name": "iris"}),
        ("/v2/models/cold", 200, {"platform": "python", "inputs": [], "outputs": []}),
        ("/v2/models/nope", 404, {"error": "unknown model 'nope'; the models served are: cold, iris"}),
        ("/v2/models/iris/versions/2", 404, {"error": "model 'iris' has no version '2'; the version served is '3'"}),
        ("/v2/models/iris/versions/2/ready", 404,
         {"error": "model 'iris' has no version '2'; the version served is '3'"}),
        ("/v2/models/iris/config", 404, {"error": "no V2 route at /v2/models/iris/config"}),
        ("/v2/models", 404, {"error": "no V2 route at /v2/models"}),
        ("/v2/repository/index", 404, {"error": "no V2 route at /v2/repository/index"}),
        ("/v2/models/iris/versions", 404, {"error": "no V2 route at /v2/models/iris/versions"}),
    ],
)
def test_model_metadata_routes(path: str, status: int, expected: dict[str, Any]) -> None:
    got_status, headers, doc = call(FakeBackend(), "GET", path)
    assert got_status == status and headers["Content-Type"] == "application/json"
    assert {k: doc[k] for k in expected} == expected


@pytest.mark.parametrize(
    "path, status",
    [("/v2/models/iris/ready", 200), ("/v2/models/iris/versions/3/ready", 200), ("/v2/models/cold/ready", 400),
     ("/v2/models/nope/ready", 404)],
)
def test_model_ready(path: str, status: int) -> None:
    assert call(FakeBackend(), "GET", path)[0] == status


@pytest.mark.parametrize(
    "method, path, allowed",
    [("POST", "/v2", "GET"), ("DELETE", "/v2/health/live", "GET"), ("POST", "/v2/models/iris", "GET"),
     ("POST", "/v2/models/iris/ready", "GET"), ("GET", "/v2/models/iris/infer", "POST")],
)
def test_wrong_methods_are_405(method: str, path: str, allowed: str) -> None:
    status, headers, doc = call(FakeBackend(), method, path)
    assert status == 405 and headers["Allow"] == allowed and f"use {allowed}" in doc["error"]


def test_infer_passes_the_body_through_with_what_the_replica_needs() -> None:
    backend = FakeBackend()
    body = b'{"inputs":[]}' + b"\x00\x01\x02\x03"
    status, _, doc = call(backend, "POST", "/v2/models/iris/versions/3/infer", body,
                                {"Inference-Header-Content-Length": "13"}, query="debug=true")
    assert status == 200 and doc == {"outputs": []}
    [(model, target, sent)] = backend.infers
    assert model == "iris" and sent is body  # the bytes as they came: the daemon decodes nothing
    path, _, query = target.partition("?")
    assert path == hop.REPLICA_PATH
    assert hop.parse_query(query) == hop.ReplicaCall("iris", "3", 13, None, True)


def test_infer_answers_come_back_as_the_replica_framed_them() -> None:
    backend = FakeBackend()
    backend.answer = (200, {}, hop.frame(b'{"outputs":[1]}', [b"\x00" * 4]))
    status, headers, out = call(backend, "POST", "/v2/models/iris/infer", b"{}", {"content-encoding": "gzip"})
    assert status == 200 and out == b'{"outputs":[1]}\x00\x00\x00\x00'
    assert headers == {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "15"}
    assert hop.parse_query(backend.infers[0][1].partition("?")[2]).content_encoding == "gzip"
    backend.answer = (503, {"Retry-After": "5"}, b'{"error": "no replica is ready (API iris is creating)"}')
    status, headers, doc = call(backend, "POST", "/v2/models/iris/infer", b"{}")
    assert status == 503 and headers["Retry-After"] == "5" and "no replica is ready" in doc["error"]


@pytest.mark.parametrize(
    "path, headers, body, status, message",
    [
        ("/v2/models/nope/infer", {}, b"{}", 404, "unknown model 'nope'"),
        ("/v2/models/iris/versions/9/infer", {}, b"{}", 404, "model 'iris' has no version '9'"),
        ("/v2/models/iris/infer", {"Inference-Header-Content-Length": "x"}, b"{}", 400,
         "Inference-Header-Content-Length must be an integer, got 'x'"),
        ("/v2/models/iris/infer", {"inference-header-content-length": "50"}, b"{}", 400,
         "Inference-Header-Content-Length is 50; the body has 2 bytes"),
        ("/v2/models/iris/infer", {"Content-Encoding": "br"}, b"{}", 415, "Content-Encoding 'br' is not supported"),
        ("/v2/models/iris/infer", {}, b"", 400, "the request has no body"),
    ],
)
def test_infer_requests_refused_before_the_queue(path: str, headers: dict[str, str], body: bytes, status: int,
                                                 message: str) -> None:
    backend = FakeBackend()
    got, _, doc = call(backend, "POST", path, body, headers)
    assert got == status and message in doc["error"]
    assert backend.infers == []
