"""The daemon's answers: the control commands (cortexd/commands.py names them) and the HTTP
app's non-prediction routes. Every answer about APIs is rendered from one supervisor snapshot
by the pure functions of observe/views.py."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cortexd.daemon.control import ControlError
from cortexd.daemon.deploy.reloader import ReloadReport
from cortexd.daemon.fleet.compute import ComputeManager
from cortexd.daemon.fleet.snapshot import ApiSnapshot, Fleet
from cortexd.daemon.fleet.supervisor import Supervisor
from cortexd.daemon.observe import views
from cortexd.daemon.observe.api_logs import log_path, read_tail
from cortexd.daemon.observe.batch_stats import BatchStats
from cortexd.daemon.observe.latency import LatencyStats
from cortexd.daemon.observe.metrics import GpuMetricsState, Metrics, MetricsState, ReplicaGpuMetricsState
from cortexd.daemon.observe.tracker import PredictionTracker
from cortexd.daemon.serving.proxy import Proxy


@dataclass
class Sources:
    """Who owns what the answers read (each piece of state has one owner)."""

    supervisor: Supervisor
    proxy: Proxy
    compute: ComputeManager
    tracker: PredictionTracker
    metrics: Metrics
    stats: dict[str, LatencyStats]  # per API, written by the proxy's observer
    batches: dict[str, BatchStats]  # per batching API, written by the proxy's observer
    usage: Callable[[], dict[str, views.Usage]]  # the latest readings, per replica
    loop_age: Callable[[], float]  # seconds since the main loop last went round
    loop_errors: Callable[[], int]  # exceptions the main loop survived
    warnings: Callable[[], list[str]]  # what the daemon repaired that an operator should know
    reload: Callable[[list[str]], Awaitable[ReloadReport]]
    log_dir: str
    stopping: asyncio.Event
    frameworks: Callable[[], Awaitable[list[str]]]  # which ML frameworks can use the GPU (probed once)


class Handlers:
    def __init__(self, sources: Sources, stall_s: float) -> None:
        self.s = sources
        self.stall_s = stall_s
        sources.metrics.set_state_provider(self._metrics_state)

    # -- control commands ----------------------------------------------------------------

    async def get(self, request: dict[str, Any]) -> dict[str, Any]:
        fleet = self.s.supervisor.snapshot()
        usage = self.s.usage()
        name = request.get("api")
        splits = {s.name: s for s in self.s.proxy.splits.values()}
        if name in splits and name not in fleet:
            return views.splitter_view(splits[name], fleet)
        if name:
            return self._view(fleet[self._known(name, fleet)], usage)
        return {"apis": [self._view(snap, usage) for snap in fleet.values()],
                "traffic_splitters": [views.splitter_view(s, fleet) for s in splits.values()],
                "warnings": self.s.warnings()}

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        name = self._known(str(request.get("api", "")), self.s.supervisor.snapshot())
        body = str(request.get("body", "")).encode()
        # A predictor that reads the body by its Content-Type (Cortex v0.17+) gets the file as JSON.
        headers = b"content-type: application/json\r\n" if self.s.proxy.forwards_headers(name) else b""
        answer = await self.s.proxy.predict(name, body, "debug=true" if request.get("debug") else "", headers)
        content_type = getattr(answer.body, "content_type", "application/json")
        if content_type.startswith(("application/json", "text/")):
            return {"status": answer.status, "content_type": content_type,
                    "body": bytes(answer.body).decode("utf-8", "replace")}
        # Bytes (a bytes prediction, an image...) cross the JSON control socket in base64.
        return {"status": answer.status, "content_type": content_type,
                "body_base64": base64.b64encode(answer.body).decode()}

    async def reload(self, request: dict[str, Any]) -> dict[str, Any]:
        return (await self.s.reload(list(request.get("force") or []))).as_dict()

    async def logs(self, request: dict[str, Any]) -> AsyncIterator[str]:
        name = self._known(str(request.get("api", "")), self.s.supervisor.snapshot())
        return self._follow(log_path(self.s.log_dir, name), int(request.get("lines", 100)), bool(request.get("follow")))

    async def gpus(self, request: dict[str, Any]) -> dict[str, Any]:
        owners = {rep.id: snap.name for snap in self.s.supervisor.snapshot().values() for rep in snap.replicas}
        return {**self.s.compute.gpu_table(owners.get), "frameworks": await self.s.frameworks()}

    # -- the app's views (serving/app.py Views) ------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return views.liveness(self.s.loop_age(), self.stall_s)

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]:
        return views.readiness(self.s.supervisor.snapshot())

    def metrics_text(self) -> tuple[bytes, str]:
        return self.s.metrics.render()

    def api_summary(self, api: str) -> dict[str, Any]:
        snap = self.s.supervisor.snapshot().get(api)
        return views.api_summary(snap) if snap is not None else {"api": api, "status": "stopped"}

    # -- helpers -------------------------------------------------------------------------------

    def _view(self, snap: ApiSnapshot, usage: dict[str, views.Usage]) -> dict[str, Any]:
        view = views.api_view(snap, usage, self.s.proxy.queue_counts(snap.name), self.s.stats.get(snap.name),
                              self.s.tracker.summary(snap.name), self.s.compute.replica_gpu)
        view["batching"] = views.batching_view(snap, self.s.batches.get(snap.name), time.monotonic())
        return view

    @staticmethod
    def _known(name: str, fleet: Fleet) -> str:
        if name not in fleet:
            raise ControlError(f"no API named {name!r}; APIs: {', '.join(fleet) or 'none'}")
        return name

    def _metrics_state(self) -> MetricsState:
        gpus = [
            GpuMetricsState(index=g.index, uuid=g.uuid, memory_used=g.memory_used, memory_total=g.memory_total,
                            utilization=float(g.utilization or 0), name=g.name)
            for g in self.s.compute.gpus
        ]
        fleet = self.s.supervisor.snapshot()
        owners = {rep.id: snap.name for snap in fleet.values() for rep in snap.replicas}
        uuids = {g.index: g.uuid for g in self.s.compute.gpus}
        replica_gpus = [
            ReplicaGpuMetricsState(owners.get(rid, ""), rid, index, uuids.get(index, ""), held.share,
                                   self.s.compute.gpu_usage.get(rid, {}).get(index, 0), held.gpu_mem)
            for rid, held in list(self.s.compute.holdings.items())
            for index in held.indices
        ]
        return views.metrics_state(fleet, self.s.proxy.queue_counts, self.s.tracker.summary, gpus,
                                   len(self.s.warnings()), self.s.loop_errors(), replica_gpus)

    async def _follow(self, path: str, lines: int, follow: bool) -> AsyncIterator[str]:
        for line in read_tail(path, lines):
            yield line
        if not follow:
            return
        position = os.path.getsize(path) if os.path.exists(path) else 0
        pending = b""
        while not self.s.stopping.is_set():
            await asyncio.sleep(0.25)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if size < position:  # rotated
                position = 0
            if size == position:
                continue
            with open(path, "rb") as f:
                f.seek(position)
                data = f.read(size - position)
            position = size
            pending += data
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", "replace")
