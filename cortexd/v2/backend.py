"""The seam between the V2 front ends (REST router, gRPC service) and the daemon.

The daemon implements `V2Backend`; everything V2-specific stays in cortexd/v2. The daemon
never decodes a tensor: `infer` receives a replica request already built by the front end
(`cortexd.v2.hop.replica_target` + the body as the client sent it, or as gRPC's raw contents
concatenated) and hands it to the API's queue like any prediction, so batching, deadlines,
the tracker, metrics and `cortexd get` see it. The replica's answer comes back unchanged.

Nothing here imports numpy: the daemon's event loop stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ModelEntry:
    """What the daemon knows of one API, as a V2 model."""

    name: str  # the API's name = the V2 model name
    version: str  # the deployed version (the only one served); "1", "2", ...
    ready: bool  # at least one replica is ready to take requests
    kind: str  # python | onnx | tensorflow
    info: dict[str, Any] = field(default_factory=dict)  # describe() of a ready replica (protocol.Ready.info)
    declared: dict[str, Any] | None = None  # Python APIs: the inputs/outputs declared in cortex.yaml


class V2Backend(Protocol):
    """What the V2 front ends ask the daemon."""

    def live(self) -> bool:
        """The server answers requests (GET /v2/health/live)."""
        ...

    def ready(self) -> bool:
        """Every API has a ready replica (as /readyz; GET /v2/health/ready)."""
        ...

    def models(self) -> list[str]:
        """The names of the APIs served."""
        ...

    def model(self, name: str) -> ModelEntry | None:
        """The API called `name`, None when there is none."""
        ...

    async def infer(self, model: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Queue a replica request for API `model` and wait for its answer: (status, extra
        headers, payload). `target` is the replica path with its query (hop.replica_target);
        `body` goes to the replica as it is. The payload is the replica's answer unchanged
        (hop.read_replica_answer decodes it), or the daemon's own JSON error ({"error": ...},
        e.g. 503 with Retry-After when no replica is ready, 504 past the deadline)."""
        ...
