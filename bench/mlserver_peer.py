"""MLServer as a peer for the V2 cells (bench/v2.py --target mlserver, mlserver-w1, mlserver-lean).

MLServer runs from its own virtual environment (bench/mlserver-venv.sh, default
.bench-venvs/mlserver; BENCH_MLSERVER_VENV overrides), with bench/mlserver_runtime.py as the
model's runtime, on the same .onnx as cortexd's cells. The model repository (settings.json,
<model>/model-settings.json, the runtime beside it) is written into the run's temp folder.

Settings: everything is MLServer's default except
- the ports (free loopback ports for HTTP, gRPC and metrics; host 127.0.0.1);
- `debug: false`: MLServer defaults to debug, which writes an access-log line per request
  (uvicorn's and a gRPC logging interceptor); cortexd's bench daemon logs at WARNING;
- `parallel_workers`: 0 for `mlserver` (the model runs in the server's own process, one
  process in all) and 1 for `mlserver-w1` (MLServer's default: the HTTP/gRPC process hands
  each request to one inference worker process, the shape of cortexd's daemon + 1 replica).
  Either way one process runs the model with one onnxruntime thread, as cortexd's replica.
Metrics (the Prometheus middleware and interceptor) and gzip stay on, as MLServer ships
(cortexd's /metrics is always on too; wrk sends no Accept-Encoding, so nothing is compressed,
but both middlewares still run per request); `mlserver-lean` turns both off.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import psutil

from bench.harness import BENCH_DIR, REPO, Server, free_port, port_open, started_server

RUNTIME = os.path.join(BENCH_DIR, "mlserver_runtime.py")
# target name -> settings over MLServer's defaults (besides ports, host and debug).
CONFIGS: dict[str, dict[str, Any]] = {
    "mlserver": {"parallel_workers": 0},
    "mlserver-w1": {"parallel_workers": 1},
    # Not in the default peers: MLServer without the two per-request middlewares it ships
    # with (gzip, Prometheus), to show what they cost it (~12 % of v2-json req/s here).
    "mlserver-lean": {"parallel_workers": 0, "gzip_enabled": False, "metrics_endpoint": None},
}


def venv() -> str:
    return os.environ.get("BENCH_MLSERVER_VENV") or os.path.join(REPO, ".bench-venvs", "mlserver")


def server_settings(http_port: int, grpc_port: int, metrics_port: int, config: dict[str, Any]) -> dict[str, Any]:
    return {"debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
            "metrics_port": metrics_port, **config}


def model_settings(model: str, model_path: str) -> dict[str, Any]:
    return {"name": model, "implementation": "mlserver_runtime.OnnxModel",
            "parameters": {"uri": os.path.abspath(model_path)}}


def write_repository(folder: str, model: str, model_path: str, settings: dict[str, Any]) -> str:
    model_dir = os.path.join(folder, model)
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(folder, "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)
    with open(os.path.join(model_dir, "model-settings.json"), "w") as f:
        json.dump(model_settings(model, model_path), f, indent=1)
    shutil.copy(RUNTIME, os.path.join(model_dir, "mlserver_runtime.py"))
    return folder


def _env() -> dict[str, str]:
    # Nothing of .venv or this checkout on its path, no stray MLSERVER_* settings; the same
    # thread settings as every other server of the bench.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MLSERVER_")}
    env["OMP_NUM_THREADS"] = "1"
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def _ready(port: int, model: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", f"/v2/models/{model}/ready")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    finally:
        conn.close()


@contextlib.contextmanager
def mlserver_server(name: str, model: str, model_path: str, workdir: str) -> Iterator[tuple[Server, str]]:
    """`mlserver start` on a fresh repository until the model is ready; (server, gRPC host:port)."""
    exe = os.path.join(venv(), "bin", "mlserver")
    if not os.access(exe, os.X_OK):
        raise RuntimeError(f"no MLServer at {exe}: run bench/mlserver-venv.sh first (or set BENCH_MLSERVER_VENV)")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    folder = write_repository(os.path.join(workdir, name), model, model_path,
                              server_settings(http_port, grpc_port, metrics_port, CONFIGS[name]))
    log_path = os.path.join(workdir, f"{name}-{http_port}.log")
    children: list[psutil.Process] = []
    try:
        with started_server(name, [exe, "start", folder], _env(), folder, log_path, http_port,
                            f"/v2/models/{model}/infer", lambda _: _ready(http_port, model) and port_open(grpc_port),
                            120, f"{name} to load {model}", interval=0.2) as server:
            children = server.tree.processes()[1:]
            yield server, f"127.0.0.1:{grpc_port}"
    finally:
        # MLServer stops its workers itself; any it left behind goes too (psutil.Process
        # checks that the pid is still the process seen at start, not a reused one).
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
