"""Which GPU a replica gets: whole GPUs, shares of one card, GPU memory, MIG (pure).

`place_gpus` decides from the inventory (NVML readings), what admitted replicas hold and
what they use now; it never reads anything itself. The rules (docs/gpus.md):

- `gpu: N` (a whole number) takes N devices nobody else holds, not even a share of them;
  whole-GPU replicas never share.
- `gpu: 0.25` (a fraction below 1) takes a share of one card; the shares on one card never
  sum past 1, and a card with a whole-GPU replica on it takes no share.
- MIG instances are placed like cards, whole and never shared; a replica gets at most one
  (CUDA shows a process only one MIG instance), so `gpu: 2` and fractions go to plain cards.
- `gpu_mem` (bytes per device) places a replica only where the device's free memory covers
  it. Free memory is the card's total, minus what other processes use (NVML's used memory
  less our replicas' own readings), minus for each of our replicas the larger of what it
  reserved and what it uses. Without per-process readings that is NVML's free memory minus
  the reservations, which counts a replica's use twice: cautious, never optimistic.

Among devices that fit, prefer the device a crashed replica had (its replacement keeps its
GPU), then for whole GPUs the fewest replicas on the same physical card (spreads MIG
instances) and the most free memory; for shares the most-shared card first (packing keeps
whole cards free for whole-GPU APIs), then the most free memory; then the lowest index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cortexd.daemon.fleet.admission import format_cpu
from cortexd.daemon.fleet.gpus import GpuInfo
from cortexd.units import format_quantity

# Float sums of shares like 0.1 + 0.2 + 0.7 must not refuse a share that fits exactly.
SHARE_EPSILON = 1e-6
# How many devices a refusal names one by one before it summarises.
_REASONS_SHOWN = 4


@dataclass(frozen=True)
class GpuRequest:
    gpu: float  # whole GPUs (1, 2) or a share of one card (0 < gpu < 1)
    gpu_mem: int | None = None  # bytes on each device the replica gets

    @property
    def fractional(self) -> bool:
        return 0 < self.gpu < 1

    @property
    def count(self) -> int:
        """Devices the replica gets: 1 for a share, N for `gpu: N`."""
        return 1 if self.fractional else int(round(self.gpu))


@dataclass(frozen=True)
class Holding:
    """What one admitted replica holds."""

    indices: tuple[int, ...]
    share: float = 1.0  # of each device: 1.0 for whole GPUs
    gpu_mem: int | None = None  # bytes reserved on each device


@dataclass(frozen=True)
class Placement:
    indices: list[int]  # ascending
    share: float
    gpu_mem: int | None

    def holding(self) -> Holding:
        return Holding(tuple(self.indices), self.share, self.gpu_mem)


@dataclass(frozen=True)
class DeviceLoad:
    """One device as placement sees it."""

    holders: int = 0
    share: float = 0.0  # sum of the holders' shares
    whole: bool = False  # a whole-GPU replica holds it
    free_memory: int = 0  # bytes a new replica may count on (see the module's docstring)


def request_problem(gpu: float) -> str | None:
    """Why `gpu` is not a request placement understands; None when it is."""
    if not math.isfinite(gpu) or gpu < 0:
        return f"gpu must be a number >= 0, got {gpu}"
    if gpu > 1 and abs(gpu - round(gpu)) > SHARE_EPSILON:
        return f"gpu {format_cpu(gpu)} is neither a whole number of GPUs nor a share of one (below 1)"
    return None


def device_loads(
    gpus: Sequence[GpuInfo],
    holdings: Mapping[str, Holding],
    usage: Mapping[str, Mapping[int, int]] | None = None,
) -> dict[int, DeviceLoad]:
    """Each device's holders, shares and free memory. `usage`: replica id -> device -> bytes."""
    usage = usage or {}
    loads: dict[int, DeviceLoad] = {}
    for gpu in gpus:
        holders, share, whole = 0, 0.0, False
        ours_used, counted = 0, 0
        for rid, held in holdings.items():
            if gpu.index not in held.indices:
                continue
            holders += 1
            share += held.share
            whole = whole or held.share >= 1 - SHARE_EPSILON
            used = usage.get(rid, {}).get(gpu.index, 0)
            ours_used += used
            counted += max(used, held.gpu_mem or 0)
        others = max(0, gpu.memory_used - ours_used)
        loads[gpu.index] = DeviceLoad(holders, share, whole, max(0, gpu.memory_total - others - counted))
    return loads


def place_gpus(
    request: GpuRequest,
    gpus: Sequence[GpuInfo],
    holdings: Mapping[str, Holding],
    usage: Mapping[str, Mapping[int, int]] | None = None,
    prefer: Sequence[int] = (),
    no_gpu_reason: str | None = None,
) -> tuple[Placement | None, str]:
    """(placement, "") or (None, why not: the `compute unavailable` reason)."""
    if request.gpu <= 0:
        return Placement([], 0.0, None), ""
    problem = request_problem(request.gpu)
    if problem is not None:
        return None, problem
    head = f"needs {_what(request)} per replica"
    if not gpus:
        return None, f"{head}; no NVIDIA GPU found" + (f" ({no_gpu_reason})" if no_gpu_reason else "")
    loads = device_loads(gpus, holdings, usage)
    if request.fractional:
        chosen, refusals = _place_share(request, gpus, loads, prefer)
    else:
        chosen, refusals = _place_whole(request, gpus, loads, prefer)
    if chosen is not None:
        share = request.gpu if request.fractional else 1.0
        return Placement(sorted(chosen), share, request.gpu_mem), ""
    return None, _refusal(head, request, gpus, loads, refusals)


def _what(request: GpuRequest) -> str:
    if request.fractional:
        what = f"{format_cpu(request.gpu)} of a GPU"
    else:
        what = f"{request.count} GPU{'s' if request.count != 1 else ''}"
    if request.gpu_mem:
        what += f" with {format_quantity(request.gpu_mem)} of GPU memory"
    return what


def _card(gpu: GpuInfo) -> int:
    # Negative keys keep plain GPUs apart from MIG parents that share a number.
    return gpu.parent if gpu.mig and gpu.parent is not None else -1 - gpu.index


def _memory_short(request: GpuRequest, load: DeviceLoad) -> str | None:
    if request.gpu_mem and load.free_memory < request.gpu_mem:
        return f"{format_quantity(load.free_memory) if load.free_memory else 'no'} GPU memory free"
    return None


def _place_whole(
    request: GpuRequest, gpus: Sequence[GpuInfo], loads: Mapping[int, DeviceLoad], prefer: Sequence[int]
) -> tuple[list[int] | None, dict[int, str]]:
    refusals: dict[int, str] = {}
    free: list[GpuInfo] = []
    for gpu in gpus:
        load = loads[gpu.index]
        if load.whole:
            refusals[gpu.index] = "held by a replica"
        elif load.holders:
            refusals[gpu.index] = f"shared ({format_cpu(load.share)} of it held)"
        elif gpu.mig and request.count > 1:
            refusals[gpu.index] = "a MIG instance (CUDA shows a process only one)"
        elif (short := _memory_short(request, load)) is not None:
            refusals[gpu.index] = short
        else:
            free.append(gpu)
    if len(free) < request.count:
        return None, refusals
    holders_per_card: dict[int, int] = {}
    for gpu in gpus:
        holders_per_card[_card(gpu)] = holders_per_card.get(_card(gpu), 0) + loads[gpu.index].holders
    preferred = set(prefer)
    free.sort(key=lambda g: (g.index not in preferred, holders_per_card[_card(g)], -loads[g.index].free_memory,
                             g.index))
    return [g.index for g in free[: request.count]], refusals


def _place_share(
    request: GpuRequest, gpus: Sequence[GpuInfo], loads: Mapping[int, DeviceLoad], prefer: Sequence[int]
) -> tuple[list[int] | None, dict[int, str]]:
    refusals: dict[int, str] = {}
    fits: list[GpuInfo] = []
    for gpu in gpus:
        load = loads[gpu.index]
        if gpu.mig:
            refusals[gpu.index] = "a MIG instance (placed only whole: gpu: 1)"
        elif load.whole:
            refusals[gpu.index] = "held whole by a replica"
        elif load.share + request.gpu > 1 + SHARE_EPSILON:
            refusals[gpu.index] = f"{format_cpu(load.share)} of it shared already"
        elif (short := _memory_short(request, load)) is not None:
            refusals[gpu.index] = short
        else:
            fits.append(gpu)
    if not fits:
        return None, refusals
    preferred = set(prefer)
    fits.sort(key=lambda g: (g.index not in preferred, -loads[g.index].share, -loads[g.index].free_memory, g.index))
    return [fits[0].index], refusals


def _refusal(
    head: str,
    request: GpuRequest,
    gpus: Sequence[GpuInfo],
    loads: Mapping[int, DeviceLoad],
    refusals: Mapping[int, str],
) -> str:
    total = len(gpus)
    if not request.fractional and request.count > total:
        return f"{head}; the machine has {total}"
    if not request.fractional and not request.gpu_mem and not any(g.mig for g in gpus):
        # The plain case keeps its short form: "needs 1 GPU per replica; 2 of 2 in use".
        in_use = sum(1 for g in gpus if loads[g.index].holders)
        return f"{head}; {in_use} of {total} in use"
    named = [f"GPU {index}: {why}" for index, why in sorted(refusals.items())]
    if len(named) > _REASONS_SHOWN:
        named = named[:_REASONS_SHOWN] + [f"{len(named) - _REASONS_SHOWN} more alike"]
    if not request.fractional and len(refusals) < total:
        named.append(f"{total - len(refusals)} free, fewer than {request.count}")
    return f"{head}; " + "; ".join(named)


def cuda_visible_devices(gpus: Sequence[GpuInfo], chosen: Sequence[int]) -> str:
    """CUDA_VISIBLE_DEVICES for the chosen indices: their UUIDs, comma-joined; "" for none.

    UUIDs, so the choice survives any renumbering CUDA does (CUDA_DEVICE_ORDER); for a MIG
    instance its MIG-... UUID, which is how CUDA is told to use that instance alone.
    """
    by_index = {g.index: g for g in gpus}
    missing = [i for i in chosen if i not in by_index]
    if missing:
        raise ValueError(f"unknown GPU index {missing[0]}; known: {sorted(by_index)}")
    return ",".join(by_index[i].uuid for i in chosen)
