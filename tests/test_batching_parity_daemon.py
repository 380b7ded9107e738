"""Server-side batching end to end for a Cortex v0.17+ predictor: a real `cortexd serve`, real
replicas, real HTTP. Two APIs serve the same predictor file, one batching and one not; every
request sent to the batching one at the same time gets exactly the answer (status, content
type, headers, body) the other one gives it alone, and the predictor saw them as one batch.
The Open Inference Protocol reaches the batching API's predict as a list of one."""

from __future__ import annotations

import json
import os
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.daemon_harness import Client, Daemon, Response, write_project
from tests.test_batching_parity import MULTIPART, REQUEST_FORM, J, Request

pytestmark = pytest.mark.slow

YAML = """\
- name: batched
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    threads_per_process: 8
    server_side_batching: {{max_batch_size: 8, batch_interval: 5s}}
    config: {{batched: true, log: {log}}}
  compute: {{cpu: 100m}}
- name: single
  kind: RealtimeAPI
  predictor: {{type: python, path: predictor.py}}
  compute: {{cpu: 100m}}
"""

# Eight requests: the batch is full when the last arrives, so they form one batch.
REQUESTS: list[Request] = [
    ("", [*J, ("X-Tag", "a")], b'{"a": 1}'),
    ("q=1&q=2", [("Content-Type", "text/plain; charset=utf-8")], "h\u00e9llo".encode()),
    ("", [("Content-Type", "application/octet-stream")], b"\x00\xff"),
    ("", [("Content-Type", "application/x-www-form-urlencoded")], b"a=1&b=2&a=3"),
    ("", [("Content-Type", "multipart/form-data; boundary=XyZ")], MULTIPART),
    ("kind=text&n=7", J, b"{}"),
    ("kind=response", J, b"{}"),
    ("kind=nan", J, b"{}"),
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    root = str(tmp_path_factory.mktemp("parity"))
    log = os.path.join(root, "batches")
    project = write_project(os.path.join(root, "p"), YAML.format(log=json.dumps(log)),
                            {"predictor.py": textwrap.dedent(REQUEST_FORM)})
    d = Daemon(project, os.path.join(root, "d")).start(timeout=180)
    try:
        yield d, log
    finally:
        d.stop()


def send(port: int, api: str, request: Request) -> Response:
    query, headers, body = request
    client = Client(port, timeout=60)
    try:
        path = f"/{api}" + (f"?{query}" if query else "")
        # the harness sends JSON's type unless told otherwise; a request without one sends none
        return client.request("POST", path, body, dict(headers) or {"Content-Type": ""})
    finally:
        client.close()


def visible(r: Response) -> tuple[int, bytes, str, str | None]:
    return r.status, r.body, r.headers.get("content-type", ""), r.headers.get("x-made")


def test_every_request_of_a_batch_gets_its_unbatched_answer(daemon: tuple[Daemon, str]) -> None:
    d, log = daemon
    expected = [visible(send(d.port, "single", r)) for r in REQUESTS]
    start = threading.Barrier(len(REQUESTS))

    def post(request: Request) -> Response:
        start.wait(30)
        return send(d.port, "batched", request)

    with ThreadPoolExecutor(max_workers=len(REQUESTS)) as pool:
        got = [visible(r) for r in pool.map(post, REQUESTS)]
    for request, want, have in zip(REQUESTS, expected, got, strict=True):
        assert have == want, request
    with open(log) as f:
        assert [int(n) for n in f.read().split()] == [8]  # one full batch
    assert [s for s, *_ in got] == [200] * 6 + [201, 500]
    assert got[5][1:3] == (b"plain 7", "text/plain; charset=utf-8")
    assert got[6] == (201, b"<b>hi</b>", "text/html", "yes")
    assert json.loads(got[0][1])["tag"] == "a"
    assert json.loads(got[1][1])["query"] == [["q", "1"], ["q", "2"]]


def test_a_v2_request_reaches_the_batching_predictor_as_a_list_of_one(daemon: tuple[Daemon, str]) -> None:
    d, log = daemon
    before = os.path.getsize(log) if os.path.exists(log) else 0
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    r = Client(d.port).post("/v2/models/batched/infer", doc)
    assert r.status == 200, r.body
    assert {o["name"]: o["data"] for o in r.json()["outputs"]} == {"y": [2.0, 4.0], "query": [0], "headers": [0]}
    with open(log) as f:
        f.seek(before)
        assert f.read().split() == ["1"]
