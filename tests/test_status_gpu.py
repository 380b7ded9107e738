"""The GPU OOM status: `error (out of GPU memory)` while a stop for GPU memory leaves the API short."""

from __future__ import annotations

import pytest

from cortexd.daemon.observe.status import ERROR_GPU_OOM, ERROR_OOM, LIVE, StatusFacts, derive_status
from cortexd.daemon.systemd import status_line


def facts(**changes: object) -> StatusFacts:
    base: dict[str, object] = dict(stopping=False, stopped=False, ready=0, min_replicas=1, rolling=False, error=None,
                                   oom=False, compute_unavailable=None)
    base.update(changes)
    return StatusFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes, status",
    [
        ({"gpu_oom": True}, ERROR_GPU_OOM),
        ({"gpu_oom": True, "ready": 1}, LIVE),  # the others on the card keep serving: live when enough are
        ({"gpu_oom": True, "oom": True}, ERROR_OOM),
        ({"gpu_oom": True, "error": "load failed"}, ERROR_GPU_OOM),
        ({"gpu_oom": True, "compute_unavailable": "needs 0.5 of a GPU per replica"}, ERROR_GPU_OOM),
        ({}, "creating"),
    ],
)
def test_gpu_oom_status(changes: dict[str, object], status: str) -> None:
    assert derive_status(facts(**changes)) == status


def test_status_line_orders_the_gpu_oom_status_beside_the_other_errors() -> None:
    line = status_line({"a": "stopped", "b": ERROR_GPU_OOM, "c": "error (out of memory)", "d": "live"})
    assert line == "4 APIs: 1 live, 1 error (out of memory), 1 error (out of GPU memory), 1 stopped"
