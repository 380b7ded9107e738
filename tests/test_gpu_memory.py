"""Replicas' GPU memory: readings by process tree, the GPU OOM check, the gpus view; and the
ComputeManager that keeps them, over a fake NVML (no daemon)."""

from __future__ import annotations

import os

import pytest

from cortexd.config import Api, Compute, PredictorSpec
from cortexd.daemon.fleet.admission import Capacity
from cortexd.daemon.fleet.compute import ComputeManager
from cortexd.daemon.fleet.fake_nvml import FakeNvml
from cortexd.daemon.fleet.gpu_memory import (
    OverGpuMemory,
    gpu_mem_margin,
    gpu_rows,
    over_gpu_memory,
    process_tree,
    replica_gpu_memory,
    replica_gpu_view,
)
from cortexd.daemon.fleet.gpus import GpuInfo
from cortexd.daemon.fleet.placement import Holding

GiB = 1024**3
MiB = 1024**2


def test_readings_follow_each_replicas_process_tree() -> None:
    trees = {"a-1": {10, 11}, "b-2": {20}, "c-3": {30}}
    by_device = {0: {10: GiB, 11: 2 * GiB, 20: 3 * GiB, 99: 7 * GiB}, 1: {11: GiB}, 2: {}}
    assert replica_gpu_memory(trees, by_device) == {"a-1": {0: 3 * GiB, 1: GiB}, "b-2": {0: 3 * GiB}, "c-3": {}}
    assert replica_gpu_memory({}, by_device) == {}


@pytest.mark.parametrize("gpu_mem, margin", [(GiB, 512 * MiB), (5 * GiB, 512 * MiB), (6 * GiB, 644245095),
                                             (80 * GiB, 8 * GiB)])
def test_margin_is_ten_percent_and_at_least_512_mib(gpu_mem: int, margin: int) -> None:
    assert gpu_mem_margin(gpu_mem) == margin


HALF_6G = Holding((0,), 0.5, 6 * GiB)


@pytest.mark.parametrize(
    "holdings, usage, over",
    [
        # at the limit plus the margin: kept; a byte more: stopped
        ({"a": HALF_6G}, {"a": {0: 6 * GiB + 644245095}}, []),
        ({"a": HALF_6G}, {"a": {0: 6 * GiB + 644245096}}, [("a", 0, 6 * GiB + 644245096)]),
        # no gpu_mem, no limit
        ({"a": Holding((0,), 0.5, None)}, {"a": {0: 100 * GiB}}, []),
        # no reading yet
        ({"a": HALF_6G}, {}, []),
        # per device: the worst device is named
        ({"a": Holding((0, 1), 1.0, 2 * GiB)}, {"a": {0: 3 * GiB, 1: 4 * GiB}}, [("a", 1, 4 * GiB)]),
        ({"a": Holding((0, 1), 1.0, 2 * GiB)}, {"a": {0: 2 * GiB, 1: 2 * GiB}}, []),
        # only the one above its limit, in id order; its neighbour on the card keeps serving
        ({"b": HALF_6G, "a": HALF_6G, "c": HALF_6G}, {"a": {0: 9 * GiB}, "b": {0: GiB}, "c": {0: 8 * GiB}},
         [("a", 0, 9 * GiB), ("c", 0, 8 * GiB)]),
    ],
)
def test_over_gpu_memory(holdings: dict[str, Holding], usage: dict[str, dict[int, int]],
                         over: list[tuple[str, int, int]]) -> None:
    assert [(o.replica_id, o.device, o.used_bytes) for o in over_gpu_memory(holdings, usage)] == over


def test_the_reason_says_what_how_much_and_the_margin() -> None:
    over = OverGpuMemory("iris-3", 0, 7 * GiB, 6 * GiB, 644245095)
    assert over.reason() == ("replica iris-3 was stopped for using 7Gi of GPU memory on GPU 0, above its gpu_mem of "
                             "6Gi by more than the margin of 614.4Mi")


def test_replica_view() -> None:
    assert replica_gpu_view(None, None) == {"gpu_share": None, "gpu_mem_bytes": None, "gpu_mem_limit": None}
    assert replica_gpu_view(HALF_6G, None) == {"gpu_share": 0.5, "gpu_mem_bytes": None, "gpu_mem_limit": 6 * GiB}
    assert replica_gpu_view(HALF_6G, {}) == {"gpu_share": 0.5, "gpu_mem_bytes": 0, "gpu_mem_limit": 6 * GiB}
    assert replica_gpu_view(Holding((0, 1), 1.0, None), {0: GiB, 1: 2 * GiB}) == {
        "gpu_share": 1.0, "gpu_mem_bytes": 3 * GiB, "gpu_mem_limit": None}


def test_gpu_rows_list_each_replica_with_share_and_memory() -> None:
    gpus = [GpuInfo(0, "GPU-0", "T", 16 * GiB, 5 * GiB, 40), GpuInfo(1, "GPU-1", "T", 16 * GiB, 0, 0)]
    holdings = {"b-2": Holding((0,), 0.25, None), "a-1": HALF_6G}
    rows = gpu_rows(gpus, holdings, {"a-1": {0: 2 * GiB}, "b-2": {0: GiB}}, lambda rid: rid.split("-")[0])
    assert rows[0]["replicas"] == [
        {"id": "a-1", "api": "a", "share": 0.5, "gpu_mem_bytes": 2 * GiB, "gpu_mem_limit": 6 * GiB},
        {"id": "b-2", "api": "b", "share": 0.25, "gpu_mem_bytes": GiB, "gpu_mem_limit": None},
    ]
    assert (rows[0]["share_used"], rows[0]["replica"], rows[0]["api"]) == (0.75, "a-1", "a")
    # 16 - (5 - 3 ours = 2 others) - max(6, 2) - max(0, 1) = 7
    assert rows[0]["free_for_replicas"] == 7 * GiB
    assert (rows[1]["replicas"], rows[1]["replica"], rows[1]["share_used"]) == ([], None, 0.0)
    unread = gpu_rows(gpus, {"a-1": HALF_6G}, {}, lambda rid: None)
    assert unread[0]["replicas"][0]["gpu_mem_bytes"] is None  # no reading yet: unknown, not 0


def test_process_tree_of_this_process_and_of_none() -> None:
    assert os.getpid() in process_tree(os.getpid())
    assert process_tree(999999999) == set()


# --------------------------------------------------------------------------- ComputeManager


def api(name: str, gpu: float, gpu_mem: int | None = None) -> Api:
    return Api(name=name, endpoint=f"/{name}", python_path="/",
               predictor=PredictorSpec("python", "/p.py", None, None, {}),
               tracker=None, compute=Compute(cpu=0.1, gpu=gpu, gpu_mem=gpu_mem), metadata={})


def test_compute_manager_shares_a_card_and_stops_the_replica_above_its_gpu_mem() -> None:
    nvml = FakeNvml(1)
    compute = ComputeManager(nvml, capacity=Capacity(cores=8, mem=64 * GiB))
    assert compute.place("a-1", api("a", 0.5, 6 * GiB), None) == ([0], None)
    assert compute.place("b-2", api("b", 0.5), None) == ([0], None)
    chosen, reason = compute.place("c-3", api("c", 0.5), None)
    assert chosen is None and reason == "needs 0.5 of a GPU per replica; GPU 0: 1 of it shared already"
    assert compute.cuda_visible_devices([0]) == "GPU-fake-0"
    assert compute.holders == {"a-1": [0], "b-2": [0]}

    nvml.set_process_gpu_memory(101, 3 * GiB)  # a-1's replica process
    nvml.set_process_gpu_memory(102, 4 * GiB)  # a worker it started
    nvml.set_process_gpu_memory(201, GiB)  # b-2
    readings = compute.read_gpus({"a-1": {101, 102}, "b-2": {201}, "gone-9": {999}})
    assert readings is not None
    compute.apply_gpu_readings(readings)
    assert compute.gpu_usage == {"a-1": {0: 7 * GiB}, "b-2": {0: GiB}}
    assert compute.replica_gpu("a-1") == {"gpu_share": 0.5, "gpu_mem_bytes": 7 * GiB, "gpu_mem_limit": 6 * GiB}
    assert [o.replica_id for o in compute.gpu_memory_over()] == ["a-1"]

    table = compute.gpu_table(lambda rid: rid.split("-")[0])
    assert table["reason"] is None
    (card,) = table["gpus"]
    assert card["memory_used"] == 8 * GiB
    assert [(r["id"], r["share"], r["gpu_mem_bytes"]) for r in card["replicas"]] == [("a-1", 0.5, 7 * GiB),
                                                                                      ("b-2", 0.5, GiB)]
    compute.release("a-1")
    assert compute.place("c-3", api("c", 0.5), None) == ([0], None)
    assert "a-1" not in compute.gpu_usage


def test_compute_manager_without_gpus_says_why() -> None:
    compute = ComputeManager(FakeNvml(0), capacity=Capacity(cores=8, mem=64 * GiB))
    chosen, reason = compute.place("a-1", api("a", 0.25), None)
    assert chosen is None and reason == "needs 0.25 of a GPU per replica; no NVIDIA GPU found (CORTEXD_FAKE_GPUS=0)"
    assert compute.gpu_table(lambda rid: None) == {"gpus": [], "reason": "CORTEXD_FAKE_GPUS=0"}
