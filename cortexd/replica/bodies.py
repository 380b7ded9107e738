"""Request bodies in, predictions out: the replica's JSON on the hot path.

A body is checked for its nesting depth before it is parsed: Python's parser recurses once
per level, and a 10 KB body of `[[[[...` would otherwise raise RecursionError deep inside
the replica. The check costs two `bytes.count` calls for ordinary bodies; only a body with
more brackets than the limit is scanned properly (strings skipped, in C through re and numpy).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Union

import numpy as np

from cortexd.replica.jsonable import to_jsonable

# Deepest JSON nesting a request may have (documented in docs/http.md). Real
# payloads (tensors of rank <= 8 inside a few objects) stay far below it; Python's own
# parser and encoder fail near 1,000.
MAX_JSON_DEPTH = 128


class BodyError(ValueError):
    """The body is not JSON this replica will parse; the message says why (answered 400)."""


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_KEEP = bytes(range(256)).translate(None, b"[]{}")  # every byte but brackets: deleted below
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body` (brackets inside strings don't
    count). For bodies with few brackets, their count, which bounds the depth."""
    brackets = body.count(b"[") + body.count(b"{")
    if brackets <= MAX_JSON_DEPTH:
        return brackets
    skeleton = _STRING.sub(b'""', body).translate(None, _KEEP)
    if not skeleton:
        return 0
    return int(np.cumsum(_STEP[np.frombuffer(skeleton, dtype=np.uint8)], dtype=np.int64).max())


try:  # installed with Sanic; parses a request body several times faster than json
    import ujson

    _fast_loads: Callable[[bytes], Any] | None = ujson.loads
except ImportError:  # pragma: no cover
    _fast_loads = None


def parse_body(body: bytes) -> Any:
    """The posted JSON. ujson parses it when it can (the same values as json: floats are
    correctly rounded by both); anything ujson refuses goes to json, which decides and,
    when it refuses too, says why in the words users know."""
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise BodyError(f"JSON nesting is {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    if _fast_loads is not None:
        try:
            return _fast_loads(body)
        except Exception:
            pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None


# One encoder for the process: json.dumps with options builds a new encoder per call.
# allow_nan=False: NaN and Infinity are not JSON; Python would write them anyway, and clients'
# parsers (JSON.parse, Go, Java) then fail on an answer that said 200.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class PredictionError(ValueError):
    """The prediction cannot be sent as it is; answered 500 with this message."""


def encode_prediction(result: Any, nan_as_null: bool = False) -> bytes:
    """A prediction as JSON. Plain values go straight to the encoder; anything it refuses
    (numpy scalars and arrays, numpy dict keys, bytes, sets) is converted by to_jsonable
    once and encoded again, so plain results pay nothing for numpy support. NaN or ±Infinity
    raise PredictionError naming where they are, or become null with `nan_as_null` (the
    API's `nan_as_null: true`)."""
    try:
        return _ENCODER.encode(result).encode()
    except TypeError:
        result = to_jsonable(result)
    except ValueError:
        pass  # a non-finite float somewhere: found below
    try:
        return _ENCODER.encode(result).encode()
    except ValueError:
        if nan_as_null:
            return _ENCODER.encode(non_finite_as_null(result)).encode()
        where = non_finite_path(result)
        if where is None:
            raise
        kind, path = where
        raise PredictionError(f"prediction is not valid JSON: {kind} at {path}") from None


def _float_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def non_finite_path(value: Any, path: str = "prediction", depth: int = 0) -> tuple[str, str] | None:
    """("NaN" | "Infinity" | "-Infinity", where) of the first non-finite float in a JSON-like
    value, e.g. ("NaN", 'prediction["scores"][2]'); None when there is none."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (_float_name(value), path)
    if depth > MAX_JSON_DEPTH * 8:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, float) and not math.isfinite(key):
                return _float_name(key), f"{path} (a key)"
            found = non_finite_path(item, f"{path}[{json.dumps(key) if isinstance(key, str) else key}]", depth + 1)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


def non_finite_as_null(value: Any) -> Any:
    """The value with every NaN and ±Infinity replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: non_finite_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [non_finite_as_null(v) for v in value]
    return value


# ---------------------------------------------------------------- answers that are not JSON

OCTET_STREAM = b"content-type: application/octet-stream\r\n"
TEXT_PLAIN = b"content-type: text/plain; charset=utf-8\r\n"
_HOP_HEADERS = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "host"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

_JSON_TYPES = frozenset({dict, list, int, float, bool, type(None)})

# What server.py's handler returns: (status, body) for JSON, (status, body, header lines) else.
Rendered = Union["tuple[int, bytes]", "tuple[int, bytes, bytes]"]


def render_prediction(result: Any, nan_as_null: bool = False, str_as_text: bool = False) -> Rendered:
    """How a prediction goes out, as Cortex sent each kind of value:

    - `bytes` (bytearray, memoryview): the raw body, application/octet-stream;
    - `str` with `str_as_text` (the Cortex versions that documented it, v0.18 on): text/plain;
      otherwise a JSON string, as the Cortex of the seed dialect answered;
    - a Starlette-style Response (status_code, body, headers; Cortex v0.18 on): passed through;
    - anything else: JSON (encode_prediction).
    Raises PredictionError when the value cannot be sent as it is."""
    t = type(result)
    if t in _JSON_TYPES:  # the usual predictions: one set lookup before the encoder
        return 200, encode_prediction(result, nan_as_null)
    if t is str:
        return (200, result.encode(), TEXT_PLAIN) if str_as_text else (200, encode_prediction(result))
    if t is bytes or t is bytearray or t is memoryview:
        return 200, bytes(result), OCTET_STREAM
    if hasattr(result, "status_code") and hasattr(result, "headers"):
        return render_response(result)
    return 200, encode_prediction(result, nan_as_null)


def render_response(response: Any) -> tuple[int, bytes, bytes]:
    """A Starlette-style Response object: its status, headers and body."""
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise PredictionError(
            f"prediction is a {type(response).__name__} without a body; only responses with their whole "
            "body (Response, JSONResponse, PlainTextResponse, ...) can be returned, not streaming or file responses"
        )
    status = response.status_code
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise PredictionError(f"prediction is a response with status {status!r}; a status is 100 to 599")
    raw = getattr(response, "raw_headers", None)
    if raw is None:
        raw = [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in dict(response.headers).items()]
    lines: list[bytes] = []
    has_type = False
    for name, value in raw:
        key = bytes(name).decode("latin-1")
        text = bytes(value).decode("latin-1")
        if not _TOKEN.match(key) or any(c in text for c in "\r\n\0"):
            raise PredictionError(f"prediction is a response with an invalid header {key!r}")
        lower = key.lower()
        if lower in _HOP_HEADERS:
            continue
        line = f"{key}: {text}\r\n".encode("latin-1")
        if lower == "content-type":
            has_type = True
            lines.insert(0, line)
        else:
            lines.append(line)
    if not has_type:
        lines.insert(0, OCTET_STREAM)
    return status, bytes(body), b"".join(lines)
