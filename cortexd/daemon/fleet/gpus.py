"""GPU inventory and per-process GPU memory through NVML.

The daemon asks an `Nvml` for the GPUs once at start and then for fresh readings; which
GPU a replica gets is decided in placement.py (pure) and handed to the replica as
`CUDA_VISIBLE_DEVICES`. Where there is no GPU, `open_nvml` gives the fake of fake_nvml.py
(CORTEXD_FAKE_GPUS=N), behind the same `Nvml` interface.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

FAKE_GPUS_ENV = "CORTEXD_FAKE_GPUS"

# NVML's "not available" for a process's memory (NVML_VALUE_NOT_AVAILABLE, an unsigned -1),
# seen under WDDM and for MIG processes without the rights to see them.
_NOT_AVAILABLE = 1 << 63


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

    def process_gpu_memory_by_device(self) -> dict[int, dict[int, int]]: ...

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
        """GPU memory per pid, summed over devices; {} where NVML cannot tell."""
        return sum_over_devices(self.process_gpu_memory_by_device())

    def process_gpu_memory_by_device(self) -> dict[int, dict[int, int]]:
        """Device index -> pid -> bytes of GPU memory, for the compute processes NVML lists.

        MIG instances are asked one by one through their own handles (the physical GPU
        lists nothing for them). Pids are as NVML sees them (the host's pid namespace);
        inside a container they may not match the daemon's view, hence best effort: a
        device NVML cannot answer for reads as no processes.
        """
        with self._lock:
            devices = list(self._devices)
        lib = self._lib
        # _v3 is the current call (driver >= 510); older bindings only have the plain name.
        running = getattr(lib, "nvmlDeviceGetComputeRunningProcesses_v3", None) or getattr(
            lib, "nvmlDeviceGetComputeRunningProcesses", None)
        out: dict[int, dict[int, int]] = {}
        if running is None:
            return out
        for dev in devices:
            try:
                procs = running(dev.handle)
            except Exception:
                continue
            per_pid: dict[int, int] = {}
            for proc in procs:
                used = getattr(proc, "usedGpuMemory", None)
                if used is None or int(used) >= _NOT_AVAILABLE:
                    continue
                pid = int(proc.pid)
                per_pid[pid] = per_pid.get(pid, 0) + int(used)
            out[dev.info.index] = per_pid
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


def sum_over_devices(by_device: Mapping[int, Mapping[int, int]]) -> dict[int, int]:
    """pid -> bytes summed over devices, from device -> pid -> bytes."""
    out: dict[int, int] = {}
    for per_pid in by_device.values():
        for pid, used in per_pid.items():
            out[pid] = out.get(pid, 0) + used
    return out


def open_nvml(env: Mapping[str, str]) -> Nvml:
    """The fake of fake_nvml.py when CORTEXD_FAKE_GPUS=N is set (and not empty), else RealNvml.

    Raises ValueError on a fake setting that does not parse: a typo there should stop the
    daemon, not silently fall back to real GPUs.
    """
    if not env.get(FAKE_GPUS_ENV, "").strip():
        return RealNvml()
    from cortexd.daemon.fleet.fake_nvml import fake_from_env  # only where it is asked for

    return fake_from_env(env)
