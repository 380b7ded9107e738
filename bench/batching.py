"""The server-side batching cells of `make bench` (issue 14).

For each model (tiny, mlp), four real `cortexd serve` APIs with 1 replica, side by side and
measured in interleaved rounds like the rest of the bench:

- onnx, batching off   - the batchable ONNX model (dynamic first dimension), no batching
- onnx, batching on    - the same model with server_side_batching (default 32 / 2ms)
- python, batching off - bench/numpy_predictor.py: the same MLP in numpy, one sample per call
- python, batching on  - the same predictor, handed the whole batch

Both "off" cells use the batchable model too, so batching is the only difference. For the
batched cells the daemon's /metrics gives each round's average batch size (requests / batches
sent during the round). Rows carry "section": "batching"; bench/report.py renders them in
their own table with the ratio batched / unbatched, and checks issue 14's targets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.request
from collections.abc import Callable
from typing import Any

from bench.harness import BENCH_DIR, Server, cortexd_server, run_wrk
from cortexd.config.quantities import parse_duration

Row = dict[str, Any]

DEFAULT_SETTING = "32/2ms"  # max_batch_size / batch_interval
PREDICTORS = ("onnx", "python")


def parse_setting(text: str) -> tuple[int, str]:
    """"32/2ms" -> (32, "2ms"); raises ValueError on anything else."""
    size, _, interval = text.partition("/")
    parse_duration(interval)
    if not size.isdigit() or int(size) < 1:
        raise ValueError(f"expected SIZE/INTERVAL such as 32/2ms, got {text!r}")
    return int(size), interval


def api_name(model: str, predictor: str, batched: bool) -> str:
    return f"{model}-{'py' if predictor == 'python' else 'onnx'}-{'b' if batched else 'u'}"


def cortex_yaml(model: str, folder: str, predictor: str, setting: tuple[int, str] | None) -> str:
    """One API, 1 replica pinned, cpu 500m (1 intra-op thread), batching as asked."""
    name = api_name(model, predictor, setting is not None)
    lines = ["- kind: deployment", "  name: bench", "", "- kind: api", f"  name: {name}"]
    if predictor == "onnx":
        lines += ["  onnx:", f"    model: {os.path.join(folder, f'{model}-batch.onnx')}"]
    else:
        lines += ["  python:", "    predictor: numpy_predictor.py",
                  "    config:", f"      weights: {os.path.join(folder, f'{model}.npz')}"]
    if setting is not None:
        lines += [
            "    server_side_batching:", f"      max_batch_size: {setting[0]}", f"      batch_interval: {setting[1]}"
        ]
    lines += ["  compute:", "    min_replicas: 1", "    max_replicas: 1", "    init_replicas: 1", "    cpu: 500m"]
    return "\n".join(lines) + "\n"


def batch_counters(server: Server, api: str) -> tuple[float, float] | None:
    """(batches sent, requests in them) so far, from the daemon's /metrics (0, 0 before the
    API's first batch); None when /metrics cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    count = total = 0.0
    for line in text.splitlines():
        if f'api="{api}"' not in line:
            continue
        if line.startswith("cortexd_inference_batch_size_count{"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("cortexd_inference_batch_size_sum{"):
            total = float(line.rsplit(" ", 1)[1])
    return count, total


def run_section(
    models: list[str], concurrency: list[int], rounds: int, duration: int, warmup: int, setting_text: str,
    paths: dict[str, str], workdir: str,
    measure_once: Callable[[Server, str, int, int], Row],
    combine: Callable[[str, str, dict[str, Any], int, list[Row]], Row],
    emit: Callable[[Row], None],
) -> list[Row]:
    """Every batching cell; `emit` is called with each row as it is ready."""
    setting = parse_setting(setting_text)
    rows: list[Row] = []
    for model in models:
        folder = os.path.dirname(paths[model])
        body_file = os.path.join(folder, f"{model}.json")
        with contextlib.ExitStack() as stack:
            servers: list[tuple[dict[str, Any], str, Server]] = []
            for predictor in PREDICTORS:
                for batched in (False, True):
                    cell = setting if batched else None
                    name = api_name(model, predictor, batched)
                    project = os.path.join(workdir, f"project-{name}")
                    os.makedirs(project, exist_ok=True)
                    with open(os.path.join(project, "cortex.yaml"), "w") as f:
                        f.write(cortex_yaml(model, folder, predictor, cell))
                    shutil.copy(os.path.join(BENCH_DIR, "numpy_predictor.py"), project)
                    server = stack.enter_context(cortexd_server(project, workdir, name, 1))
                    variant = {"replicas": 1, "tracker": False, "section": "batching", "predictor": predictor,
                               "batching": setting_text if batched else None}
                    servers.append((variant, name, server))
            for ci, c in enumerate(concurrency):
                per_server: list[list[Row]] = [[] for _ in servers]
                for rnd in range(rounds):
                    for i, (variant, name, server) in enumerate(servers):
                        if ci == 0 and rnd == 0 and warmup > 0:
                            run_wrk(server.url, body_file, c, warmup)
                        before = batch_counters(server, name) if variant["batching"] else None
                        result = measure_once(server, body_file, c, duration)
                        after = batch_counters(server, name) if before is not None else None
                        if before is not None and after is not None and after[0] > before[0]:
                            result["avg_batch"] = round((after[1] - before[1]) / (after[0] - before[0]), 2)
                        per_server[i].append(result)
                for (variant, _name, _server), rs in zip(servers, per_server, strict=True):
                    row = combine(model, "cortexd", variant, c, rs)
                    batches = sorted(r["avg_batch"] for r in rs if r.get("avg_batch") is not None)
                    row["avg_batch"] = batches[len(batches) // 2] if batches else None
                    rows.append(row)
                    emit(row)
    return rows
