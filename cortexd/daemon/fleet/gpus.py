"""GPU inventory through NVML, a fake NVML for tests, and pure GPU placement.

The daemon asks an `Nvml` for the GPUs once at start and then for fresh readings;
which GPU a replica gets is decided by `choose_gpus`, a pure function, and handed
to the replica as `CUDA_VISIBLE_DEVICES` (UUIDs, so the choice survives any
renumbering CUDA does with CUDA_DEVICE_ORDER).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

FAKE_GPUS_ENV = "CORTEXD_FAKE_GPUS"
FAKE_GPU_MEMORY = 16 * 1024**3


@dataclass(frozen=True)
class GpuInfo:
    """One device a replica can be given.

    `index` is the daemon's number for the device and the key of placement. Without
    MIG it is the NVML index. With MIG enabled, the GPU itself cannot be handed to
    CUDA, so its MIG devices are listed instead, numbered in NVML order right after
    the devices before them (then `mig` is True and `parent` is the NVML index of
    the physical GPU).
    """

    index: int
    uuid: str
    name: str
    memory_total: int  # bytes
    memory_used: int  # bytes
    utilization: int | None  # percent; None where NVML cannot say (MIG devices)
    mig: bool = False
    parent: int | None = None  # NVML index of the physical GPU of a MIG device

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_total - self.memory_used)


class Nvml(Protocol):
    def available(self) -> bool: ...

    def unavailable_reason(self) -> str | None: ...

    def gpus(self) -> list[GpuInfo]: ...

    def process_gpu_memory(self) -> dict[int, int]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- real


@dataclass
class _Device:
    handle: Any
    info: GpuInfo  # static fields are right; readings are refreshed by gpus()


class RealNvml:
    """NVML through pynvml (package nvidia-ml-py).

    Never raises: with no driver, no library or no GPU, `available()` is False and
    `unavailable_reason()` says why, so the daemon can show it in `compute
    unavailable` instead of failing to start. Devices are enumerated once, at
    construction, so indices stay stable for the daemon's life (MIG layouts cannot
    change while processes use the GPU anyway).
    """

    def __init__(self, lib: Any = None) -> None:
        # `lib` lets tests pass a stand-in for the pynvml module.
        self._lib: Any = lib
        self._lock = threading.Lock()  # NVML is thread-safe, but our device list is not
        self._devices: list[_Device] = []
        self._reason: str | None = None
        self._initialised = False
        try:
            if self._lib is None:
                import pynvml

                self._lib = pynvml
            self._lib.nvmlInit()
            self._initialised = True
            self._devices = self._enumerate()
            if not self._devices:
                self._reason = "NVML reports no GPU"
        except ImportError as exc:
            self._reason = f"pynvml (nvidia-ml-py) is not installed: {exc}"
        except Exception as exc:  # NVMLError and its subclasses, OSError from ctypes
            self._reason = _describe(exc)
            self._devices = []

    # -- Nvml protocol

    def available(self) -> bool:
        return self._reason is None

    def unavailable_reason(self) -> str | None:
        return self._reason

    def gpus(self) -> list[GpuInfo]:
        with self._lock:
            for dev in self._devices:
                dev.info = self._read(dev)
            return [dev.info for dev in self._devices]

    def process_gpu_memory(self) -> dict[int, int]:
        """GPU memory per pid, summed over devices; {} where NVML cannot tell.

        Pids are as NVML sees them (the host's pid namespace); inside a container
        they may not match the daemon's view, hence best effort.
        """
        out: dict[int, int] = {}
        with self._lock:
            devices = list(self._devices)
        for dev in devices:
            try:
                procs = self._lib.nvmlDeviceGetComputeRunningProcesses(dev.handle)
            except Exception:
                continue
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                if used is None:
                    continue
                out[int(proc.pid)] = out.get(int(proc.pid), 0) + int(used)
        return out

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                self._initialised = False
                self._devices = []
                self._reason = self._reason or "NVML closed"
                try:
                    self._lib.nvmlShutdown()
                except Exception:
                    pass

    # -- internals

    def _enumerate(self) -> list[_Device]:
        lib = self._lib
        devices: list[_Device] = []
        for nvml_index in range(lib.nvmlDeviceGetCount()):
            handle = lib.nvmlDeviceGetHandleByIndex(nvml_index)
            migs = self._mig_handles(handle)
            if migs:
                for mig_handle in migs:
                    info = self._static(mig_handle, len(devices), mig=True, parent=nvml_index)
                    devices.append(_Device(mig_handle, info))
            else:
                devices.append(_Device(handle, self._static(handle, len(devices))))
        return devices

    def _mig_handles(self, handle: Any) -> list[Any]:
        lib = self._lib
        try:
            current, _pending = lib.nvmlDeviceGetMigMode(handle)
        except Exception:
            return []  # not MIG capable (NVML_ERROR_NOT_SUPPORTED) or an old driver
        if current != getattr(lib, "NVML_DEVICE_MIG_ENABLE", 1):
            return []
        handles = []
        for slot in range(lib.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                handles.append(lib.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
            except Exception:
                continue  # empty slot: NVML_ERROR_NOT_FOUND
        return handles

    def _static(self, handle: Any, index: int, *, mig: bool = False, parent: int | None = None) -> GpuInfo:
        lib = self._lib
        mem = lib.nvmlDeviceGetMemoryInfo(handle)
        return GpuInfo(
            index=index,
            uuid=_text(lib.nvmlDeviceGetUUID(handle)),
            name=_text(lib.nvmlDeviceGetName(handle)),
            memory_total=int(mem.total),
            memory_used=int(mem.used),
            utilization=self._utilization(handle),
            mig=mig,
            parent=parent,
        )

    def _read(self, dev: _Device) -> GpuInfo:
        try:
            mem = self._lib.nvmlDeviceGetMemoryInfo(dev.handle)
            used = int(mem.used)
        except Exception:
            used = dev.info.memory_used  # keep the last reading rather than invent one
        return replace(dev.info, memory_used=used, utilization=self._utilization(dev.handle))

    def _utilization(self, handle: Any) -> int | None:
        try:
            return int(self._lib.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            return None  # NVML_ERROR_NOT_SUPPORTED on MIG devices


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# NVML return codes whose stock message does not tell a user what to do.
_NVML_HINTS = {
    12: "no NVIDIA driver: libnvidia-ml.so.1 not found",  # NVML_ERROR_LIBRARY_NOT_FOUND
    9: "the NVIDIA driver is not loaded",  # NVML_ERROR_DRIVER_NOT_LOADED
    4: "no permission to use NVML",  # NVML_ERROR_NO_PERMISSION
}


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "value", None)
    hint = _NVML_HINTS.get(code) if isinstance(code, int) else None
    if hint:
        return hint
    text = str(exc).strip()
    return f"NVML: {text}" if text else f"NVML: {type(exc).__name__}"


# --------------------------------------------------------------------------- fake


class FakeNvml:
    """N fake 16 GiB GPUs (SPEC section 6): the stand-in where there is no GPU.

    Tests and the daemon may set memory, utilisation and per-process memory to
    simulate load; readings are copies, so callers cannot change the inventory
    by accident.
    """

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"number of fake GPUs must be >= 0, got {n}")
        self._lock = threading.Lock()
        self._gpus = [
            GpuInfo(index=i, uuid=f"GPU-fake-{i}", name="Fake GPU", memory_total=FAKE_GPU_MEMORY,
                    memory_used=0, utilization=0)
            for i in range(n)
        ]
        self._process_memory: dict[int, int] = {}
        self._closed = False

    def available(self) -> bool:
        return bool(self._gpus) and not self._closed

    def unavailable_reason(self) -> str | None:
        if self._closed:
            return "NVML closed"
        if not self._gpus:
            return f"{FAKE_GPUS_ENV}=0"
        return None

    def gpus(self) -> list[GpuInfo]:
        with self._lock:
            return [] if self._closed else list(self._gpus)

    def process_gpu_memory(self) -> dict[int, int]:
        with self._lock:
            return dict(self._process_memory)

    def close(self) -> None:
        self._closed = True

    # -- simulation knobs

    def set_memory_used(self, index: int, used: int) -> None:
        with self._lock:
            gpu = self._gpus[index]
            self._gpus[index] = replace(gpu, memory_used=max(0, min(used, gpu.memory_total)))

    def set_utilization(self, index: int, percent: int | None) -> None:
        with self._lock:
            self._gpus[index] = replace(self._gpus[index], utilization=percent)

    def set_process_gpu_memory(self, pid: int, used: int | None) -> None:
        """Pretend `pid` uses `used` bytes of GPU memory; None forgets it."""
        with self._lock:
            if used is None:
                self._process_memory.pop(pid, None)
            else:
                self._process_memory[pid] = used


def open_nvml(env: Mapping[str, str]) -> Nvml:
    """FakeNvml(N) when CORTEXD_FAKE_GPUS=N is set (and not empty), else RealNvml.

    Raises ValueError on a value that is not a whole number >= 0: a typo there
    should stop the daemon, not silently fall back to real GPUs.
    """
    raw = env.get(FAKE_GPUS_ENV, "").strip()
    if not raw:
        return RealNvml()
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{FAKE_GPUS_ENV} must be a whole number >= 0, got {raw!r}")
    return FakeNvml(n)


# --------------------------------------------------------------------------- placement


def choose_gpus(
    need: int,
    gpus: Sequence[GpuInfo],
    held: Mapping[int, str],
    prefer: Sequence[int] = (),
) -> list[int] | None:
    """Pick `need` GPUs no replica holds; None when there are not enough.

    A GPU is never shared, so every candidate is free. Among them, prefer
      1. the GPUs in `prefer` (a replica replacing a crashed one keeps its GPUs),
      2. the fewest replicas on the same physical GPU (spreads MIG devices over
         cards; plain GPUs all count 0 here),
      3. the most free memory (other users' processes count against a GPU),
      4. the lowest index (determinism).
    Returns the indices in ascending order.
    """
    if need <= 0:
        return []
    known = {g.index for g in gpus}
    holders_per_card: dict[int, int] = {}
    for gpu in gpus:
        if gpu.index in held:
            card = _card(gpu)
            holders_per_card[card] = holders_per_card.get(card, 0) + 1
    free = [g for g in gpus if g.index not in held]
    if len(free) < need:
        return None
    preferred = {i for i in prefer if i in known}
    free.sort(key=lambda g: (g.index not in preferred, holders_per_card.get(_card(g), 0), -g.memory_free, g.index))
    return sorted(g.index for g in free[:need])


def _card(gpu: GpuInfo) -> int:
    # Negative keys keep plain GPUs apart from MIG parents that share a number.
    return gpu.parent if gpu.mig and gpu.parent is not None else -1 - gpu.index


def placement_shortfall_reason(need: int, total: int, in_use: int, nvml_reason: str | None) -> str:
    """Why a replica needing `need` GPUs cannot be placed, for `compute unavailable`."""
    head = f"needs {need} GPU{'s' if need != 1 else ''} per replica"
    if total <= 0:
        tail = f" ({nvml_reason})" if nvml_reason else ""
        return f"{head}; no NVIDIA GPU found{tail}"
    if need > total:
        return f"{head}; the machine has {total}"
    return f"{head}; {in_use} of {total} in use"


def cuda_visible_devices(gpus: Sequence[GpuInfo], chosen: Sequence[int]) -> str:
    """CUDA_VISIBLE_DEVICES for the chosen indices: their UUIDs, comma-joined; "" for none."""
    by_index = {g.index: g for g in gpus}
    missing = [i for i in chosen if i not in by_index]
    if missing:
        raise ValueError(f"unknown GPU index {missing[0]}; known: {sorted(by_index)}")
    return ",".join(by_index[i].uuid for i in chosen)
