from __future__ import annotations

import textwrap
from typing import Any

import pytest

from cortexd.tables import format_api, format_apis, format_gpus, format_tracker, human_bytes, latency


def golden(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


IRIS: dict[str, Any] = {
    "name": "iris", "status": "live", "endpoint": "/iris-deployment/iris", "requested": 2, "ready": 2,
    "last_error": None,
    "replicas": [
        {"id": "iris-0", "pid": 4242, "state": "ready", "gpus": [0], "cpu_percent": 12.5,
         "rss_bytes": 129394278, "restarts": 0},
        {"id": "iris-1", "pid": 4250, "state": "starting", "gpus": [], "cpu_percent": None,
         "rss_bytes": 2048, "restarts": 3},
    ],
    "metrics": {"requests": 1234, "2xx": 1200, "4xx": 30, "5xx": 4, "p50_ms": 3.456, "p99_ms": 12.34},
    "tracker": {
        "model_type": "classification",
        "total": {"counts": {"setosa": 500, "versicolor": 400, "virginica": 300}},
        "last_hour": {"counts": {"virginica": 20, "setosa": 12}},
        "since": 1_700_000_000.0,
    },
}

PRICE: dict[str, Any] = {
    "name": "price", "status": "error (out of memory)", "endpoint": "/d/price", "requested": 1, "ready": 0,
    "last_error": "replica price-3 used 1.2 GiB of its 1.0 GiB limit",
    "replicas": [],
    "metrics": {"requests": 0, "2xx": 0, "4xx": 0, "5xx": 0, "p50_ms": None, "p99_ms": None},
    "tracker": {
        "model_type": "regression",
        "total": {"count": 3, "min": -1.5, "max": 250000.0, "mean": 83333.1666666},
        "last_hour": {"count": 0, "min": None, "max": None, "mean": None},
    },
}


def test_format_apis() -> None:
    assert format_apis([IRIS, PRICE]) == golden("""
        api     status                  up-to-date   requested   requests   2XX    4XX   5XX   p50      p99       endpoint
        iris    live                    2            2           1234       1200   30    4     3.5 ms   12.3 ms   /iris-deployment/iris
        price   error (out of memory)   0            1           0          0      0     0     -        -         /d/price
    """)


def test_format_apis_without_apis() -> None:
    assert format_apis([]) == "no apis are deployed"


def test_format_api_classification() -> None:
    assert format_api(IRIS) == golden("""
        api    status   up-to-date   requested   requests   2XX    4XX   5XX   p50      p99       endpoint
        iris   live     2            2           1234       1200   30    4     3.5 ms   12.3 ms   /iris-deployment/iris

        replica   pid    state      gpus   cpu %   memory      restarts
        iris-0    4242   ready      0      12.5    123.4 MiB   0
        iris-1    4250   starting   -      -       2.0 KiB     3

        class        total   last hour
        setosa       500     12
        versicolor   400     0
        virginica    300     20
    """)


def test_format_api_regression_with_last_error_and_no_replicas() -> None:
    assert format_api(PRICE) == golden("""
        api     status                  up-to-date   requested   requests   2XX   4XX   5XX   p50   p99   endpoint
        price   error (out of memory)   0            1           0          0     0     0     -     -     /d/price

        no replicas

        last error: replica price-3 used 1.2 GiB of its 1.0 GiB limit

        prediction   total     last hour
        count        3         0
        min          -1.5      -
        max          250000    -
        mean         83333.2   -
    """)


def test_format_api_without_tracker_or_metrics() -> None:
    api = {"name": "bare", "status": "creating", "endpoint": "/d/bare", "requested": 1, "ready": 0,
           "last_error": None, "replicas": [], "metrics": None, "tracker": None}
    assert format_api(api) == golden("""
        api    status     up-to-date   requested   requests   2XX   4XX   5XX   p50   p99   endpoint
        bare   creating   0            1           -          -     -     -     -     -     /d/bare

        no replicas
    """)


def test_tracker_lists_classes_seen_only_in_the_last_hour_and_orders_by_total() -> None:
    tracker = {"model_type": "classification",
               "total": {"counts": {"b": 2, "a": 2, "c": 5}},
               "last_hour": {"counts": {"new": 1}}}
    assert format_tracker(tracker) == golden("""
        class   total   last hour
        c       5       0
        a       2       0
        b       2       0
        new     0       1
    """)


def test_tracker_without_predictions() -> None:
    tracker = {"model_type": "classification", "total": {"counts": {}}, "last_hour": {"counts": {}}}
    assert format_tracker(tracker) == "tracker (classification): no predictions yet"


def test_format_gpus() -> None:
    gpus = [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-a", "memory_used": 1288490188,
         "memory_total": 85899345920, "utilization": 37.0, "replica": "iris-0"},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-b", "memory_used": 0,
         "memory_total": 85899345920, "utilization": 0, "replica": None},
    ]
    assert format_gpus(gpus) == golden("""
        gpu   name                    memory               util   replica   api   share   gpu memory
        0     NVIDIA H100 80GB HBM3   1.2 GiB / 80.0 GiB   37 %   iris-0    -     -       -
        1     NVIDIA H100 80GB HBM3   0 B / 80.0 GiB       0 %    -         -     -       -
    """)
    assert format_gpus([]) == "no GPUs found"


def test_format_gpus_with_shared_cards_and_frameworks() -> None:
    gpus = [
        {"index": 0, "name": "Fake GPU", "memory_used": 3 * 2**30, "memory_total": 16 * 2**30, "utilization": 0,
         "replicas": [{"id": "a-1", "api": "a", "share": 0.5, "gpu_mem_bytes": 2 * 2**30, "gpu_mem_limit": 6 * 2**30},
                      {"id": "b-2", "api": "b", "share": 0.25, "gpu_mem_bytes": 2**30, "gpu_mem_limit": None}]},
        {"index": 1, "name": "Fake GPU MIG 0", "memory_used": 0, "memory_total": 8 * 2**30, "utilization": None,
         "replicas": [{"id": "c-3", "api": "c", "share": 1.0, "gpu_mem_bytes": 0, "gpu_mem_limit": None}]},
        {"index": 2, "name": "Fake GPU", "memory_used": 0, "memory_total": 16 * 2**30, "utilization": 0,
         "replicas": []},
    ]
    frameworks = ["onnxruntime-gpu 1.26.0: CUDA 12.8, sees 2 GPUs", "torch 2.13.0+cpu: CPU only (built without CUDA)"]
    assert format_gpus(gpus, frameworks) == golden("""
        gpu   name             memory               util   replica   api   share   gpu memory
        0     Fake GPU         3.0 GiB / 16.0 GiB   0 %    a-1       a     0.5     2.0 GiB / 6.0 GiB
                                                           b-2       b     0.25    1.0 GiB
        1     Fake GPU MIG 0   0 B / 8.0 GiB        -      c-3       c     1       0 B
        2     Fake GPU         0 B / 16.0 GiB       0 %    -         -     -       -

        frameworks:
          onnxruntime-gpu 1.26.0: CUDA 12.8, sees 2 GPUs
          torch 2.13.0+cpu: CPU only (built without CUDA)
    """)
    assert format_gpus([], frameworks[:1]) == (
        "no GPUs found\n\nframeworks:\n  onnxruntime-gpu 1.26.0: CUDA 12.8, sees 2 GPUs"
    )


def test_format_api_with_gpu_shares_and_memory() -> None:
    api = {**PRICE, "status": "error (out of GPU memory)", "last_error": "replica price-3 was stopped for using 7Gi",
           "replicas": [
               {"id": "price-4", "pid": 7, "state": "ready", "gpus": [0], "gpu_share": 0.5, "cpu_percent": 1.0,
                "rss_bytes": 2**20, "restarts": 1, "gpu_mem_bytes": 2**30, "gpu_mem_limit": 6 * 2**30},
               {"id": "price-5", "pid": 8, "state": "starting", "gpus": [1], "gpu_share": 1.0, "cpu_percent": None,
                "rss_bytes": 2**20, "restarts": 0, "gpu_mem_bytes": None, "gpu_mem_limit": None},
           ]}
    assert format_api(api).split("\n\n")[1:3] == [golden("""
        replica   pid   state      gpus      cpu %   memory    restarts   gpu memory
        price-4   7     ready      0 (0.5)   1.0     1.0 MiB   1          1.0 GiB / 6.0 GiB
        price-5   8     starting   1         -       1.0 MiB   0          -
    """), "last error: replica price-3 was stopped for using 7Gi"]


@pytest.mark.parametrize("n, text", [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (129394278, "123.4 MiB"),
    (16 * 2**30, "16.0 GiB"), (3 * 2**40, "3.0 TiB"), (5000 * 2**40, "5000.0 TiB"),
])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize("ms, text", [
    (None, "-"), (0.4213, "0.42 ms"), (1.0, "1.0 ms"), (12.34, "12.3 ms"), (2500.0, "2500.0 ms"),
])
def test_latency(ms: float | None, text: str) -> None:
    assert latency(ms) == text


def test_no_line_has_trailing_spaces() -> None:
    for text in (format_apis([IRIS, PRICE]), format_api(IRIS), format_api(PRICE)):
        assert all(line == line.rstrip() for line in text.splitlines())


def test_format_api_shows_batching() -> None:
    from cortexd.daemon.observe.batch_stats import BatchStats

    stats = BatchStats()
    for size, trigger in [(8, "full"), (8, "full"), (3, "interval"), (1, "freed")]:
        stats.record(size, 1.0, trigger, wait_s=size * 0.002)
    view = {**IRIS, "tracker": None,
            "batching": {**stats.summary(2.0), "max_batch_size": 8, "batch_interval_s": 0.005}}
    text = format_api(view)
    assert text.endswith(golden("""
        batching (max_batch_size 8, batch_interval 5ms): 4 batches, 20 requests in the last 5 min; average size 5, average wait 2 ms
          batch sizes  1: 25%  3-4: 25%  5-8: 50%
          sent because replica freed: 25%  full: 50%  interval passed: 25%
    """))
    assert "batching" not in format_api(IRIS)  # an API that does not batch shows nothing of it


def test_format_api_says_why_its_status_is_what_it_is() -> None:
    """`compute unavailable` (and `creating`) carry a reason; `get API` shows it under the row."""
    api = {"name": "third", "status": "compute unavailable", "endpoint": "/third", "requested": 1, "ready": 0,
           "reason": "needs 0.5 of a GPU with 6Gi of GPU memory per replica; GPU 0: 1 of it shared already",
           "last_error": None, "replicas": [], "metrics": None, "tracker": None}
    assert format_api(api) == golden("""
        api     status                up-to-date   requested   requests   2XX   4XX   5XX   p50   p99   endpoint
        third   compute unavailable   0            1           -          -     -     -     -     -     /third

        why: needs 0.5 of a GPU with 6Gi of GPU memory per replica; GPU 0: 1 of it shared already

        no replicas
    """)
