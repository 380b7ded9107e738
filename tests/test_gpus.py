from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from cortexd.daemon.fleet.fake_nvml import FakeNvml
from cortexd.daemon.fleet.gpus import RealNvml, open_nvml, sum_over_devices
from cortexd.daemon.fleet.placement import cuda_visible_devices

GiB = 1024**3
NOT_AVAILABLE = (1 << 64) - 1  # NVML_VALUE_NOT_AVAILABLE as pynvml hands it over


# ------------------------------------------------------------------ open_nvml


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
    procs_error: int | None = None


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
        if h.procs_error is not None:
            raise FakeNVMLError(h.procs_error)
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.procs]


class StandInLibV3(StandInLib):
    """A binding with the _v3 call, which RealNvml must prefer."""

    def __init__(self, cards: list[Card]) -> None:
        super().__init__(cards)
        self.v3_calls = 0

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: Card) -> list[Any]:
        self.v3_calls += 1
        return self.nvmlDeviceGetComputeRunningProcesses(h)


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
    # per device (MIG instances through their own handles), per pid; unknown amounts skipped
    assert nvml.process_gpu_memory_by_device() == {0: {11: GiB}, 1: {}, 2: {11: GiB}}
    assert nvml.process_gpu_memory() == {11: 2 * GiB}
    assert cuda_visible_devices(got, [1, 2]) == "MIG-a2,GPU-bbb"
    nvml.close()
    nvml.close()
    assert lib.shutdowns == 1 and not nvml.available()


def test_real_nvml_prefers_v3_and_skips_what_it_cannot_read() -> None:
    cards = [
        Card("GPU-a", "H200", 140 * GiB, 9 * GiB, procs=[(7, 3 * GiB), (7, GiB), (8, NOT_AVAILABLE)]),
        Card("GPU-b", "H200", 140 * GiB, 0, procs_error=3),  # NOT_SUPPORTED: reads as nothing
    ]
    lib = StandInLibV3(cards)
    nvml = RealNvml(lib)
    assert nvml.process_gpu_memory_by_device() == {0: {7: 4 * GiB}}
    assert lib.v3_calls == 2


def test_sum_over_devices() -> None:
    assert sum_over_devices({0: {1: 5, 2: 1}, 1: {1: 7}, 2: {}}) == {1: 12, 2: 1}
    assert sum_over_devices({}) == {}


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
    assert nvml.gpus() == [] and nvml.process_gpu_memory() == {} and nvml.process_gpu_memory_by_device() == {}
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
