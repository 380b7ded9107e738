"""Shares of one GPU through a real daemon over the fake NVML (CORTEXD_FAKE_GPUS)."""

from __future__ import annotations

import json

import pytest

from tests.daemon_harness import Client, Daemon, wait_for, write_project
from tests.test_compute import WHOAMI  # a replica answers its CUDA_VISIBLE_DEVICES and pid

pytestmark = pytest.mark.slow

# With CORTEXD_FAKE_GPU_PROC_DIR set, the replica pretends to use GPU memory: 1Gi at start,
# and what a request asks for after (the fake NVML reads the file, keyed by pid).
PRETEND = {
    "pretend.py": """\
        import os


        def _use(amount):
            path = os.path.join(os.environ["CORTEXD_FAKE_GPU_PROC_DIR"], str(os.getpid()))
            with open(path + ".tmp", "w") as f:
                f.write(amount)
            os.replace(path + ".tmp", path)


        def init(metadata):
            _use("1Gi")


        def predict(sample, metadata):
            if isinstance(sample, dict) and "use" in sample:
                _use(sample["use"])
            return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    """,
}

TWO_HALVES = """\
    - kind: deployment
      name: s
    - kind: api
      name: first
      python:
        predictor: {predictor}
      compute:
        cpu: 100m
        gpu: 0.5
        gpu_mem: 4Gi
    - kind: api
      name: second
      python:
        predictor: {predictor}
      compute:
        cpu: 100m
        gpu: 0.5
    - kind: api
      name: third
      python:
        predictor: {predictor}
      compute:
        cpu: 100m
        gpu: 0.5
"""


def test_two_halves_share_one_fake_card_and_a_third_waits(tmp_path) -> None:
    project = write_project(str(tmp_path / "p"), TWO_HALVES.format(predictor="whoami.py"), WHOAMI)
    d = Daemon(project, str(tmp_path / "d"), env={"CORTEXD_FAKE_GPUS": "1", "CORTEXD_FAKE_GPU_MEM": "16Gi"})
    d.start(wait_live=False)
    try:
        first = d.wait_status("first", "live")
        second = d.wait_status("second", "live")
        third = wait_for(lambda: (v := d.get("third"))["status"] == "compute unavailable" and v, 60, 0.1,
                         what="third to be compute unavailable")
        assert third["reason"] == "needs 0.5 of a GPU per replica; GPU 0: 1 of it shared already"
        assert third["replicas"] == []
        assert [r["gpus"] for r in first["replicas"]] == [[0]] and [r["gpus"] for r in second["replicas"]] == [[0]]

        # Both serve, each seeing the one card by its UUID.
        c = Client(d.port)
        for path in ("/s/first", "/s/second"):
            answer = c.post(path, {})
            assert answer.status == 200 and answer.json()["cuda"] == "GPU-fake-0"
        assert c.post("/s/third", {}).status == 503

        table = d.cli("gpus")
        assert table.returncode == 0, table.stderr
        print(table.stdout)  # the closing note shows it
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["gpu", "name", "memory", "util", "replica", "api", "share", "gpu", "memory"]
        assert "first-" in lines[1] + lines[2] and "second-" in lines[1] + lines[2]
        assert all(" 0.5 " in line for line in lines[1:3])
        data = json.loads(d.cli("gpus", "--json").stdout)
        (card,) = data["gpus"]
        assert card["share_used"] == 1.0
        assert sorted((r["api"], r["share"], r["gpu_mem_limit"]) for r in card["replicas"]) == [
            ("first", 0.5, 4 * 2**30), ("second", 0.5, None)]

        # The first half freed: the third API takes it.
        without_first = TWO_HALVES.format(predictor="whoami.py").split("- kind: api\n")
        del without_first[1]
        write_project(str(tmp_path / "p"), "- kind: api\n".join(without_first), {})
        reload = d.cli("reload")
        assert reload.returncode == 0, reload.stdout + reload.stderr
        d.wait_status("third", "live")
        assert d.status("second") == "live"
    finally:
        assert d.stop() == 0


def test_a_whole_gpu_api_never_joins_a_shared_card(tmp_path) -> None:
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: w
        - kind: api
          name: half
          python:
            predictor: whoami.py
          compute: {cpu: 100m, gpu: 0.5}
        - kind: api
          name: whole
          python:
            predictor: whoami.py
          compute: {cpu: 100m, gpu: 1, min_replicas: 2}
    """, WHOAMI)
    d = Daemon(project, str(tmp_path / "d"), env={"CORTEXD_FAKE_GPUS": "2"}).start(wait_live=False)
    try:
        half = d.wait_status("half", "live")
        whole = wait_for(lambda: (v := d.get("whole"))["ready"] == 1 and v, 60, 0.1, what="one whole replica")
        assert whole["status"] == "compute unavailable"
        assert whole["reason"] == "needs 1 GPU per replica; 2 of 2 in use"
        held = {tuple(r["gpus"]) for r in half["replicas"]} | {tuple(r["gpus"]) for r in whole["replicas"]}
        assert held == {(0,), (1,)}
    finally:
        assert d.stop() == 0


def test_gpu_memory_readings_and_the_gpu_oom_stop(tmp_path) -> None:
    proc_dir = tmp_path / "fake-gpu-procs"
    proc_dir.mkdir()
    project = write_project(str(tmp_path / "p"), TWO_HALVES.format(predictor="pretend.py"), PRETEND)
    d = Daemon(project, str(tmp_path / "d"), env={"CORTEXD_FAKE_GPUS": "1",
                                                  "CORTEXD_FAKE_GPU_PROC_DIR": str(proc_dir)}).start(wait_live=False)
    try:
        d.wait_status("first", "live")
        d.wait_status("second", "live")
        # Readings: 1Gi each, in get's replica rows and in gpus per replica.
        view = wait_for(lambda: (v := d.get("first"))["replicas"][0].get("gpu_mem_bytes") == 2**30 and v, 30, 0.2,
                        what="first's GPU memory reading")
        assert view["replicas"][0]["gpu_mem_limit"] == 4 * 2**30 and view["replicas"][0]["gpu_share"] == 0.5
        card = json.loads(d.cli("gpus", "--json").stdout)["gpus"][0]
        assert sorted(r["gpu_mem_bytes"] for r in card["replicas"]) == [2**30, 2**30]
        assert "1.0 GiB / 4.0 GiB" in d.cli("get", "first").stdout

        # Within the margin (4Gi + 512Mi): kept. Above it: stopped with the reason; second serves on.
        c = Client(d.port)
        assert c.post("/s/first", {"use": "4400Mi"}).status == 200
        assert d.status("first") == "live"
        assert c.post("/s/first", {"use": "6Gi"}).status == 200
        view = d.wait_status("first", "error (out of GPU memory)", timeout=30)
        assert "of GPU memory on GPU 0, above its gpu_mem of 4Gi by more than the margin of 512Mi" in view["last_error"]
        assert all(c.post("/s/second", {}).status == 200 for _ in range(5))
        metrics = c.get("/metrics").body.decode()
        assert 'cortexd_replica_gpu_memory_used_bytes{api="second"' in metrics
        # Its replacement starts at 1Gi again and the API is live once more.
        d.wait_status("first", "live", timeout=60)
    finally:
        assert d.stop() == 0
