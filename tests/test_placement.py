"""GPU placement tables: whole GPUs, shares of one card, GPU memory, MIG (fleet/placement.py)."""

from __future__ import annotations

import pytest

from cortexd.daemon.fleet.gpus import GpuInfo
from cortexd.daemon.fleet.placement import (
    GpuRequest,
    Holding,
    Placement,
    cuda_visible_devices,
    device_loads,
    place_gpus,
    request_problem,
)

GiB = 1024**3


def gpu(index: int, used_gib: float = 0, *, total_gib: float = 16, mig: bool = False,
        parent: int | None = None) -> GpuInfo:
    return GpuInfo(index=index, uuid=f"{'MIG' if mig else 'GPU'}-{index}", name="T", memory_total=int(total_gib * GiB),
                   memory_used=int(used_gib * GiB), utilization=0, mig=mig, parent=parent)


def whole(*indices: int, mem_gib: float | None = None) -> Holding:
    return Holding(tuple(indices), 1.0, int(mem_gib * GiB) if mem_gib else None)


def share(index: int, fraction: float, mem_gib: float | None = None) -> Holding:
    return Holding((index,), fraction, int(mem_gib * GiB) if mem_gib else None)


def req(gpu: float, mem_gib: float | None = None) -> GpuRequest:
    return GpuRequest(gpu, int(mem_gib * GiB) if mem_gib else None)


ONE = [gpu(0)]
TWO = [gpu(0), gpu(1)]
UNEVEN = [gpu(0, used_gib=8), gpu(1, used_gib=1), gpu(2, used_gib=4), gpu(3, used_gib=1)]
# card 0 split into 3 MIG instances (indices 0-2), card 1 into 2 (indices 3-4)
MIG = [gpu(0, mig=True, parent=0, total_gib=5), gpu(1, mig=True, parent=0, total_gib=5),
       gpu(2, mig=True, parent=0, total_gib=5), gpu(3, mig=True, parent=1, total_gib=5),
       gpu(4, mig=True, parent=1, total_gib=5)]
# a MIG card (instances 0-1) beside a plain one (index 2)
MIXED = [gpu(0, mig=True, parent=0, total_gib=40), gpu(1, mig=True, parent=0, total_gib=40), gpu(2, total_gib=80)]
BIG = [gpu(0, total_gib=16), gpu(1, total_gib=80)]

# (request, gpus, holdings, usage (replica -> device -> GiB), prefer) -> chosen indices, or a fragment of the reason
CASES: list[tuple[str, GpuRequest, list[GpuInfo], dict[str, Holding], dict[str, dict[int, float]], tuple[int, ...],
                  list[int] | str]] = [
    # ---- whole GPUs (as before sharing existed)
    ("nothing asked", req(0), [], {}, {}, (), []),
    ("lowest index on a tie", req(1), TWO, {}, {}, (), [0]),
    ("the free one", req(1), TWO, {"a": whole(0)}, {}, (), [1]),
    ("two of two", req(2), TWO, {}, {}, (), [0, 1]),
    ("whole never shares", req(1), TWO, {"a": whole(0), "b": whole(1)}, {}, (),
     "needs 1 GPU per replica; 2 of 2 in use"),
    ("two, one held", req(2), TWO, {"b": whole(1)}, {}, (), "needs 2 GPUs per replica; 1 of 2 in use"),
    ("more than the machine has", req(3), TWO, {}, {}, (), "needs 3 GPUs per replica; the machine has 2"),
    ("most free memory first", req(1), UNEVEN, {}, {}, (), [1]),
    ("then lowest index", req(2), UNEVEN, {}, {}, (), [1, 3]),
    ("a replacement keeps its GPU", req(1), UNEVEN, {}, {}, (0,), [0]),
    ("unless someone holds it", req(1), UNEVEN, {"x": whole(0)}, {}, (0,), [1]),
    ("unknown preferences ignored", req(1), TWO, {}, {}, (9,), [0]),
    # ---- whole GPUs beside shares: a shared card is not free
    ("whole skips a shared card", req(1), TWO, {"a": share(0, 0.25)}, {}, (), [1]),
    ("whole refused where all are shared", req(1), TWO, {"a": share(0, 0.25), "b": share(1, 0.5)}, {},
     (), "needs 1 GPU per replica; 2 of 2 in use"),
    # ---- shares of one card
    ("a share on an empty card", req(0.5), ONE, {}, {}, (), [0]),
    ("two halves fill a card", req(0.5), ONE, {"a": share(0, 0.5)}, {}, (), [0]),
    ("a third half does not fit", req(0.5), ONE, {"a": share(0, 0.5), "b": share(0, 0.5)}, {}, (),
     "needs 0.5 of a GPU per replica; GPU 0: 1 of it shared already"),
    ("quarters up to exactly 1", req(0.25), ONE, {"a": share(0, 0.25), "b": share(0, 0.25), "c": share(0, 0.25)}, {},
     (), [0]),
    ("0.1 + 0.2 + 0.7 is exactly 1", req(0.7), ONE, {"a": share(0, 0.1), "b": share(0, 0.2)}, {}, (), [0]),
    ("0.3 beside 0.75 does not fit", req(0.3), ONE, {"a": share(0, 0.75)}, {}, (),
     "needs 0.3 of a GPU per replica; GPU 0: 0.75 of it shared already"),
    ("never beside a whole replica", req(0.25), ONE, {"a": whole(0)}, {}, (),
     "needs 0.25 of a GPU per replica; GPU 0: held whole by a replica"),
    ("packs onto the shared card", req(0.25), TWO, {"a": share(1, 0.5)}, {}, (), [1]),
    ("the fuller card first", req(0.25), TWO, {"a": share(0, 0.25), "b": share(1, 0.5)}, {}, (), [1]),
    ("overflows to the next card", req(0.5), TWO, {"a": share(0, 0.75)}, {}, (), [1]),
    ("a replacement keeps its card", req(0.25), TWO, {"a": share(1, 0.5)}, {}, (0,), [0]),
    ("no GPU at all", req(0.5), [], {}, {}, (), "needs 0.5 of a GPU per replica; no NVIDIA GPU found"),
    # ---- GPU memory
    ("fits free memory", req(1, mem_gib=6), UNEVEN, {}, {}, (), [1]),
    ("a card too small", req(1, mem_gib=20), BIG, {}, {}, (), [1]),
    ("no card has it", req(1, mem_gib=100), BIG, {}, {}, (),
     "needs 1 GPU with 100Gi of GPU memory per replica; GPU 0: 16Gi GPU memory free; GPU 1: 80Gi GPU memory free"),
    ("other processes' memory counts", req(1, mem_gib=10), [gpu(0, used_gib=8)], {}, {}, (),
     "GPU 0: 8Gi GPU memory free"),
    ("reservations count", req(0.5, mem_gib=10), ONE, {"a": share(0, 0.25, mem_gib=8)}, {}, (),
     "needs 0.5 of a GPU with 10Gi of GPU memory per replica; GPU 0: 8Gi GPU memory free"),
    ("reservations and shares pack", req(0.5, mem_gib=8), ONE, {"a": share(0, 0.25, mem_gib=8)}, {}, (), [0]),
    # a replica using 3Gi of its 8Gi reservation: NVML's 3Gi used is not counted twice
    ("use within a reservation", req(0.5, mem_gib=8), [gpu(0, used_gib=3)], {"a": share(0, 0.25, mem_gib=8)},
     {"a": {0: 3}}, (), [0]),
    # without per-process readings the 3Gi is another process's: cautious
    ("no readings: cautious", req(0.5, mem_gib=8), [gpu(0, used_gib=3)], {"a": share(0, 0.25, mem_gib=8)}, {}, (),
     "GPU 0: 5Gi GPU memory free"),
    # a replica above its reservation counts at what it uses
    ("use above a reservation", req(0.5, mem_gib=6), [gpu(0, used_gib=11)], {"a": share(0, 0.25, mem_gib=8)},
     {"a": {0: 11}}, (), "GPU 0: 5Gi GPU memory free"),
    ("a replica without gpu_mem counts what it uses", req(0.5, mem_gib=6), [gpu(0, used_gib=12)],
     {"a": share(0, 0.5)}, {"a": {0: 12}}, (), "GPU 0: 4Gi GPU memory free"),
    ("packs where the memory is", req(0.25, mem_gib=10), BIG, {"a": share(0, 0.25)}, {}, (), [0]),
    ("memory picks the roomier card", req(0.25, mem_gib=20), BIG, {"a": share(0, 0.25)}, {}, (), [1]),
    ("each device of a multi-GPU replica needs it", req(2, mem_gib=20), BIG, {}, {}, (),
     "GPU 0: 16Gi GPU memory free; 1 free, fewer than 2"),
    # ---- MIG: instances placed like cards, whole, one per replica, spread over cards
    ("MIG: first instance", req(1), MIG, {}, {}, (), [0]),
    ("MIG: the emptier card", req(1), MIG, {"a": whole(0)}, {}, (), [3]),
    ("MIG: spread", req(1), MIG, {"a": whole(0), "b": whole(3)}, {}, (), [1]),
    ("MIG: the last one", req(1), MIG, {"a": whole(0), "b": whole(1), "c": whole(3)}, {}, (), [4]),
    ("MIG: never a share", req(0.5), MIG, {}, {}, (),
     "needs 0.5 of a GPU per replica; GPU 0: a MIG instance (placed only whole: gpu: 1)"),
    ("MIG: a share goes to the plain card", req(0.5), MIXED, {}, {}, (), [2]),
    ("MIG: one instance per replica", req(2), MIG, {}, {}, (),
     "needs 2 GPUs per replica; GPU 0: a MIG instance (CUDA shows a process only one)"),
    ("MIG: most free memory", req(1, mem_gib=30), MIXED, {}, {}, (), [2]),
    ("MIG: an instance has enough", req(1, mem_gib=30), MIXED, {"a": whole(2)}, {}, (), [0]),
    ("MIG: an instance too small", req(1, mem_gib=50), MIXED, {}, {}, (), [2]),
    ("MIG: all held", req(1), MIG[:2], {"a": whole(0), "b": whole(1)}, {}, (),
     "needs 1 GPU per replica; GPU 0: held by a replica; GPU 1: held by a replica"),
    ("many refusals are summarised", req(1), MIG, {f"r{i}": whole(i) for i in range(5)}, {}, (), "; 1 more alike"),
    # ---- requests placement does not understand
    ("1.5 GPUs", req(1.5), TWO, {}, {}, (), "gpu 1.5 is neither a whole number of GPUs nor a share of one"),
]


@pytest.mark.parametrize(("request_", "gpus", "holdings", "usage", "prefer", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_place_gpus(request_: GpuRequest, gpus: list[GpuInfo], holdings: dict[str, Holding],
                    usage: dict[str, dict[int, float]], prefer: tuple[int, ...], expected: list[int] | str) -> None:
    usage_bytes = {rid: {i: int(g * GiB) for i, g in per.items()} for rid, per in usage.items()}
    placement, reason = place_gpus(request_, gpus, holdings, usage_bytes, prefer)
    if isinstance(expected, str):
        assert placement is None
        assert expected in reason
    else:
        assert reason == ""
        assert placement is not None and placement.indices == expected


def test_placement_carries_share_and_memory() -> None:
    placement, _ = place_gpus(req(0.25, mem_gib=6), TWO, {})
    assert placement == Placement([0], 0.25, 6 * GiB)
    assert placement.holding() == Holding((0,), 0.25, 6 * GiB)
    whole_placement, _ = place_gpus(req(2), TWO, {})
    assert whole_placement == Placement([0, 1], 1.0, None)


def test_no_gpu_reason_is_passed_on() -> None:
    _, reason = place_gpus(req(1), [], {}, no_gpu_reason="no NVIDIA driver: libnvidia-ml.so.1 not found")
    assert reason == "needs 1 GPU per replica; no NVIDIA GPU found (no NVIDIA driver: libnvidia-ml.so.1 not found)"


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.3, 0.5, 0.7])
def test_shares_on_a_card_never_sum_past_one(fraction: float) -> None:
    """Place one share after another until refused: the card ends at most full, never over."""
    holdings: dict[str, Holding] = {}
    for n in range(20):
        placement, _ = place_gpus(req(fraction), ONE, holdings)
        if placement is None:
            break
        holdings[f"r{n}"] = placement.holding()
    total = sum(h.share for h in holdings.values())
    assert total <= 1 + 1e-9
    assert total + fraction > 1 + 1e-9  # refused only once the next one would not fit
    assert device_loads(ONE, holdings)[0].share == pytest.approx(total)


def test_whole_and_shares_never_meet_on_one_card() -> None:
    """A mix placed in any order: no card carries a whole replica and anything else."""
    orders = [[1, 0.5, 0.5, 1, 0.25], [0.5, 1, 1, 0.5, 0.5], [0.25, 0.25, 1, 0.5, 1, 0.25]]
    for order in orders:
        holdings: dict[str, Holding] = {}
        for n, gpu_request in enumerate(order):
            placement, _ = place_gpus(req(gpu_request), TWO, holdings)
            if placement is not None:
                holdings[f"r{n}"] = placement.holding()
        for index in (0, 1):
            on_card = [h for h in holdings.values() if index in h.indices]
            if any(h.share == 1.0 for h in on_card):
                assert len(on_card) == 1, (order, holdings)
            assert sum(h.share for h in on_card) <= 1 + 1e-9


@pytest.mark.parametrize(("gpu_request", "problem"), [
    (0, None), (0.5, None), (1, None), (3, None), (3.0, None),
    (1.5, "gpu 1.5 is neither a whole number of GPUs nor a share of one (below 1)"),
    (-1, "gpu must be a number >= 0, got -1"),
])
def test_request_problem(gpu_request: float, problem: str | None) -> None:
    assert request_problem(gpu_request) == problem


def test_cuda_visible_devices() -> None:
    gpus = [gpu(0), gpu(1), gpu(2, mig=True, parent=1)]
    assert cuda_visible_devices(gpus, []) == ""
    assert cuda_visible_devices(gpus, [1]) == "GPU-1"
    assert cuda_visible_devices(gpus, [2]) == "MIG-2"
    assert cuda_visible_devices(gpus, [1, 0]) == "GPU-1,GPU-0"
    with pytest.raises(ValueError, match="unknown GPU index 5"):
        cuda_visible_devices(gpus, [5])
