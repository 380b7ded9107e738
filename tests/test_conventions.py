"""Each Cortex era's predictor interface, in process: v0.11 modules and request handlers, v0.12
classes, v0.17+ arguments by name, v0.34's Handler; error statuses, package hints, TF flat lists."""
from __future__ import annotations

import base64
import json
import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cortexd.callconv import CALL_CLASS, CALL_CLASS_KWARGS, CALL_HANDLER, CALL_MODULE, CALL_V011
from cortexd.protocol import ReplicaSpec
from cortexd.replica.calls import Headers, QueryParams, error_status
from cortexd.replica.main import build_handler
from cortexd.replica.packages import missing_package_hint
from cortexd.replica.predictors import PredictorLoadError, load_predictor
from cortexd.replica.tf_outputs import flat_values, signature_def_map
from tests import modelgen

SAMPLE = [5.1, 3.5, 1.4, 0.2]


def spec(tmp: Path, code: str, call: str, kind: str = "python", model: str | None = None,
         config: dict[str, Any] | None = None, env: dict[str, str] | None = None, name: str = "p.py") -> ReplicaSpec:
    path = tmp / name
    path.write_text(textwrap.dedent(code))
    return ReplicaSpec(api_name="a", kind=kind, predictor_path=str(path), model_path=model, signature_key=None,
                       config=config or {}, python_path=str(tmp), cpu=1, call=call, env=env or {})


def post(
    predictor: Any, call: str, body: Any, query: str = "", headers: list[tuple[str, str]] | None = None
) -> tuple[int, Any]:
    if call in (CALL_CLASS_KWARGS, CALL_HANDLER):  # v0.17+ reads the body by its Content-Type, as a client sends it
        headers = [("Content-Type", "application/json")] + list(headers or [])
    status, payload = build_handler(predictor, call=call)("POST", "/predict", query, json.dumps(body).encode(), headers)
    return status, json.loads(payload)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return modelgen.onnx_linear(str(tmp_path_factory.mktemp("onnx") / "linear.onnx"))


# --- v0.11 ---------------------------------------------------------------------------------------


def test_v011_module_gets_the_model_path_and_metadata(tmp_path: Path) -> None:
    model = tmp_path / "weights.txt"
    model.write_text("3")
    ctx = spec(tmp_path, """
        state = {}
        def init(model_path, metadata):
            state["factor"] = int(open(model_path).read()) * metadata["scale"]
        def predict(sample, metadata):
            return {"y": sample["x"] * state["factor"], "labels": metadata["labels"]}
    """, CALL_V011, model=str(model), config={"scale": 2, "labels": ["a"]})
    assert post(load_predictor(ctx), CALL_V011, {"x": 5}) == (200, {"y": 30, "labels": ["a"]})


def test_v011_init_gets_none_without_a_model_and_errors_answer_406(tmp_path: Path) -> None:
    ctx = spec(tmp_path, """
        seen = []
        def init(model_path, metadata):
            seen.append(model_path)
        def predict(sample, metadata):
            if sample == "boom":
                raise ValueError("bad sample")
            return seen
    """, CALL_V011)
    predictor = load_predictor(ctx)
    assert post(predictor, CALL_V011, 1) == (200, [None])
    status, body = post(predictor, CALL_V011, "boom")
    assert status == 406 and body == {"error": "prediction failed: ValueError: bad sample"}


def test_v011_file_holding_a_v012_class_says_how_to_fix_the_yaml(tmp_path: Path) -> None:
    ctx = spec(tmp_path, "class PythonPredictor:\n    def __init__(self, config): pass\n", CALL_V011)
    with pytest.raises(PredictorLoadError, match=r"expected a function predict\(sample, metadata\); this file defines "
                                                 r"a PythonPredictor class, the v0.12 interface: write `type: python`"):
        load_predictor(ctx)


def test_v011_onnx_request_handler(tmp_path: Path, onnx_model: str) -> None:
    ctx = spec(tmp_path, """
        import numpy as np
        def pre_inference(sample, signature, metadata):
            return {signature[0].name: np.array([[sample["a"], sample["b"], sample["c"], sample["d"]]])}
        def post_inference(prediction, signature, metadata):
            return {"label": metadata["labels"][int(prediction[1][0])], "outputs": [o.name for o in signature]}
    """, CALL_V011, kind="onnx", model=onnx_model, config={"labels": ["x", "y", "z"]})
    status, body = post(load_predictor(ctx), CALL_V011, dict(zip("abcd", SAMPLE, strict=True)))
    assert status == 200
    assert body == {"label": "xyz"[modelgen.linear_labels([SAMPLE])[0]], "outputs": ["scores", "label"]}


def test_v011_onnx_without_handler_answers_the_list_of_outputs(tmp_path: Path, onnx_model: str) -> None:
    ctx = ReplicaSpec(api_name="a", kind="onnx", predictor_path=None, model_path=onnx_model, signature_key=None,
                      config={}, python_path=str(tmp_path), call=CALL_V011)
    status, body = post(load_predictor(ctx), CALL_V011, [SAMPLE])
    assert status == 200 and isinstance(body, list) and len(body) == 2
    assert body[1] == modelgen.linear_labels([SAMPLE]) and np.asarray(body[0]).shape == (1, 3)


# --- v0.12 classes, positional ---------------------------------------------------------------------


def test_v012_python_and_onnx_classes(tmp_path: Path, onnx_model: str) -> None:
    python = spec(tmp_path, """
        class PythonPredictor:
            def __init__(self, config):
                self.k = config["k"]
            def predict(self, sample):
                return sample * self.k
    """, CALL_CLASS, config={"k": 3})
    assert post(load_predictor(python), CALL_CLASS, 2) == (200, 6)
    onnx = spec(tmp_path, """
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client
            def predict(self, payload):
                return int(self.client.predict(payload)[1][0])
    """, CALL_CLASS, kind="onnx", model=onnx_model, name="o.py")
    assert post(load_predictor(onnx), CALL_CLASS, SAMPLE) == (200, modelgen.linear_labels([SAMPLE])[0])


# --- v0.17+: arguments by name ---------------------------------------------------------------------

KWARGS_CASES = [
    ("def predict(self, payload, query_params, headers):\n"
     "        return [payload, query_params['q'], headers['X-Key']]",
     [7, "2", "k1"]),
    ("def predict(self, headers, payload):\n        return [headers.get('x-key'), payload]", ["k1", 7]),
    ("def predict(self, query_params):\n        return query_params.getlist('q')", ["1", "2"]),
    ("def predict(self):\n        return 'nothing asked'", "nothing asked"),
    ("def predict(self, sample):\n        return sample + 1", 8),   # v0.14-v0.16: one argument, any name
]


@pytest.mark.parametrize(("method", "expected"), KWARGS_CASES, ids=[c[0].split("\n")[0] for c in KWARGS_CASES])
def test_v017_arguments_by_name(tmp_path: Path, method: str, expected: Any) -> None:
    code = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    " + method + "\n"
    ctx = spec(tmp_path, code, CALL_CLASS_KWARGS)
    predictor = load_predictor(ctx)
    wants = getattr(predictor, "wants", frozenset())
    headers = [("X-Key", "k1"), ("Content-Type", "application/json")] if "headers" in wants else None
    assert post(predictor, CALL_CLASS_KWARGS, 7, query="q=1&q=2", headers=headers) == (200, expected)


def test_unknown_predict_argument_is_a_load_error(tmp_path: Path) -> None:
    ctx = spec(tmp_path, """
    class PythonPredictor:
        def __init__(self, config): pass
        def predict(self, payload, extra): return 1
    """, CALL_CLASS_KWARGS)
    with pytest.raises(PredictorLoadError, match="unknown argument 'extra'; accepted: payload, query_params, headers"):
        load_predictor(ctx)


def test_constructor_arguments_by_name_and_post_predict(tmp_path: Path, onnx_model: str) -> None:
    done = tmp_path / "after.json"
    ctx = spec(tmp_path, f"""
    import json
    class ONNXPredictor:
        def __init__(self, config, onnx_client, metrics_client=None):
            self.client, self.metrics = onnx_client, metrics_client
        def predict(self, payload):
            self.metrics.put_metric("x", 1)
            return int(self.client.predict(payload)[1][0])
        def post_predict(self, response, query_params):
            open({str(done)!r}, "w").write(json.dumps([response, query_params["id"]]))
    """, CALL_CLASS_KWARGS, kind="onnx", model=onnx_model)
    predictor = load_predictor(ctx)
    assert post(predictor, CALL_CLASS_KWARGS, SAMPLE, query="id=9") == (200, modelgen.linear_labels([SAMPLE])[0])
    predictor._background.shutdown(wait=True)   # post_predict runs after the answer, on its own thread
    assert json.loads(done.read_text()) == [modelgen.linear_labels([SAMPLE])[0], "9"]


def test_handler_with_callback_and_http_exception(tmp_path: Path) -> None:
    ctx = spec(tmp_path, """
    class HTTPException(Exception):   # what starlette/fastapi raise; matched by name and status_code
        def __init__(self, status_code, detail=""):
            super().__init__(detail)
            self.status_code = status_code
    calls = []
    class Handler:
        def __init__(self, config):
            pass
        def handle_post(self, payload):
            if payload == "teapot":
                raise HTTPException(418, "short and stout")
            if payload == "crash":
                raise RuntimeError("no")
            return {"got": payload}, lambda: calls.append(payload)
    """, CALL_HANDLER)
    predictor = load_predictor(ctx)
    assert post(predictor, CALL_HANDLER, 1) == (200, {"got": 1})
    status, body = post(predictor, CALL_HANDLER, "teapot")
    assert status == 418 and body == {"error": "prediction failed: HTTPException: short and stout"}
    assert post(predictor, CALL_HANDLER, "crash")[0] == 500


def test_handler_class_missing_says_where_it_belongs(tmp_path: Path) -> None:
    ctx = spec(tmp_path, "class PythonPredictor:\n    def __init__(self, config): pass\n    def predict(self): pass\n",
               CALL_HANDLER)
    with pytest.raises(PredictorLoadError, match="no class Handler found .it has PythonPredictor: a Handler is written "
                                                 "under `handler:`"):
        load_predictor(ctx)


@pytest.mark.parametrize(("call", "status"), [(CALL_MODULE, 500), (CALL_V011, 406), (CALL_CLASS, 406),
                                              (CALL_CLASS_KWARGS, 500), (CALL_HANDLER, 500)])
def test_error_status_per_release(call: str, status: int) -> None:
    assert error_status(call, ValueError("x")) == status


def test_env_is_set_before_the_predictor_is_imported(tmp_path: Path) -> None:
    ctx = spec(tmp_path, """
    import os
    MODE = os.environ["CORTEX_TEST_MODE"]
    class PythonPredictor:
        def __init__(self, config): pass
        def predict(self, payload): return MODE
    """, CALL_CLASS, env={"CORTEX_TEST_MODE": "fast"})
    try:
        assert post(load_predictor(ctx), CALL_CLASS, 1) == (200, "fast")
    finally:
        os.environ.pop("CORTEX_TEST_MODE", None)


# --- packages Cortex's images had ------------------------------------------------------------------


def test_a_missing_image_package_is_named_with_the_fix(tmp_path: Path) -> None:
    ctx = spec(tmp_path, "import tensor2tensor\nclass PythonPredictor: pass\n", CALL_CLASS)
    with pytest.raises(PredictorLoadError) as info:
        load_predictor(ctx)
    assert ("the package tensor2tensor (import tensor2tensor) is not installed: Cortex's images included it"
            in str(info.value))
    assert "add `tensor2tensor` to requirements.txt next to cortex.yaml" in str(info.value)


def test_a_package_imported_at_predict_time_is_named_too(tmp_path: Path) -> None:
    ctx = spec(tmp_path, """
    class PythonPredictor:
        def __init__(self, config): pass
        def predict(self, payload):
            import xgboost
    """, CALL_CLASS_KWARGS)
    status, body = post(load_predictor(ctx), CALL_CLASS_KWARGS, 1)
    assert status == 500 and "add `xgboost` to requirements.txt" in body["error"]


@pytest.mark.parametrize(("name", "fragment"), [("sklearn.linear_model", "scikit-learn (import sklearn)"),
                                                ("cv2", "opencv-python"), ("PIL", "Pillow"),
                                                ("my_private_lib", "the module my_private_lib is not installed")])
def test_missing_package_hint(name: str, fragment: str) -> None:
    hint = missing_package_hint(ModuleNotFoundError(f"No module named '{name}'", name=name))
    assert hint is not None and fragment in hint
    assert missing_package_hint(ImportError("cannot import name x")) is None


# --- request arguments -----------------------------------------------------------------------------


def test_query_params_and_headers_read_as_starlette_did() -> None:
    q = QueryParams("a=1&b=&a=2&debug=true")
    assert (q["a"], q.getlist("a"), q["b"], q["debug"]) == ("2", ["1", "2"], "", "true")
    h = Headers([("Content-Type", "text/plain"), ("X-Many", "1"), ("x-many", "2")])
    got = (h["content-type"], h.get("CONTENT-TYPE"), "X-MANY" in h, h.getlist("x-many"))
    assert got == ("text/plain", "text/plain", True, ["1", "2"])


# --- TensorFlow outputs as the protobuf JSON mapping gave them ------------------------------------

FLAT_CASES = [
    (np.array([[0.5, 1.0]], dtype=np.float32), [0.5, 1.0]),
    (np.array([[1, 2], [3, 4]], dtype=np.int32), [1, 2, 3, 4]),
    (np.array([0, 2], dtype=np.int64), ["0", "2"]),          # 64-bit integers are strings in the mapping
    (np.array([True, False]), [True, False]),
    (np.array([b"setosa", b"\xff"], dtype=object), [base64.b64encode(b"setosa").decode(), "/w=="]),
    (np.array([np.nan, np.inf, -np.inf], dtype=np.float64), ["NaN", "Infinity", "-Infinity"]),
    (np.array(7, dtype=np.int32), [7]),                       # a scalar is a list of one
    (np.array([1 + 2j], dtype=np.complex64), [1.0, 2.0]),
]


@pytest.mark.parametrize(("array", "flat"), FLAT_CASES, ids=[str(c[0].dtype) for c in FLAT_CASES])
def test_flat_values(array: Any, flat: list[Any]) -> None:
    assert flat_values(array) == flat


def test_cortex_releases_served_predict_among_several_signatures() -> None:
    from cortexd.replica.tf_predictor import choose_signature

    assert choose_signature(["predict", "serving_default"], None, "m", prefer_predict=True) == "predict"
    with pytest.raises(PredictorLoadError, match="several signatures"):
        choose_signature(["predict", "serving_default"], None, "m")   # the seed dialect asks


def test_signature_def_map_in_the_json_mapping() -> None:
    got = signature_def_map({"serving_default": ([("x", "float32", (None, 4))], [("label", "int64", (None,))])})
    assert got == {"serving_default": {
        "inputs": {"x": {"name": "x", "dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "-1"}, {"size": "4"}]}}},
        "outputs": {"label": {"name": "label", "dtype": "DT_INT64", "tensorShape": {"dim": [{"size": "-1"}]}}},
        "methodName": "tensorflow/serving/predict",
    }}


@pytest.fixture(scope="module")
def tf_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("tensorflow")
    return modelgen.tf_saved_model(str(tmp_path_factory.mktemp("tf") / "m"), version=1)


@pytest.mark.slow
def test_v012_tensorflow_predictor_gets_flat_lists(tmp_path: Path, tf_model: str) -> None:
    ctx = spec(tmp_path, """
    class TensorFlowPredictor:
        def __init__(self, tensorflow_client, config):
            self.client = tensorflow_client
        def predict(self, payload):
            prediction = self.client.predict(payload)
            return {"label": int(prediction["label"][0]), "raw": prediction}
    """, CALL_CLASS, kind="tensorflow", model=tf_model)
    status, body = post(load_predictor(ctx), CALL_CLASS, {"x": [SAMPLE, [1, 2, 3, 4]]})
    assert status == 200
    assert body["label"] == modelgen.linear_labels([SAMPLE])[0]
    labels = modelgen.linear_labels([SAMPLE, [1, 2, 3, 4]])
    assert body["raw"]["label"] == [str(v) for v in labels]                                  # flat, int64 as text
    assert len(body["raw"]["scores"]) == 6 and body["raw"]["version"] == [1]                 # 2x3 flattened


@pytest.mark.slow
def test_v011_tensorflow_request_handler_gets_the_signature_def(tmp_path: Path, tf_model: str) -> None:
    ctx = spec(tmp_path, """
    def pre_inference(sample, signature, metadata):
        shape = signature["serving_default"]["inputs"]["x"]["tensorShape"]["dim"]
        assert [d["size"] for d in shape] == ["-1", "4"]
        return {"x": [sample]}
    def post_inference(prediction, signature, metadata):
        return metadata["labels"][int(prediction["label"][0])]
    """, CALL_V011, kind="tensorflow", model=tf_model, config={"labels": ["x", "y", "z"]})
    assert post(load_predictor(ctx), CALL_V011, SAMPLE) == (200, "xyz"[modelgen.linear_labels([SAMPLE])[0]])


@pytest.mark.slow
def test_seed_tensorflow_keeps_shapes(tmp_path: Path, tf_model: str) -> None:
    ctx = ReplicaSpec(api_name="a", kind="tensorflow", predictor_path=None, model_path=tf_model, signature_key=None,
                      config={}, python_path=str(tmp_path), call=CALL_MODULE)
    status, body = post(load_predictor(ctx), CALL_MODULE, {"x": [SAMPLE]})
    assert status == 200 and np.asarray(body["scores"]).shape == (1, 3)
    assert body["label"] == modelgen.linear_labels([SAMPLE])


# --- threads_per_process: the replica's server serves several connections at once --------------


def test_threads_per_process_serves_requests_at_once(tmp_path: Path) -> None:
    """Four requests on four connections meet at a barrier inside the handler: they pass only
    if all four run at the same time (one at a time, the barrier times out and they answer 500)."""
    import asyncio
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from cortexd.replica.server import ReplicaProtocol

    barrier = threading.Barrier(4, timeout=20)
    seen: list[list[tuple[str, str]] | None] = []

    def handler(
        method: str, path: str, query: str, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> tuple[int, bytes]:
        seen.append(headers)
        barrier.wait()
        return 200, body

    sock_path = str(tmp_path / "r.sock")
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(4)

    async def serve() -> None:
        connections: set[ReplicaProtocol] = set()
        await loop.create_unix_server(lambda: ReplicaProtocol(handler, connections, executor, want_headers=True),
                                      path=sock_path)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    answers: list[bytes] = []

    def client(i: int) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(sock_path)
            for n in range(2):   # two requests back to back on the same connection, answered in order
                body = f"{i}-{n}".encode()
                s.sendall(b"POST /predict HTTP/1.1\r\nX-Req: %d\r\ncontent-length: %d\r\n\r\n%s" % (i, len(body), body))
                data = b""
                while not data.endswith(body):
                    chunk = s.recv(4096)
                    assert chunk, "connection closed"
                    data += chunk
                answers.append(data)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    executor.shutdown()
    assert len(answers) == 8 and all(a.startswith(b"HTTP/1.1 200 OK") for a in answers), answers
    assert sorted(h[0][1] for h in seen if h) == sorted(str(i) for i in range(4) for _ in range(2))


def test_v017_payload_follows_the_content_type(tmp_path: Path) -> None:
    code = """
        class PythonPredictor:
            def __init__(self, config):
                pass
            def predict(self, payload):
                if hasattr(payload, "getlist"):  # FormData
                    return {k: (v.filename, v.read().decode()) if hasattr(v, "read") else v for k, v in payload.items()}
                value = payload if not isinstance(payload, bytes) else payload.hex()
                return {"type": type(payload).__name__, "value": value}
    """
    predictor = load_predictor(spec(tmp_path, code, CALL_CLASS_KWARGS))
    handle = build_handler(predictor, call=CALL_CLASS_KWARGS, str_as_text=True)

    def ask(body: bytes, content_type: str | None) -> Any:
        headers = [("Content-Type", content_type)] if content_type else []
        status, payload = handle("POST", "/predict", "", body, headers)[:2]
        assert status == 200, payload
        return json.loads(payload)

    assert ask(b'{"a": 1}', "application/json") == {"type": "dict", "value": {"a": 1}}
    assert ask("héllo".encode("latin-1"), "text/plain; charset=latin-1") == {"type": "str", "value": "héllo"}
    assert ask(b"\x00\x01", "application/octet-stream") == {"type": "bytes", "value": "0001"}
    assert ask(b"\x02", None) == {"type": "bytes", "value": "02"}  # no Content-Type: the raw bytes, as Cortex
    assert ask(b"a=1&b=two", "application/x-www-form-urlencoded") == {"a": "1", "b": "two"}
    multipart = (b"--XX\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n"
                 b"--XX\r\nContent-Disposition: form-data; name=\"img\"; filename=\"x.txt\"\r\n"
                 b"Content-Type: text/plain\r\n\r\nfile body\r\n--XX--\r\n")
    assert ask(multipart, "multipart/form-data; boundary=XX") == {"note": "hi", "img": ["x.txt", "file body"]}
