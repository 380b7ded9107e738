"""Where a cell's CPU goes: py-spy on the daemon and the replica of a real `cortexd serve`
while wrk drives one cell, then each process's hottest functions (self time).

    .venv/bin/python bench/profile.py batching mlp 32 --batched     # issue 14's mlp c=32 cell
    .venv/bin/python bench/profile.py v2 mlp 8 --cell v2-json        # issue 17's V2 JSON cell

py-spy is not a dependency: install it anywhere (`pip install py-spy`, or unpack its wheel)
and give its path with --py-spy (default: `py-spy` on PATH). Profiles go to
bench/results/profile-<time>-<process>.txt (py-spy's raw collapsed stacks, for flame graphs).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil

from bench import batching
from bench.harness import BENCH_DIR, cortex_yaml, cortexd_server, run_wrk
from bench.models import MODELS, build_all, build_model


def hottest(raw_path: str, top: int) -> list[tuple[float, str]]:
    """(share of samples, function) by self time, from py-spy's raw output."""
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            leaf[stack.split(";")[-1]] += int(count)
    return [(n / total, frame) for frame, n in leaf.most_common(top)] if total else []


def project_for(args: argparse.Namespace, work: str) -> tuple[str, str, str, str, str]:
    """(project folder, API name, body file, URL path or "" for the API's endpoint, cortex.yaml)."""
    project = os.path.join(work, "project")
    os.makedirs(project)
    if args.section == "batching":
        paths = build_all(work)
        folder = os.path.dirname(paths[args.model])
        setting = batching.parse_setting(args.setting) if args.batched else None
        name = batching.api_name(args.model, "onnx", args.batched)
        text = batching.cortex_yaml(args.model, folder, "onnx", setting)
        return project, name, os.path.join(folder, f"{args.model}.json"), "", text
    from bench.v2 import bodies

    model = build_model(MODELS[args.model], os.path.join(work, f"{args.model}.onnx"))
    body = bodies(args.model, work)[args.cell][0]
    path = "" if args.cell == "own-json" else f"/v2/models/{args.model}/infer"
    return project, args.model, body, path, cortex_yaml(args.model, model, 1, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=("batching", "v2"))
    parser.add_argument("model", choices=tuple(MODELS))
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--batched", action="store_true", help="batching: the batched API (else unbatched)")
    parser.add_argument("--setting", default="32/2ms", help="batching: max_batch_size/batch_interval")
    parser.add_argument("--cell", default="v2-json", choices=("own-json", "v2-json"), help="v2: which body")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--py-spy", default="py-spy", dest="py_spy")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="cortexd-profile-")
    project, api, body, path, text = project_for(args, work)
    with open(os.path.join(project, "cortex.yaml"), "w") as f:
        f.write(text)
    out = os.path.join(BENCH_DIR, "results", f"profile-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with cortexd_server(project, work, api, 1) as server:
        url = f"http://127.0.0.1:{server.port}{path}" if path else server.url
        run_wrk(url, body, args.concurrency, 2)  # warm-up
        daemon = server.proc.pid
        replica = psutil.Process(daemon).children(recursive=True)[-1].pid
        spies = {who: subprocess.Popen(
            [args.py_spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r", "500", "-f", "raw",
             "-o", f"{out}-{who}.txt", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for who, pid in (("daemon", daemon), ("replica", replica))}
        time.sleep(0.5)
        result = run_wrk(url, body, args.concurrency, max(1, args.seconds - 2))
        for spy in spies.values():
            spy.wait(timeout=args.seconds + 60)
    print(f"{args.section} {args.model} c={args.concurrency}: {result.requests / result.duration_s:.0f} req/s "
          f"under the profiler, p50 {result.p50_ms:.3f} ms, {result.errors} errors")
    for who in spies:
        print(f"\n{who} ({out}-{who}.txt), self time:")
        for share, frame in hottest(f"{out}-{who}.txt", args.top):
            print(f"  {100 * share:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
