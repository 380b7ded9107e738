"""Request bodies in, predictions out: the replica's JSON on the hot path.

A body is checked for its nesting depth before it is parsed: Python's parser recurses once
per level, and a 10 KB body of `[[[[...` would otherwise raise RecursionError deep inside
the replica. The check costs two `bytes.count` calls for ordinary bodies; only a body with
more brackets than the limit is scanned properly (strings skipped, in C through re and numpy).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from cortexd.replica.jsonable import to_jsonable

# Deepest JSON nesting a request may have (documented in docs/reference/http.md). Real
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
    from ujson import loads as _fast_loads
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
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_prediction(result: Any) -> bytes:
    """A prediction as JSON. Plain values go straight to the encoder; anything it refuses
    (numpy scalars and arrays, numpy dict keys, bytes, sets) is converted by to_jsonable
    once and encoded again, so plain results pay nothing for numpy support."""
    try:
        return _ENCODER.encode(result).encode()
    except TypeError:
        return _ENCODER.encode(to_jsonable(result)).encode()
