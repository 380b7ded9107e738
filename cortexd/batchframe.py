"""The frame that carries a batch over the daemon-replica hop, in both directions.

A batching API's queue sends N requests to one replica as ONE exchange on its persistent
connection: `POST /predict-batch` whose body is a request frame; the replica answers 200
with an answer frame (one status and body per request, in order), or, when the frame
itself is unusable, a plain JSON error that then stands for every request of the batch.

Bodies travel as the bytes the clients sent and come back as the bytes the replica
encoded: the daemon never parses or re-encodes JSON to batch. A frame is a fixed header,
a table of lengths, then the data, so encoding is one `struct.pack` plus one join, and
decoding checks every length against the frame's size before it slices anything.

Request frame (little-endian):

    magic   4 bytes  b"CXB1"
    count   u32      number of requests N (1 .. MAX_ITEMS)
    table   N x (query_len u32, headers_len u32, body_len u32)
    data    for each request in order: query bytes, headers bytes, body bytes

    query:   the request's query string without "?" (UTF-8), e.g. b"debug=true"
    headers: "name: value\\r\\n" lines with lowercase names (UTF-8); empty while the daemon
             forwards none (the slot is there for dialects that pass headers to predict)
    body:    the request body as received

Answer frame (little-endian), the body of a 200 answer, in one of two layouts. When every
answer is JSON (the usual case):

    magic   4 bytes  b"CXR1"
    count   u32      N, the same as the request's
    table   N x (status u32, body_len u32)
    data    the N bodies in order (each a JSON document)

When some answer is not (a prediction sent as text, bytes or a Response object,
cortexd/replica/bodies.py render_prediction):

    magic   4 bytes  b"CXR2"
    count   u32      N
    table   N x (status u32, headers_len u32, body_len u32)
    data    for each answer in order: header lines, body

    header lines: the answer's "name: value\\r\\n" lines, content-type first, exactly as a
                  single answer's head carries them; empty for a JSON answer.

The daemon reads an answer with header lines as a single answer of that head
(daemon/serving/answers.py): a TypedPayload with its content type and headers.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cortexd.daemon.serving import answers as typed

BATCH_PATH = "/predict-batch"

REQUEST_MAGIC = b"CXB1"
ANSWER_MAGIC = b"CXR1"
TYPED_ANSWER_MAGIC = b"CXR2"
# A batch is at most max_batch_size requests; this only bounds what a corrupt count can ask for.
MAX_ITEMS = 65536

_HEAD = struct.Struct("<4sI")


class FrameError(ValueError):
    """The bytes are not a well-formed frame; the message says what is wrong."""


@dataclass(frozen=True)
class Item:
    """One request of a batch, as the replica sees it."""

    query: str
    headers: bytes
    body: bytes


def encode_request(items: Sequence[tuple[str, bytes, bytes]]) -> bytes:
    """A request frame for (query, headers, body) triples, in order."""
    count = len(items)
    if not 1 <= count <= MAX_ITEMS:
        raise FrameError(f"a batch holds 1 to {MAX_ITEMS} requests, not {count}")
    lengths: list[int] = []
    data: list[bytes] = []
    for query, headers, body in items:
        q = query.encode("utf-8", "replace") if query else b""
        lengths += (len(q), len(headers), len(body))
        data += (q, headers, body)
    table = struct.pack(f"<4sI{3 * count}I", REQUEST_MAGIC, count, *lengths)
    return b"".join([table, *data])


def _magic(frame: bytes | bytearray | memoryview, what: str) -> bytes:
    if len(frame) < _HEAD.size:
        raise FrameError(f"{what} frame of {len(frame)} bytes is shorter than its {_HEAD.size}-byte header")
    return bytes(frame[:4])


def _table(frame: bytes | bytearray | memoryview, magic: bytes, columns: int, what: str) -> tuple[int, tuple[int, ...]]:
    """(count, flat table) of a frame, with its size checked against the table."""
    _magic(frame, what)  # refuses a frame shorter than its header
    got_magic, count = _HEAD.unpack_from(frame, 0)
    if got_magic != magic:
        raise FrameError(f"{what} frame starts with {bytes(got_magic)!r}, not {magic!r}")
    if not 1 <= count <= MAX_ITEMS:
        raise FrameError(f"{what} frame counts {count} requests; a batch holds 1 to {MAX_ITEMS}")
    table_end = _HEAD.size + 4 * columns * count
    if len(frame) < table_end:
        raise FrameError(f"{what} frame of {len(frame)} bytes ends inside its table of {count} entries")
    table = struct.unpack_from(f"<{columns * count}I", frame, _HEAD.size)
    return count, table


def decode_request(frame: bytes | bytearray | memoryview) -> list[Item]:
    """The requests of a request frame; raises FrameError when it is not one."""
    count, table = _table(frame, REQUEST_MAGIC, 3, "request")
    at = _HEAD.size + 12 * count
    _check_size(frame, at, sum(table), "request")
    view = memoryview(frame)
    items: list[Item] = []
    for i in range(0, 3 * count, 3):
        q_len, h_len, b_len = table[i], table[i + 1], table[i + 2]
        query = bytes(view[at : at + q_len]).decode("utf-8", "replace")
        at += q_len
        headers = bytes(view[at : at + h_len])
        at += h_len
        items.append(Item(query, headers, bytes(view[at : at + b_len])))
        at += b_len
    return items


def encode_answer(answers: Sequence[tuple[int, bytes] | tuple[int, bytes, bytes]]) -> bytes:
    """An answer frame for (status, body) pairs, or (status, body, header lines) for answers
    that are not JSON, in the order of the request frame."""
    count = len(answers)
    if not 1 <= count <= MAX_ITEMS:
        raise FrameError(f"a batch holds 1 to {MAX_ITEMS} requests, not {count}")
    flat: list[int] = []
    if all(len(answer) == 2 for answer in answers):
        for answer in answers:
            flat += (answer[0], len(answer[1]))
        table = struct.pack(f"<4sI{2 * count}I", ANSWER_MAGIC, count, *flat)
        return b"".join([table, *(answer[1] for answer in answers)])
    data: list[bytes] = []
    for answer in answers:
        lines = answer[2] if len(answer) == 3 else b""
        flat += (answer[0], len(lines), len(answer[1]))
        data += (lines, answer[1])
    table = struct.pack(f"<4sI{3 * count}I", TYPED_ANSWER_MAGIC, count, *flat)
    return b"".join([table, *data])


def decode_answer(frame: bytes | bytearray | memoryview, expected: int | None = None) -> list[tuple[int, bytes]]:
    """(status, body) per request of an answer frame; raises FrameError when it is not one,
    or when it answers another number of requests than `expected`. The body of an answer
    with header lines is what a single answer of that head gives (answers.payload_of):
    plain bytes for JSON, else a TypedPayload carrying its content type and headers."""
    typed_layout = _magic(frame, "answer") == TYPED_ANSWER_MAGIC
    columns = 3 if typed_layout else 2
    count, table = _table(frame, TYPED_ANSWER_MAGIC if typed_layout else ANSWER_MAGIC, columns, "answer")
    if expected is not None and count != expected:
        raise FrameError(f"answer frame has {count} answers for a batch of {expected} requests")
    at = _HEAD.size + 4 * columns * count
    _check_size(frame, at, sum(table) - sum(table[0::columns]), "answer")
    view = memoryview(frame)
    out: list[tuple[int, bytes]] = []
    for i in range(0, columns * count, columns):
        lines = b""
        if typed_layout:
            lines = bytes(view[at : at + table[i + 1]])
            at += table[i + 1]
        length = table[i + columns - 1]
        body = bytes(view[at : at + length])
        at += length
        # the head of a single answer: a status line, then these lines (answers.answer_headers)
        out.append((table[i], typed.payload_of(b"\r\n" + lines, body) if lines else body))
    return out


def _check_size(frame: bytes | bytearray | memoryview, data_at: int, data_len: int, what: str) -> None:
    if len(frame) != data_at + data_len:
        raise FrameError(
            f"{what} frame is {len(frame)} bytes but its table describes {data_at + data_len}"
        )


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The headers slot of a request: "name: value\\r\\n" lines, names lowercased."""
    return "".join(f"{name.lower()}: {value}\r\n" for name, value in headers.items()).encode("utf-8", "replace")


def decode_headers(block: bytes) -> dict[str, str]:
    """The headers slot as a dict (a repeated name keeps its last value)."""
    out: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out
