"""The fake NVML (CORTEXD_FAKE_GPUS and friends): cards, memory, MIG, per-process readings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cortexd.daemon.fleet.fake_nvml import FAKE_GPU_MEMORY, FakeNvml, fake_from_env, parse_charges
from cortexd.daemon.fleet.gpus import open_nvml
from cortexd.daemon.fleet.placement import GpuRequest, place_gpus

GiB = 1024**3


def test_inventory_and_knobs() -> None:
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
    placement, _ = place_gpus(GpuRequest(1, 8 * GiB), nvml.gpus(), {})
    assert placement is not None and placement.indices == [0]
    assert nvml.process_gpu_memory() == {}
    nvml.set_process_gpu_memory(123, GiB)
    nvml.set_process_gpu_memory(123, 2 * GiB, index=1)
    assert nvml.process_gpu_memory_by_device() == {0: {123: GiB}, 1: {123: 2 * GiB}}
    assert nvml.process_gpu_memory() == {123: 3 * GiB}
    assert [g.memory_used for g in nvml.gpus()] == [GiB, 12 * GiB, FAKE_GPU_MEMORY]  # processes count on the card
    nvml.set_process_gpu_memory(123, None)
    assert nvml.process_gpu_memory() == {123: 2 * GiB}
    nvml.close()
    assert not nvml.available() and nvml.gpus() == []


def test_memory_per_card_and_mig_from_env() -> None:
    nvml = fake_from_env(
        {"CORTEXD_FAKE_GPUS": "3", "CORTEXD_FAKE_GPU_MEM": "16Gi, 80Gi,40Gi", "CORTEXD_FAKE_MIG": "2:4"}
    )
    got = [(g.index, g.uuid, g.memory_total, g.mig, g.parent, g.utilization) for g in nvml.gpus()]
    assert got == [
        (0, "GPU-fake-0", 16 * GiB, False, None, 0),
        (1, "GPU-fake-1", 80 * GiB, False, None, 0),
        (2, "MIG-fake-2-0", 10 * GiB, True, 2, None),
        (3, "MIG-fake-2-1", 10 * GiB, True, 2, None),
        (4, "MIG-fake-2-2", 10 * GiB, True, 2, None),
        (5, "MIG-fake-2-3", 10 * GiB, True, 2, None),
    ]
    one_size = fake_from_env({"CORTEXD_FAKE_GPUS": "2", "CORTEXD_FAKE_GPU_MEM": "141Gi"})
    assert [g.memory_total for g in one_size.gpus()] == [141 * GiB, 141 * GiB]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CORTEXD_FAKE_GPUS": "two"}, "CORTEXD_FAKE_GPUS must be a whole number >= 0, got 'two'"),
        ({"CORTEXD_FAKE_GPUS": "2", "CORTEXD_FAKE_GPU_MEM": "16Gi,16Gi,16Gi"},
         "CORTEXD_FAKE_GPU_MEM gives 3 sizes for 2 GPUs; give 1 or 2"),
        ({"CORTEXD_FAKE_GPUS": "1", "CORTEXD_FAKE_GPU_MEM": "16g"}, 'CORTEXD_FAKE_GPU_MEM: unknown memory suffix "g"'),
        ({"CORTEXD_FAKE_GPUS": "1", "CORTEXD_FAKE_MIG": "1:2"},
         "CORTEXD_FAKE_MIG entries are CARD:INSTANCES with CARD < 1"),
        ({"CORTEXD_FAKE_GPUS": "1", "CORTEXD_FAKE_MIG": "0:0"}, "got '0:0'"),
        ({"CORTEXD_FAKE_GPUS": "1", "CORTEXD_FAKE_MIG": "0"}, "got '0'"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        open_nvml(env)
    assert message in str(info.value)


UUIDS = {"GPU-fake-0": 0, "GPU-fake-1": 1}


@pytest.mark.parametrize(
    "text, default, charges",
    [
        ("6Gi", 1, {1: 6 * GiB}),
        ("1048576\n", 0, {0: 1024**2}),
        ("6Gi", None, {}),  # the process sees no GPU
        ("GPU-fake-1 2Gi\nGPU-fake-0 1Gi\nGPU-fake-1 1Gi", 0, {0: GiB, 1: 3 * GiB}),
        ("1 512Mi", 0, {1: 512 * 1024**2}),
        ("GPU-other 1Gi", 0, {}),  # a device this NVML does not have
        ("lots", 0, {}),
        ("GPU-fake-0 1Gi extra", 0, {}),
        ("", 0, {}),
    ],
)
def test_parse_charges(text: str, default: int | None, charges: dict[int, int]) -> None:
    assert parse_charges(text, UUIDS, lambda: default) == charges


@pytest.fixture
def sleeper(tmp_path: object) -> Iterator[subprocess.Popen[bytes]]:
    """A live process that sees GPU-fake-1, as a replica placed there would."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "GPU-fake-1"})
    yield proc
    proc.kill()
    proc.wait()


def test_processes_report_through_files(tmp_path: object, sleeper: subprocess.Popen[bytes]) -> None:
    folder = str(tmp_path)
    nvml = open_nvml({"CORTEXD_FAKE_GPUS": "2", "CORTEXD_FAKE_GPU_PROC_DIR": folder})
    assert nvml.process_gpu_memory_by_device() == {}
    with open(os.path.join(folder, str(sleeper.pid)), "w") as f:
        f.write("3Gi")  # charged to the device in its CUDA_VISIBLE_DEVICES
    with open(os.path.join(folder, str(os.getpid())), "w") as f:
        f.write("GPU-fake-0 1Gi\n")
    with open(os.path.join(folder, "999999999"), "w") as f:  # no such process: ignored
        f.write("5Gi")
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("ignored")
    assert nvml.process_gpu_memory_by_device() == {1: {sleeper.pid: 3 * GiB}, 0: {os.getpid(): GiB}}
    assert [g.memory_used for g in nvml.gpus()] == [GiB, 3 * GiB]
    sleeper.kill()
    sleeper.wait()
    assert nvml.process_gpu_memory_by_device() == {0: {os.getpid(): GiB}}


def test_a_missing_folder_reads_as_no_processes(tmp_path: object) -> None:
    nvml = FakeNvml(1, proc_dir=os.path.join(str(tmp_path), "nowhere"))
    assert nvml.process_gpu_memory_by_device() == {}
