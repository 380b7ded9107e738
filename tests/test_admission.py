from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from cortexd.daemon.fleet.admission import (
    Capacity,
    Request,
    admit,
    cgroup_cpu_limit,
    cgroup_memory_limit,
    format_cpu,
    machine_capacity,
    parse_cpu_max,
    parse_memory_max,
)
from cortexd.units import format_quantity

GiB = 1024**3
MiB = 1024**2
MACHINE = Capacity(cores=2.0, mem=4 * GiB)


@pytest.mark.parametrize(
    "request_, admitted, expected",
    [
        (Request(0.2), [], (True, "")),
        # exact fit, despite float sums (0.1 * 10 != 1.0 in binary)
        (Request(1.0), [Request(0.1)] * 10, (True, "")),
        (Request(0.4), [Request(0.8), Request(0.8)], (True, "")),
        (Request(2), [Request(0.8), Request(0.8)],
         (False, "needs 2 cpu per replica; 1.6 of 2 cpu requested by running replicas")),
        (Request(0.5), [Request(1), Request(0.6)],
         (False, "needs 0.5 cpu per replica; 1.6 of 2 cpu requested by running replicas")),
        (Request(3), [], (False, "needs 3 cpu per replica; the machine has 2 cpu")),
        # a zero cpu request always fits on cpu
        (Request(0), [Request(2)], (True, "")),
        # memory: None requests count as nothing
        (Request(0.1, None), [Request(0.1, 4 * GiB)], (True, "")),
        (Request(0.1, GiB), [Request(0.1, 3 * GiB)], (True, "")),
        (Request(0.1, GiB), [Request(0.1, 3 * GiB + 512 * MiB), Request(0.1)],
         (False, "needs 1Gi memory per replica; 3.5Gi of 4Gi requested by running replicas")),
        (Request(0.1, 5 * GiB), [], (False, "needs 5Gi memory per replica; the machine has 4Gi")),
        # cpu is reported first when both are short
        (Request(2, 5 * GiB), [Request(1)],
         (False, "needs 2 cpu per replica; 1 of 2 cpu requested by running replicas")),
    ],
)
def test_admit(request_: Request, admitted: list[Request], expected: tuple[bool, str]) -> None:
    assert admit(request_, admitted, MACHINE) == expected


@pytest.mark.parametrize(
    "admitted, expected",
    [
        ([Request(0.001)] * 2, (True, "")),
        # thousands of `cpu: 1m` replicas fit on cpu; the count stops them
        ([Request(0.001)] * 3, (False, "the daemon runs at most 3 replicas (serve --max-replicas), and 3 are running")),
        ([Request(0)] * 5, (False, "the daemon runs at most 3 replicas (serve --max-replicas), and 5 are running")),
    ],
)
def test_admit_caps_the_number_of_replicas(admitted: list[Request], expected: tuple[bool, str]) -> None:
    assert admit(Request(0.001), admitted, Capacity(cores=2.0, mem=4 * GiB, replicas=3)) == expected


@pytest.mark.parametrize("cores, text", [(2, "2"), (1.6, "1.6"), (0.25, "0.25"), (0.2000000001, "0.2"), (0, "0")])
def test_format_cpu(cores: float, text: str) -> None:
    assert format_cpu(cores) == text


@pytest.mark.parametrize(
    "n, text",
    [(GiB, "1Gi"), (1536 * MiB, "1.5Gi"), (200 * MiB, "200Mi"), (2048, "2Ki"), (100, "100"), (2 * 1024**4, "2Ti")],
)
def test_format_quantity(n: int, text: str) -> None:
    assert format_quantity(n) == text


@pytest.mark.parametrize(
    "text, cores",
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("200000", 2.0), ("", None)],
)
def test_parse_cpu_max(text: str, cores: float | None) -> None:
    assert parse_cpu_max(text) == cores


@pytest.mark.parametrize(
    "text, limit", [("max\n", None), ("1073741824\n", GiB), ("9223372036854771712\n", None), ("-1", None)]
)
def test_parse_memory_max(text: str, limit: int | None) -> None:
    assert parse_memory_max(text) == limit


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limits_take_the_tightest_ancestor(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "system.slice" / "cpu.max", "300000 100000\n")
    _write(root / "system.slice" / "memory.max", "max\n")
    _write(root / "system.slice" / "cortexd.service" / "cpu.max", "max 100000\n")
    _write(root / "system.slice" / "cortexd.service" / "memory.max", f"{2 * GiB}\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/system.slice/cortexd.service\n")
    assert cgroup_cpu_limit(str(root), str(proc)) == 3.0
    assert cgroup_memory_limit(str(root), str(proc)) == 2 * GiB
    cores, mem = machine_capacity(str(root), str(proc))
    assert cores == min(3.0, len(os.sched_getaffinity(0)))
    assert mem == min(2 * GiB, psutil.virtual_memory().total)


def test_cgroup_v1_limits(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "50000\n")
    _write(root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(root / "memory" / "job" / "memory.limit_in_bytes", f"{GiB}\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/job\n3:cpu,cpuacct:/job\n1:name=systemd:/job\n0::/\n")
    assert cgroup_cpu_limit(str(root), str(proc)) == 0.5
    assert cgroup_memory_limit(str(root), str(proc)) == GiB
    assert machine_capacity(str(root), str(proc)) == (0.5, min(GiB, psutil.virtual_memory().total))


def test_cgroup_path_outside_our_namespace_falls_back_to_the_mount(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "cpu.max", "100000 100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/somewhere/the/container/cannot/see\n")
    assert cgroup_cpu_limit(str(root), str(proc)) == 1.0
    assert cgroup_memory_limit(str(root), str(proc)) is None


def test_no_cgroup_information_means_no_limit(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    assert cgroup_cpu_limit(missing, missing) is None
    cores, mem = machine_capacity(missing, missing)
    assert cores == len(os.sched_getaffinity(0)) and mem == psutil.virtual_memory().total


def test_machine_capacity_here_is_sane() -> None:
    cores, mem = machine_capacity()
    assert 0 < cores <= (os.cpu_count() or 1)
    assert 0 < mem <= psutil.virtual_memory().total
