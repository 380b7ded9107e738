"""A short GPU timing: an ONNX MLP served by cortexd on CUDA vs onnxruntime in this process.

    python tests/gpu/gpu_timing.py [--out DIR] [--requests 300] [--batch 8]

Side by side in one run, same model, same batch, sequential requests (one at a time, the
way one replica serves them):
  cortexd-gpu      POST through the proxy to a `gpu: 1` replica (JSON both ways)
  cortexd-cpu      the same through a `gpu: 0` replica with up to 4 cpu (for scale)
  inproc-gpu       session.run on a CUDA session in this process (numpy in, numpy out)
  inproc-gpu-json  the same plus json.loads of the request and json.dumps of the answer
Prints a table and writes gpu-timing.json into --out (default: $OUT when set).
Not collected by pytest (no test_ prefix); scripts/gpu-check.sh runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from tests.daemon_harness import Client, Daemon, write_project  # noqa: E402  (after sys.path has the repository)

FEATURES, HIDDEN, LAYERS, CLASSES = 512, 2048, 4, 16


def build_mlp(path: str) -> str:
    """input float [N, 512] -> 4 x (MatMul 2048 + Add + Relu) -> logits float [N, 16] (~54 MB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, width = [], [], "input", FEATURES
    for i in range(LAYERS + 1):
        out_width = CLASSES if i == LAYERS else HIDDEN
        w = (rng.standard_normal((width, out_width)) / np.sqrt(width)).astype(np.float32)
        b = np.zeros(out_width, np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [
            helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"]),
        ]
        if i < LAYERS:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            prev = f"h{i}"
        else:
            nodes.append(helper.make_node("Identity", [f"a{i}"], ["logits"]))
        width = out_width
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)

    def pick(q: float) -> float:
        return ms[min(len(ms) - 1, int(q * len(ms)))]

    return {"n": len(ms), "mean_ms": round(statistics.fmean(ms), 3), "p50_ms": round(pick(0.5), 3),
            "p90_ms": round(pick(0.9), 3), "p99_ms": round(pick(0.99), 3)}


def timed(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def gpu_name() -> str:
    from cortexd.daemon.fleet.gpus import RealNvml

    nvml = RealNvml()
    try:
        return ", ".join(g.name for g in nvml.gpus()) if nvml.available() else f"none ({nvml.unavailable_reason()})"
    finally:
        nvml.close()


def through_cortexd(model: str, body: bytes, n: int, warmup: int, work: str) -> tuple[dict[str, Any], str]:
    # both APIs must fit the machine's cores (admission): 1 for the GPU replica, up to 4 for the CPU one
    cpu = max(0.2, min(4.0, (os.cpu_count() or 2) - 1.5))
    project = write_project(os.path.join(work, "project"), f"""\
        - kind: deployment
          name: t
        - kind: api
          name: mlp-gpu
          onnx:
            model: {model}
          compute:
            gpu: 1
            cpu: 1
        - kind: api
          name: mlp-cpu
          onnx:
            model: {model}
          compute:
            cpu: {cpu:g}
    """, {})
    d = Daemon(project, os.path.join(work, "daemon")).start(wait_live=False)
    results: dict[str, Any] = {}
    try:
        try:
            d.wait_all_live(300)
        except AssertionError:
            print(json.dumps(d.get(), indent=1)[:4000], file=sys.stderr)
            raise
        with open(os.path.join(d.log_dir, "mlp-gpu.log")) as f:
            provider_line = next((line.strip() for line in f if "] onnx: " in line and "ExecutionProvider" in line), "")
        for api in ("mlp-gpu", "mlp-cpu"):
            c = Client(d.port)

            def call(c: Client = c, api: str = api) -> None:  # bound now: timed() calls it in this iteration
                r = c.request("POST", f"/t/{api}", body)
                if r.status != 200:
                    raise RuntimeError(f"{api}: {r.status} {r.body[:300]!r}")

            results[f"cortexd-{api.split('-')[1]}"] = stats(timed(call, n, warmup))
            c.close()
    finally:
        d.stop()
    return results, provider_line


def in_process(model: str, batch: np.ndarray, body: bytes, n: int, warmup: int) -> tuple[dict[str, Any], list[str]]:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    session = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers = session.get_providers()

    def run() -> None:
        session.run(None, {"input": batch})

    def run_json() -> None:
        x = np.asarray(json.loads(body), np.float32)
        (out,) = session.run(None, {"input": x})
        json.dumps({"logits": out.tolist()})

    return {"inproc-gpu": stats(timed(run, n, warmup)), "inproc-gpu-json": stats(timed(run_json, n, warmup))}, providers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", ""))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cortexd-gpu-timing-") as work:
        model = build_mlp(os.path.join(work, "mlp.onnx"))
        batch = np.random.default_rng(1).standard_normal((args.batch, FEATURES)).astype(np.float32)
        body = json.dumps(batch.tolist()).encode()
        served, provider_line = through_cortexd(model, body, args.requests, args.warmup, work)
        local, providers = in_process(model, batch, body, args.requests, args.warmup)
    rows = {**served, **local}
    report = {
        "gpu": gpu_name(),
        "model": f"MLP {FEATURES}-{'x'.join([str(HIDDEN)] * LAYERS)}-{CLASSES}, float32",
        "batch": args.batch,
        "request_bytes": len(body),
        "replica_provider": provider_line,
        "inproc_providers": providers,
        "timings": rows,
        "ratios_p50": {
            "cortexd-gpu / inproc-gpu": round(rows["cortexd-gpu"]["p50_ms"] / rows["inproc-gpu"]["p50_ms"], 2),
            "cortexd-gpu / inproc-gpu-json": round(
                rows["cortexd-gpu"]["p50_ms"] / rows["inproc-gpu-json"]["p50_ms"], 2
            ),
            "cortexd-cpu / cortexd-gpu": round(rows["cortexd-cpu"]["p50_ms"] / rows["cortexd-gpu"]["p50_ms"], 2),
        },
    }
    print(f"GPU: {report['gpu']}; {report['model']}; batch {args.batch} ({len(body)} B of JSON)")
    print(f"replica: {provider_line}\nin process: {providers}")
    print(f"{'path':18} {'mean':>8} {'p50':>8} {'p90':>8} {'p99':>8}  (ms, {args.requests} sequential)")
    for name, s in rows.items():
        print(f"{name:18} {s['mean_ms']:8.3f} {s['p50_ms']:8.3f} {s['p90_ms']:8.3f} {s['p99_ms']:8.3f}")
    for name, ratio in report["ratios_p50"].items():
        print(f"p50 {name}: {ratio}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu-timing.json"), "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
