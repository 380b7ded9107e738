from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from cortexd.daemon.fleet.gpus import (
    FAKE_GPU_MEMORY,
    FakeNvml,
    GpuInfo,
    RealNvml,
    choose_gpus,
    cuda_visible_devices,
    open_nvml,
    placement_shortfall_reason,
)

GiB = 1024**3


def gpu(index: int, used_gib: float = 0, *, total_gib: float = 16, mig: bool = False,
        parent: int | None = None) -> GpuInfo:
    return GpuInfo(index=index, uuid=f"GPU-{index}", name="T", memory_total=int(total_gib * GiB),
                   memory_used=int(used_gib * GiB), utilization=0, mig=mig, parent=parent)


# ------------------------------------------------------------------ choose_gpus

TWO = [gpu(0), gpu(1)]
UNEVEN = [gpu(0, used_gib=8), gpu(1, used_gib=1), gpu(2, used_gib=4), gpu(3, used_gib=1)]
# card 0 split into 3 MIG devices (indices 0-2), card 1 into 2 (indices 3-4)
MIG = [gpu(0, mig=True, parent=0, total_gib=5), gpu(1, mig=True, parent=0, total_gib=5),
       gpu(2, mig=True, parent=0, total_gib=5), gpu(3, mig=True, parent=1, total_gib=5),
       gpu(4, mig=True, parent=1, total_gib=5)]


@pytest.mark.parametrize(
    "need, gpus, held, prefer, expected",
    [
        # nothing needed -> nothing chosen, even with no GPU at all
        (0, [], {}, (), []),
        (0, TWO, {0: "a", 1: "b"}, (), []),
        # ties on memory -> lowest index
        (1, TWO, {}, (), [0]),
        (1, TWO, {0: "a"}, (), [1]),
        (2, TWO, {}, (), [0, 1]),
        # never share: not enough free ones -> None
        (1, TWO, {0: "a", 1: "b"}, (), None),
        (2, TWO, {1: "b"}, (), None),
        (3, TWO, {}, (), None),
        (1, [], {}, (), None),
        # most free memory first, then lowest index among equals
        (1, UNEVEN, {}, (), [1]),
        (2, UNEVEN, {}, (), [1, 3]),
        (3, UNEVEN, {}, (), [1, 2, 3]),
        (1, UNEVEN, {1: "a", 3: "b"}, (), [2]),
        # a replacement keeps its GPU even when another has more free memory
        (1, UNEVEN, {}, (0,), [0]),
        # ... unless someone else holds it now
        (1, UNEVEN, {0: "x"}, (0,), [1]),
        # unknown preferences and stale holders are ignored
        (1, TWO, {7: "gone"}, (9,), [0]),
        # MIG: spread replicas over physical cards (fewest replicas per card)
        (1, MIG, {}, (), [0]),
        (1, MIG, {0: "a"}, (), [3]),
        (2, MIG, {0: "a"}, (), [3, 4]),  # one replica: both on the emptier card
        (1, MIG, {0: "a", 3: "b"}, (), [1]),
        (1, MIG, {0: "a", 1: "b", 3: "c"}, (), [4]),
    ],
)
def test_choose_gpus(need: int, gpus: list[GpuInfo], held: dict[int, str], prefer: tuple[int, ...],
                     expected: list[int] | None) -> None:
    assert choose_gpus(need, gpus, held, prefer) == expected


def test_choose_gpus_never_returns_a_held_gpu() -> None:
    gpus = [gpu(i, used_gib=i % 3) for i in range(6)]
    held: dict[int, str] = {}
    for replica in range(6):
        chosen = choose_gpus(1, gpus, held)
        assert chosen is not None and not set(chosen) & set(held)
        held.update({i: f"r{replica}" for i in chosen})
    assert choose_gpus(1, gpus, held) is None
    assert sorted(held) == list(range(6))


# ------------------------------------------------------------------ reasons / env


@pytest.mark.parametrize(
    "need, total, in_use, nvml_reason, expected",
    [
        (1, 2, 2, None, "needs 1 GPU per replica; 2 of 2 in use"),
        (2, 4, 3, None, "needs 2 GPUs per replica; 3 of 4 in use"),
        (4, 2, 0, None, "needs 4 GPUs per replica; the machine has 2"),
        (1, 0, 0, "no NVIDIA driver: libnvidia-ml.so.1 not found",
         "needs 1 GPU per replica; no NVIDIA GPU found (no NVIDIA driver: libnvidia-ml.so.1 not found)"),
        (1, 0, 0, None, "needs 1 GPU per replica; no NVIDIA GPU found"),
    ],
)
def test_placement_shortfall_reason(need: int, total: int, in_use: int, nvml_reason: str | None,
                                    expected: str) -> None:
    assert placement_shortfall_reason(need, total, in_use, nvml_reason) == expected


def test_cuda_visible_devices() -> None:
    gpus = [gpu(0), gpu(1), gpu(2)]
    assert cuda_visible_devices(gpus, []) == ""
    assert cuda_visible_devices(gpus, [1]) == "GPU-1"
    assert cuda_visible_devices(gpus, [2, 0]) == "GPU-2,GPU-0"
    with pytest.raises(ValueError, match="unknown GPU index 5"):
        cuda_visible_devices(gpus, [5])


def test_open_nvml_picks_fake_from_env() -> None:
    nvml = open_nvml({"CORTEXD_FAKE_GPUS": "2"})
    assert isinstance(nvml, FakeNvml)
    assert [g.uuid for g in nvml.gpus()] == ["GPU-fake-0", "GPU-fake-1"]
    assert isinstance(open_nvml({}), RealNvml)
    assert isinstance(open_nvml({"CORTEXD_FAKE_GPUS": ""}), RealNvml)
    zero = open_nvml({"CORTEXD_FAKE_GPUS": "0"})
    assert not zero.available() and zero.unavailable_reason() == "CORTEXD_FAKE_GPUS=0" and zero.gpus() == []


@pytest.mark.parametrize("bad", ["two", "-1", "1.5"])
def test_open_nvml_rejects_bad_fake_count(bad: str) -> None:
    with pytest.raises(ValueError, match="CORTEXD_FAKE_GPUS must be a whole number"):
        open_nvml({"CORTEXD_FAKE_GPUS": bad})


# ------------------------------------------------------------------ FakeNvml


def test_fake_nvml_inventory_and_knobs() -> None:
    nvml = FakeNvml(3)
    assert nvml.available() and nvml.unavailable_reason() is None
    gpus = nvml.gpus()
    assert [(g.index, g.uuid, g.name, g.memory_total, g.memory_used) for g in gpus] == [
        (i, f"GPU-fake-{i}", "Fake GPU", 16 * GiB, 0) for i in range(3)
    ]
    nvml.set_memory_used(1, 10 * GiB)
    nvml.set_utilization(1, 55)
    assert gpus[1].memory_used == 0  # earlier readings are snapshots
    now = nvml.gpus()[1]
    assert (now.memory_used, now.memory_free, now.utilization) == (10 * GiB, 6 * GiB, 55)
    nvml.set_memory_used(2, 99 * GiB)
    assert nvml.gpus()[2].memory_used == FAKE_GPU_MEMORY  # clamped to the card
    # placement sees the simulated memory
    assert choose_gpus(1, nvml.gpus(), {}) == [0]
    assert nvml.process_gpu_memory() == {}
    nvml.set_process_gpu_memory(123, GiB)
    assert nvml.process_gpu_memory() == {123: GiB}
    nvml.set_process_gpu_memory(123, None)
    assert nvml.process_gpu_memory() == {}
    nvml.close()
    assert not nvml.available() and nvml.gpus() == []


# ------------------------------------------------------------------ RealNvml against a stand-in pynvml


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"code {value}")
        self.value = value


@dataclass
class Card:
    uuid: str
    name: str
    total: int
    used: int
    util: int | None = 10
    migs: list[Card] = field(default_factory=list)
    mig_capable: bool = True
    procs: list[tuple[int, int | None]] = field(default_factory=list)


class StandInLib:
    """Just the pynvml calls RealNvml makes, over a list of Cards."""

    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, cards: list[Card], init_error: int | None = None) -> None:
        self.cards = cards
        self.init_error = init_error
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Card:
        return self.cards[i]

    def nvmlDeviceGetMigMode(self, h: Card) -> list[int]:
        if not h.mig_capable:
            raise FakeNVMLError(3)  # NOT_SUPPORTED
        return [1 if h.migs else 0, 0]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Card) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Card, slot: int) -> Card:
        if slot >= len(h.migs):
            raise FakeNVMLError(6)  # NOT_FOUND
        return h.migs[slot]

    def nvmlDeviceGetUUID(self, h: Card) -> bytes:
        return h.uuid.encode()  # old pynvml versions return bytes

    def nvmlDeviceGetName(self, h: Card) -> str:
        return h.name

    def nvmlDeviceGetMemoryInfo(self, h: Card) -> Any:
        return SimpleNamespace(total=h.total, used=h.used, free=h.total - h.used)

    def nvmlDeviceGetUtilizationRates(self, h: Card) -> Any:
        if h.util is None:
            raise FakeNVMLError(3)
        return SimpleNamespace(gpu=h.util, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: Card) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.procs]


def test_real_nvml_lists_gpus_and_mig_devices() -> None:
    cards = [
        Card("GPU-aaa", "A100", 40 * GiB, GiB, util=30,
             migs=[Card("MIG-a1", "A100 MIG 1g.5gb", 5 * GiB, 0, util=None, procs=[(11, GiB)]),
                   Card("MIG-a2", "A100 MIG 1g.5gb", 5 * GiB, 0, util=None)]),
        Card("GPU-bbb", "T4", 16 * GiB, 2 * GiB, util=5, mig_capable=False, procs=[(11, GiB), (12, None)]),
    ]
    lib = StandInLib(cards)
    nvml = RealNvml(lib)
    assert nvml.available() and nvml.unavailable_reason() is None
    got = nvml.gpus()
    assert [(g.index, g.uuid, g.mig, g.parent, g.utilization) for g in got] == [
        (0, "MIG-a1", True, 0, None),
        (1, "MIG-a2", True, 0, None),
        (2, "GPU-bbb", False, None, 5),
    ]
    # readings are fresh on every call
    cards[1].used = 3 * GiB
    cards[1].util = 90
    assert (nvml.gpus()[2].memory_used, nvml.gpus()[2].utilization) == (3 * GiB, 90)
    # per-pid memory summed over devices; unknown amounts skipped
    assert nvml.process_gpu_memory() == {11: 2 * GiB}
    assert cuda_visible_devices(got, [1, 2]) == "MIG-a2,GPU-bbb"
    nvml.close()
    nvml.close()
    assert lib.shutdowns == 1 and not nvml.available()


@pytest.mark.parametrize(
    "code, reason",
    [
        (12, "no NVIDIA driver: libnvidia-ml.so.1 not found"),
        (9, "the NVIDIA driver is not loaded"),
        (999, "NVML: code 999"),
    ],
)
def test_real_nvml_init_failure_is_a_reason_not_an_exception(code: int, reason: str) -> None:
    nvml = RealNvml(StandInLib([], init_error=code))
    assert not nvml.available()
    assert nvml.unavailable_reason() == reason
    assert nvml.gpus() == [] and nvml.process_gpu_memory() == {}
    nvml.close()


def test_real_nvml_with_no_gpu() -> None:
    nvml = RealNvml(StandInLib([]))
    assert not nvml.available() and nvml.unavailable_reason() == "NVML reports no GPU"


def test_real_nvml_on_this_machine_never_raises() -> None:
    nvml = RealNvml()
    try:
        if nvml.available():
            assert nvml.gpus() and nvml.unavailable_reason() is None
        else:
            assert nvml.unavailable_reason() and nvml.gpus() == []
    finally:
        nvml.close()
