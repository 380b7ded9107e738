"""The V2 REST routes on the host port, over a V2Backend.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200, or 400 with an empty body (the protocol's 4xx)
    GET  /v2/models/<m>[/versions/<v>]         model metadata
    GET  /v2/models/<m>[/versions/<v>]/ready   200, or 400 when not ready
    POST /v2/models/<m>[/versions/<v>]/infer   inference, JSON or binary

An unknown model, or a version other than the deployed one, is 404; a wrong method 405;
errors are `{"error": "..."}`. `handle` is the whole router: the daemon calls it for any
path `is_v2_path` accepts and writes out what it returns. Health and metadata are answered
from the backend at once; infer validates only what the daemon can check cheaply (the header
length, the content encoding) and passes the body through to a replica untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from cortexd.v2 import metadata
from cortexd.v2.backend import ModelEntry, V2Backend
from cortexd.v2.hop import (
    HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    ReplicaCall,
    read_replica_answer,
    replica_target,
)

Response = tuple[int, dict[str, str], bytes]

CONTENT_ENCODINGS = ("gzip", "deflate")
_JSON_HEADERS = {"Content-Type": JSON_CONTENT_TYPE}


def is_v2_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return status, {**_JSON_HEADERS, **(headers or {})}, json.dumps(obj).encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


def _flag(ok: bool) -> Response:
    # the protocol: 200 for true, a 4xx for false, the body empty either way
    return (200 if ok else 400), {}, b""


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header by name, whatever the case of the mapping's keys."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lower = name.lower()
        for key, v in headers.items():
            if key.lower() == lower:
                return v
    return value


def _method_not_allowed(method: str, allowed: str, path: str) -> Response:
    return _error(405, f"{method} is not allowed on {path}; use {allowed}", {"Allow": allowed})


def _unknown_model(name: str, backend: V2Backend) -> Response:
    names = sorted(backend.models())
    listed = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "") if names else "none"
    return _error(404, f"unknown model {name!r}; the models served are: {listed}")


def _lookup(backend: V2Backend, name: str, version: str | None) -> ModelEntry | Response:
    entry = backend.model(name)
    if entry is None:
        return _unknown_model(name, backend)
    if version is not None and version != entry.version:
        return _error(404, f"model {name!r} has no version {version!r}; the version served is {entry.version!r}")
    return entry


async def handle(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    backend: V2Backend,
    query: str = "",
) -> Response:
    """Answer one request on a V2 path: (status, headers, body)."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if not parts or parts[0] != "v2":
        return _error(404, f"no V2 route at {path}")
    rest = parts[1:]
    if not rest:
        if method != "GET":
            return _method_not_allowed(method, "GET", path)
        return _json(200, metadata.server_metadata())
    if rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
        if method != "GET":
            return _method_not_allowed(method, "GET", path)
        return _flag(backend.live() if rest[1] == "live" else backend.ready())
    if rest[0] != "models" or len(rest) < 2 or not rest[1]:
        return _error(404, f"no V2 route at {path}")
    name, tail, version = rest[1], rest[2:], None
    if tail[:1] == ["versions"]:
        if len(tail) < 2 or not tail[1]:
            return _error(404, f"no V2 route at {path}")
        version, tail = tail[1], tail[2:]
    if not tail:
        if method != "GET":
            return _method_not_allowed(method, "GET", path)
        found = _lookup(backend, name, version)
        return found if not isinstance(found, ModelEntry) else _json(200, metadata.model_metadata(found))
    if tail == ["ready"]:
        if method != "GET":
            return _method_not_allowed(method, "GET", path)
        found = _lookup(backend, name, version)
        return found if not isinstance(found, ModelEntry) else _flag(found.ready)
    if tail == ["infer"]:
        if method != "POST":
            return _method_not_allowed(method, "POST", path)
        found = _lookup(backend, name, version)
        if not isinstance(found, ModelEntry):
            return found
        return await infer(found, headers, body, backend, "debug=true" in query)
    return _error(404, f"no V2 route at {path}")


async def infer(
    entry: ModelEntry, headers: Mapping[str, str], body: bytes, backend: V2Backend, debug: bool
) -> Response:
    length_text = header(headers, HEADER_LENGTH)
    length: int | None = None
    if length_text is not None:
        try:
            length = int(length_text)
        except ValueError:
            return _error(400, f"{HEADER_LENGTH} must be an integer, got {length_text!r}")
        if not 0 < length <= len(body):
            return _error(400, f"{HEADER_LENGTH} is {length}; the body has {len(body)} bytes")
    encoding = (header(headers, "Content-Encoding") or "").strip().lower() or None
    if encoding == "identity":
        encoding = None
    if encoding is not None and encoding not in CONTENT_ENCODINGS:
        return _error(415, f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none")
    if encoding is None and length is None and not body:
        return _error(400, "the request has no body: POST a V2 inference request")
    target = replica_target(ReplicaCall(entry.name, entry.version, length, encoding, debug))
    status, extra, payload = await backend.infer(entry.name, target, body)
    status, out_headers, out = read_replica_answer(status, payload)
    return status, {**extra, **out_headers}, out
