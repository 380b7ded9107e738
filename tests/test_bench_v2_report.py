"""bench/v2_report.py without running servers: the cortexd / MLServer ratios and issue 17's
target are computed from rows as bench/v2.py collects them."""

from __future__ import annotations

from typing import Any

import pytest

from bench import v2_report


def measured(cell: str, rps: float) -> dict[str, Any]:
    return {"cell": cell, "status": "measured", "rps": rps, "p50_ms": 1.5, "p99_ms": 4.0, "errors": 0}


def not_served(cell: str, reason: str) -> dict[str, Any]:
    return {"cell": cell, "status": "not served", "reason": reason}


TARGETS = {
    "cortexd": [measured("own-json", 5000), measured("v2-json", 4000), measured("v2-binary", 5000),
                measured("v2-grpc", 2000)],
    "mlserver": [{"cell": "own-json", "status": "n/a"}, measured("v2-json", 2000),
                 not_served("v2-binary", "HTTP 500"), measured("v2-grpc", 1600)],
    "mlserver-w1": [{"cell": "own-json", "status": "n/a"}, measured("v2-json", 1000),
                    not_served("v2-binary", "HTTP 500"), measured("v2-grpc", 1000)],
}


def test_ratios_per_cell_and_why_a_cell_has_none() -> None:
    rows = {r["cell"]: r for r in v2_report.comparison(TARGETS)}
    assert rows["v2-json"]["ratios"] == {"mlserver": 2.0, "mlserver-w1": 4.0}
    assert rows["v2-binary"]["ratios"] == {"mlserver": None, "mlserver-w1": None}
    assert rows["v2-binary"]["mlserver"] == "not served (HTTP 500)"
    assert rows["v2-grpc"]["ratios"]["mlserver"] == 1.25


@pytest.mark.parametrize(("best_peer_rps", "ok"), [(2000, False), (1300, True), (1334, False)])
def test_the_target_is_judged_against_the_faster_mlserver(best_peer_rps: float, ok: bool) -> None:
    targets = {**TARGETS, "mlserver": [measured("v2-json", best_peer_rps)]}
    target = v2_report.mlserver_target(targets)
    assert target is not None
    assert target["mlserver_config"] == "mlserver" and target["ok"] is ok
    assert target["ratio"] == round(4000 / best_peer_rps, 3)
    # cortexd's best REST cell (binary, 5000) over MLServer's best (JSON: it serves no binary)
    assert target["best_rest_ratio"] == round(5000 / best_peer_rps, 3)


def test_no_peer_no_target() -> None:
    assert v2_report.mlserver_target({"cortexd": TARGETS["cortexd"]}) is None
    assert v2_report.comparison({"cortexd": TARGETS["cortexd"]}) == []


def test_a_saved_run_renders() -> None:
    results = {"model": "mlp", "concurrency": 8, "rounds": 1, "duration_s": 2, "targets": TARGETS}
    text = v2_report.render(results)
    assert "mlp, c=8" in text and "mlserver-w1" in text and "not served" in text
