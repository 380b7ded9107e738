"""Deriving an API's status from its facts (pure)."""

from __future__ import annotations

from dataclasses import dataclass

LIVE = "live"
CREATING = "creating"
UPDATING = "updating"
COMPUTE_UNAVAILABLE = "compute unavailable"
ERROR = "error"
ERROR_OOM = "error (out of memory)"
ERROR_GPU_OOM = "error (out of GPU memory)"
STOPPING = "stopping"
STOPPED = "stopped"

# Every status, in the order summaries list them (sd_notify STATUS, docs).
STATUS_ORDER: tuple[str, ...] = (
    LIVE, CREATING, UPDATING, COMPUTE_UNAVAILABLE, ERROR, ERROR_OOM, ERROR_GPU_OOM, STOPPING, STOPPED,
)


@dataclass(frozen=True)
class StatusFacts:
    stopping: bool
    stopped: bool
    ready: int  # ready replicas of the current version
    min_replicas: int
    rolling: bool  # a new version is starting beside the current one
    error: str | None  # the API cannot start its replicas (repeated load failures, a failed env)
    oom: bool  # a replica was stopped for memory and the API is short of replicas because of it
    compute_unavailable: str | None  # replicas wait for GPUs/CPU/memory
    gpu_oom: bool = False  # a replica was stopped for GPU memory (above gpu_mem) and the API is short because of it


def derive_status(f: StatusFacts) -> str:
    if f.stopped:
        return STOPPED
    if f.stopping:
        return STOPPING
    if f.rolling:
        return UPDATING
    if f.ready >= f.min_replicas:
        return LIVE
    if f.oom:
        return ERROR_OOM
    if f.gpu_oom:
        return ERROR_GPU_OOM
    if f.error:
        return ERROR
    if f.compute_unavailable:
        return COMPUTE_UNAVAILABLE
    return CREATING
