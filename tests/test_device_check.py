"""scripts/device-check.sh's checks, run here over the fake NVML with PyTorch on the CPU
(what they prove on a GPU needs the lent machine; this proves the script runs and reports)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.daemon_harness import REPO

SCRIPT = os.path.join(REPO, "scripts", "device-check.sh")


def test_usage() -> None:
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage: scripts/device-check.sh --prepare | --device | --fake" in done.stderr


def test_the_documented_device_call_is_in_the_header() -> None:
    with open(SCRIPT) as f:
        header = f.read().split("set -uo pipefail")[0]
    for line in ("command:   bash scripts/device-check.sh --device", 'carry:     [".whl"]', "timeout_s: 540"):
        assert line in header


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (cortexd[torch])")
def test_fake_run_reports_every_step(tmp_path) -> None:
    out = str(tmp_path / "out")
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "device_check.py"), "--fake", "--out", out,
                           "--budget-s", "240"], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(os.path.join(out, "device-check.json")) as f:
        results = json.load(f)
    assert results["fake"] is True
    s = results["steps"]
    assert set(s) == {"inventory", "sharing", "accounting", "gpu_oom", "throughput"}, s
    assert all(step["ok"] for step in s.values()), s
    assert s["inventory"]["nvml"][0]["uuid"] == "GPU-fake-0"
    assert {st["cuda_visible_devices"] for st in s["sharing"]["states"].values()} == {"GPU-fake-0"}
    assert s["sharing"]["third"] == {"status": "compute unavailable",
                                     "reason": "needs 0.5 of a GPU per replica; GPU 0: 1 of it shared already"}
    assert "half-a-" in s["sharing"]["gpus_table"] and "half-b-" in s["sharing"]["gpus_table"]
    assert s["accounting"]["half-a"]["nvml_mib"] == s["accounting"]["half-a"]["torch_reserved_mib"] == 512
    assert s["gpu_oom"]["status"] == "error (out of GPU memory)" and s["gpu_oom"]["neighbour_serves"] is True
    for api in ("plain", "batched"):
        assert s["throughput"][api]["requests_per_s"] > 0 and s["throughput"][api]["errors"] == 0
    assert os.path.getsize(os.path.join(out, "device-check.log")) > 0
