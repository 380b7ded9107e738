"""The limit: onnxruntime in this process, one sample per call, nothing else.

Two loops per model: `run` (session.run on a ready array) and `json+run` (parse the posted
body, make the array, run, encode the answer as the servers do) — what no HTTP server can
beat, and the share of it JSON takes. Calls/s is the fastest of three windows; the
percentiles are over all calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class LimitResult:
    model: str
    loop: str  # "run" | "json+run"
    calls: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def body_loads() -> Callable[[bytes], Any]:
    """How request bodies are parsed everywhere in the bench, as cortexd's replica does:
    ujson (installed with Sanic) where present, else json."""
    try:
        from ujson import loads
    except ImportError:
        return json.loads
    fast: Callable[[bytes], Any] = loads  # typed here: ujson before 6 ships no types
    return fast


def make_session(model_path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])


def _time_loop(fn: Callable[[], Any], seconds: float, max_calls: int = 1_000_000) -> tuple[int, float, list[int]]:
    for _ in range(50):  # warm caches and the session's allocations
        fn()
    samples: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    end = start + int(seconds * 1e9)
    now = start
    while now < end and len(samples) < max_calls:
        fn()
        after = clock()
        samples.append(after - now)
        now = after
    return len(samples), (now - start) / 1e9, samples


def _result(model: str, loop: str, calls: int, elapsed: float, samples: list[int]) -> LimitResult:
    arr = np.asarray(samples, dtype=np.float64) / 1e6
    return LimitResult(
        model=model, loop=loop, calls=calls, calls_per_s=calls / elapsed if elapsed else 0.0,
        p50_ms=float(np.percentile(arr, 50)), p99_ms=float(np.percentile(arr, 99)),
    )


def measure(model: str, model_path: str, body: bytes, seconds: float = 1.5) -> list[LimitResult]:
    session = make_session(model_path)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    run = session.run
    x = np.asarray(json.loads(body), dtype=np.float32)[None]
    feeds = {input_name: x}
    float32 = np.float32
    loads, dumps = body_loads(), json.dumps

    def plain() -> Any:
        return run(None, feeds)

    def with_json() -> bytes:
        arr = np.asarray(loads(body), dtype=float32)[None]
        outputs = run(None, {input_name: arr})
        named = {n: v.tolist() for n, v in zip(output_names, outputs, strict=True)}
        return dumps(named, separators=(",", ":")).encode()

    results = []
    for loop, fn in (("run", plain), ("json+run", with_json)):
        # Three windows, the fastest one's rate: other work on the machine only slows a loop down.
        windows = [_time_loop(fn, seconds / 3) for _ in range(3)]
        calls, elapsed, _ = max(windows, key=lambda w: w[0] / w[1] if w[1] else 0.0)
        samples = [s for w in windows for s in w[2]]
        results.append(_result(model, loop, calls, elapsed, samples))
    return results
