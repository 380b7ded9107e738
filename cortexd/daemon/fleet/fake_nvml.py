"""A fake NVML for machines without a GPU (CI, laptops), behind the same `Nvml` interface.

Set in the daemon's environment:

    CORTEXD_FAKE_GPUS=2                 two fake cards (0: no GPU at all)
    CORTEXD_FAKE_GPU_MEM=16Gi,80Gi      each card's memory (one value: every card); default 16Gi
    CORTEXD_FAKE_MIG=1:3                card 1 split into 3 MIG instances ("0:2,1:3": several)
    CORTEXD_FAKE_GPU_PROC_DIR=/tmp/x    per-process GPU memory, read from files (below)

Per-process GPU memory. A process (a replica's predictor, a test) pretends to use GPU memory
by writing a file named after its pid into CORTEXD_FAKE_GPU_PROC_DIR, which replicas inherit
from the daemon's environment:

    path = os.path.join(os.environ["CORTEXD_FAKE_GPU_PROC_DIR"], str(os.getpid()))
    with open(path + ".tmp", "w") as f:
        f.write("6Gi")                  # or bytes: "6442450944"
    os.replace(path + ".tmp", path)     # whole files only: the daemon may read at any time

A bare amount is charged to the first device in the process's own CUDA_VISIBLE_DEVICES (read
from /proc/<pid>/environ, as a real process uses the device it was given), or to device 0
without one; lines "<uuid or index> <amount>" charge devices explicitly. Files of pids that
no longer run, and files that do not parse, are ignored. Readings also count in the card's
used memory, as NVML's do. Tests in the daemon's own process use `set_process_gpu_memory`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

from cortexd.config.quantities import parse_mem
from cortexd.daemon.fleet.gpus import FAKE_GPUS_ENV, GpuInfo, sum_over_devices

FAKE_GPU_MEM_ENV = "CORTEXD_FAKE_GPU_MEM"
FAKE_MIG_ENV = "CORTEXD_FAKE_MIG"
FAKE_PROC_DIR_ENV = "CORTEXD_FAKE_GPU_PROC_DIR"
FAKE_GPU_MEMORY = 16 * 1024**3


@dataclass
class _Device:
    info: GpuInfo
    base_used: int = 0  # set by set_memory_used: memory used by "other users"


class FakeNvml:
    """Fake cards (and MIG instances) with settable readings; readings are copies."""

    def __init__(
        self,
        n: int,
        memory: int | Sequence[int] = FAKE_GPU_MEMORY,
        mig: Mapping[int, int] | None = None,
        proc_dir: str | None = None,
    ) -> None:
        if n < 0:
            raise ValueError(f"number of fake GPUs must be >= 0, got {n}")
        sizes = [memory] * n if isinstance(memory, int) else list(memory)
        if len(sizes) != n:
            raise ValueError(f"{len(sizes)} memory sizes for {n} fake GPUs")
        mig = dict(mig or {})
        for card, count in mig.items():
            if not 0 <= card < n or count < 1:
                raise ValueError(f"MIG layout {card}:{count} does not fit {n} fake GPUs")
        self._lock = threading.Lock()
        self._devices: list[_Device] = []
        for card, size in enumerate(sizes):
            if card in mig:
                count = mig[card]
                for slot in range(count):
                    self._devices.append(_Device(GpuInfo(
                        index=len(self._devices), uuid=f"MIG-fake-{card}-{slot}",
                        name=f"Fake GPU MIG {slot}", memory_total=size // count, memory_used=0,
                        utilization=None, mig=True, parent=card)))
            else:
                self._devices.append(_Device(GpuInfo(
                    index=len(self._devices), uuid=f"GPU-fake-{card}", name="Fake GPU",
                    memory_total=size, memory_used=0, utilization=0)))
        self._process_memory: dict[int, dict[int, int]] = {}  # set in process: device -> pid -> bytes
        self._proc_dir = proc_dir
        self._closed = False

    # -- the Nvml interface

    def available(self) -> bool:
        return bool(self._devices) and not self._closed

    def unavailable_reason(self) -> str | None:
        if self._closed:
            return "NVML closed"
        if not self._devices:
            return f"{FAKE_GPUS_ENV}=0"
        return None

    def gpus(self) -> list[GpuInfo]:
        per_device = self.process_gpu_memory_by_device()
        with self._lock:
            if self._closed:
                return []
            out = []
            for dev in self._devices:
                used = dev.base_used + sum(per_device.get(dev.info.index, {}).values())
                out.append(replace(dev.info, memory_used=min(used, dev.info.memory_total)))
            return out

    def process_gpu_memory(self) -> dict[int, int]:
        return sum_over_devices(self.process_gpu_memory_by_device())

    def process_gpu_memory_by_device(self) -> dict[int, dict[int, int]]:
        with self._lock:
            out = {index: dict(per_pid) for index, per_pid in self._process_memory.items()}
            uuids = {dev.info.uuid: dev.info.index for dev in self._devices}
        if self._proc_dir:
            for pid, charges in read_proc_dir(self._proc_dir, uuids).items():
                for index, used in charges.items():
                    out.setdefault(index, {})[pid] = out.get(index, {}).get(pid, 0) + used
        return out

    def close(self) -> None:
        self._closed = True

    # -- simulation knobs (tests in the daemon's process)

    def set_memory_used(self, index: int, used: int) -> None:
        """Memory used on device `index` by processes that are not replicas."""
        with self._lock:
            dev = self._devices[index]
            dev.base_used = max(0, min(used, dev.info.memory_total))

    def set_utilization(self, index: int, percent: int | None) -> None:
        with self._lock:
            self._devices[index].info = replace(self._devices[index].info, utilization=percent)

    def set_process_gpu_memory(self, pid: int, used: int | None, index: int = 0) -> None:
        """Pretend `pid` uses `used` bytes on device `index`; None forgets it there."""
        with self._lock:
            per_pid = self._process_memory.setdefault(index, {})
            if used is None:
                per_pid.pop(pid, None)
            else:
                per_pid[pid] = used


# --------------------------------------------------------------------------- files


def read_proc_dir(directory: str, uuids: Mapping[str, int]) -> dict[int, dict[int, int]]:
    """pid -> device index -> bytes, from the files described in the module's docstring."""
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    out: dict[int, dict[int, int]] = {}
    for name in names:
        if not name.isdigit() or not os.path.exists(f"/proc/{name}"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                text = f.read()
        except OSError:
            continue
        pid = int(name)
        charges = parse_charges(text, uuids, partial(_visible_device, pid, uuids))
        if charges:
            out[pid] = charges
    return out


def parse_charges(text: str, uuids: Mapping[str, int], default_device: Callable[[], int | None]) -> dict[int, int]:
    """One file's charges: a bare amount (for `default_device()`, a callable giving an index)
    or lines "<uuid or index> <amount>". {} when it does not parse."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    charges: dict[int, int] = {}
    try:
        if len(lines) == 1 and len(lines[0]) == 1:
            device = default_device()
            return {device: parse_mem(lines[0][0])} if device is not None else {}
        for fields in lines:
            if len(fields) != 2:
                return {}
            where, amount = fields
            index = uuids.get(where, int(where) if where.isdigit() else -1)
            if index not in uuids.values():
                return {}
            charges[index] = charges.get(index, 0) + parse_mem(amount)
    except ValueError:
        return {}
    return charges


def _visible_device(pid: int, uuids: Mapping[str, int]) -> int | None:
    """The first device in the process's CUDA_VISIBLE_DEVICES; 0 without one; None if hidden."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return 0
    for entry in environ:
        if entry.startswith(b"CUDA_VISIBLE_DEVICES="):
            first = entry.split(b"=", 1)[1].decode(errors="replace").split(",")[0].strip()
            if not first:
                return None  # the process sees no GPU: it cannot use one
            return uuids.get(first, int(first) if first.isdigit() else 0)
    return 0


# --------------------------------------------------------------------------- env


def fake_from_env(env: Mapping[str, str]) -> FakeNvml:
    """FakeNvml from the CORTEXD_FAKE_* variables; ValueError naming the variable at fault."""
    raw = env.get(FAKE_GPUS_ENV, "").strip()
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{FAKE_GPUS_ENV} must be a whole number >= 0, got {raw!r}")
    memory: int | list[int] = FAKE_GPU_MEMORY
    mem_raw = env.get(FAKE_GPU_MEM_ENV, "").strip()
    if mem_raw:
        try:
            sizes = [parse_mem(part.strip()) for part in mem_raw.split(",")]
        except ValueError as exc:
            raise ValueError(f"{FAKE_GPU_MEM_ENV}: {exc}") from None
        if len(sizes) not in (1, n):
            raise ValueError(f"{FAKE_GPU_MEM_ENV} gives {len(sizes)} sizes for {n} GPUs; give 1 or {n}")
        memory = sizes * n if len(sizes) == 1 else sizes
    mig: dict[int, int] = {}
    mig_raw = env.get(FAKE_MIG_ENV, "").strip()
    for part in filter(None, (p.strip() for p in mig_raw.split(","))):
        card, _, count = part.partition(":")
        if not (card.isdigit() and count.isdigit()) or not 0 <= int(card) < n or int(count) < 1:
            raise ValueError(f"{FAKE_MIG_ENV} entries are CARD:INSTANCES with CARD < {n}, got {part!r}")
        mig[int(card)] = int(count)
    proc_dir = env.get(FAKE_PROC_DIR_ENV, "").strip() or None
    return FakeNvml(n, memory, mig, proc_dir)
