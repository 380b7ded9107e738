"""Compute for replicas: GPU placement, cpu/mem admission, memory limits and autoscaling.

The decisions are the pure functions of gpus.py, admission.py and autoscale.py; this module
keeps the little state they need (who holds which GPU and request, each API's autoscaling
memory) and turns readings into supervisor events and desired counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable

from cortexd.config import Api
from cortexd.daemon.fleet import autoscale
from cortexd.daemon.fleet.admission import Capacity, Request, admit, machine_capacity
from cortexd.daemon.fleet.gpus import GpuInfo, Nvml, choose_gpus, cuda_visible_devices, placement_shortfall_reason
from cortexd.daemon.fleet.events import ReplicaOverMemory
from cortexd.daemon.fleet.snapshot import Fleet
from cortexd.daemon.observe.status import UPDATING
from cortexd.daemon.observe.views import Usage

# Replica states in which a replica holds memory worth limiting.
_LIVE_STATES = ("starting", "ready", "draining")
READY = "ready"

log = logging.getLogger("cortexd.compute")


class ComputeManager:
    """Implements the supervisor's Placer; reads usage for memory limits and autoscaling."""

    def __init__(
        self,
        nvml: Nvml,
        capacity: Capacity | None = None,
        settings: autoscale.AutoscaleSettings | None = None,
    ) -> None:
        self.nvml = nvml
        if capacity is None:
            cores, mem = machine_capacity()
            capacity = Capacity(cores=cores, mem=mem)
        self.capacity = capacity
        self.settings = settings or autoscale.AutoscaleSettings()
        self.gpus: list[GpuInfo] = nvml.gpus() if nvml.available() else []
        self.requests: dict[str, Request] = {}  # replica id -> admitted request
        self.holders: dict[str, list[int]] = {}  # replica id -> GPU indices
        self.autoscale_state: dict[str, autoscale.AutoscaleState] = {}
        self._last_autoscale = float("-inf")

    # -- Placer --------------------------------------------------------------------------

    def place(self, replica_id: str, api: Api, preferred_gpus: list[int] | None) -> tuple[list[int] | None, str | None]:
        c = api.compute
        request = Request(cpu=c.cpu, mem=c.mem)
        ok, reason = admit(request, list(self.requests.values()), self.capacity)
        if not ok:
            return None, reason
        chosen: list[int] = []
        if c.gpu > 0:
            if not self.gpus:
                return None, placement_shortfall_reason(c.gpu, 0, 0, self.nvml.unavailable_reason() or "NVML lists no GPU")
            held = {index: rid for rid, indices in self.holders.items() for index in indices}
            picked = choose_gpus(c.gpu, self.gpus, held, prefer=preferred_gpus or ())
            if picked is None:
                return None, placement_shortfall_reason(c.gpu, len(self.gpus), len(held), None)
            chosen = picked
            self.holders[replica_id] = chosen
        self.requests[replica_id] = request
        return chosen, None

    def release(self, replica_id: str) -> None:
        self.requests.pop(replica_id, None)
        self.holders.pop(replica_id, None)

    def cuda_visible_devices(self, indices: list[int]) -> str:
        return cuda_visible_devices(self.gpus, indices)

    # -- readings ------------------------------------------------------------------------

    def read_gpus(self) -> list[GpuInfo] | None:
        """Fresh memory/utilisation readings (blocking: called on the readings thread); None
        without NVML. The set of devices does not change."""
        return self.nvml.gpus() if self.nvml.available() else None

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

    def autoscale(self, fleet: Fleet, usage: Mapping[str, Usage], now: float) -> dict[str, int]:
        """Each period: desired replicas per API from its ready replicas' CPU use."""
        if now - self._last_autoscale < self.settings.period_s:
            return {}
        self._last_autoscale = now
        decisions: dict[str, int] = {}
        for name, snap in fleet.items():
            if snap.stopping or snap.status == UPDATING or snap.version == 0:
                continue  # a rolling update keeps its replica count
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

    def forget_api(self, name: str) -> None:
        self.autoscale_state.pop(name, None)

    def reset_autoscale(self, api: Api, now: float) -> None:
        self.autoscale_state[api.name] = autoscale.initial_state(api.compute, now)

    # -- views ---------------------------------------------------------------------------

    def gpu_table(self, replica_api: Callable[[str], str | None]) -> dict[str, Any]:
        held = {index: rid for rid, indices in self.holders.items() for index in indices}
        rows = []
        for g in self.gpus:
            rid = held.get(g.index)
            rows.append({
                "index": g.index, "uuid": g.uuid, "name": g.name,
                "memory_used": g.memory_used, "memory_total": g.memory_total,
                "utilization": g.utilization, "replica": rid, "api": replica_api(rid) if rid else None,
            })
        reason = None if self.gpus else (self.nvml.unavailable_reason() or "no GPU found")
        return {"gpus": rows, "reason": reason}
