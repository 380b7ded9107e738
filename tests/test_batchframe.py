"""The batch frame of the daemon-replica hop (cortexd/batchframe.py): round trips and every
way a frame can be malformed."""

from __future__ import annotations

import struct

import pytest

from cortexd import batchframe
from cortexd.batchframe import FrameError, Item


@pytest.mark.parametrize(
    "items",
    [
        [("", b"", b"[1, 2]")],
        [("debug=true", b"", b'{"x": 1}'), ("", b"", b""), ("a=1&b=%C3%A9", b"x-id: 7\r\n", b"[" * 3 + b"]" * 3)],
        [("", b"", bytes(range(256)) * 10)],  # bodies are bytes: nothing is decoded on the way
        [(f"i={i}", b"", str(i).encode()) for i in range(300)],
        [("q=é", b"", b"1")],  # non-ASCII query text survives as UTF-8
    ],
    ids=["one", "mixed", "binary", "many", "unicode-query"],
)
def test_request_round_trip_keeps_every_item_in_order(items: list[tuple[str, bytes, bytes]]) -> None:
    frame = batchframe.encode_request(items)
    assert batchframe.decode_request(frame) == [Item(q, h, b) for q, h, b in items]
    # the same through a memoryview and a bytearray (what a receive buffer hands over)
    assert batchframe.decode_request(memoryview(frame)) == batchframe.decode_request(bytearray(frame))


@pytest.mark.parametrize(
    "answers",
    [
        [(200, b'{"y": 1}')],
        [(200, b"[1]"), (400, b'{"error": "bad"}'), (500, b""), (200, b"x" * 70000)],
    ],
    ids=["one", "mixed"],
)
def test_answer_round_trip(answers: list[tuple[int, bytes]]) -> None:
    frame = batchframe.encode_answer(answers)
    assert batchframe.decode_answer(frame) == answers
    assert batchframe.decode_answer(frame, expected=len(answers)) == answers


def test_the_layout_is_the_documented_one() -> None:
    frame = batchframe.encode_request([("a", b"hh", b"bod")])
    assert frame == b"CXB1" + struct.pack("<I", 1) + struct.pack("<III", 1, 2, 3) + b"a" + b"hh" + b"bod"
    answer = batchframe.encode_answer([(404, b"{}")])
    assert answer == b"CXR1" + struct.pack("<III", 1, 404, 2) + b"{}"


def _request(count: int, table: list[int], data: bytes, magic: bytes = b"CXB1") -> bytes:
    return struct.pack(f"<4sI{len(table)}I", magic, count, *table) + data


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"", "shorter than its 8-byte header"),
        (b"CXB1\x01", "shorter than its 8-byte header"),
        (_request(1, [0, 0, 1], b"x", magic=b"JSON"), "starts with b'JSON', not b'CXB1'"),
        (batchframe.encode_answer([(200, b"x")]), "not b'CXB1'"),  # the answer's magic on a request
        (_request(0, [], b""), "counts 0 requests"),
        (_request(70000, [], b""), "counts 70000 requests"),
        (_request(2, [0, 0, 1], b""), "ends inside its table of 2 entries"),
        (_request(1, [0, 0, 5], b"abc"), "is 23 bytes but its table describes 25"),
        (_request(1, [0, 0, 1], b"ab"), "is 22 bytes but its table describes 21"),
        (_request(1, [0xFFFFFFFF, 0, 0], b""), "its table describes"),
    ],
    ids=["empty", "short-head", "magic", "answer-magic", "zero", "too-many", "short-table", "short-data",
         "trailing-bytes", "huge-length"],
)
def test_malformed_requests_are_refused_with_the_reason(frame: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=None) as info:
        batchframe.decode_request(frame)
    assert message in str(info.value)


def test_an_answer_for_another_number_of_requests_is_refused() -> None:
    frame = batchframe.encode_answer([(200, b"1"), (200, b"2")])
    with pytest.raises(FrameError, match="2 answers for a batch of 3 requests"):
        batchframe.decode_answer(frame, expected=3)
    with pytest.raises(FrameError, match="is 27 bytes but its table describes 26"):
        batchframe.decode_answer(frame + b"!")


@pytest.mark.parametrize("count", [0, batchframe.MAX_ITEMS + 1])
def test_encoding_refuses_empty_and_oversized_batches(count: int) -> None:
    with pytest.raises(FrameError, match=f"not {count}"):
        batchframe.encode_request([("", b"", b"1")] * count)
    with pytest.raises(FrameError, match=f"not {count}"):
        batchframe.encode_answer([(200, b"1")] * count)


def test_headers_slot_round_trip() -> None:
    block = batchframe.encode_headers({"X-Request-Id": "abc", "Content-Type": "application/json"})
    assert block == b"x-request-id: abc\r\ncontent-type: application/json\r\n"
    assert batchframe.decode_headers(block) == {"x-request-id": "abc", "content-type": "application/json"}
    assert batchframe.decode_headers(b"") == {}


def test_answers_that_are_not_json_carry_their_content_type_and_headers() -> None:
    """A prediction rendered as text, bytes or a Response (replica/bodies.py) keeps its header
    lines through the frame; the daemon gets it as a TypedPayload, as on the single path."""
    answers = [
        (200, b'{"y": 1}'),
        (200, b"\x00raw", b"content-type: application/octet-stream\r\n"),
        (201, b"<b>hi</b>", b"content-type: text/html\r\nx-made: yes\r\n"),
        (200, b"[1]", b"content-type: application/json\r\n"),  # JSON without headers of its own
    ]
    frame = batchframe.encode_answer(answers)
    assert frame[:4] == b"CXR2"
    decoded = batchframe.decode_answer(frame, expected=4)
    assert [(s, bytes(b)) for s, b in decoded] == [(s, b) for s, b, *_ in answers]
    assert type(decoded[0][1]) is bytes and type(decoded[3][1]) is bytes  # JSON stays plain bytes
    assert (decoded[1][1].content_type, decoded[1][1].headers) == ("application/octet-stream", ())  # type: ignore[attr-defined]
    assert (decoded[2][1].content_type, decoded[2][1].headers) == ("text/html", (("x-made", "yes"),))  # type: ignore[attr-defined]
    # all JSON: the frame keeps its first layout, byte for byte
    assert batchframe.encode_answer([(200, b"1"), (400, b"{}")])[:4] == b"CXR1"


def test_a_typed_answer_frame_with_a_bad_table_is_refused() -> None:
    frame = batchframe.encode_answer([(200, b"x", b"content-type: text/plain\r\n")])
    with pytest.raises(FrameError, match="its table describes"):
        batchframe.decode_answer(frame[:-1])
