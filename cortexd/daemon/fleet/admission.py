"""cpu/mem admission: does one more replica fit next to those already admitted?

`admit` is pure; `machine_capacity` reads what this process may use (CPU affinity,
physical memory, and the cgroup limits above it — under systemd a CPUQuota= or
MemoryMax= on the unit shrinks what replicas can be given).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from cortexd.config.bounds import DEFAULT_MAX_REPLICAS
from cortexd.units import format_quantity

# Float sums of requests like 0.1 + 0.2 must not refuse a replica that fits exactly.
_CPU_EPSILON = 1e-6
# cgroup v1 writes "no limit" as a huge number rounded down to a page (LONG_MAX & ~4095).
_V1_UNLIMITED = 1 << 62




@dataclass(frozen=True)
class Capacity:
    cores: float
    mem: int  # bytes
    replicas: int = DEFAULT_MAX_REPLICAS  # processes, all APIs together


@dataclass(frozen=True)
class Request:
    cpu: float  # cores
    mem: int | None = None  # bytes; None = no memory request (counts as 0)


def admit(request: Request, admitted: Sequence[Request], capacity: Capacity) -> tuple[bool, str]:
    """(True, "") when `request` fits beside `admitted`, else (False, reason)."""
    if len(admitted) >= capacity.replicas:
        return False, (f"the daemon runs at most {capacity.replicas} replicas (serve --max-replicas), "
                       f"and {len(admitted)} are running")
    cpu_used = sum(r.cpu for r in admitted)
    if request.cpu > 0 and cpu_used + request.cpu > capacity.cores + _CPU_EPSILON:
        head = f"needs {format_cpu(request.cpu)} cpu per replica"
        if request.cpu > capacity.cores + _CPU_EPSILON:
            return False, f"{head}; the machine has {format_cpu(capacity.cores)} cpu"
        return False, (f"{head}; {format_cpu(cpu_used)} of {format_cpu(capacity.cores)} cpu "
                       f"requested by running replicas")
    want = request.mem or 0
    mem_used = sum(r.mem or 0 for r in admitted)
    if want > 0 and mem_used + want > capacity.mem:
        head = f"needs {format_quantity(want)} memory per replica"
        if want > capacity.mem:
            return False, f"{head}; the machine has {format_quantity(capacity.mem)}"
        return False, (f"{head}; {format_quantity(mem_used)} of {format_quantity(capacity.mem)} "
                       f"requested by running replicas")
    return True, ""


def format_cpu(cores: float) -> str:
    """2 -> "2", 1.6 -> "1.6", 0.25 -> "0.25" (at most three decimals, like "250m")."""
    text = f"{cores:.3f}".rstrip("0").rstrip(".")
    return text or "0"




# --------------------------------------------------------------------------- capacity


def machine_capacity(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> tuple[float, int]:
    """(cores, memory bytes) this process may use.

    cores = min(CPUs in our affinity mask, cgroup cpu quota); memory = min(physical
    memory, cgroup memory limit). Limits are read from our cgroup and every ancestor,
    for cgroup v2 and v1; a cgroup we cannot read simply does not limit.
    """
    cores = float(_affinity_cpus())
    mem = int(psutil.virtual_memory().total)
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, quota)
    limit = cgroup_memory_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        mem = min(mem, limit)
    return cores, mem


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max ("max 100000" | "150000 100000") -> cores, None = unlimited."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = int(parts[1]) if len(parts) > 1 else 100000
    return int(parts[0]) / period if period > 0 else None


def parse_memory_max(text: str) -> int | None:
    """cgroup v2 memory.max / v1 memory.limit_in_bytes -> bytes, None = unlimited."""
    text = text.strip()
    if not text or text == "max":
        return None
    value = int(text)
    return None if value < 0 or value >= _V1_UNLIMITED else value


def cgroup_cpu_limit(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    limits: list[float] = []
    for directory, version in _cgroup_dirs(cgroup_root, proc_cgroup, "cpu"):
        value = _read_cpu_limit(directory, version)
        if value is not None:
            limits.append(value)
    return min(limits) if limits else None


def cgroup_memory_limit(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    limits: list[int] = []
    for directory, version in _cgroup_dirs(cgroup_root, proc_cgroup, "memory"):
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        text = _read(directory / name)
        value = parse_memory_max(text) if text is not None else None
        if value is not None:
            limits.append(value)
    return min(limits) if limits else None


def _read_cpu_limit(directory: Path, version: int) -> float | None:
    if version == 2:
        text = _read(directory / "cpu.max")
        return parse_cpu_max(text) if text is not None else None
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _cgroup_dirs(cgroup_root: str, proc_cgroup: str, controller: str) -> list[tuple[Path, int]]:
    """Our cgroup directory for `controller` and its ancestors up to the mount, leaf first.

    In a container with its own cgroup namespace the path in /proc/self/cgroup may
    not exist under the mount; then the mount root is our cgroup.
    """
    root = Path(cgroup_root)
    text = _read(Path(proc_cgroup))
    if text is None:
        return []
    found: list[tuple[Path, int]] = []
    for line in text.splitlines():
        fields = line.strip().split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        mount = _mount(root, controllers, controller)
        if mount is None:
            continue
        found.extend((d, mount[1]) for d in _ancestors(mount[0], rel))
    return found


def _mount(root: Path, controllers: str, controller: str) -> tuple[Path, int] | None:
    """Where the hierarchy of one /proc/self/cgroup line is mounted, and its version."""
    if controllers == "":  # v2: the whole tree (pure v2) or "unified" beside v1 (hybrid)
        for mount in (root, root / "unified"):
            if (mount / "cgroup.controllers").exists():
                return mount, 2
        return None
    if controller not in controllers.split(","):
        return None
    for name in (controllers, controller):  # "cpu,cpuacct" is often also linked as "cpu"
        if (root / name).is_dir():
            return root / name, 1
    return None


def _ancestors(mount: Path, rel: str) -> list[Path]:
    leaf = mount / rel.strip("/") if rel.strip("/") else mount
    if not leaf.is_dir():
        return [mount]
    dirs = [leaf]
    while dirs[-1] != mount and mount in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs

