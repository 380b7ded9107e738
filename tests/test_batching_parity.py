"""Server-side batching gives each request exactly what it would get unbatched (apart from the
predictor seeing lists): payloads read by their own Content-Type, query parameters and
headers per request, answers rendered as without batching (text, bytes, Response objects,
NaN), errors per request or per batch as docs/batching.md says. Real predictors loaded from
files written here, requests and batch frames through the replica's own handler (no
daemon: tests/test_batching_parity_daemon.py has the end-to-end run)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cortexd import batchframe
from cortexd.callconv import CALL_CLASS_KWARGS, CALL_HANDLER, CALL_MODULE
from cortexd.daemon.serving.answers import JSON, answer_headers
from cortexd.protocol import ReplicaSpec
from cortexd.replica import batching
from cortexd.replica.main import build_handler
from cortexd.replica.predictors import load_predictor
from tests import modelgen
from tests.daemon_harness import wait_for

Handler = Any
# (query, headers as the client sent them, body)
Request = tuple[str, list[tuple[str, str]], bytes]
# (status, body, content type, other headers): what a client of the daemon would see
Seen = tuple[int, bytes, str, tuple[tuple[str, str], ...]]

# The v0.17+ form: one answer() per request, batched or not; `batched` (from config) tells
# which form predict gets, so a JSON list body is never mistaken for a batch.
REQUEST_FORM = """\
    import json, math
    from collections.abc import Mapping

    class Response:  # Starlette's shape: status_code, body, headers
        def __init__(self, body, status_code=200, headers=None):
            self.body, self.status_code, self.headers = body, status_code, headers or {}

    class HTTPException(Exception):
        def __init__(self, status_code, detail=""):
            super().__init__(detail)
            self.status_code = status_code

    def described(payload):
        if isinstance(payload, bytes):
            return {"bytes": payload.hex()}
        if isinstance(payload, str):
            return {"str": payload}
        if isinstance(payload, Mapping) and hasattr(payload, "getlist"):
            return {"form": {k: [v if isinstance(v, str) else [v.filename, v.content_type, v.read().decode()]
                                 for v in payload.getlist(k)] for k in payload}}
        return {"json": payload}

    def answer(payload, query, headers):
        kind = query.get("kind", "echo")
        if isinstance(payload, dict) and hasattr(payload.get("x"), "shape"):  # a V2 request's arrays
            return {"y": payload["x"] * 2, "query": len(query), "headers": len(headers)}
        if kind == "echo":
            return {"payload": described(payload), "query": [list(p) for p in query.multi_items()],
                    "tag": headers.get("X-Tag"), "tags": headers.getlist("x-tag")}
        if kind == "text":
            return "plain " + query.get("n", "?")
        if kind == "bytes":
            return b"\\x00\\x01raw"
        if kind == "response":
            return Response(b"<b>hi</b>", 201, {"content-type": "text/html", "x-made": "yes"})
        if kind == "nan":
            return {"v": [1.0, math.nan]}
        if kind == "bodiless":
            return Response(None)
        if kind == "teapot":
            raise HTTPException(418, "short and stout")
        raise ValueError(kind)

    class PythonPredictor:
        def __init__(self, config):
            self.config = config

        def predict(self, payload, query_params, headers):
            if not self.config.get("batched"):
                return answer(payload, query_params, headers)
            if "log" in self.config:
                with open(self.config["log"], "a") as f:
                    f.write(json.dumps(len(payload)) + "\\n")
            return [answer(p, q, h) for p, q, h in zip(payload, query_params, headers, strict=True)]
"""

MULTIPART = (
    b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
    b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
    b"Content-Type: text/plain\r\n\r\nfile body\r\n--XyZ--\r\n"
)
J = [("Content-Type", "application/json")]

REQUESTS: list[Request] = [
    ("", [*J, ("X-Tag", "a"), ("x-tag", "b")], b'{"a": 1}'),
    ("q=1&q=2", [("Content-Type", "text/plain; charset=utf-8")], "h\u00e9llo".encode()),
    ("", [("Content-Type", "text/plain; charset=latin-1")], "h\u00e9llo".encode("latin-1")),
    ("", [("Content-Type", "application/octet-stream")], b"\x00\xff"),
    ("", [], b"no content type at all"),
    ("", [("Content-Type", "application/x-www-form-urlencoded")], b"a=1&b=2&a=3"),
    ("", [("Content-Type", "multipart/form-data; boundary=XyZ")], MULTIPART),
    ("", J, b"[1, 2, 3]"),
    ("kind=text&n=7", J, b"{}"),
    ("kind=bytes", J, b"{}"),
    ("kind=response", J, b"{}"),
    ("kind=nan", J, b"{}"),
    ("kind=bodiless", J, b"{}"),
    ("", J, b"{not json"),
    ("", [("Content-Type", "text/plain; charset=no-such-charset")], b"x"),
    ("", [("Content-Type", "multipart/form-data")], b"no boundary"),
]


def write(tmp: Path, name: str, code: str) -> str:
    path = tmp / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def spec(tmp: Path, path: str, size: int, call: str = CALL_CLASS_KWARGS, config: dict[str, Any] | None = None,
         nan_as_null: bool = False, str_as_text: bool = False) -> ReplicaSpec:
    return ReplicaSpec(api_name="api", kind="python", predictor_path=path, model_path=None, signature_key=None,
                       config=config or {}, python_path=str(tmp), cpu=1.0, max_batch_size=size,
                       nan_as_null=nan_as_null, str_as_text=str_as_text, call=call)


def handler_for(s: ReplicaSpec) -> Handler:
    predictor = load_predictor(s)
    return build_handler(predictor, batching.for_replica(predictor, s), s.nan_as_null, s.str_as_text, s.call)


def seen(answer: tuple[Any, ...]) -> Seen:
    """An answer of the replica's handler as the client would see it (status, body, type, headers)."""
    status, body = answer[0], bytes(answer[1])
    if len(answer) == 3:
        content_type, extra = answer_headers(b"\r\n" + answer[2])
        return status, body, content_type, extra
    return status, body, JSON, ()


def header_lines(headers: list[tuple[str, str]]) -> bytes:
    """The headers slot of a batch frame, as the daemon fills it (serving/proxy.py forwarded_headers)."""
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)


def through_frame(handle: Handler, requests: list[Request]) -> list[Seen]:
    frame = batchframe.encode_request([(q, header_lines(h), b) for q, h, b in requests])
    status, answer = handle("POST", batchframe.BATCH_PATH, "", frame)
    assert status == 200, answer
    out: list[Seen] = []
    for s, body in batchframe.decode_answer(answer, expected=len(requests)):
        out.append((s, bytes(body), getattr(body, "content_type", JSON), getattr(body, "headers", ())))
    return out


def alone(handle: Handler, request: Request) -> Seen:
    query, headers, body = request
    return seen(handle("POST", "/predict", query, body, headers))


@pytest.mark.parametrize("nan_as_null, str_as_text", [(False, False), (True, True)], ids=["plain", "null-text"])
@pytest.mark.parametrize("call", [CALL_CLASS_KWARGS, CALL_HANDLER])
def test_each_batched_request_gets_exactly_its_unbatched_answer(
    tmp_path: Path, call: str, nan_as_null: bool, str_as_text: bool
) -> None:
    code = REQUEST_FORM
    if call == CALL_HANDLER:
        code = code.replace("class PythonPredictor:", "class Handler:").replace("def predict(", "def handle_post(")
    path = write(tmp_path, "p.py", code)
    log = tmp_path / "batches"
    single = handler_for(spec(tmp_path, path, 0, call, {}, nan_as_null, str_as_text))
    batched = handler_for(spec(tmp_path, path, 32, call, {"batched": True, "log": str(log)}, nan_as_null, str_as_text))
    expected = [alone(single, r) for r in REQUESTS]
    got = through_frame(batched, REQUESTS)
    for request, want, have in zip(REQUESTS, expected, got, strict=True):
        assert have == want, request
    # one call of predict for the requests whose bodies parsed (not the last three)
    assert log.read_text().split() == [str(len(REQUESTS) - 3)]
    statuses = [s for s, *_ in got]
    assert statuses[:-3] == [200] * 10 + [201, 500 if not nan_as_null else 200, 500]
    assert statuses[-3:] == [400, 400, 400]
    # what a client sees, spelled out for a few of them
    assert json.loads(got[0][1])["tags"] == ["a", "b"] and json.loads(got[0][1])["tag"] == "b"
    assert json.loads(got[1][1])["payload"] == {"str": "h\u00e9llo"} and json.loads(got[1][1])["query"] == [
        ["q", "1"], ["q", "2"]]
    assert json.loads(got[6][1])["payload"] == {"form": {"note": ["hello"], "file": [["a.txt", "text/plain",
                                                                                        "file body"]]}}
    assert got[9][1:3] == (b"\x00\x01raw", "application/octet-stream")
    assert got[10] == (201, b"<b>hi</b>", "text/html", (("x-made", "yes"),))
    if nan_as_null:
        assert json.loads(got[11][1]) == {"v": [1.0, None]}
        assert got[8][1:3] == (b"plain 7", "text/plain; charset=utf-8")
    else:
        assert "prediction is not valid JSON: NaN at prediction[\"v\"][1]" in json.loads(got[11][1])["error"]
        assert json.loads(got[8][1]) == "plain 7"
    assert "without a body" in json.loads(got[12][1])["error"]


def test_a_lone_post_predict_on_a_batching_replica_reads_its_content_type_query_and_headers(tmp_path: Path) -> None:
    path = write(tmp_path, "p.py", REQUEST_FORM)
    single = handler_for(spec(tmp_path, path, 0))
    batched = handler_for(spec(tmp_path, path, 8, config={"batched": True}))
    for request in REQUESTS:
        assert alone(batched, request) == alone(single, request), request


def test_an_http_exception_answers_its_status_for_every_request_of_the_batch(tmp_path: Path) -> None:
    path = write(tmp_path, "p.py", REQUEST_FORM)
    batched = handler_for(spec(tmp_path, path, 8, config={"batched": True}))
    got = through_frame(batched, [("kind=teapot", J, b"{}"), ("", J, b"{}")])
    assert [s for s, *_ in got] == [418, 418]
    assert json.loads(got[0][1]) == {"error": "prediction failed: HTTPException: short and stout"}
    assert alone(batched, ("kind=teapot", J, b"{}")) == alone(handler_for(spec(tmp_path, path, 0)),
                                                              ("kind=teapot", J, b"{}"))


WRONG_LENGTH = """\
    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self, payload, query_params, headers):
            return payload[:-1]
"""


def test_a_wrong_length_from_the_v017_form_fails_every_request_of_the_batch(tmp_path: Path) -> None:
    handle = handler_for(spec(tmp_path, write(tmp_path, "p.py", WRONG_LENGTH), 8))
    got = through_frame(handle, [("", J, b"1"), ("", J, b"2"), ("", J, b"{bad")])
    assert [s for s, *_ in got] == [500, 500, 400]
    for _, body, _, _ in got[:2]:
        message = json.loads(body)["error"]
        assert message.startswith("prediction failed: predict takes a list of payloads when server_side_batching")
        assert "it returned 1 predictions for a batch of 2" in message


POST_PREDICT = """\
    import json

    class PythonPredictor:
        def __init__(self, config):
            self.log = config["log"]

        def predict(self, payload, query_params, headers):
            return [p * 10 for p in payload]

        def post_predict(self, response, payload, query_params, headers):
            with open(self.log, "a") as f:
                f.write(json.dumps([response, payload, query_params.get("id"), headers.get("x-tag")]) + "\\n")
"""


def test_post_predict_runs_once_per_request_with_its_own_values(tmp_path: Path) -> None:
    log = tmp_path / "post"
    handle = handler_for(spec(tmp_path, write(tmp_path, "p.py", POST_PREDICT), 8, config={"log": str(log)}))
    got = through_frame(handle, [("id=a", [*J, ("X-Tag", "t1")], b"1"), ("id=b", J, b"2")])
    assert [(s, json.loads(b)) for s, b, *_ in got] == [(200, 10), (200, 20)]

    def lines() -> list[Any]:
        return sorted(json.loads(line) for line in log.read_text().splitlines()) if log.exists() else []

    wait_for(lambda: len(lines()) == 2, timeout=10, what="post_predict twice")
    assert lines() == [[10, 1, "a", "t1"], [20, 2, "b", None]]


# -- the Open Inference Protocol on a batching Python API --------------------------------------

MODULE_LISTS = """\
    def predict(samples, metadata):
        assert isinstance(samples, list), f"batching is on: predict gets a list, not {type(samples).__name__}"
        if any("short" in s for s in samples):
            return []
        return [{"y": s["x"] * 2, "n": len(samples)} for s in samples]
"""


def v2(handle: Handler, inputs: list[dict[str, Any]]) -> tuple[int, Any]:
    status, body = handle("POST", "/v2/infer", "m=api&v=1", json.dumps({"inputs": inputs}).encode())
    return status, json.loads(body)


def test_v2_on_a_batching_python_api_calls_predict_with_a_list_of_one(tmp_path: Path) -> None:
    handle = handler_for(spec(tmp_path, write(tmp_path, "m.py", MODULE_LISTS), 8, CALL_MODULE))
    status, out = v2(handle, [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}])
    assert status == 200, out
    assert {o["name"]: o["data"] for o in out["outputs"]} == {"y": [2.0, 4.0], "n": [1]}
    status, out = v2(handle, [{"name": "short", "datatype": "FP32", "shape": [1], "data": [1]}])
    assert status == 500
    assert out["error"].startswith("prediction failed: predict takes a list of payloads when server_side_batching")
    assert "it returned 0 predictions for a batch of 1" in out["error"]
    # the same predictor without batching gets the dict itself
    unbatched = handler_for(spec(tmp_path, write(tmp_path, "m.py", MODULE_LISTS), 0, CALL_MODULE))
    status, out = v2(unbatched, [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}])
    assert status == 500 and "batching is on: predict gets a list, not dict" in out["error"]


def test_v2_on_a_batching_v017_api_passes_lists_of_one(tmp_path: Path) -> None:
    handle = handler_for(spec(tmp_path, write(tmp_path, "p.py", REQUEST_FORM), 8, config={"batched": True}))
    status, out = v2(handle, [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}])
    assert status == 200, out
    assert {o["name"]: o["data"] for o in out["outputs"]} == {"y": [2.0, 4.0], "query": [0], "headers": [0]}


# -- an ONNX predictor class of the v0.17+ form: called per request, the model run once ------------

ONNX_REQUEST_FORM = """\
    class ONNXPredictor:
        def __init__(self, onnx_client, config):
            self.client = onnx_client

        def predict(self, payload, query_params, headers):
            label = int(self.client.predict({"input": payload["x"]})[1][0])
            return {"label": label, "id": query_params.get("id"), "tag": headers.get("x-tag")}
"""


def test_an_onnx_class_gets_each_requests_own_query_and_headers(tmp_path: Path) -> None:
    model = modelgen.onnx_linear(str(tmp_path / "linear.onnx"))
    path = write(tmp_path, "o.py", ONNX_REQUEST_FORM)

    def onnx_spec(size: int) -> ReplicaSpec:
        return ReplicaSpec(api_name="api", kind="onnx", predictor_path=path, model_path=model, signature_key=None,
                           config={}, python_path=str(tmp_path), cpu=1.0, max_batch_size=size, call=CALL_CLASS_KWARGS)

    single, batched = handler_for(onnx_spec(0)), handler_for(onnx_spec(8))
    requests: list[Request] = [
        ("id=1", [*J, ("X-Tag", "a")], b'{"x": [5.1, 3.5, 1.4, 0.2]}'),
        ("id=2", [("Content-Type", "application/json; charset=utf-8")], b'{"x": [6.7, 3.0, 5.2, 2.3]}'),
        ("id=3", [("Content-Type", "text/plain")], b'{"x": [1, 2, 3, 4]}'),  # a str payload: predict fails
    ]
    got = through_frame(batched, requests)
    assert got == [alone(single, r) for r in requests]
    labels = modelgen.linear_labels([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert [json.loads(body) for _, body, *_ in got[:2]] == [{"label": labels[0], "id": "1", "tag": "a"},
                                                           {"label": labels[1], "id": "2", "tag": None}]
    assert got[2][0] == 500 and "TypeError" in json.loads(got[2][1])["error"]
