"""A closed-loop gRPC load generator for the V2 cells: `c` concurrent ModelInfer calls back to
back on one channel for `duration` seconds; prints the BENCH_RESULT line post.lua prints, so
bench/harness.parse_wrk reads both.

    python bench/v2_grpc_load.py HOST:PORT MODEL BODY.bin -c 8 -d 2

BODY.bin is a serialised ModelInferRequest (bench/v2.py writes it). There is no wrk for gRPC,
and this client is Python: on a small machine it takes CPU from the servers and bounds what
it can measure, so bench/v2.py also reports its CPU seconds per 1,000 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def load(target: str, body: bytes, concurrency: int, duration: float, warmup: float) -> dict[str, object]:
    import grpc

    from cortexd.v2.pb import inference_pb2 as pb
    from cortexd.v2.pb import inference_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest.FromString(body)
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request, timeout=30)  # connected and warm
        stop_at = time.perf_counter() + warmup + duration
        start_at = time.perf_counter() + warmup

        async def worker() -> None:
            clock = time.perf_counter_ns
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                began = clock()
                try:
                    await stub.ModelInfer(request, timeout=10)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    key = "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "status"
                    if now >= start_at:
                        errors[key] += 1
                if ok and began / 1e9 >= start_at and time.perf_counter() <= stop_at:
                    latencies.append((clock() - began) // 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0 - warmup
    latencies.sort()

    def pct(p: float) -> int:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] if latencies else 0

    return {
        "requests": len(latencies), "duration_us": int(max(elapsed, 1e-6) * 1e6), "bytes": 0, "errors": errors,
        "latency_us": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": latencies[-1] if latencies else 0,
                       "mean": sum(latencies) / len(latencies) if latencies else 0.0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target")
    parser.add_argument("body")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    args = parser.parse_args(argv)
    with open(args.body, "rb") as f:
        body = f.read()
    result = asyncio.run(load(args.target, body, args.concurrency, args.duration, args.warmup))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
