"""A minimal HTTP/1.1 keep-alive client for the hop from the proxy to a replica.

The peer is always our own replica (Sanic on a Unix socket), which answers every request
with a Content-Length body. That narrow contract lets the hop be a few reads and one write
on a persistent connection: measured in bench/, a general client (aiohttp) cost more per
request than the replica's own work for small models.
"""

from __future__ import annotations

import asyncio


class UpstreamError(Exception):
    """The replica could not be reached or hung up; `sent` says whether it may have run the request."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class UpstreamConnection:
    """One persistent connection to one replica; used by one request at a time."""

    __slots__ = ("path", "_reader", "_writer")

    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to replica: {exc}", sent=False) from exc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        reader = self._reader
        if reader is None or reader.at_eof() or self._writer is None or self._writer.is_closing():
            self.close()
            await self._connect()
            reader = self._reader
        assert reader is not None and self._writer is not None
        head = (
            f"{method} {target} HTTP/1.1\r\nhost: replica\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        try:
            self._writer.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                self._writer.write(body)
        except OSError as exc:  # nothing reached the replica
            self.close()
            raise UpstreamError(f"replica connection lost: {exc}", sent=False) from exc
        try:
            header_block = await reader.readuntil(b"\r\n\r\n")
            status = int(header_block[9:12])
            length = _content_length(header_block)
            payload = await reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            self.close()
            raise UpstreamError(f"replica hung up during the request: {type(exc).__name__}", sent=True) from exc
        return status, payload


def _content_length(header_block: bytes) -> int:
    lower = header_block.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = lower.find(b"\r\n", at + 2)
    return int(lower[at + 17 : end])
