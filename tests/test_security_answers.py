"""Honest answers and bounded model sources, as tables and over real sockets.

- predictions that are not JSON: NaN/Infinity, bytes, str, Response objects (replica/bodies.py),
  across the replica hop to the daemon (serving/answers.py, over a real Unix socket);
- 431/414 for oversized request heads;
- model zips within size/ratio/member limits (model_archives.py), redirects to http(s) only,
  and cache eviction (model_cache.py).
"""

from __future__ import annotations

import asyncio
import http.server
import io
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cortexd import model_archives, model_cache
from cortexd.daemon.serving.answers import TypedPayload, answer_headers, head_too_large, payload_of
from cortexd.daemon.serving.upstream import UpstreamConnection
from cortexd.model_archives import ArchiveLimits
from cortexd.models import ModelFetchError, fetch_model, unpack_local_zip
from cortexd.replica.bodies import PredictionError, render_prediction
from cortexd.replica.server import ReplicaProtocol
from tests.daemon_harness import http_server

OCTET = b"content-type: application/octet-stream\r\n"
TEXT = b"content-type: text/plain; charset=utf-8\r\n"


class FakeResponse:
    """What predictors return as starlette.responses.Response (Cortex v0.18 on)."""

    def __init__(self, content: bytes, status_code: int = 200, media_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.body = content
        self.status_code = status_code
        raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if media_type:
            raw.append((b"content-type", media_type.encode()))
        raw.append((b"content-length", str(len(content)).encode()))
        self.raw_headers = raw

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.raw_headers}


class Streaming:
    status_code = 200
    headers: dict[str, str] = {}


# ---------------------------------------------------------------- rendering predictions


@pytest.mark.parametrize(
    "result, nan_as_null, str_as_text, expected",
    [
        ({"a": [1, 2.5]}, False, False, (200, b'{"a":[1,2.5]}')),
        ("setosa", False, False, (200, b'"setosa"')),  # the seed dialect: a JSON string
        ("setosa", False, True, (200, b"setosa", TEXT)),  # v0.18 on: text
        (b"\xff\x00raw", False, False, (200, b"\xff\x00raw", OCTET)),  # never decoded
        (bytearray(b"\x01"), False, False, (200, b"\x01", OCTET)),
        (np.float32(1.5), False, False, (200, b"1.5")),
        ({"s": [1.0, float("nan")]}, True, False, (200, b'{"s":[1.0,null]}')),
        (np.array([np.inf, 1.0]), True, False, (200, b"[null,1.0]")),
        (FakeResponse(b"class 1", media_type="text/plain"), False, False,
         (200, b"class 1", b"content-type: text/plain\r\n")),
        (FakeResponse(b"{}", 201, "application/json", {"X-Model": "v2"}), False, False,
         (201, b"{}", b"content-type: application/json\r\nx-model: v2\r\n")),
        (FakeResponse(b"\x00", 200), False, False, (200, b"\x00", OCTET)),
    ],
)
def test_render_prediction(result: Any, nan_as_null: bool, str_as_text: bool, expected: tuple[Any, ...]) -> None:
    assert render_prediction(result, nan_as_null, str_as_text) == expected


@pytest.mark.parametrize(
    "result, message",
    [
        (float("nan"), "prediction is not valid JSON: NaN at prediction$"),
        ({"scores": [0.1, float("inf")]}, r'prediction is not valid JSON: Infinity at prediction\["scores"\]\[1\]$'),
        ([{"x": -math.inf}], r'-Infinity at prediction\[0\]\["x"\]$'),
        ({"p": np.array([[1.0, np.nan]], dtype=np.float32)}, r'NaN at prediction\["p"\]\[0\]\[1\]$'),
        (Streaming(), "without a body"),
        (FakeResponse(b"", 1000), "status 1000"),
        (FakeResponse(b"", 200, headers={"X-Evil": "a\r\nSet-Cookie: b"}), "invalid header 'x-evil'"),
    ],
)
def test_render_prediction_refuses(result: Any, message: str) -> None:
    with pytest.raises(PredictionError, match=message):
        render_prediction(result)


# ---------------------------------------------------------------- across the hop


def test_answer_headers_and_payloads() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-Model: v2\r\ncontent-length: 3"
    assert answer_headers(head) == ("text/plain", (("X-Model", "v2"),))
    plain = payload_of(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2", b"{}")
    assert type(plain) is bytes  # JSON errors stay plain bytes
    typed = payload_of(head, b"abc")
    assert isinstance(typed, TypedPayload) and typed == b"abc" and typed.content_type == "text/plain"


def test_non_json_answers_cross_the_replica_hop() -> None:
    answers = {
        "/json": (200, b'{"a":1}'),
        "/bytes": render_prediction(b"\xff\x00"),
        "/text": render_prediction("class 1", str_as_text=True),
        "/response": render_prediction(FakeResponse(b"made", 201, "text/csv", {"X-Model": "v2"})),
    }

    def handler(method: str, path: str, query: str, body: bytes) -> Any:
        return answers[path]

    async def scenario(sock: str) -> dict[str, tuple[int, bytes]]:
        connections: set[ReplicaProtocol] = set()
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: ReplicaProtocol(handler, connections), sock
        )
        conn = UpstreamConnection(sock)
        try:
            return {path: await conn.request(path, b"{}") for path in answers}
        finally:
            conn.close()
            server.close()

    with tempfile.TemporaryDirectory(prefix="cx-") as d:
        got = asyncio.run(asyncio.wait_for(scenario(os.path.join(d, "r.sock")), 10))
    assert got["/json"] == (200, b'{"a":1}') and type(got["/json"][1]) is bytes  # the fast path: plain bytes
    status, body = got["/bytes"]
    assert (status, body) == (200, b"\xff\x00") and isinstance(body, TypedPayload)
    assert body.content_type == "application/octet-stream"
    assert got["/text"][1].content_type == "text/plain; charset=utf-8"  # type: ignore[attr-defined]
    status, body = got["/response"]
    assert status == 201 and body == b"made" and body.content_type == "text/csv"  # type: ignore[attr-defined]
    assert body.headers == (("x-model", "v2"),)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "buffer, status",
    [
        (b"GET /" + b"a" * 9000, 414),
        (b"GET /a HTTP/1.1\r\nX-Big: " + b"a" * 9000, 431),
        (None, 431),
    ],
)
def test_head_too_large(buffer: bytes | None, status: int) -> None:
    got, message = head_too_large(buffer, 8192)
    assert got == status and "8192 bytes" in message


# ---------------------------------------------------------------- archive limits

GIB = 1 << 30
MIB = 1 << 20


@pytest.mark.parametrize(
    "archive, unpacked, members, limits, problem",
    [
        (100 * MIB, 120 * MIB, 10, ArchiveLimits(), None),
        (1 * MIB, 1100 * MIB, 1, ArchiveLimits(), "1,100 times its size"),  # the bomb
        (1 * MIB, 1100 * MIB, 1, ArchiveLimits(max_ratio=2000), None),  # overridden
        (10 * 1024, 50 * MIB, 1, ArchiveLimits(), None),  # below the ratio floor: harmless
        (10 * GIB, 20 * GIB, 1, ArchiveLimits(), "more than the limit of 16.0 GiB"),
        (10 * GIB, 20 * GIB, 1, ArchiveLimits(max_unpacked_bytes=32 * GIB), None),
        (1 * MIB, 2 * MIB, 100_001, ArchiveLimits(), "100,001 files and folders"),
    ],
)
def test_limit_problem(archive: int, unpacked: int, members: int, limits: ArchiveLimits, problem: str | None) -> None:
    got = model_archives.limit_problem(archive, unpacked, members, limits)
    assert (got is None) if problem is None else (got is not None and problem in got)


def bomb(path: Any, unpacked: int) -> int:
    """A zip holding `unpacked` zero bytes, written without holding them in memory."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("weights.bin", "w", force_zip64=True) as f:
        chunk = bytes(MIB)
        for _ in range(unpacked // MIB):
            f.write(chunk)
    return os.path.getsize(path)


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path: Any) -> None:
    archive = tmp_path / "model.zip"
    size = bomb(archive, 80 * MIB)
    with pytest.raises(ModelFetchError) as info:
        unpack_local_zip(str(archive))
    message = str(info.value)
    assert "times its size" in message and "80.0 MiB" in message and "--max-model-unpack-ratio" in message
    assert sorted(os.listdir(tmp_path)) == ["model.zip"]  # nothing unpacked, nothing left
    assert size < MIB
    folder = unpack_local_zip(str(archive), ArchiveLimits(max_ratio=10_000))  # the operator's override
    assert os.path.getsize(os.path.join(folder, "weights.bin")) == 80 * MIB


def test_limits_reach_replicas_through_the_environment() -> None:
    limits = ArchiveLimits(max_unpacked_bytes=5, max_ratio=3.5)
    assert ArchiveLimits.from_env(limits.env()) == ArchiveLimits(5, 3.5)
    assert ArchiveLimits.from_env({}) == ArchiveLimits()
    assert ArchiveLimits.from_env({model_archives.ENV_MAX_RATIO: "lots"}) == ArchiveLimits()


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "C:/evil"])
def test_unsafe_member(name: str) -> None:
    assert model_archives.unsafe_member(name)


def test_a_lying_central_directory_cannot_write_more_than_it_states(tmp_path: Any) -> None:
    """The limits trust the sizes a zip states; zipfile never writes more than them."""
    archive = tmp_path / "liar.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("w.bin", bytes(4 * MIB))
    data = bytearray(buf.getvalue())
    # Claim 1 KiB unpacked in both headers (little-endian size at offset 22 local, 24 central).
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 22: local + 26] = (1024).to_bytes(4, "little")
    data[central + 24: central + 28] = (1024).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ModelFetchError):
        unpack_local_zip(str(archive))
    leftovers = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert all(os.path.getsize(p) <= 1024 for p in leftovers if not p.endswith("liar.zip"))


# ---------------------------------------------------------------- redirects


class Redirector(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/model.onnx":
            body = b"onnx bytes"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(302)
        targets = {"/to-ftp": "ftp://127.0.0.1/model.onnx", "/to-file": "file:///etc/passwd"}
        target = targets.get(self.path, "/model.onnx")
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture()
def redirector() -> Iterator[str]:
    with http_server(Redirector) as url:
        yield url


@pytest.mark.parametrize("path", ["/to-ftp", "/to-file"])
def test_redirects_leave_http_never(redirector: str, tmp_path: Any, path: str) -> None:
    with pytest.raises(ModelFetchError, match=r"only redirects to http:// and https:// are followed|is not allowed"):
        fetch_model(redirector + path, "/p", str(tmp_path / "cache"), lambda line: None)


def test_redirects_within_http_are_followed(redirector: str, tmp_path: Any) -> None:
    got = fetch_model(redirector + "/to-http", "/p", str(tmp_path / "cache"), lambda line: None)
    assert open(got, "rb").read() == b"onnx bytes"


# ---------------------------------------------------------------- cache eviction


E = model_cache.CacheEntry


@pytest.mark.parametrize(
    "entries, kept, max_bytes, doomed",
    [
        ([E("a", 10, 1), E("b", 10, 2)], set(), 100, []),
        ([E("a", 10, 1), E("b", 10, 2), E("c", 10, 3)], set(), 20, ["a"]),
        ([E("a", 10, 1), E("b", 10, 2), E("c", 10, 3)], {"a"}, 20, ["b"]),  # kept is skipped
        ([E("a", 50, 1), E("b", 10, 2)], {"a"}, 20, ["b"]),  # kept alone exceed it: all else goes
        ([E("a", 10, 3), E("b", 10, 1), E("c", 10, 2)], set(), 0, ["b", "c", "a"]),
    ],
)
def test_plan_eviction(entries: list[Any], kept: set[str], max_bytes: int, doomed: list[str]) -> None:
    assert model_cache.plan_eviction(entries, kept, max_bytes) == doomed


def test_evict_keeps_models_in_use_and_removes_the_oldest(tmp_path: Any) -> None:
    cache = tmp_path / "models"
    now = time.time()
    for i, name in enumerate(["old", "used", "recent"]):
        entry = cache / "http" / name
        (entry / "model").mkdir(parents=True)
        (entry / "model" / "w.bin").write_bytes(os.urandom(64 * 1024))
        os.utime(entry, (now - 1000 + i, now - 1000 + i))
    (cache / "http" / ".partial-x").mkdir()  # a fetch in progress: never touched
    removed = model_cache.evict(str(cache), [str(cache / "http" / "used" / "model")], 150 * 1024)
    assert removed == [str(cache / "http" / "old")]
    assert sorted(os.listdir(cache / "http")) == [".partial-x", "recent", "used"]
    removed = model_cache.evict(str(cache), [str(cache / "http" / "used" / "model")], 0)
    assert sorted(os.listdir(cache / "http")) == [".partial-x", "used"]
