"""V2 cells (issue 17): the mlp model at c=8, the API's own JSON vs V2 REST JSON vs V2 REST
binary vs V2 gRPC, side by side, interleaved rounds, medians (as bench/run.py does).

Targets:
- `replica`: cortexd's replica handler on TCP (bench/ceiling_server.py --replica), posted
  the hop's own request (/v2/infer?m=..): what decoding, running and encoding V2 cost in the
  replica, without the daemon. REST only.
- `front`: bench/v2_front.py, the V2 REST router on Sanic and the gRPC service over one real
  replica process through the real hop: the V2 side of the daemon without its queue,
  metrics and tracker.
- `cortexd`: a real `cortexd serve --grpc-port P` with the model as an ONNX API (1 replica):
  the cells the issue asks for.
- `mlserver`, `mlserver-w1`: MLServer as the peer, from its own virtual environment
  (bench/mlserver-venv.sh), running the same .onnx through bench/mlserver_runtime.py, with
  parallel_workers 0 (one process) or 1 (MLServer's default: one inference worker process);
  see bench/mlserver_peer.py. It has no API-specific JSON endpoint (own-json: n/a).
  `mlserver-lean`: parallel_workers 0 without MLServer's gzip and metrics middlewares.

Several targets at once (`--target cortexd,mlserver,mlserver-w1`) run side by side, their
rounds interleaved, with the ratios cortexd / MLServer per cell at the end. A cell a target
does not serve (one request answered other than 200) is reported "not served" with the
answer, not measured.

    .venv/bin/python bench/v2.py [--target cortexd,mlserver] [--concurrency 8] [--rounds 3] [--duration 2]

REST load comes from wrk (bench/post.lua); gRPC load from bench/v2_grpc_load.py (Python,
grpc.aio: on a 2-core machine it competes with the servers for CPU, so its own CPU per 1,000
requests is printed beside the cell). Results go to bench/results/v2-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import (
    BENCH_DIR,
    Server,
    _env,
    ceiling_server,
    cortex_yaml,
    cortexd_server,
    free_port,
    parse_wrk,
    port_open,
    run_wrk,
    started_server,
)
from bench.mlserver_peer import CONFIGS, mlserver_server
from bench.models import MODELS, build_model, sample
from bench.v2_report import CELLS, render, summarise

TARGETS = ("replica", "front", "cortexd", *CONFIGS)


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
        r = vars(run_wrk(f"http://127.0.0.1:{server.port}{path}", body[0], c, duration, header_length=body[1]))
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
    command = [sys.executable, os.path.join(BENCH_DIR, "v2_front.py"), model_path,
               "--port", str(port), "--grpc-port", str(grpc_port)]
    with started_server("front", command, _env(), workdir, os.path.join(workdir, f"front-{port}.log"), port, "",
                        lambda _: port_open(port) and port_open(grpc_port), 120,
                        "the V2 front ends to listen") as server:
        yield server, f"127.0.0.1:{grpc_port}"


@contextlib.contextmanager
def cortexd_v2_server(model: str, model_path: str, workdir: str) -> Iterator[tuple[Server, str | None]]:
    """`cortexd serve --grpc-port P` (without it when this cortexd has no such option yet)."""
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


@dataclass
class Target:
    """One server under test: its HTTP side, its gRPC address, and the cells it cannot serve
    by design (n/a: MLServer has no API-specific JSON endpoint, the replica no gRPC)."""

    name: str
    server: Server
    grpc: str | None
    not_applicable: tuple[str, ...] = ()
    meta: str = ""


def start_target(name: str, stack: contextlib.ExitStack, model: str, model_path: str, workdir: str) -> Target:
    if name == "replica":
        server = stack.enter_context(ceiling_server(model_path, workdir, replica_app=True))
        return Target(name, server, None, ("v2-grpc",))
    if name == "front":
        server, grpc_target = stack.enter_context(front_server(model_path, workdir))
        return Target(name, server, grpc_target, ("own-json",))
    if name in CONFIGS:
        server, grpc_target = stack.enter_context(mlserver_server(name, model, model_path, workdir))
        return Target(name, server, grpc_target, ("own-json",), server_metadata(server))
    server, grpc_address = stack.enter_context(cortexd_v2_server(model, model_path, workdir))
    return Target(name, server, grpc_address, (), server_metadata(server))


def server_metadata(server: Server) -> str:
    """GET /v2 (the V2 server metadata: name and version), "" where it does not answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/v2")
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            return ""
        meta = json.loads(data)
        return f"{meta.get('name', '?')} {meta.get('version', '?')}"
    except (OSError, ValueError):
        return ""
    finally:
        conn.close()


def paths_for(target: str, server: Server, model: str, header_length: int | None, cell: str) -> str:
    if target == "replica":
        if cell == "own-json":
            return "/predict"
        from cortexd.v2.hop import ReplicaCall, replica_target

        return replica_target(ReplicaCall(model, "1", header_length if cell == "v2-binary" else None))
    if cell == "own-json":
        return server.path
    return f"/v2/models/{model}/infer"


def rest_refusal(server: Server, path: str, body: tuple[str, int | None]) -> str | None:
    """None when one POST of the cell's body answers 200; else why not (status and the answer's start)."""
    import http.client

    with open(body[0], "rb") as f:
        data = f.read()
    headers = {"Content-Type": "application/octet-stream" if body[1] else "application/json"}
    if body[1]:
        headers["Inference-Header-Content-Length"] = str(body[1])
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, data, headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status == 200:
            return None
        return f"HTTP {response.status}: {answer[:160].decode('utf-8', 'replace').strip()}"
    finally:
        conn.close()


def grpc_refusal(address: str | None, body_file: str) -> str | None:
    """None when one ModelInfer with the cell's request succeeds; else why not."""
    if address is None:
        return "no gRPC port"
    import grpc

    from cortexd.v2.pb import inference_pb2 as pb
    from cortexd.v2.pb import inference_pb2_grpc as pb_grpc

    with open(body_file, "rb") as f:
        request = pb.ModelInferRequest.FromString(f.read())
    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            return None
        except grpc.RpcError as exc:
            return f"gRPC {exc.code().name}: {exc.details()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cortexd V2 cells (issue 17), MLServer beside them")
    parser.add_argument("--target", default="cortexd", type=lambda s: [t for t in s.split(",") if t],
                        help=f"one or more of {', '.join(TARGETS)}, comma-separated: their rounds interleave "
                             "(e.g. cortexd,mlserver,mlserver-w1)")
    parser.add_argument("--model", default="mlp", choices=sorted(MODELS))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load per target and cell before the rounds")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    args = parser.parse_args(argv)
    unknown = [t for t in args.target if t not in TARGETS]
    if unknown or not args.target:
        parser.error(f"--target: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(TARGETS)}")
    cells = [c for c in args.cells.split(",") if c]
    loadavg_start = list(os.getloadavg())
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="cortexd-bench-v2-")
    model_path = build_model(MODELS[args.model], os.path.join(workdir, f"{args.model}.onnx"))
    body_of = bodies(args.model, workdir)
    rows: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        targets = [start_target(name, stack, args.model, model_path, workdir) for name in args.target]
        live: list[tuple[Target, str, str]] = []  # (target, cell, path)
        for t in targets:
            rows[t.name] = []
            for cell in cells:
                path = paths_for(t.name, t.server, args.model, body_of[cell][1], cell)
                if cell in t.not_applicable:
                    rows[t.name].append({"cell": cell, "status": "n/a"})
                    continue
                refusal = (grpc_refusal(t.grpc, body_of[cell][0]) if cell == "v2-grpc"
                           else rest_refusal(t.server, path, body_of[cell]))
                if refusal:
                    rows[t.name].append({"cell": cell, "status": "not served", "reason": refusal})
                    print(f"  {t.name} {cell}: not served ({refusal})", flush=True)
                else:
                    live.append((t, cell, path))
        for t, cell, path in live if args.warmup > 0 else []:
            measure(t.server, t.grpc, cell, body_of[cell], path, args.concurrency, args.warmup)
        rounds: dict[tuple[str, str], list[dict[str, Any]]] = {(t.name, cell): [] for t, cell, _ in live}
        for i in range(args.rounds):
            # Each round starts with the next target, so no server always runs right after another.
            shift = i % len(targets)
            order = args.target[shift:] + args.target[:shift]
            for name in order:
                for t, cell, path in live:
                    if t.name == name:
                        r = measure(t.server, t.grpc, cell, body_of[cell], path, args.concurrency, args.duration)
                        rounds[(name, cell)].append(r)
                        print(f"  round {i + 1}/{args.rounds} {name:<12} {cell:<10} {r['rps']:>8.0f} req/s "
                              f"p50 {r['p50_ms']:.3f} ms errors {r['errors']}", flush=True)
        for t, cell, _ in live:
            rows[t.name].append(summarise(cell, rounds[(t.name, cell)]))
    results = {"model": args.model, "concurrency": args.concurrency, "duration_s": args.duration,
               "rounds": args.rounds, "targets": rows, "servers": {t.name: t.meta for t in targets if t.meta},
               "loadavg_start": loadavg_start, "loadavg_end": list(os.getloadavg())}
    print()
    print(render(results))
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, time.strftime("v2-%Y%m%d-%H%M%S", time.localtime(started)) + ".json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"load average: {loadavg_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"written: {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
