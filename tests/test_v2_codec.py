"""V2 request and response bodies: every datatype in JSON and binary form, tritonclient's own
request builders and result parser against our codec, and each malformed request's error."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from cortexd.v2.codec import V2Error, encode_response, parse_request
from cortexd.v2.datatypes import DATATYPES, json_data, to_raw

tritonhttp = pytest.importorskip("tritonclient.http")

# one sample array per datatype, with values at the edges of each type's range
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.25, 0.0, 3.25e38]], dtype=np.float32),
    "FP64": np.array([[-1e300, 0.0, 2.5]], dtype=np.float64),
    "BYTES": np.array([[b"", "h\u00e9".encode(), b"three"]], dtype=object),
}


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert [bytes(v) if not isinstance(v, str) else v.encode() for v in got.reshape(-1)] == list(want.reshape(-1))
    else:
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


def request(inputs: list[dict[str, Any]], binary: list[bytes] = (), **extra: Any) -> tuple[bytes, int | None]:  # type: ignore[assignment]
    header = json.dumps({"inputs": inputs, **extra}).encode()
    if not binary:
        return header, None
    return header + b"".join(binary), len(header)


def test_every_datatype_is_covered() -> None:
    assert set(SAMPLES) == set(DATATYPES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_parses_in_both_forms(name: str, binary: bool) -> None:
    arr, dtype = SAMPLES[name], DATATYPES[name]
    entry: dict[str, Any] = {"name": "x", "datatype": name, "shape": list(arr.shape)}
    if binary:
        raw = to_raw(arr, dtype)
        body, hl = request([{**entry, "parameters": {"binary_data_size": len(raw)}}], [raw])
    else:
        body, hl = request([{**entry, "data": json_data(arr, dtype, "x")}])
    parsed = parse_request(body, hl)
    assert [t.name for t in parsed.inputs] == ["x"] and parsed.inputs[0].datatype.name == name
    assert_same(parsed.inputs[0].array, arr)


def test_json_data_may_be_nested_or_flat() -> None:
    flat = parse_request(request([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}])[0])
    nested = parse_request(request([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}])[0])
    assert np.array_equal(flat.inputs[0].array, nested.inputs[0].array)
    assert flat.inputs[0].array.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_requests_built_by_tritonclient_decode(name: str, binary: bool) -> None:
    arr = SAMPLES[name]
    other = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = tritonhttp.InferInput("x", list(arr.shape), name).set_data_from_numpy(arr, binary_data=binary)
    # a second input in the other form, so binary and JSON inputs mix in one request
    y = tritonhttp.InferInput("y", [2, 3], "FP32").set_data_from_numpy(other, binary_data=not binary)
    outputs = [
        tritonhttp.InferRequestedOutput("a", binary_data=True), tritonhttp.InferRequestedOutput("b", binary_data=False)
    ]
    body, hl = tritonhttp.InferenceServerClient.generate_request_body(
        [x, y], outputs=outputs, request_id="req-7", parameters={"temperature": 0.5})
    parsed = parse_request(body, hl)
    got = parsed.arrays()
    assert_same(got["x"], arr)
    assert_same(got["y"], other)
    assert parsed.id == "req-7"
    assert parsed.parameters == {"temperature": 0.5}
    assert (parsed.binary_for("a"), parsed.binary_for("b")) == (True, False)


def test_tritonclient_without_outputs_asks_every_output_binary() -> None:
    x = tritonhttp.InferInput("x", [1], "INT32").set_data_from_numpy(np.array([3], np.int32), binary_data=False)
    body, hl = tritonhttp.InferenceServerClient.generate_request_body([x])
    parsed = parse_request(body, hl)
    assert hl is None and parsed.outputs is None
    assert parsed.binary_for("anything") is True
    assert parsed.parameters == {}  # binary_data_output is the codec's, not the predictor's


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_responses_parse_with_tritonclient(name: str, binary: bool) -> None:
    arr = SAMPLES[name]
    encoded = encode_response("m", "3", [("out", arr), ("label", np.array([2], np.int64))],
                              lambda n: binary and n == "out", request_id="abc", parameters={"note": "x"})
    headers, body = encoded.http()
    if binary:
        assert headers["Content-Type"] == "application/octet-stream"
        assert int(headers["Inference-Header-Content-Length"]) == encoded.header_length
    else:
        assert headers == {"Content-Type": "application/json"} and encoded.header_length is None
    result = tritonhttp.InferenceServerClient.parse_response_body(body, header_length=encoded.header_length)
    assert_same(result.as_numpy("out"), arr)
    assert result.as_numpy("label").tolist() == [2]
    doc = result.get_response()
    assert (doc["model_name"], doc["model_version"], doc["id"], doc["parameters"]) == ("m", "3", "abc", {"note": "x"})
    assert doc["outputs"][0]["datatype"] == name and doc["outputs"][0]["shape"] == [1, 3]


@pytest.mark.parametrize(
    "inputs, binary, header_length, message",
    [
        ("not json", (), None, "the request's JSON"),
        ([1, 2], (), None, "must be a JSON object"),
        ([], (), None, "the request has no inputs"),
        ([{"datatype": "FP32", "shape": [1], "data": [1]}], (), None, "input 0 has no name"),
        ([{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}], (), None, "input 'x': unknown datatype 'FP8'"),
        ([{"name": "x", "datatype": "BF16", "shape": [1], "data": [1]}], (), None, "input 'x': datatype BF16 is not supported"),
        ([{"name": "x", "shape": [1], "data": [1]}], (), None, "input 'x': datatype is missing"),
        ([{"name": "x", "datatype": "FP32", "shape": 3, "data": [1]}], (), None, "input 'x': shape must be a list"),
        ([{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}], (), None, "input 'x': shape must be a list of non-negative"),
        ([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}], (), None,
         "input 'x': shape [2, 2] needs 4 elements, data has 3"),
        ([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}], (), None, "rows differ in length"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "data": ["1.5"]}], (), None, "input 'x': FP32 data must be numbers, got strings"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "data": [True]}], (), None, "FP32 data must be numbers, got booleans"),
        ([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}], (), None, "input 'x': INT32 data must be whole numbers"),
        ([{"name": "x", "datatype": "UINT8", "shape": [2], "data": [1, 300]}], (), None, "input 'x': values 1 .. 300 are out of UINT8's range"),
        ([{"name": "x", "datatype": "INT8", "shape": [1], "data": [-129]}], (), None, "out of INT8's range"),
        ([{"name": "x", "datatype": "UINT64", "shape": [2], "data": [0, 2**64]}], (), None, "out of UINT64's range"),
        ([{"name": "x", "datatype": "BOOL", "shape": [2], "data": [1, 0]}], (), None, "input 'x': BOOL data must be booleans, got integers"),
        ([{"name": "x", "datatype": "BYTES", "shape": [1], "data": [5]}], (), None, "input 'x': BYTES data must be strings, got integers"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "data": [None]}], (), None, "got mixed values"),
        ([{"name": "x", "datatype": "FP32", "shape": [1]}], (), None, "input 'x': has no data"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
         (), None, "input 'x' is given twice"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}], (), None,
         "input 'x': has binary_data_size but the request has no Inference-Header-Content-Length header"),
        ([{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}], (b"\0" * 4,), 0,
         "input 'x': binary_data_size is 8 but only 4 bytes of binary data remain"),
        ([{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}], (b"\0" * 4,), 0,
         "input 'x': shape [2] of FP32 needs 8 bytes, got 4"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}], (b"\0" * 6,), 0,
         "the body has 2 bytes after the last binary input's data"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": {"binary_data_size": 4}}], (b"\0" * 4,), 0,
         "input 'x': has both data and binary_data_size"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": -4}}], (b"\0" * 4,), 0,
         "binary_data_size must be a non-negative integer"),
        ([{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}], (b"\x05\0\0\0ab",), 0,
         "input 's': BYTES element 0 says 5 bytes, only 2 remain"),
        ([{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 2}}], (b"\x05\0",), 0,
         "input 's': BYTES data ends inside an element's 4-byte length"),
        ([{"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 5}}], (b"\x01\0\0\0a",), 0,
         "input 's': shape [2] needs 2 BYTES elements, the data holds 1"),
    ],
)
def test_malformed_requests_say_what_is_wrong(
    inputs: Any, binary: tuple[bytes, ...], header_length: int | None, message: str
) -> None:
    if inputs == "not json":
        body, hl = b"{nope", None
    elif isinstance(inputs, list) and inputs and not isinstance(inputs[0], dict):
        body, hl = json.dumps(inputs).encode(), None
    else:
        header = json.dumps({"inputs": inputs}).encode()
        body, hl = header + b"".join(binary), (len(header) if header_length is not None else None)
    with pytest.raises(V2Error) as err:
        parse_request(body, hl)
    assert err.value.status == 400
    assert message in err.value.message


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"id": 5}, "the request id must be a string"),
        ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or false"),
        ({"parameters": []}, "the request's parameters must be an object"),
        ({"outputs": {"name": "y"}}, "outputs must be a list"),
        ({"outputs": [{"name": "y"}, {"name": "y"}]}, "output 'y' is requested twice"),
        ({"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "output 'y': parameter binary_data must be true or false"),
        ({"outputs": [{}]}, "output 0 has no name"),
    ],
)
def test_malformed_request_fields(extra: dict[str, Any], message: str) -> None:
    body, _ = request([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], **extra)
    with pytest.raises(V2Error) as err:
        parse_request(body)
    assert message in err.value.message


def test_header_length_past_the_body_and_deep_json_are_refused() -> None:
    with pytest.raises(V2Error, match="Inference-Header-Content-Length is 99; the body has 2 bytes"):
        parse_request(b"{}", 99)
    head = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
    deep = head + b"[" * 200 + b"1" + b"]" * 200 + b"}]}"
    with pytest.raises(V2Error, match="nesting is 203 levels deep; the limit is 128"):
        parse_request(deep)


@pytest.mark.parametrize(
    "parameters, outputs, name, binary",
    [
        ({}, None, "y", False),
        ({"binary_data_output": True}, None, "y", True),
        ({"binary_data_output": True}, [{"name": "y", "parameters": {"binary_data": False}}], "y", False),
        ({}, [{"name": "y", "parameters": {"binary_data": True}}], "y", True),
        ({}, [{"name": "y", "parameters": {"binary_data": True}}], "z", False),
        ({"binary_data_output": True}, [{"name": "y"}], "y", True),
    ],
)
def test_which_outputs_go_binary(parameters: dict[str, Any], outputs: Any, name: str, binary: bool) -> None:
    extra: dict[str, Any] = {"parameters": parameters}
    if outputs is not None:
        extra["outputs"] = outputs
    body, _ = request([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], **extra)
    assert parse_request(body).binary_for(name) is binary


def test_binary_inputs_are_views_of_the_body() -> None:
    raw = np.arange(4, dtype=np.float32).tobytes()
    body, hl = request([{"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}], [raw])
    arr = parse_request(body, hl).inputs[0].array
    assert not arr.flags.writeable  # no copy was made; predictors that write get a copy (replica.py)
    assert arr.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "value, binary, message",
    [
        (np.array([1 + 2j]), False, "output 'bad': numpy dtype complex128 has no V2 datatype"),
        (np.array([b"\xff\xfe"], dtype=object), False, "output 'bad': holds bytes that are not UTF-8 text; request it with binary_data"),
    ],
)
def test_outputs_that_cannot_be_encoded_are_server_errors(value: Any, binary: bool, message: str) -> None:
    with pytest.raises(V2Error) as err:
        encode_response("m", "1", [("bad", value)], lambda _n: binary)
    assert err.value.status == 500 and message in err.value.message


def test_non_text_bytes_go_through_binary() -> None:
    value = np.array([b"\xff\xfe", b"ok"], dtype=object)
    encoded = encode_response("m", "1", [("b", value)], lambda _n: True)
    _, body = encoded.http()
    result = tritonhttp.InferenceServerClient.parse_response_body(body, header_length=encoded.header_length)
    assert list(result.as_numpy("b")) == [b"\xff\xfe", b"ok"]


def test_plain_values_and_strings_become_tensors() -> None:
    encoded = encode_response("m", "", [("n", 3), ("l", [[1.5, 2.5]]), ("s", ["a", "b"])], lambda _n: False)
    doc = json.loads(encoded.header)
    assert "model_version" not in doc and "id" not in doc
    assert [(o["name"], o["datatype"], o["shape"], o["data"]) for o in doc["outputs"]] == [
        ("n", "INT64", [], [3]), ("l", "FP64", [1, 2], [1.5, 2.5]), ("s", "BYTES", [2], ["a", "b"])]
