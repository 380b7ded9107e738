"""Server-side batching end to end: a real `cortexd serve`, real replicas, real HTTP.

The daemon's queue forms the batches (cortexd/daemon/serving/batcher.py) and the replica runs
them (cortexd/replica/batching.py); docs/batching.md is what users read.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from tests.daemon_harness import Client, Daemon, Load, Response, wait_for, write_project
from tests.modelgen import linear_scores, onnx_linear

pytestmark = pytest.mark.slow

# Each batch a predictor sees is appended to a file as one JSON line: {"pid": ..., "size": ...}.
RECORDING = """\
    import json, os, time

    def predict(samples, metadata):
        with open(metadata["log"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "size": len(samples)}) + "\\n")
        time.sleep(metadata.get("sleep", 0))
        if metadata.get("short"):
            return samples[:-1]
        return [{"i": s["i"], "batch": len(samples)} for s in samples]
"""


def api(name: str, size: int, interval: str, config: dict[str, Any] | None = None, replicas: int = 1,
        kind: str = "python", model: str = "") -> str:
    section = f"  onnx:\n    model: {model}\n" if kind == "onnx" else "  python:\n    predictor: recording.py\n"
    conf = ""
    if config:
        conf = "    config:\n" + "".join(f"      {k}: {json.dumps(v)}\n" for k, v in config.items())
    return (
        f"- kind: api\n  name: {name}\n{section}{conf}"
        f"    server_side_batching:\n      max_batch_size: {size}\n      batch_interval: {interval}\n"
        f"  compute:\n    min_replicas: {replicas}\n    max_replicas: {replicas}\n    cpu: 100m\n"
    )


def batches_seen(log: str) -> list[dict[str, int]]:
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def concurrently(port: int, path: str, bodies: list[Any]) -> list[Response]:
    """Every body posted at once, each from its own connection (bounded by the pool)."""
    start = threading.Barrier(len(bodies))

    def post(body: Any) -> Response:
        client = Client(port, timeout=60)
        start.wait(30)
        try:
            return client.post(path, body)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, bodies))


def metric(d: Daemon, name: str, api_name: str) -> float:
    text = Client(d.port).get("/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and f'api="{api_name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    root = str(tmp_path_factory.mktemp("batching"))
    logs = os.path.join(root, "logs")
    os.makedirs(logs)
    project = os.path.join(root, "p")
    apis = [
        api("sizes", 8, "50ms", {"log": f"{logs}/sizes", "sleep": 0.02}),
        api("lone", 8, "300ms", {"log": f"{logs}/lone"}),
        api("short", 8, "300ms", {"log": f"{logs}/short", "short": True}),
        api("two", 4, "50ms", {"log": f"{logs}/two", "sleep": 0.05}, replicas=2),
        api("model", 8, "300ms", kind="onnx", model="linear.onnx"),
    ]
    write_project(project, "- kind: deployment\n  name: b\n" + "".join(apis), {"recording.py": RECORDING})
    onnx_linear(os.path.join(project, "linear.onnx"))
    d = Daemon(project, os.path.join(root, "d")).start(timeout=180)
    try:
        yield d, logs
    finally:
        d.stop()


def test_64_concurrent_requests_reach_the_predictor_in_batches_of_at_most_8(daemon: tuple[Daemon, str]) -> None:
    d, logs = daemon
    answers = concurrently(d.port, "/b/sizes", [{"i": i} for i in range(64)])
    assert [r.status for r in answers] == [200] * 64
    assert [r.json()["i"] for r in answers] == list(range(64))  # every client its own answer
    sizes = [b["size"] for b in batches_seen(f"{logs}/sizes")]
    assert sum(sizes) == 64 and max(sizes) <= 8
    assert max(sizes) > 1, sizes  # 64 requests at once through one replica: some shared a batch
    assert {r.json()["batch"] for r in answers} == set(sizes)
    assert metric(d, "cortexd_inference_batch_size_count", "sizes") == len(sizes)
    assert metric(d, "cortexd_inference_batch_size_sum", "sizes") == 64
    assert metric(d, "cortexd_inference_batch_wait_seconds_count", "sizes") == 64
    view = d.get("sizes")
    if view.get("batching"):  # `cortexd get API` shows it once the view carries it
        assert view["batching"]["requests"] == 64 and view["batching"]["max_batch_size"] == 8


def test_a_lone_request_waits_the_interval_and_no_longer(daemon: tuple[Daemon, str]) -> None:
    d, logs = daemon
    client = Client(d.port)
    client.post("/b/lone", {"i": -1})  # the connection is open and the replica warm
    started = time.monotonic()
    r = client.post("/b/lone", {"i": 7})
    elapsed = time.monotonic() - started
    assert r.status == 200 and r.json() == {"i": 7, "batch": 1}
    assert 0.29 <= elapsed < 0.3 + 3.0, elapsed  # the interval (300ms), plus a generous margin


def test_one_malformed_sample_gets_its_400_and_the_rest_their_200(daemon: tuple[Daemon, str]) -> None:
    d, _ = daemon
    before = metric(d, "cortexd_inference_batch_size_count", "model")
    samples: list[Any] = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2], [7.7, 3.0, 6.1, 2.3], [1.0, 1.0, 1.0, 1.0]]
    answers = concurrently(d.port, "/b/model", samples)
    assert [r.status for r in answers] == [200, 400, 200, 200]
    assert "expects float32 of shape [None, 4]; got shape [2]" in answers[1].json()["error"]
    for sample, r in zip(samples, answers, strict=True):
        if r.status == 200:
            assert np.allclose(r.json()["scores"], linear_scores([sample]), atol=1e-4)
    assert metric(d, "cortexd_inference_batch_size_count", "model") - before < 4  # some shared a batch
    # a body that is not JSON at all: the same, through the batch path
    answers = concurrently(d.port, "/b/lone", [{"i": 1}, b"{oops", {"i": 3}])
    assert [r.status for r in answers] == [200, 400, 200]


def test_a_python_predictor_returning_the_wrong_length_fails_its_batch_with_the_message(
    daemon: tuple[Daemon, str],
) -> None:
    d, logs = daemon
    answers = concurrently(d.port, "/b/short", [{"i": i} for i in range(3)])
    sizes = [b["size"] for b in batches_seen(f"{logs}/short")]
    assert [r.status for r in answers] == [500] * 3
    for r in answers:
        message = r.json()["error"]
        assert "must return a list with one prediction per payload, in order" in message
        assert "predictions for a batch of " in message
    assert sum(sizes) == 3


def test_with_two_replicas_each_gets_its_own_batches(daemon: tuple[Daemon, str]) -> None:
    d, logs = daemon
    answers = concurrently(d.port, "/b/two", [{"i": i} for i in range(32)])
    assert [r.status for r in answers] == [200] * 32
    assert [r.json()["i"] for r in answers] == list(range(32))
    seen = batches_seen(f"{logs}/two")
    assert sum(b["size"] for b in seen) == 32 and max(b["size"] for b in seen) <= 4
    assert len({b["pid"] for b in seen}) == 2, seen  # both replicas took batches


# -- reload turns batching on and off under load -----------------------------------------------

EITHER = """\
    def predict(sample, metadata):
        if isinstance(sample, list):  # batching on: a list of payloads in, a list out
            return [{"i": s["i"], "batched": True} for s in sample]
        return {"i": sample["i"], "batched": False}
"""


def reload_yaml(batching: bool) -> str:
    text = textwrap.dedent("""\
        - kind: deployment
          name: r
        - kind: api
          name: flip
          python:
            predictor: either.py
        """)
    if batching:
        text += "    server_side_batching:\n      max_batch_size: 8\n      batch_interval: 5ms\n"
    return text + "  compute:\n    min_replicas: 1\n    cpu: 100m\n"


def test_a_reload_that_turns_batching_on_and_off_fails_no_request(tmp_path: Any) -> None:
    project = write_project(str(tmp_path / "p"), reload_yaml(False), {"either.py": EITHER})
    d = Daemon(project, str(tmp_path / "d")).start(timeout=120)
    try:
        with Load(d.port, ["/r/flip"], lambda path, n: {"i": n}, threads=4, started=50) as load:
            for batching in (True, False, True):
                with open(os.path.join(project, "cortex.yaml"), "w") as f:
                    f.write(reload_yaml(batching))
                out = d.cli("reload", timeout=180)
                assert out.returncode == 0, out.stdout + out.stderr
                mark = load.count()
                wait_for(lambda mark=mark: load.count() > mark + 50, 30, what="load after the reload")
                assert all(json.loads(body)["batched"] is batching for *_, body in load.results[mark + 40:])
    finally:
        d.stop()
    assert load.statuses() == {200: load.count()}, load.statuses()
