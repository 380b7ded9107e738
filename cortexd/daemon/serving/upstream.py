"""The daemon's end of the hop to a replica: one persistent HTTP/1.1 connection per replica.

The peer is always our own replica (cortexd/replica/server.py on a Unix socket), which
answers every request with a Content-Length body, in order, one at a time. That narrow
contract lets the hop be an asyncio Protocol: `send` is one write, and the answer is
parsed in `data_received` and handed to the owner's callback there, in the same loop
callback that read it. No task, stream reader or future is made per request: measured in
bench/, those cost more per request than the replica's own work for small models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from cortexd import protocol
from cortexd.daemon.serving.answers import payload_of

MAX_HEADER_BYTES = 64 * 1024

ResponseCallback = Callable[[int, bytes], None]
FailureCallback = Callable[["UpstreamError"], None]


class UpstreamError(Exception):
    """The replica could not be reached or hung up; `sent` says whether it may have run the request."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


# The head of the usual answer (cortexd/replica/server.py): JSON, status 200. Any other head
# is read for its content type and headers (answers.payload_of).
_JSON_OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "

_HEAD_AFTER_TARGET = b" HTTP/1.1\r\nhost: replica\r\ncontent-type: application/json\r\ncontent-length: "


def request_head(target: str, length: int, headers: bytes = b"") -> bytes:
    """The head of a request to a replica; `headers`: the client's own header lines (for
    predictors that take them), which then replace the hop's content-type."""
    if headers:
        return (b"POST " + target.encode("latin-1") + b" HTTP/1.1\r\nhost: replica\r\ncontent-length: "
                + str(length).encode() + b"\r\n" + headers + b"\r\n")
    return b"POST " + target.encode("latin-1") + _HEAD_AFTER_TARGET + str(length).encode() + b"\r\n\r\n"


def content_length(header_block: bytes | bytearray) -> int:
    value = protocol.header_value(header_block.lower(), b"content-length")
    return int(value) if value is not None else 0


class UpstreamConnection:
    """One persistent connection to one replica, carrying one request at a time.

    `send(target, body)` starts a request; exactly one of `on_response(status, payload)` or
    `on_failure(error)` follows, from the event loop (never from inside `send`). The owner
    (the API's queue) sets both callbacks before the first `send`. The connection is opened
    on the first request and again after the replica closed it; `close()` is final.
    """

    __slots__ = ("path", "on_response", "on_failure", "_wire", "_busy", "_closed", "_connecting")

    def __init__(self, path: str) -> None:
        self.path = path
        self.on_response: ResponseCallback = _unbound_response
        self.on_failure: FailureCallback = _unbound_failure
        self._wire: _Wire | None = None  # the open connection, if any
        self._busy = False
        self._closed = False
        self._connecting: asyncio.Future[None] | None = None  # held: the loop keeps tasks weakly

    def send(self, target: str, body: bytes, headers: bytes = b"") -> None:
        if self._busy:
            raise RuntimeError("UpstreamConnection.send while a request is outstanding")
        self._busy = True
        wire = self._wire
        if wire is None or wire.transport.is_closing():
            self._connecting = asyncio.ensure_future(self._connect_and_send(target, body, headers))
            return
        wire.write(target, body, headers)

    def close(self) -> None:
        """Close for good; a request outstanding fails (sent=True) once the close completes."""
        self._closed = True
        if self._wire is not None:
            self._wire.transport.close()

    async def request(self, target: str, body: bytes) -> tuple[int, bytes]:
        """`send` as a coroutine (for tests and one-off callers); sets the callbacks itself."""
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def ok(status: int, payload: bytes) -> None:
            if not fut.done():
                fut.set_result((status, payload))

        def failed(exc: UpstreamError) -> None:
            if not fut.done():
                fut.set_exception(exc)

        self.on_response, self.on_failure = ok, failed
        self.send(target, body)
        return await fut

    async def _connect_and_send(self, target: str, body: bytes, headers: bytes = b"") -> None:
        try:
            await self._connect_and_write(target, body, headers)
        finally:
            if self._connecting is asyncio.current_task():
                self._connecting = None

    async def _connect_and_write(self, target: str, body: bytes, headers: bytes = b"") -> None:
        old, self._wire = self._wire, None
        if old is not None:
            old.transport.abort()
        if self._closed:
            self._fail(UpstreamError("the connection to the replica was closed", sent=False))
            return
        try:
            _, wire = await asyncio.get_running_loop().create_unix_connection(lambda: _Wire(self), self.path)
        except OSError as exc:
            self._fail(UpstreamError(f"cannot connect to replica: {exc}", sent=False))
            return
        if self._closed or wire.transport.is_closing():
            wire.transport.close()
            self._fail(UpstreamError("the connection to the replica was closed", sent=False))
            return
        self._wire = wire
        wire.write(target, body, headers)

    def _fail(self, error: UpstreamError) -> None:
        if self._busy:
            self._busy = False
            self.on_failure(error)

    def _answered(self, status: int, payload: bytes) -> None:
        self._busy = False
        self.on_response(status, payload)

    def _lost(self, wire: _Wire, error: UpstreamError) -> None:
        if self._wire is wire:
            self._wire = None
            self._fail(error)


class _Wire(asyncio.Protocol):
    """One open socket of an UpstreamConnection: parses answers, reports them to the owner."""

    def __init__(self, owner: UpstreamConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self._buf = bytearray()
        self._body_at = -1  # offset of the body in _buf once the header block is parsed
        self._status = 0
        self._length = 0
        self._head: bytes | None = None  # the header block of an answer off the JSON fast path

    def write(self, target: str, body: bytes, headers: bytes = b"") -> None:
        head = request_head(target, len(body), headers)
        # One write for small bodies (one syscall, one packet); large ones are not copied.
        if len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream connection's transport

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc else ""
        self.owner._lost(self, UpstreamError(f"replica hung up during the request{detail}", sent=True))

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if not owner._busy or owner._wire is not self:
            # The replica never speaks unasked: the stream is out of step; start afresh.
            self._protocol_error("bytes without a request")
            return
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data  # the usual case: the whole answer in one read, no copy
        if self._body_at < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    self._protocol_error("header block too large")
                else:
                    self._keep(buf)
                return
            try:
                self._status = int(buf[9:12])
                self._length = content_length(buf[:end])
            except ValueError:
                self._protocol_error("malformed answer")
                return
            self._body_at = end + 4
            self._head = None if buf.startswith(_JSON_OK_HEAD) else bytes(buf[:end])
        start, length = self._body_at, self._length
        if len(buf) < start + length:
            self._keep(buf)
            return
        if len(buf) > start + length:
            self._protocol_error("more bytes than the answer's content-length")
            return
        payload = bytes(buf[start:])
        if self._head is not None:
            payload = payload_of(self._head, payload)  # bytes, or a TypedPayload with its headers
        self._buf = bytearray()
        self._body_at = -1
        owner._answered(self._status, payload)

    def _keep(self, buf: bytes | bytearray) -> None:
        if buf is not self._buf:
            self._buf = bytearray(buf)

    def _protocol_error(self, reason: str) -> None:
        self.transport.abort()
        self.owner._lost(self, UpstreamError(f"replica answered out of protocol: {reason}", sent=True))


def _unbound_response(status: int, payload: bytes) -> None:
    raise RuntimeError("UpstreamConnection.on_response is not set")


def _unbound_failure(error: UpstreamError) -> None:
    raise RuntimeError("UpstreamConnection.on_failure is not set")
