"""The validated configuration, as the daemon uses it. Defaults come from the schema tables.

Every dialect of cortex.yaml (cortexd/config/dialects.py) is read into these same objects;
`Api.dialect` and `Api.call` keep what the replica and the daemon must still do the way
that release did (how the predictor is called, which autoscaling rule applies).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# How the replica calls the user's code (Api.call): defined with the replica's side of it,
# re-exported (`X as X`) for the config's users.
from cortexd.callconv import CALL_CLASS as CALL_CLASS
from cortexd.callconv import CALL_CLASS_KWARGS as CALL_CLASS_KWARGS
from cortexd.callconv import CALL_HANDLER as CALL_HANDLER
from cortexd.callconv import CALL_MODULE as CALL_MODULE
from cortexd.callconv import CALL_V011 as CALL_V011
from cortexd.callconv import CALLS as CALLS
from cortexd.config.schema import COMPUTE_KEYS, default_of


@dataclass(frozen=True)
class Compute:
    min_replicas: int = default_of(COMPUTE_KEYS, "min_replicas")
    max_replicas: int = default_of(COMPUTE_KEYS, "max_replicas")
    # The schema's default for init_replicas is "min_replicas"; 1 is that for the default min.
    init_replicas: int = default_of(COMPUTE_KEYS, "min_replicas")
    target_cpu_utilization: int = default_of(COMPUTE_KEYS, "target_cpu_utilization")  # percent of the cpu request
    cpu: float = default_of(COMPUTE_KEYS, "cpu")   # cores requested (admission)
    gpu: float = default_of(COMPUTE_KEYS, "gpu")  # whole GPUs (1, 2) or a share of one card (0.25, 0.5)
    mem: int | None = default_of(COMPUTE_KEYS, "mem")  # bytes requested (admission); a replica may use more
    mem_limit: int | None = None  # bytes: a replica above it is stopped, "error (out of memory)"
    gpu_mem: int | None = None  # bytes of GPU memory per replica, for placement and its limit


@dataclass(frozen=True)
class Tracker:
    model_type: str                     # "classification" | "regression"
    key: str | None = None




@dataclass(frozen=True)
class PredictorSpec:
    kind: str                           # "python" | "onnx" | "tensorflow"
    predictor: str | None               # absolute path of the predictor file (required for python)
    model: str | None                   # local model: absolute path; remote: the URL as written
    signature_key: str | None           # tensorflow only
    config: dict[str, Any]              # the section's config, else the API's metadata, else {}


@dataclass(frozen=True)
class Batching:
    """Server-side batching: requests waiting together go to one replica as one batch."""

    max_batch_size: int
    batch_interval_s: float


@dataclass(frozen=True)
class Autoscaling:
    """Request-based autoscaling of Cortex v0.14+: in-flight requests per replica.

    An API with `autoscaling` None keeps the CPU rule (compute.target_cpu_utilization) of
    the dialects that had it. Replica counts stay in `Compute` for every dialect.
    """

    target_replica_concurrency: float = 1.0   # the dialect's default: processes_per_replica * threads_per_process
    max_replica_concurrency: int = 1024       # in-flight requests per replica beyond which the API answers 503
    window_s: float = 60.0                    # in-flight requests are averaged over it
    downscale_stabilization_period_s: float = 300.0
    upscale_stabilization_period_s: float = 60.0
    max_downscale_factor: float = 0.75
    max_upscale_factor: float = 1.5
    downscale_tolerance: float = 0.05
    upscale_tolerance: float = 0.05


@dataclass(frozen=True)
class UpdateStrategy:
    """Rolling updates as Kubernetes does them: an absolute count ("5") or a share of the
    desired replicas ("25%"); surges round up, unavailability rounds down."""

    max_surge: str = "25%"
    max_unavailable: str = "25%"

    def resolve(self, desired: int) -> tuple[int, int]:
        """(replicas that may run above `desired`, replicas that may be missing) during an update.

        Never (0, 0): a rollout must be able to move, so Kubernetes' rule of one unavailable
        replica applies when both resolve to 0.
        """
        surge = _amount(self.max_surge, desired, math.ceil)
        unavailable = _amount(self.max_unavailable, desired, math.floor)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable


def _amount(value: str, desired: int, rounding: Any) -> int:
    if value.endswith("%"):
        return int(rounding(desired * int(value[:-1]) / 100))
    return int(value)


@dataclass(frozen=True)
class Api:
    name: str
    endpoint: str                       # normalised, e.g. "/iris-deployment/iris"
    python_path: str                    # absolute folder prepended to sys.path in the replica
    predictor: PredictorSpec
    tracker: Tracker | None
    compute: Compute
    metadata: dict[str, Any]
    batching: Batching | None = None
    threads_per_process: int = 1  # requests one replica serves at once (a thread pool in the replica)
    dialect: str = "seed"               # dialects.Dialect.id the API was written in
    call: str = CALL_MODULE             # how the replica calls the user's code (CALLS)
    autoscaling: Autoscaling | None = None  # None: the CPU rule of compute.target_cpu_utilization
    update_strategy: UpdateStrategy | None = None  # None: cortexd's own rolling replacement
    env: dict[str, str] = field(default_factory=dict)  # environment variables of the replica
    processes_per_replica: int = 1
    nan_as_null: bool = False  # NaN/Infinity in a prediction go out as null instead of a 500
    v2: dict[str, Any] | None = None  # python.v2, checked: the V2 model metadata's inputs and outputs


@dataclass(frozen=True)
class TrafficSplit:
    api: str                            # name of an API of the same file
    weight: int                         # percent of requests; the non-shadow weights sum to 100
    shadow: bool = False                # gets a copy of every request; its answer is dropped


@dataclass(frozen=True)
class TrafficSplitter:
    """Cortex's TrafficSplitter: one endpoint spreading requests over APIs by weight."""

    name: str
    endpoint: str
    apis: tuple[TrafficSplit, ...]


@dataclass(frozen=True)
class Config:
    path: str                           # absolute path of cortex.yaml
    project_dir: str                    # folder holding cortex.yaml
    deployment: str                     # "" for dialects without a deployment (Cortex v0.13 and later)
    apis: tuple[Api, ...]
    dialect: str = "seed"               # dialects.Dialect.id of the file
    splitters: tuple[TrafficSplitter, ...] = ()
