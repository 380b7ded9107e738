"""Both ends of the hop from the daemon to a replica, over real Unix sockets.

cortexd/daemon/serving/upstream.py (the daemon's persistent connection) against
cortexd/replica/server.py (the replica's HTTP/1.1 server), and each against a raw peer
that misbehaves on purpose. Everything runs in-process on one event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cortexd.daemon.serving.upstream import UpstreamConnection, UpstreamError, content_length, request_head
from cortexd.replica.server import ReplicaProtocol, RequestError, parse_head, response_head


def run(test: Callable[[str], Awaitable[Any]]) -> Any:
    # A short folder: AF_UNIX paths are limited to 108 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="cx-") as d:
        return asyncio.run(asyncio.wait_for(test(os.path.join(d, "r.sock")), 10))


def echo_handler(calls: list[tuple[str, str, str, bytes]]) -> Callable[[str, str, str, bytes], tuple[int, bytes]]:
    def handle(method: str, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        calls.append((method, path, query, body))
        if path != "/predict":
            return 404, b'{"error": "nope"}'
        return 200, json.dumps({"len": len(body), "query": query}).encode()

    return handle


async def replica(path: str, calls: list[Any]) -> tuple[asyncio.AbstractServer, set[ReplicaProtocol]]:
    connections: set[ReplicaProtocol] = set()
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: ReplicaProtocol(echo_handler(calls), connections), path)
    return server, connections


# -- the replica's parser ------------------------------------------------------------------


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"POST /predict HTTP/1.1\r\ncontent-length: 12", ("POST", "/predict", "", 12, False)),
        (b"POST /predict?debug=true HTTP/1.1\r\nContent-Length: 3\r\nHost: x",
         ("POST", "/predict", "debug=true", 3, False)),
        (b"GET /info HTTP/1.1", ("GET", "/info", "", 0, False)),
        (b"GET /info HTTP/1.1\r\nConnection: close", ("GET", "/info", "", 0, True)),
        (b"GET /info HTTP/1.0", ("GET", "/info", "", 0, True)),
        (b"GET /info HTTP/1.0\r\nconnection: keep-alive", ("GET", "/info", "", 0, False)),
    ],
)
def test_parse_head(head: bytes, expected: tuple[Any, ...]) -> None:
    assert parse_head(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"POST /predict",                                              # no version
        b"POST /predict SPDY/3\r\ncontent-length: 1",                  # not HTTP/1.x
        b"POST /predict HTTP/1.1\r\ncontent-length: ten",              # not a number
        b"POST /predict HTTP/1.1\r\ncontent-length: -1",
        b"POST /predict HTTP/1.1\r\ntransfer-encoding: chunked",       # outside the contract
    ],
)
def test_parse_head_refuses(head: bytes) -> None:
    with pytest.raises(RequestError):
        parse_head(head)


def test_heads_carry_status_and_length() -> None:
    assert response_head(200, 5) == b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n"
    assert b"connection: close\r\n" in response_head(400, 0, close=True)
    head = request_head("/predict?debug=true", 7)
    assert head.startswith(b"POST /predict?debug=true HTTP/1.1\r\n") and content_length(head[:-4]) == 7


# -- the two ends together -----------------------------------------------------------------


def test_requests_share_one_connection_and_keep_their_order() -> None:
    async def body(path: str) -> None:
        calls: list[Any] = []
        server, connections = await replica(path, calls)
        conn = UpstreamConnection(path)
        for i in range(5):
            status, payload = await conn.request(f"/predict?n={i}", b"x" * i)
            assert (status, json.loads(payload)) == (200, {"len": i, "query": f"n={i}"})
        assert len(connections) == 1 and [c[3] for c in calls] == [b"x" * i for i in range(5)]
        conn.close()
        server.close()

    run(body)


def test_a_large_body_and_answer_cross_in_many_reads() -> None:
    async def body(path: str) -> None:
        big = b"[" + b"1," * (1 << 20) + b"1]"  # ~2 MiB
        connections: set[ReplicaProtocol] = set()
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: ReplicaProtocol(lambda m, p, q, b: (200, b), connections), path)
        conn = UpstreamConnection(path)
        status, payload = await conn.request("/predict", big)
        assert status == 200 and payload == big
        conn.close()
        server.close()

    run(body)


def test_answer_split_into_single_bytes_is_reassembled() -> None:
    async def body(path: str) -> None:
        answer = response_head(200, 12) + b'{"ok": true}'

        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            for i in range(len(answer)):
                writer.write(answer[i : i + 1])
                await writer.drain()
            await reader.read()  # until the client closes

        server = await asyncio.start_unix_server(trickle, path)
        conn = UpstreamConnection(path)
        assert await conn.request("/predict", b"") == (200, b'{"ok": true}')
        conn.close()
        server.close()

    run(body)


def test_replica_gone_before_the_request_is_unsent_error() -> None:
    async def body(path: str) -> None:
        conn = UpstreamConnection(path)  # nothing listens there
        with pytest.raises(UpstreamError) as info:
            await conn.request("/predict", b"{}")
        assert info.value.sent is False

    run(body)


def test_replica_hanging_up_during_the_request_is_sent_error() -> None:
    async def body(path: str) -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_unix_server(hang_up, path)
        conn = UpstreamConnection(path)
        with pytest.raises(UpstreamError) as info:
            await conn.request("/predict", b"")
        assert info.value.sent is True
        server.close()

    run(body)


def test_idle_connection_closed_by_the_replica_is_reopened_for_the_next_request() -> None:
    async def body(path: str) -> None:
        calls: list[Any] = []
        server, connections = await replica(path, calls)
        conn = UpstreamConnection(path)
        assert (await conn.request("/predict", b"1"))[0] == 200
        for c in list(connections):
            c.close_if_idle()
        # Wait for the client to notice, then send again: a fresh connection, no error.
        for _ in range(200):
            if conn._wire is None:
                break
            await asyncio.sleep(0.005)
        assert (await conn.request("/predict", b"2"))[0] == 200
        assert len(calls) == 2
        conn.close()
        server.close()

    run(body)


def test_bytes_beyond_the_answer_are_a_protocol_error() -> None:
    async def body(path: str) -> None:
        async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response_head(200, 2) + b"{}" + b"junk")
            await reader.read()

        server = await asyncio.start_unix_server(chatty, path)
        conn = UpstreamConnection(path)
        with pytest.raises(UpstreamError) as info:
            await conn.request("/predict", b"")
        assert info.value.sent is True and "protocol" in str(info.value)
        server.close()

    run(body)


def test_close_fails_the_request_outstanding() -> None:
    async def body(path: str) -> None:
        got_request = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            got_request.set()
            await reader.read()

        server = await asyncio.start_unix_server(silent, path)
        conn = UpstreamConnection(path)
        pending = asyncio.ensure_future(conn.request("/predict", b""))
        await got_request.wait()
        conn.close()
        with pytest.raises(UpstreamError) as info:
            await pending
        assert info.value.sent is True
        server.close()

    run(body)


def test_replica_answers_garbage_with_400_and_closes() -> None:
    async def body(path: str) -> None:
        calls: list[Any] = []
        server, _ = await replica(path, calls)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST /predict HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n")
        data = await reader.read()  # until the replica closes
        assert data.startswith(b"HTTP/1.1 400 ") and b"connection: close" in data and calls == []
        writer.close()
        server.close()

    run(body)


def test_replica_answers_pipelined_requests_in_order() -> None:
    async def body(path: str) -> None:
        calls: list[Any] = []
        server, _ = await replica(path, calls)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(request_head("/predict?a", 1) + b"1" + request_head("/nowhere", 0) + request_head("/predict?c", 2))
        writer.write(b"33")  # the last body arrives in a later read
        answers = []
        for _ in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            answers.append((int(head[9:12]), await reader.readexactly(content_length(head[:-4]))))
        assert [a[0] for a in answers] == [200, 404, 200]
        assert json.loads(answers[2][1]) == {"len": 2, "query": "c"}
        writer.close()
        server.close()

    run(body)


# -- the replica's request handler -----------------------------------------------------------


class _Echo:
    def predict(self, payload: Any) -> Any:
        import numpy as np

        if payload == "boom":
            raise RuntimeError("exploded")
        return {"got": payload, "arr": np.arange(2, dtype=np.int64)}

    def describe(self) -> dict[str, Any]:
        return {"inputs": []}


@pytest.mark.parametrize(
    "body",
    [b"[0.1, 1e-7, 3.141592653589793, -2.5e300, 123456789012345678901234567890]",
     b'{"a": "\\u00e9\\ud83d\\ude00", "b": [true, false, null]}',
     '{"é": 1}'.encode("utf-16")],  # json's encoding detection still applies
)
def test_handler_parses_bodies_as_json_does(body: bytes) -> None:
    from cortexd.replica.bodies import parse_body
    from cortexd.replica.main import build_handler

    assert parse_body(body) == json.loads(body)
    status, payload = build_handler(_Echo())("POST", "/predict", "", body)  # type: ignore[arg-type]
    assert status == 200 and json.loads(payload) == {"got": json.loads(body), "arr": [0, 1]}


@pytest.mark.parametrize(
    "method, path, body, status, says",
    [
        ("POST", "/predict", b"{not json", 400, "not valid JSON"),
        ("POST", "/predict", b"", 400, "not valid JSON"),
        ("POST", "/predict", b'"boom"', 500, "prediction failed: RuntimeError: exploded"),
        ("GET", "/predict", b"", 404, "not served"),
        ("POST", "/elsewhere", b"{}", 404, "not served"),
    ],
)
def test_handler_errors(method: str, path: str, body: bytes, status: int, says: str) -> None:
    from cortexd.replica.main import build_handler

    got, payload = build_handler(_Echo())(method, path, "", body)  # type: ignore[arg-type]
    assert got == status and says in json.loads(payload)["error"]


def test_predictions_with_numpy_values_and_keys_become_plain_json() -> None:
    import numpy as np

    from cortexd.replica.bodies import encode_prediction

    assert encode_prediction({"a": [1, 2.5, "x"], "b": None}) == b'{"a":[1,2.5,"x"],"b":null}'
    got = json.loads(encode_prediction({"scores": np.array([[0.5, 1.5]], dtype=np.float32), "label": np.int64(2),
                                        np.int64(7): "numpy key", "tags": {"a"}}))
    assert got == {"scores": [[0.5, 1.5]], "label": 2, "7": "numpy key", "tags": ["a"]}
    with pytest.raises(TypeError):
        encode_prediction({"obj": object()})
