"""Real NVML inventory. Runs only where NVML finds a GPU (`make test-gpu` on a GPU machine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cortexd.daemon.fleet.gpus import RealNvml
from cortexd.daemon.fleet.placement import GpuRequest, cuda_visible_devices, place_gpus

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nvml() -> Iterator[RealNvml]:
    real = RealNvml()
    if not real.available():
        real.close()
        pytest.skip(f"no NVML GPU: {real.unavailable_reason()}")
    yield real
    real.close()


def test_inventory_has_gpus_with_uuid_and_memory(nvml: RealNvml) -> None:
    gpus = nvml.gpus()
    assert len(gpus) >= 1
    assert [g.index for g in gpus] == list(range(len(gpus)))
    for g in gpus:
        assert g.uuid.startswith("MIG-" if g.mig else "GPU-"), g
        assert g.name
        assert g.memory_total > 0 and 0 <= g.memory_used <= g.memory_total, g
        assert g.utilization is None or 0 <= g.utilization <= 100, g
    print("\n" + "\n".join(f"{g.index} {g.uuid} {g.name} {g.memory_used}/{g.memory_total} B "
                           f"util={g.utilization}% mig={g.mig}" for g in gpus))


def test_readings_refresh_and_placement_works_on_real_inventory(nvml: RealNvml) -> None:
    first, second = nvml.gpus(), nvml.gpus()
    assert [g.uuid for g in first] == [g.uuid for g in second]  # stable inventory
    placement, _ = place_gpus(GpuRequest(1), second, {})
    assert placement is not None and len(placement.indices) == 1
    assert cuda_visible_devices(second, placement.indices) == second[placement.indices[0]].uuid
    assert place_gpus(GpuRequest(len(second) + 1), second, {})[0] is None
    shared, _ = place_gpus(GpuRequest(0.5, 1024**3), second, {})
    assert shared is not None and shared.share == 0.5
    by_device = nvml.process_gpu_memory_by_device()
    assert isinstance(by_device, dict) and set(by_device) <= {g.index for g in second}
    assert isinstance(nvml.process_gpu_memory(), dict)
