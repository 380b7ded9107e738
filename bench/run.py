"""`make bench`: limit, ceiling and cortexd side by side, one load generator, one run.

For each model ("tiny" 4->16->3, "mlp" 256->1024->1024->10; bench/models.py):
- limit: onnxruntime in this process, one sample per call, without and with JSON;
- ceiling: bench/ceiling_server.py, Sanic in one process + onnxruntime, no proxy;
- replica-direct: cortexd's own replica (handler and HTTP server) on TCP: cortexd minus the proxy;
- cortexd: a real `cortexd serve` with the model as an ONNX API, 1 and 2 replicas,
  with and without a tracker;
- batching: server-side batching off vs on (bench/batching.py), 1 replica, for the ONNX
  model and a Python predictor running the MLP in numpy;
then wrk (one thread, POST JSON, keep-alive) at each concurrency against every server. The
servers of a model run side by side and are measured in interleaved rounds (the table shows
the median round; ratios are medians of per-round ratios), so load from elsewhere on the
machine falls on all of them alike. The tracker's cost gets its own alternating A/B runs.
Intra-op threads are 1 everywhere. Prints a table, the ratios cortexd/ceiling and the
targets of issue 7, and writes everything to bench/results/<timestamp>.json.

    .venv/bin/python bench/run.py [--duration 2] [--rounds 5] [--tracker-rounds 10]
                                  [--models tiny,mlp] [--concurrency 1,8,32] [--quiet-load 0.7]
                                  [--only batching] [--batching 32/2ms]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import batching as batching_mod
from bench import limit as limit_mod
from bench import report
from bench.harness import (
    BENCH_DIR,
    Server,
    ceiling_server,
    cortex_yaml,
    cortexd_server,
    run_wrk,
    wrk_path,
)
from bench.models import MODELS, build_all

VARIANTS = ((1, False), (1, True), (2, False), (2, True))


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("onnxruntime", "sanic", "numpy", "uvloop"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "absent"
    try:
        wrk = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, timeout=10)
        versions["wrk"] = (wrk.stdout or wrk.stderr).split("\n")[0].strip()
    except (OSError, RuntimeError, subprocess.SubprocessError):
        versions["wrk"] = "absent"
    return {
        "cpu_model": model or platform.processor(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_at_start": list(os.getloadavg()),
        "versions": versions,
    }


def wait_quiet(limit: float, max_wait_s: float) -> None:
    """Timings are only comparable on a quiet machine: wait (bounded) for other work to settle."""
    deadline = time.monotonic() + max_wait_s
    while True:
        load = os.getloadavg()[0]
        if load < limit:
            print(f"load average {load:.2f} < {limit:g}: starting", flush=True)
            return
        if time.monotonic() >= deadline:
            print(f"load average still {load:.2f} after {max_wait_s:.0f}s: starting anyway", flush=True)
            return
        print(f"load average {load:.2f} >= {limit:g}: waiting", flush=True)
        time.sleep(min(20.0, max(0.0, deadline - time.monotonic())))


def measure_once(server: Server, body_file: str, c: int, duration: int) -> dict[str, Any]:
    """One wrk run against a server; CPU seconds summed over its process tree, and its root's."""
    pids = server.tree.pids()
    cpu_before = server.tree.cpu_by_pid()
    result = run_wrk(server.url, body_file, c, duration)
    cpu_after = server.tree.cpu_by_pid()
    cpu = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
    total_cpu = sum(cpu.values())
    root_cpu = cpu.get(server.tree.root_pid, 0.0)
    per_1k = 1000.0 / result.requests if result.requests else 0.0
    return {
        "requests": result.requests,
        "duration_s": round(result.duration_s, 3),
        "rps": round(result.rps, 1),
        "p50_ms": result.p50_ms,
        "p90_ms": result.p90_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "errors": result.errors,
        "error_detail": result.error_detail,
        "processes": len(pids),
        "cpu_s_per_1k": round(total_cpu * per_1k, 4) if result.requests else None,
        "cpu_s_per_1k_root": round(root_cpu * per_1k, 4) if result.requests else None,
    }


def tracker_ab(without: Server, with_: Server, body_file: str, rounds: int, duration: int,
               c: int = report.TRACKER_CONCURRENCY) -> dict[str, Any]:
    """The tracker's cost, measured on its own: the 1-replica API without and with a tracker,
    alternately (ABBA: A B, B A, ...), so slow drift in background load falls on both."""
    pairs = []
    for rnd in range(rounds):
        order = ((without, "without"), (with_, "with")) if rnd % 2 == 0 else ((with_, "with"), (without, "without"))
        pairs.append({name: measure_once(server, body_file, c, duration) for server, name in order})
    return report.tracker_summary(pairs, c)


def run_wrk_once_body(server: Server, body: bytes) -> bytes:
    """One POST to a server, for its answer's bytes."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", server.path, body, {"Content-Type": "application/json"})
        return conn.getresponse().read()
    finally:
        conn.close()


def tracker_in_process(answer: bytes, seconds: float = 1.0) -> dict[str, float]:
    """What tracking adds to one request in the daemon, timed in this process: the proxy's
    observer call for a tracked API (parse the answer, count its label) minus an untracked one."""
    from cortexd.config import Tracker
    from cortexd.daemon.observe.tracker import PredictionTracker

    with tempfile.TemporaryDirectory() as d:
        tracker = PredictionTracker(os.path.join(d, "tracker.db"))
        tracker.register("tracked", Tracker(model_type="classification", key="label"))

        def per_call_us(api: str) -> float:
            best = float("inf")
            for _ in range(3):
                n, start = 0, time.perf_counter()
                end = start + seconds / 6
                while time.perf_counter() < end:
                    for _ in range(100):
                        tracker.observe_json_bytes(api, answer)
                    n += 100
                best = min(best, (time.perf_counter() - start) / n * 1e6)
            return best

        tracked, untracked = per_call_us("tracked"), per_call_us("untracked")
        tracker.close()
    return {
        "tracked_us": round(tracked, 2), "untracked_us": round(untracked, 2), "cost_us": round(tracked - untracked, 2)
    }


def combine(model: str, kind: str, variant: dict[str, Any], c: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a server's rounds at one concurrency: medians, errors summed."""
    def med(key: str) -> Any:
        values = [r[key] for r in rounds if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    return {
        "model": model, "server": kind, **variant, "concurrency": c,
        "requests": sum(r["requests"] for r in rounds),
        "rps": med("rps"), "p50_ms": med("p50_ms"), "p90_ms": med("p90_ms"), "p99_ms": med("p99_ms"),
        "max_ms": max(r["max_ms"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "processes": rounds[-1]["processes"],
        "cpu_s_per_1k": med("cpu_s_per_1k"), "cpu_s_per_1k_root": med("cpu_s_per_1k_root"),
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cortexd benchmarks (issue 7)")
    parser.add_argument("--models", default="tiny,mlp")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run (default 2)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="runs per server and concurrency, interleaved across servers; the table shows medians")
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of wrk against each server before its first measured run (0: none)")
    parser.add_argument("--only", default="limit,ceiling,replica,cortexd,batching,sequential",
                        help="sections to run (comma-separated)")
    parser.add_argument("--batching", default=batching_mod.DEFAULT_SETTING,
                        help="the batched cells' max_batch_size/batch_interval (default 32/2ms)")
    parser.add_argument("--variants", default="1,1t,2,2t", help="cortexd variants: replicas, t = with tracker")
    parser.add_argument("--tracker-rounds", type=int, default=10,
                        help="extra alternating runs of the tiny 1-replica API without/with tracker at c=8 (0: none)")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, models)")
    parser.add_argument("--quiet-load", type=float, default=0.0,
                        help="first wait (up to --quiet-wait seconds) for the 1-minute load average to drop below this")
    parser.add_argument("--quiet-wait", type=float, default=1200.0)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    only = set(s.strip() for s in args.only.split(","))
    variants = [(int(v.rstrip("t")), v.endswith("t")) for v in args.variants.split(",") if v.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")

    if args.quiet_load > 0:
        wait_quiet(args.quiet_load, args.quiet_wait)
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="cortexd-bench-")
    print(f"cortexd bench: wrk -t1, POST JSON on keep-alive connections, {args.rounds} interleaved rounds of "
          f"{args.duration}s per server and concurrency (+{args.warmup}s warm-up per server), "
          f"concurrency {concurrency}; "
          "onnxruntime intra-op threads = 1 everywhere", flush=True)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds, "concurrency": concurrency,
            "models": {m: list(MODELS[m].layers) for m in models}, "wrk_threads": 1, "intra_op_threads": 1,
        },
        "limit": [],
        "runs": [],
    }
    try:
        paths = build_all(os.path.join(workdir, "models"))
        for model in models:
            body_file = os.path.join(workdir, "models", f"{model}.json")
            with open(body_file, "rb") as f:
                body = f.read()
            if "limit" in only:
                for r in limit_mod.measure(model, paths[model], body):
                    results["limit"].append(r.as_dict())
                    print(report.limit_line(r.as_dict()), flush=True)
            # Every server of this model runs at once; each round takes every server in turn,
            # so load that other work puts on the machine falls on all of them alike.
            with contextlib.ExitStack() as stack:
                servers: list[tuple[str, dict[str, Any], Server]] = []
                if "ceiling" in only:
                    servers.append(("ceiling", {}, stack.enter_context(ceiling_server(paths[model], workdir))))
                if "replica" in only:
                    servers.append(("replica-direct", {},
                                    stack.enter_context(ceiling_server(paths[model], workdir, replica_app=True))))
                if "cortexd" in only:
                    for replicas, tracker in variants:
                        project = os.path.join(workdir, f"project-{model}-{replicas}-{int(tracker)}")
                        os.makedirs(project, exist_ok=True)
                        with open(os.path.join(project, "cortex.yaml"), "w") as f:
                            f.write(cortex_yaml(model, paths[model], replicas, tracker))
                        server = stack.enter_context(cortexd_server(project, workdir, model, replicas))
                        servers.append(("cortexd", {"replicas": replicas, "tracker": tracker}, server))
                for ci, c in enumerate(concurrency):
                    rounds: list[list[dict[str, Any]]] = [[] for _ in servers]
                    for rnd in range(args.rounds):
                        for i, (_kind, _variant, server) in enumerate(servers):
                            if ci == 0 and rnd == 0 and args.warmup > 0:  # once per server: then it is warm
                                run_wrk(server.url, body_file, c, args.warmup)
                            rounds[i].append(measure_once(server, body_file, c, args.duration))
                    for (kind, variant, _server), rs in zip(servers, rounds, strict=True):
                        row = combine(model, kind, variant, c, rs)
                        results["runs"].append(row)
                        print(report.progress_line(row), flush=True)
                if model == report.TARGET_MODEL and args.tracker_rounds > 0:
                    pair = [s for kind, v, s in servers if kind == "cortexd" and v["replicas"] == 1]
                    if len(pair) == 2:  # (without, with), in the order VARIANTS lists them
                        results["tracker_ab"] = tracker_ab(pair[0], pair[1], body_file, args.tracker_rounds,
                                                           args.duration)
                        answer = run_wrk_once_body(pair[1], body)
                        results["tracker_ab"]["in_process"] = tracker_in_process(answer)
                        print(report.tracker_line(results["tracker_ab"]), flush=True)
        if "batching" in only:
            print(f"server-side batching cells: 1 replica, batching off vs {args.batching}", flush=True)
            results["runs"] += batching_mod.run_section(
                models, concurrency, args.rounds, args.duration, args.warmup, args.batching, paths, workdir,
                measure_once, combine, lambda row: print(report.progress_line(row), flush=True),
            )
        if "sequential" in only:
            from bench import sequential

            seq = sequential.measure(workdir, 1000)
            results["sequential"] = seq
            print(f"sequential: {seq['predictor']}: p50 {seq['p50_ms']:.3f} ms over {seq['requests']} requests",
                  flush=True)
    finally:
        results["machine"]["loadavg_at_end"] = list(os.getloadavg())
        results["elapsed_s"] = round(time.time() - started, 1)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["ratios"] = report.ratios(results["runs"])
    results["targets"] = report.targets(results["runs"], results.get("tracker_ab"))
    results["batching_targets"] = report.batching_targets(results["runs"])
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + ".json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print()
    print(report.render(results))
    print(f"\nwritten: {os.path.relpath(out)} ({results['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
