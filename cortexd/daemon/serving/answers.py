"""Answers that are not JSON, on their way from a replica to the client, and the statuses
for requests whose head is too large.

A predictor may return bytes (sent as application/octet-stream), a string (text/plain in the
Cortex versions that documented it), or a Starlette-style Response (its status, headers and
body). The replica writes such an answer's content type and headers on the hop
(cortexd/replica/bodies.py); everything else is JSON and keeps the hot path's fixed head.

On the daemon's side an answer whose head is not the JSON one becomes a `TypedPayload`: the
body bytes (so every layer between the upstream connection and the proxy passes it on
untouched, as any payload) carrying its content type and headers for the proxy's response.
JSON answers stay plain `bytes`: no parsing, no allocation beyond what they cost before.
"""

from __future__ import annotations

JSON = "application/json"
# Headers of the hop itself, never passed on to the client.
_HOP_HEADERS = frozenset({b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"host"})


class TypedPayload(bytes):
    """A replica's answer body that is not JSON, with the content type and headers it came
    with (those the client gets too)."""

    content_type: str
    headers: tuple[tuple[str, str], ...]


def typed_payload(body: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> TypedPayload:
    payload = TypedPayload(body)
    payload.content_type = content_type
    payload.headers = headers
    return payload


def answer_headers(head: bytes | bytearray) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(content type, other headers) of a replica's header block (status line first, without
    the final blank line). Content type is JSON when the head names none."""
    content_type = JSON
    extra: list[tuple[str, str]] = []
    for line in bytes(head).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower()
        if key in _HOP_HEADERS:
            continue
        text = value.strip().decode("latin-1")
        if key == b"content-type":
            content_type = text
        else:
            extra.append((name.strip().decode("latin-1"), text))
    return content_type, tuple(extra)


def payload_of(head: bytes | bytearray, body: bytes) -> bytes:
    """The payload handed on for an answer that did not take the JSON fast path: plain bytes
    when it is JSON without headers of its own, else a TypedPayload."""
    content_type, extra = answer_headers(head)
    if content_type == JSON and not extra:
        return body
    return typed_payload(body, content_type, extra)


def head_too_large(buffer: bytes | bytearray | None, limit: int) -> tuple[int, str]:
    """(status, message) for a request whose head passed `limit` bytes: 414 when the request
    line itself (the URL) did not end within it, else 431 (the headers are too large)."""
    if buffer is not None and b"\r\n" not in bytes(buffer[:limit]):
        return 414, f"the URL is too long: the request line passed the limit of {limit} bytes for the request head"
    return 431, f"the request headers are too large: together over the limit of {limit} bytes"
