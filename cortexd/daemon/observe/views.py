"""What users see, rendered from one frozen snapshot of the supervisor (pure functions).

`cortexd get`, GET <endpoint>, /readyz, /healthz, /metrics and sd_notify STATUS all come
from here, so they agree with each other and with the proxy: a replica is `ready` in every
view exactly when the proxy may send it requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cortexd.daemon.fleet.snapshot import ApiSnapshot, Fleet
from cortexd.daemon.fleet.state import LastError
from cortexd.daemon.observe.batch_stats import BatchStats
from cortexd.daemon.observe.latency import LatencyStats
from cortexd.daemon.observe.metrics import ApiMetricsState, GpuMetricsState, MetricsState, ReplicaGpuMetricsState
from cortexd.daemon.serving.proxy import SplitRoute
from cortexd.daemon.systemd import status_line as systemd_status_line


@dataclass(frozen=True)
class Usage:
    cpu_percent: float  # of one core, whole process tree
    rss_bytes: int


QueueCounts = Callable[[str], tuple[int, int]]  # api -> (in flight, queued)
TrackerSummary = Callable[[str], "dict[str, Any] | None"]


def iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall))


def last_error_fields(error: LastError | None) -> dict[str, str | None]:
    return {"last_error": error.message if error else None, "last_error_at": iso(error.at) if error else None}


def api_view(
    snap: ApiSnapshot,
    usage: Mapping[str, Usage],
    queue: tuple[int, int],
    stats: LatencyStats | None,
    tracker: dict[str, Any] | None,
    replica_gpu: Callable[[str], dict[str, Any]] = lambda rid: {},
) -> dict[str, Any]:
    """One API as `cortexd get API --json` shows it (`replica_gpu`: a replica's GPU share and memory)."""
    replicas = []
    for rep in snap.replicas:
        u = usage.get(rep.id) or Usage(0.0, 0)
        replicas.append({
            "id": rep.id, "pid": rep.pid, "state": rep.state, "version": rep.version, "gpus": list(rep.gpus),
            "cpu_percent": round(u.cpu_percent, 1), "rss_bytes": u.rss_bytes, "restarts": rep.restarts,
            **replica_gpu(rep.id),
        })
    return {
        "name": snap.name,
        "status": snap.status,
        "reason": snap.reason,
        "endpoint": snap.endpoint,
        "predictor": snap.spec.predictor.kind,
        "version": snap.version,
        "requested": snap.requested,
        "ready": snap.ready,
        **last_error_fields(snap.last_error),
        "replicas": replicas,
        "metrics": (stats or LatencyStats()).snapshot(),
        "queue": {"in_flight": queue[0], "queued": queue[1]},
        "tracker": tracker,
    }


def batching_view(snap: ApiSnapshot, batches: BatchStats | None, now: float) -> dict[str, Any] | None:
    """Server-side batching of the API: its two settings and the batches of the last minutes."""
    batching = snap.spec.batching
    if batching is None:
        return None
    return {
        **(batches or BatchStats()).summary(now),
        "max_batch_size": batching.max_batch_size,
        "batch_interval_s": batching.batch_interval_s,
    }


def splitter_view(split: SplitRoute, fleet: Fleet) -> dict[str, Any]:
    """A TrafficSplitter as `cortexd get` shows it: its endpoint and each API's weight and status."""
    rows = [{"api": api, "weight": weight, "shadow": False} for api, weight in split.apis]
    rows += [{"api": api, "weight": 0, "shadow": True} for api in split.shadows]
    for row in rows:
        snap = fleet.get(str(row["api"]))
        row["status"] = snap.status if snap is not None else "stopped"
    return {"name": split.name, "kind": "TrafficSplitter", "endpoint": split.endpoint, "apis": rows}


def api_summary(snap: ApiSnapshot) -> dict[str, Any]:
    """GET <endpoint>: how to call the API, and what its model takes and gives."""
    summary: dict[str, Any] = {
        "api": snap.name,
        "status": snap.status,
        "endpoint": snap.endpoint,
        "predictor": snap.spec.predictor.kind,
        "usage": f"POST {snap.endpoint} with a JSON body (Content-Type: application/json)",
    }
    summary.update(snap.info)
    return summary


def readiness(fleet: Fleet) -> tuple[bool, list[dict[str, Any]]]:
    """/readyz: every API has its min_replicas ready (an API being removed is not waited for)."""
    not_ready = [
        {"api": s.name, "status": s.status, "ready": s.ready, "min_replicas": s.spec.compute.min_replicas}
        for s in fleet.values()
        if not s.stopping and s.ready < s.spec.compute.min_replicas
    ]
    return not not_ready, not_ready


def liveness(loop_age_s: float, max_age_s: float) -> tuple[bool, dict[str, Any]]:
    """/healthz: alive while the daemon's main loop ticked recently (it restarts, enforces
    limits and autoscales; a loop that stopped would leave every fault unrepaired)."""
    ok = loop_age_s <= max_age_s
    return ok, {
        "status": "ok" if ok else "main loop stalled",
        "main_loop_tick_age_s": round(loop_age_s, 3),
        "limit_s": max_age_s,
    }


def status_line(fleet: Fleet) -> str:
    """One line for sd_notify STATUS (`systemctl status`): "3 APIs: 2 live, 1 creating"."""
    return systemd_status_line({name: snap.status for name, snap in fleet.items()})


def metrics_state(
    fleet: Fleet, queue_counts: QueueCounts, tracker: TrackerSummary, gpus: Sequence[GpuMetricsState],
    warnings: int = 0, loop_errors: int = 0, replica_gpus: Sequence[ReplicaGpuMetricsState] = (),
) -> MetricsState:
    apis = []
    for name, snap in fleet.items():
        in_flight, queued = queue_counts(name)
        apis.append(ApiMetricsState(
            name=name, in_flight=in_flight, queued=queued, replicas=snap.state_counts(), restarts=snap.restarts,
            tracker=tracker(name),
        ))
    return MetricsState(apis=apis, gpus=list(gpus), warnings=warnings, loop_errors=loop_errors,
                        replica_gpus=list(replica_gpus))
