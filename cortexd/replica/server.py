"""The replica's end of the hop: a minimal HTTP/1.1 server on its Unix socket.

The only client is the daemon's upstream connection (cortexd/daemon/serving/upstream.py), which
sends requests with a Content-Length body on one persistent connection. That narrow
contract lets a request cost one search for the end of the header block, a few slices and
one write. Sanic, which served here before, spent more per request on parsing, request and
response objects than a small model's prediction takes (bench/README.md has the figures).
Anything outside the contract is answered 400 and the connection closes.

The handler runs synchronously inside `data_received` when the replica serves one request
at a time (threads_per_process 1, the default): handing the prediction to a task or a thread
would only add latency. Requests that arrive back to back on the connection are answered in
order. With threads_per_process > 1 the daemon opens that many connections, and each
connection hands its request to the replica's thread pool, stops reading until the answer
is written (one request per connection at a time), and writes it when it is ready.

Request headers are parsed only for predictors that take them (`want_headers`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import Executor
from http import HTTPStatus
from typing import cast

from cortexd.protocol import header_value

# (method, path, query string, body[, headers]) -> (status, JSON body), or (status, body,
# header lines) for an answer that is not JSON: its "name: value\r\n" lines, content-type
# first (cortexd/replica/bodies.py renders them; cortexd/daemon/serving/answers.py reads them).
# Request headers, a list of (name, value), are passed only to a protocol made with want_headers.
Handler = Callable[..., "tuple[int, bytes] | tuple[int, bytes, bytes]"]

MAX_HEADER_BYTES = 64 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


_OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "


def response_head(status: int, length: int, close: bool = False, headers: bytes | None = None) -> bytes:
    if headers is None:
        if status == 200 and not close:  # the usual answer, without formatting the whole head
            return _OK_HEAD + str(length).encode() + b"\r\n\r\n"
        headers = b"content-type: application/json\r\n"
    line = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode("latin-1")
    end = b"\r\nconnection: close\r\n\r\n" if close else b"\r\n\r\n"
    return line + headers + b"content-length: " + str(length).encode() + end


class RequestError(Exception):
    """The bytes on the connection are not a request this server accepts."""


def parse_head(head: bytes | bytearray) -> tuple[str, str, str, int, bool]:
    """(method, path, query, content length, close) of a header block without its final CRLFCRLF."""
    line_end = head.find(b"\r\n")
    request_line = head if line_end < 0 else head[:line_end]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise RequestError("malformed request line")
    method = parts[0].decode("latin-1")
    target = parts[1].decode("latin-1")
    path, _, query = target.partition("?")
    length = 0
    close = parts[2] == b"HTTP/1.0"
    if line_end >= 0:
        lower = head[line_end:].lower()
        value = header_value(lower, b"content-length")
        if value is not None:
            try:
                length = int(value)
            except ValueError:
                raise RequestError("malformed content-length") from None
            if length < 0:
                raise RequestError("malformed content-length")
        if header_value(lower, b"transfer-encoding") is not None:
            raise RequestError("transfer-encoding is not supported; send a content-length")
        value = header_value(lower, b"connection")
        if value is not None:
            close = value == b"close" or (close and value != b"keep-alive")
    return method, path, query, length, close


def parse_headers(head: bytes) -> list[tuple[str, str]]:
    """Every header line of a header block (without its request line), in order."""
    lines = head.split(b"\r\n")[1:]
    out: list[tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    return out


def _split(answer: tuple[int, bytes] | tuple[int, bytes, bytes]) -> tuple[int, bytes, bytes | None]:
    """(status, body, header lines or None) of a handler's answer."""
    if len(answer) == 2:
        return answer[0], answer[1], None
    return answer


def _internal_error(exc: BaseException) -> bytes:
    message = f"the replica failed to handle the request: {type(exc).__name__}: {exc}"
    return json.dumps({"error": message}).encode()


class ReplicaProtocol(asyncio.Protocol):
    """One connection from the daemon."""

    def __init__(
        self, handler: Handler, connections: set[ReplicaProtocol],
        executor: Executor | None = None, want_headers: bool = False,
    ) -> None:
        self._handler = handler
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()  # bytes received past the last complete request
        # Set once a header block is parsed, until its body is complete.
        self._pending: tuple[str, str, str, int, bool, int] | None = None
        self._executor = executor        # None: run the handler inline (one request at a time)
        self._want_headers = want_headers
        self._headers: list[tuple[str, str]] = []
        self._busy = False               # a request of this connection is in the thread pool

    @property
    def idle(self) -> bool:
        return not self._buf and self._pending is None and not self._busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream connection's transport
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    # Flow control: the daemon always reads its answers, but if it stops, stop reading too.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buf: bytes | bytearray
        if self._busy:   # the peer sent more while its request runs: keep it for later
            self._buf += data
            return
        if self._buf:
            self._buf += data  # in place: a large body arriving in chunks is not copied per chunk
            buf = self._buf
        else:
            buf = data  # the usual case, a whole request in one read: no copy
        handler = self._handler
        while self._transport is not None:
            pending = self._pending
            if pending is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        self._reject("header block too large")
                        return
                    break
                try:
                    method, path, query, length, close = parse_head(buf[:end])
                except RequestError as exc:
                    self._reject(str(exc))
                    return
                if self._want_headers:
                    self._headers = parse_headers(bytes(buf[:end]))
                pending = self._pending = (method, path, query, length, close, end + 4)
            method, path, query, length, close, start = pending
            if len(buf) < start + length:
                break
            body = bytes(buf[start : start + length])
            buf = buf[start + length :]
            self._pending = None
            args: tuple[object, ...] = (method, path, query, body)
            if self._want_headers:
                args += (self._headers,)
            if self._executor is not None:
                self._buf = buf if isinstance(buf, bytearray) else bytearray(buf)
                self._run_in_pool(args, close)
                return
            try:
                status, payload, headers = _split(handler(*args))
            except BaseException as exc:  # the barrier: an exception here would drop the connection
                status, payload, headers = 500, _internal_error(exc), None
            transport = self._transport
            if transport is None:  # the handler's work outlived the connection
                return
            transport.write(response_head(status, len(payload), close, headers) + payload)
            if close:
                transport.close()
                self._transport = None
                return
        self._buf = buf if isinstance(buf, bytearray) else bytearray(buf)

    def _run_in_pool(self, args: tuple[object, ...], close: bool) -> None:
        """Hand one request to the thread pool; answer it from the loop when it is done."""
        assert self._executor is not None and self._transport is not None
        self._busy = True
        self._transport.pause_reading()
        handler = self._handler

        def call() -> tuple[int, bytes, bytes | None]:
            try:
                return _split(handler(*args))
            except BaseException as exc:  # the barrier, as inline
                return 500, _internal_error(exc), None

        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        future.add_done_callback(lambda done: self._answer(done, close))

    def _answer(self, done: asyncio.Future[tuple[int, bytes, bytes | None]], close: bool) -> None:
        self._busy = False
        transport = self._transport
        if transport is None:   # the connection went away while the request ran
            return
        if done.cancelled():
            status, payload, headers = 500, _internal_error(RuntimeError("cancelled")), None
        else:
            status, payload, headers = done.result()
        transport.write(response_head(status, len(payload), close, headers) + payload)
        if close:
            transport.close()
            self._transport = None
            return
        transport.resume_reading()
        if self._buf:   # requests that arrived meanwhile
            self.data_received(b"")

    def close_if_idle(self) -> None:
        if self.idle and self._transport is not None:
            self._transport.close()

    def _reject(self, reason: str) -> None:
        body = f'{{"error": "bad request: {reason}"}}'.encode()
        if self._transport is not None:
            self._transport.write(response_head(400, len(body), close=True) + body)
            self._transport.close()
        self._transport = None
        self._buf = bytearray()
        self._pending = None
