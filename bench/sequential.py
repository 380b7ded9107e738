"""Round trip of one prediction through the proxy, one request at a time.

Starts a real `cortexd serve` on examples/python-iris (a Python predictor: scikit-learn's
LogisticRegression on the bundled iris data), sends N sequential POSTs of its sample on one
keep-alive connection, and reports the percentiles of the client-side round trip:

    .venv/bin/python bench/sequential.py [--requests 1000]

`--trivial` serves a predictor that returns its input instead, so the figure is the
request path alone, without scikit-learn's predict.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import REPO, cortexd_server

IRIS = os.path.join(REPO, "examples", "python-iris")

TRIVIAL_YAML = """\
- kind: deployment
  name: seq

- kind: api
  name: echo
  python:
    predictor: predictor.py
"""

TRIVIAL_PREDICTOR = """\
def predict(sample, metadata):
    return sample
"""


def _project(workdir: str, trivial: bool) -> tuple[str, str, bytes]:
    """(project folder, API name, body)."""
    if trivial:
        project = os.path.join(workdir, "echo")
        os.makedirs(project, exist_ok=True)
        with open(os.path.join(project, "cortex.yaml"), "w") as f:
            f.write(TRIVIAL_YAML)
        with open(os.path.join(project, "predictor.py"), "w") as f:
            f.write(TRIVIAL_PREDICTOR)
        return project, "echo", json.dumps({"x": [1, 2, 3, 4]}).encode()
    project = os.path.join(workdir, "python-iris")
    shutil.copytree(IRIS, project)
    with open(os.path.join(project, "sample.json"), "rb") as f:
        return project, "classifier", f.read()


def round_trips(port: int, path: str, body: bytes, n: int) -> list[float]:
    """Milliseconds per request for n sequential POSTs on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    times: list[float] = []
    clock = time.perf_counter
    try:
        for _ in range(20):  # warm-up: connection, replica caches
            conn.request("POST", path, body, headers)
            conn.getresponse().read()
        for _ in range(n):
            start = clock()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            resp.read()
            times.append((clock() - start) * 1000.0)
            if resp.status != 200:
                raise RuntimeError(f"POST {path} answered {resp.status}")
    finally:
        conn.close()
    return times


def measure(workdir: str, requests: int = 1000, trivial: bool = False) -> dict[str, Any]:
    project, api, body = _project(workdir, trivial)
    with cortexd_server(project, workdir, api, 1) as server:
        times = round_trips(server.port, server.path, body, requests)
    arr = np.asarray(times)
    return {
        "predictor": (
            "python echo (returns its input)" if trivial else "examples/python-iris (sklearn LogisticRegression)"
        ),
        "requests": requests,
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "command": "bench/sequential.py" + (" --trivial" if trivial else "") + f" --requests {requests}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sequential round trips through the cortexd proxy")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--trivial", action="store_true", help="a predictor that returns its input")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="cortexd-seq-")
    try:
        result = measure(workdir, args.requests, args.trivial)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{result['predictor']}: {result['requests']} sequential requests through the proxy: "
        f"p50 {result['p50_ms']:.3f} ms, p90 {result['p90_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, "
        f"mean {result['mean_ms']:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
