"""The V2 request on the daemon -> replica hop, and its answer on the way back.

The hop carries a path with a query string and a body, and answers a status and a body
(cortexd/daemon/serving/upstream.py, cortexd/replica/server.py); it has no headers. So:

- the request: `POST /v2/infer?m=<model>&v=<version>[&hl=<n>][&ce=gzip][&debug=true]`,
  the body exactly as the client sent it (`hl` is its Inference-Header-Content-Length,
  `ce` its Content-Encoding). gRPC requests arrive here already turned into that form.
- the answer: a JSON body (it starts with `{`) is the whole V2 response or an error; a
  response with binary outputs is framed as `<header length in ASCII digits>\\n<JSON
  header><binary data>`, so the daemon finds the split with one `find` and never parses
  the tensors.

Nothing here imports numpy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from cortexd.v2.datatypes import DATATYPES, TensorError, unpack_bytes_elements

REPLICA_PATH = "/v2/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
_MAX_PREFIX = 20  # digits of a header length, and the newline


@dataclass(frozen=True)
class ReplicaCall:
    """What the replica needs besides the body (decoded from the query)."""

    model: str
    version: str
    header_length: int | None = None
    content_encoding: str | None = None
    debug: bool = False


def replica_target(call: ReplicaCall) -> str:
    parts = [f"m={quote(call.model, safe='')}", f"v={quote(call.version, safe='')}"]
    if call.header_length is not None:
        parts.append(f"hl={call.header_length}")
    if call.content_encoding:
        parts.append(f"ce={quote(call.content_encoding, safe='')}")
    if call.debug:
        parts.append("debug=true")
    return REPLICA_PATH + "?" + "&".join(parts)


def parse_query(query: str) -> ReplicaCall:
    """The ReplicaCall of a replica request's query; ValueError for one the daemon never sends."""
    fields: dict[str, str] = {}
    for pair in query.split("&") if query else ():
        key, _, value = pair.partition("=")
        fields[key] = unquote(value)
    hl = fields.get("hl")
    return ReplicaCall(
        model=fields.get("m", ""),
        version=fields.get("v", ""),
        header_length=int(hl) if hl is not None else None,
        content_encoding=fields.get("ce") or None,
        debug=fields.get("debug") == "true",
    )


def frame(header: bytes, binary: list[bytes]) -> bytes:
    """The replica's answer for a response (header + binary parts)."""
    if not binary:
        return header
    return b"".join([str(len(header)).encode(), b"\n", header, *binary])


def error_payload(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def read_replica_answer(status: int, payload: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for the V2 client, from the replica's (or the daemon's own) answer."""
    if payload[:1].isdigit():
        newline = payload.find(b"\n", 0, _MAX_PREFIX)
        if newline > 0:
            length = int(payload[:newline])
            return status, {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(length)}, payload[newline + 1 :]
    return status, {"Content-Type": JSON_CONTENT_TYPE}, payload


def split_answer(payload: bytes) -> tuple[bytes, memoryview]:
    """(JSON header, binary data) of a replica answer, for the gRPC front end."""
    if payload[:1].isdigit():
        newline = payload.find(b"\n", 0, _MAX_PREFIX)
        if newline > 0:
            start = newline + 1
            end = start + int(payload[:newline])
            view = memoryview(payload)
            return bytes(view[start:end]), view[end:]
    return payload, memoryview(b"")


def tracker_prediction(payload: bytes) -> dict[str, Any] | None:
    """A 200 answer as the prediction the tracker reads: {output name: value}, the value being
    the output's one element when it holds one (a request of one sample), else its flat list.
    Binary outputs are unpacked with struct. None when the answer cannot be read; only
    tracked APIs pay for this."""
    try:
        header, binary = split_answer(payload)
        doc = json.loads(header)
        out: dict[str, Any] = {}
        at = 0
        for entry in doc.get("outputs") or []:
            size = (entry.get("parameters") or {}).get("binary_data_size")
            if size is None:
                values = _flat(entry.get("data"))
            else:
                raw, at = binary[at : at + size], at + size
                dtype = DATATYPES[entry["datatype"]]
                if dtype.name == "BYTES":
                    values = [v.decode("utf-8", "replace") for v in unpack_bytes_elements(raw, entry["name"])]
                else:
                    values = list(struct.unpack(f"<{len(raw) // dtype.size}{dtype.code}", raw))
            out[entry["name"]] = values[0] if len(values) == 1 else values
        return out
    except (ValueError, KeyError, TypeError, TensorError, struct.error):
        return None


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flat(item))
    return out
