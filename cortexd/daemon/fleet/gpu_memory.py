"""Replicas' GPU memory: readings by process tree, the GPU OOM check, the `gpus` view (pure).

NVML reports GPU memory per process. A replica's use on a device is the sum over its
process tree (a predictor may start workers), so the daemon hands in each replica's pids
and NVML's device -> pid -> bytes, and gets replica -> device -> bytes back.

The GPU OOM stop: a replica whose use on any of its devices is above its `gpu_mem` by more
than the margin (`gpu_mem_margin`: 10 % of gpu_mem, at least 512 MiB) is stopped, its API
shows `error (out of GPU memory)` and the reason. The margin is there because what NVML
counts for a process includes the CUDA context and the libraries' workspaces (cuBLAS,
cuDNN), a few hundred MiB that no framework's own limit covers; the frameworks' limits
(set inside the replica, docs/gpus.md) bound what their allocators take, and this check
catches what they cannot: another library, a framework without a limit, a predictor that
lifts its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from cortexd.daemon.fleet.gpus import GpuInfo
from cortexd.daemon.fleet.placement import Holding, device_loads
from cortexd.units import format_quantity

GPU_MEM_MARGIN_MIN = 512 * 1024**2
GPU_MEM_MARGIN_FRACTION = 0.10


def gpu_mem_margin(gpu_mem: int) -> int:
    """How far above gpu_mem a replica may go before it is stopped: 10 %, at least 512 MiB."""
    return max(GPU_MEM_MARGIN_MIN, math.ceil(gpu_mem * GPU_MEM_MARGIN_FRACTION))


def process_tree(pid: int) -> set[int]:
    """The pid and its descendants now; {} when it is gone."""
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return set()
    except psutil.AccessDenied:
        return {pid}


def replica_gpu_memory(
    trees: Mapping[str, Collection[int]], by_device: Mapping[int, Mapping[int, int]]
) -> dict[str, dict[int, int]]:
    """replica id -> device index -> bytes, summed over the replica's process tree.

    Devices where the replica has no process are left out; a replica with none at all maps
    to {}.
    """
    owner = {pid: rid for rid, pids in trees.items() for pid in pids}
    out: dict[str, dict[int, int]] = {rid: {} for rid in trees}
    for index, per_pid in by_device.items():
        for pid, used in per_pid.items():
            rid = owner.get(pid)
            if rid is not None:
                out[rid][index] = out[rid].get(index, 0) + used
    return out


@dataclass(frozen=True)
class OverGpuMemory:
    """A replica to stop: its use on `device` is above gpu_mem + margin."""

    replica_id: str
    device: int
    used_bytes: int
    limit_bytes: int  # its gpu_mem
    margin_bytes: int

    def reason(self) -> str:
        """Why it was stopped, for the API's last error (the caller adds the time)."""
        return (
            f"replica {self.replica_id} was stopped for using {format_quantity(self.used_bytes)} of GPU memory "
            f"on GPU {self.device}, above its gpu_mem of {format_quantity(self.limit_bytes)} by more than "
            f"the margin of {format_quantity(self.margin_bytes)}"
        )


def over_gpu_memory(holdings: Mapping[str, Holding], usage: Mapping[str, Mapping[int, int]]) -> list[OverGpuMemory]:
    """Replicas above gpu_mem by more than the margin on one of their devices (the worst one),
    in replica id order. Replicas without gpu_mem are never stopped here."""
    out = []
    for rid in sorted(holdings):
        limit = holdings[rid].gpu_mem
        if not limit:
            continue
        margin = gpu_mem_margin(limit)
        over = [(used, index) for index, used in usage.get(rid, {}).items() if used > limit + margin]
        if over:
            used, index = max(over)
            out.append(OverGpuMemory(rid, index, used, limit, margin))
    return out


def replica_gpu_view(holding: Holding | None, usage: Mapping[int, int] | None) -> dict[str, Any]:
    """The GPU fields of one replica's row in `cortexd get API`; gpu_mem_bytes is None until
    there is a reading (usage None), 0 when the reading found no process of it on a GPU."""
    on_gpu = holding is not None and bool(holding.indices)
    return {
        "gpu_share": holding.share if holding is not None and on_gpu else None,
        "gpu_mem_bytes": sum(usage.values()) if on_gpu and usage is not None else None,
        "gpu_mem_limit": holding.gpu_mem if holding is not None and on_gpu else None,
    }


def gpu_rows(
    gpus: Sequence[GpuInfo],
    holdings: Mapping[str, Holding],
    usage: Mapping[str, Mapping[int, int]],
    api_of: Callable[[str], str | None],
) -> list[dict[str, Any]]:
    """`cortexd gpus` per device: its readings and each replica on it, share and memory."""
    loads = device_loads(gpus, holdings, usage)
    rows = []
    for g in gpus:
        replicas = [
            {
                "id": rid,
                "api": api_of(rid),
                "share": held.share,
                # None: no reading yet (or NVML cannot attribute memory to processes here)
                "gpu_mem_bytes": usage[rid].get(g.index, 0) if rid in usage else None,
                "gpu_mem_limit": held.gpu_mem,
            }
            for rid, held in sorted(holdings.items())
            if g.index in held.indices
        ]
        load = loads[g.index]
        rows.append({
            "index": g.index, "uuid": g.uuid, "name": g.name, "mig": g.mig, "parent": g.parent,
            "memory_used": g.memory_used, "memory_total": g.memory_total, "utilization": g.utilization,
            "share_used": round(load.share, 6), "free_for_replicas": load.free_memory,
            "replicas": replicas,
            # the first holder, as before sharing existed (scripts may read it)
            "replica": replicas[0]["id"] if replicas else None,
            "api": replicas[0]["api"] if replicas else None,
        })
    return rows

