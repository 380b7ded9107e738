"""V2 cells (issue 17): the mlp model at c=8, the API's own JSON vs V2 REST JSON vs V2 REST
binary vs V2 gRPC, side by side, interleaved rounds, medians (as bench/run.py does).

Targets:
- `replica`: cortexd's replica handler on TCP (bench/ceiling_server.py --replica), posted
  the hop's own request (/v2/infer?m=..): what decoding, running and encoding V2 cost in the
  replica, without the daemon. REST only.
- `front`: bench/v2_front.py, the V2 REST router on Sanic and the gRPC service over one real
  replica process through the real hop: the V2 side of the daemon without its queue,
  metrics and tracker. Runs before the daemon routes /v2.
- `cortexd`: a real `cortexd serve --grpc-port P` with the model as an ONNX API (1 replica):
  the cells the issue asks for, once /v2 and --grpc-port are wired. A cell the daemon does not
  serve yet is reported "not served" instead of measured.

    .venv/bin/python bench/v2.py [--target front] [--concurrency 8] [--rounds 3] [--duration 2]

REST load comes from wrk (bench/post_v2.lua); gRPC load from bench/v2_grpc_load.py (Python,
grpc.aio: on a 2-core machine it competes with the servers for CPU, so its own CPU per 1,000
requests is printed beside the cell). Results go to bench/results/v2-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import (
    BENCH_DIR,
    ProcessTree,
    Server,
    _env,
    _stop,
    ceiling_server,
    cortex_yaml,
    free_port,
    parse_wrk,
    port_open,
    wait_for,
    wrk_path,
)
from bench.models import MODELS, build_model, sample

POST_V2_LUA = os.path.join(BENCH_DIR, "post_v2.lua")
CELLS = ("own-json", "v2-json", "v2-binary", "v2-grpc")


def bodies(model: str, folder: str) -> dict[str, tuple[str, int | None]]:
    """cell -> (body file, Inference-Header-Content-Length or None) for one sample of `model`."""
    from cortexd.v2.pb import inference_pb2 as pb

    spec = MODELS[model]
    x = np.asarray(sample(spec), dtype=np.float32)
    shape = [1, spec.features]
    out: dict[str, tuple[str, int | None]] = {}

    def write(cell: str, data: bytes, header_length: int | None = None) -> None:
        path = os.path.join(folder, f"{model}-{cell}.body")
        with open(path, "wb") as f:
            f.write(data)
        out[cell] = (path, header_length)

    write("own-json", json.dumps(x.tolist()).encode())
    write("v2-json", json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                            "data": x.tolist()}]}).encode())
    raw = x.tobytes()
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
    write("v2-binary", header + raw, len(header))
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[raw])
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    write("v2-grpc", request.SerializeToString())
    return out


def run_rest(url: str, body_file: str, header_length: int | None, c: int, duration: int) -> dict[str, Any]:
    env = {**os.environ, "BENCH_BODY_FILE": body_file, "BENCH_HEADER_LENGTH": str(header_length or "")}
    cmd = [wrk_path(), "-t1", f"-c{c}", f"-d{int(duration)}s", "--timeout=10s", "-s", POST_V2_LUA, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return vars(parse_wrk(proc.stdout))


def run_grpc(target: str, body_file: str, c: int, duration: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, os.path.join(BENCH_DIR, "v2_grpc_load.py"), target, body_file, "-c", str(c),
           "-d", str(duration)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, env=_env(), check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"the gRPC load generator failed: {proc.stderr.strip()[-800:]}")
    result = vars(parse_wrk(proc.stdout))
    result["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def measure(server: Server, grpc_target: str | None, cell: str, body: tuple[str, int | None], path: str,
            c: int, duration: int) -> dict[str, Any]:
    cpu_before = server.tree.cpu_seconds()
    if cell == "v2-grpc":
        assert grpc_target is not None
        r = run_grpc(grpc_target, body[0], c, duration)
    else:
        r = run_rest(f"http://127.0.0.1:{server.port}{path}", body[0], body[1], c, duration)
    cpu = server.tree.cpu_seconds() - cpu_before
    n = r["requests"]
    row = {"requests": n, "rps": round(n / r["duration_s"], 1) if r["duration_s"] else 0.0,
           "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"],
           "cpu_s_per_1k": round(cpu * 1000 / n, 4) if n else None}
    if "client_cpu_s" in r:
        row["client_cpu_s_per_1k"] = round(r["client_cpu_s"] * 1000 / n, 4) if n else None
    return row


@contextlib.contextmanager
def front_server(model_path: str, workdir: str) -> Iterator[tuple[Server, str]]:
    port, grpc_port = free_port(), free_port()
    log_path = os.path.join(workdir, f"front-{port}.log")
    with open(log_path, "ab") as log:
        command = [sys.executable, os.path.join(BENCH_DIR, "v2_front.py"), model_path,
                   "--port", str(port), "--grpc-port", str(grpc_port)]
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=_env(), cwd=workdir)
    server = Server("front", port, "", proc, ProcessTree(proc.pid), log_path)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"v2_front exited with {proc.returncode}:\n{server.log_tail()}")
            return port_open(port) and port_open(grpc_port)

        wait_for(up, 120, "the V2 front ends to listen")
        yield server, f"127.0.0.1:{grpc_port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def cortexd_v2_server(model: str, model_path: str, workdir: str) -> Iterator[tuple[Server, str | None]]:
    """`cortexd serve --grpc-port P` (without it when this cortexd has no such option yet)."""
    from bench.harness import cortexd_server

    project = os.path.join(workdir, f"project-v2-{model}")
    os.makedirs(project, exist_ok=True)
    with open(os.path.join(project, "cortex.yaml"), "w") as f:
        f.write(cortex_yaml(model, model_path, 1, False))
    help_text = subprocess.run([sys.executable, "-m", "cortexd", "serve", "--help"], capture_output=True,
                               text=True, env=_env(), timeout=60, check=False).stdout
    grpc_port = free_port() if "--grpc-port" in help_text else None
    extra = ["--grpc-port", str(grpc_port)] if grpc_port else []
    with cortexd_server(project, workdir, model, 1, extra_args=extra) as server:
        yield server, (f"127.0.0.1:{grpc_port}" if grpc_port else None)


def paths_for(target: str, server: Server, model: str, header_length: int | None, cell: str) -> str:
    if target == "replica":
        if cell == "own-json":
            return "/predict"
        from cortexd.v2.hop import ReplicaCall, replica_target

        return replica_target(ReplicaCall(model, "1", header_length if cell == "v2-binary" else None))
    if cell == "own-json":
        return server.path
    return f"/v2/models/{model}/infer"


def served(server: Server, path: str, body: tuple[str, int | None]) -> bool:
    import http.client

    with open(body[0], "rb") as f:
        data = f.read()
    headers = {"Inference-Header-Content-Length": str(body[1])} if body[1] else {}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, data, headers)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cortexd V2 cells (issue 17)")
    parser.add_argument("--target", choices=("replica", "front", "cortexd"), default="front")
    parser.add_argument("--model", default="mlp", choices=sorted(MODELS))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    args = parser.parse_args(argv)
    cells = [c for c in args.cells.split(",") if c]
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="cortexd-bench-v2-")
    model_path = build_model(MODELS[args.model], os.path.join(workdir, f"{args.model}.onnx"))
    body_of = bodies(args.model, workdir)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        grpc_target: str | None = None
        if args.target == "replica":
            server = stack.enter_context(ceiling_server(model_path, workdir, replica_app=True))
            cells = [c for c in cells if c != "v2-grpc"]
        elif args.target == "front":
            server, grpc_target = stack.enter_context(front_server(model_path, workdir))
            cells = [c for c in cells if c != "own-json"]
        else:
            server, grpc_target = stack.enter_context(cortexd_v2_server(args.model, model_path, workdir))
        live: list[str] = []
        for cell in cells:
            path = paths_for(args.target, server, args.model, body_of[cell][1], cell)
            ok = grpc_target is not None if cell == "v2-grpc" else served(server, path, body_of[cell])
            if not ok:
                rows.append({"cell": cell, "status": "not served"})
                print(f"  {cell:<10} not served by this {args.target}", flush=True)
            else:
                live.append(cell)
        rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in live}
        for _ in range(args.rounds):
            for cell in live:
                path = paths_for(args.target, server, args.model, body_of[cell][1], cell)
                rounds[cell].append(measure(server, grpc_target, cell, body_of[cell], path,
                                            args.concurrency, args.duration))
        for cell in live:
            rs = rounds[cell]
            row = {"cell": cell, "status": "measured", "rounds": rs}
            for key in ("rps", "p50_ms", "p99_ms", "cpu_s_per_1k", "client_cpu_s_per_1k"):
                values = [r[key] for r in rs if r.get(key) is not None]
                if values:
                    row[key] = round(statistics.median(values), 4)
            row["errors"] = sum(r["errors"] for r in rs)
            rows.append(row)
    print(f"\nV2 cells: {args.model}, c={args.concurrency}, target {args.target}, "
          f"{args.rounds} interleaved rounds of {args.duration}s, medians")
    print(f"  {'cell':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'cpu s/1k':>9} {'client cpu':>10}")
    for row in rows:
        if row["status"] != "measured":
            print(f"  {row['cell']:<10} {row['status']}")
            continue
        client = row.get("client_cpu_s_per_1k")
        print(f"  {row['cell']:<10} {row['rps']:>8.0f} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
              f"{row['errors']:>6} {row['cpu_s_per_1k']:>9.3f} {'' if client is None else f'{client:.3f}':>10}")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, time.strftime("v2-%Y%m%d-%H%M%S", time.localtime(started)) + ".json")
    with open(out, "w") as f:
        json.dump({"target": args.target, "model": args.model, "concurrency": args.concurrency,
                   "duration_s": args.duration, "rounds": args.rounds, "cells": rows,
                   "loadavg": list(os.getloadavg())}, f, indent=1)
    print(f"written: {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
