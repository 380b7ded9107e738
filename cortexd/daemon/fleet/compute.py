"""Compute for replicas: GPU placement, cpu/mem admission, memory limits and autoscaling.

The decisions are the pure functions of placement.py, gpu_memory.py, admission.py and
autoscale.py; this module keeps the little state they need (who holds which GPU, share and
request, what each replica uses of its GPUs, each API's autoscaling memory) and turns
readings into supervisor events and desired counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cortexd.config import Api
from cortexd.config.bounds import DEFAULT_MAX_REPLICAS
from cortexd.config.objects import Autoscaling
from cortexd.daemon.fleet import autoscale
from cortexd.daemon.fleet.admission import Capacity, Request, admit, machine_capacity
from cortexd.daemon.fleet.events import ReplicaOverMemory
from cortexd.daemon.fleet.gpu_memory import (
    OverGpuMemory,
    gpu_rows,
    over_gpu_memory,
    replica_gpu_memory,
    replica_gpu_view,
)
from cortexd.daemon.fleet.gpus import GpuInfo, Nvml
from cortexd.daemon.fleet.placement import GpuRequest, Holding, cuda_visible_devices, place_gpus
from cortexd.daemon.fleet.snapshot import ApiSnapshot, Fleet
from cortexd.daemon.observe.status import UPDATING
from cortexd.daemon.observe.views import Usage

# Replica states in which a replica holds memory worth limiting.
_LIVE_STATES = ("starting", "ready", "draining")
READY = "ready"

log = logging.getLogger("cortexd.compute")


@dataclass(frozen=True)
class GpuReadings:
    gpus: list[GpuInfo]
    replicas: dict[str, dict[int, int]]  # replica id -> GPU index -> bytes in use


class ComputeManager:
    """Implements the supervisor's Placer; reads usage for memory limits and autoscaling."""

    def __init__(
        self,
        nvml: Nvml,
        capacity: Capacity | None = None,
        settings: autoscale.AutoscaleSettings | None = None,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
    ) -> None:
        self.nvml = nvml
        if capacity is None:
            cores, mem = machine_capacity()
            capacity = Capacity(cores=cores, mem=mem, replicas=max_replicas)
        self.capacity = capacity
        self.settings = settings or autoscale.AutoscaleSettings()
        self.gpus: list[GpuInfo] = nvml.gpus() if nvml.available() else []
        self.requests: dict[str, Request] = {}  # replica id -> admitted request
        self.holdings: dict[str, Holding] = {}  # replica id -> its GPUs, share and reserved memory
        self.gpu_usage: dict[str, dict[int, int]] = {}  # replica id -> GPU index -> bytes (NVML)
        self.autoscale_state: dict[str, autoscale.AutoscaleState] = {}
        self.concurrency_state: dict[str, autoscale.ConcurrencyState] = {}  # APIs with `autoscaling`
        self._last_autoscale = float("-inf")

    @property
    def holders(self) -> dict[str, list[int]]:
        """replica id -> GPU indices (what it was before GPUs could be shared)."""
        return {rid: list(h.indices) for rid, h in self.holdings.items() if h.indices}

    # -- Placer --------------------------------------------------------------------------

    def place(self, replica_id: str, api: Api, preferred_gpus: list[int] | None) -> tuple[list[int] | None, str | None]:
        c = api.compute
        request = Request(cpu=c.cpu, mem=c.mem)
        ok, reason = admit(request, list(self.requests.values()), self.capacity)
        if not ok:
            return None, reason
        chosen: list[int] = []
        if c.gpu > 0:
            placement, why = place_gpus(
                GpuRequest(c.gpu, c.gpu_mem), self.gpus, self.holdings, self.gpu_usage,
                prefer=preferred_gpus or (), no_gpu_reason=self.nvml.unavailable_reason() or "NVML lists no GPU",
            )
            if placement is None:
                return None, why
            chosen = placement.indices
            self.holdings[replica_id] = placement.holding()
        self.requests[replica_id] = request
        return chosen, None

    def release(self, replica_id: str) -> None:
        self.requests.pop(replica_id, None)
        self.holdings.pop(replica_id, None)
        self.gpu_usage.pop(replica_id, None)

    def cuda_visible_devices(self, indices: list[int]) -> str:
        return cuda_visible_devices(self.gpus, indices)

    # -- readings ------------------------------------------------------------------------

    def read_gpus(self, trees: Mapping[str, Collection[int]]) -> GpuReadings | None:
        """Fresh memory/utilisation readings of the cards and each replica's GPU memory (from
        `trees`: replica id -> the pids of its process tree). Blocking: called on the readings
        thread; `apply_gpu_readings` takes the result on the loop. None without NVML."""
        if not self.nvml.available():
            return None
        placed = {rid: pids for rid, pids in trees.items() if rid in self.holdings}
        return GpuReadings(self.nvml.gpus(), replica_gpu_memory(placed, self.nvml.process_gpu_memory_by_device()))

    def apply_gpu_readings(self, readings: GpuReadings) -> None:
        self.gpus = readings.gpus
        self.gpu_usage = readings.replicas

    def gpu_memory_over(self) -> list[OverGpuMemory]:
        """Replicas above their gpu_mem by more than the margin, from the last readings."""
        return over_gpu_memory(self.holdings, self.gpu_usage)

    def replica_gpu(self, replica_id: str) -> dict[str, Any]:
        """gpu_share, gpu_mem_bytes and gpu_mem_limit for a replica's row in `get`."""
        return replica_gpu_view(self.holdings.get(replica_id), self.gpu_usage.get(replica_id))

    def memory_events(self, fleet: Fleet, usage: Mapping[str, Usage]) -> list[ReplicaOverMemory]:
        """Replicas above their API's mem_limit (whole process tree), to be stopped."""
        events = []
        for snap in fleet.values():
            for rep in snap.replicas:
                limit = rep.mem_limit
                u = usage.get(rep.id)
                if limit is not None and u is not None and u.rss_bytes > limit and rep.state in _LIVE_STATES:
                    events.append(ReplicaOverMemory(rep.id, u.rss_bytes, limit))
        return events

    def autoscale(self, fleet: Fleet, usage: Mapping[str, Usage], now: float,
                  in_flight: Callable[[str], float] = lambda api: 0.0) -> dict[str, int]:
        """Each period: desired replicas per API, from its in-flight requests (`autoscaling`,
        Cortex v0.14+) or its ready replicas' CPU use (the dialects that had that rule)."""
        if now - self._last_autoscale < self.settings.period_s:
            return {}
        self._last_autoscale = now
        decisions: dict[str, int] = {}
        for name, snap in fleet.items():
            if snap.stopping or snap.status == UPDATING or snap.version == 0:
                continue  # a rolling update keeps its replica count
            auto = snap.spec.autoscaling
            if auto is not None:
                decisions[name] = self._by_concurrency(name, snap, auto, in_flight(name), now)
                continue
            spec = snap.spec.compute
            readings = [
                usage[rep.id].cpu_percent / spec.cpu
                for rep in snap.replicas
                if rep.state == READY and rep.version == snap.version and rep.id in usage
            ]
            state = self.autoscale_state.get(name) or autoscale.initial_state(spec, now)
            desired, self.autoscale_state[name] = autoscale.decide(readings, state, spec, now, self.settings)
            if desired != snap.requested:
                mean = sum(readings) / len(readings) if readings else 0.0
                log.info("%s: autoscaling %d -> %d replicas (cpu %.0f%% of request, target %d%%)",
                         name, snap.requested, desired, mean, spec.target_cpu_utilization)
            decisions[name] = desired
        return decisions

    def _by_concurrency(self, name: str, snap: ApiSnapshot, auto: Autoscaling, in_flight: float, now: float) -> int:
        state = self.concurrency_state.get(name) or autoscale.ConcurrencyState()
        desired, self.concurrency_state[name] = autoscale.decide_concurrency(in_flight, state, snap.spec.compute,
                                                                             auto, now)
        if desired != snap.requested:
            log.info("%s: autoscaling %d -> %d replicas (%.1f requests in flight, target %g per replica)",
                     name, snap.requested, desired, in_flight, auto.target_replica_concurrency)
        return desired

    def forget_api(self, name: str) -> None:
        self.autoscale_state.pop(name, None)
        self.concurrency_state.pop(name, None)

    def reset_autoscale(self, api: Api, now: float) -> None:
        self.autoscale_state[api.name] = autoscale.initial_state(api.compute, now)
        self.concurrency_state.pop(api.name, None)

    # -- views ---------------------------------------------------------------------------

    def gpu_table(self, replica_api: Callable[[str], str | None]) -> dict[str, Any]:
        """`cortexd gpus`: each device, its readings, and each replica on it (share, memory)."""
        rows = gpu_rows(self.gpus, self.holdings, self.gpu_usage, replica_api)
        reason = None if self.gpus else (self.nvml.unavailable_reason() or "no GPU found")
        return {"gpus": rows, "reason": reason}
