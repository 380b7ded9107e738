"""The validated configuration, as the daemon uses it. Defaults come from the schema table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortexd.config.schema import COMPUTE_KEYS, default_of


@dataclass(frozen=True)
class Compute:
    min_replicas: int = default_of(COMPUTE_KEYS, "min_replicas")
    max_replicas: int = default_of(COMPUTE_KEYS, "max_replicas")
    # The schema's default for init_replicas is "min_replicas"; 1 is that for the default min.
    init_replicas: int = default_of(COMPUTE_KEYS, "min_replicas")
    target_cpu_utilization: int = default_of(COMPUTE_KEYS, "target_cpu_utilization")  # percent of the cpu request
    cpu: float = default_of(COMPUTE_KEYS, "cpu")   # cores
    gpu: float = default_of(COMPUTE_KEYS, "gpu")  # whole GPUs (1, 2) or a share of one card (0.25, 0.5)
    mem: int | None = default_of(COMPUTE_KEYS, "mem")  # bytes
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
    v2: dict[str, Any] | None = None  # python.v2, checked: the V2 model metadata's inputs and outputs


@dataclass(frozen=True)
class Config:
    path: str                           # absolute path of cortex.yaml
    project_dir: str                    # folder holding cortex.yaml
    deployment: str
    apis: tuple[Api, ...]
