"""GPUs (fake NVML), memory limits and autoscaling through a real daemon."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.daemon_harness import Client, Daemon, wait_for, write_project

pytestmark = pytest.mark.slow

WHOAMI = {
    "whoami.py": """\
        import os

        def predict(sample, metadata):
            return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    """,
}


def test_gpu_placement_waiting_replica_and_same_gpu_after_crash(tmp_path) -> None:
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: g
        - kind: api
          name: gpu-api
          python:
            predictor: whoami.py
          compute:
            gpu: 1
            cpu: 100m
            min_replicas: 3
        - kind: api
          name: cpu-api
          python:
            predictor: whoami.py
          compute:
            cpu: 100m
    """, WHOAMI)
    d = Daemon(project, str(tmp_path / "d"), env={"CORTEXD_FAKE_GPUS": "2"}).start(wait_live=False)
    try:
        view = wait_for(lambda: (v := d.get("gpu-api"))["ready"] == 2 and v, 60, 0.1, what="two GPU replicas ready")
        assert view["status"] == "compute unavailable"
        assert view["reason"] == "needs 1 GPU per replica; 2 of 2 in use"
        assert view["requested"] == 3
        placed = {r["id"]: r["gpus"] for r in view["replicas"]}
        assert sorted(g for gpus in placed.values() for g in gpus) == [0, 1]

        # Each replica sees exactly its own GPU, by UUID; a gpu: 0 replica sees none.
        seen = {Client(d.port).post("/g/gpu-api", {}).json()["cuda"] for _ in range(20)}
        assert seen <= {"GPU-fake-0", "GPU-fake-1"} and len(seen) >= 1
        d.wait_status("cpu-api", "live")
        assert Client(d.port).post("/g/cpu-api", {}).json()["cuda"] == ""

        table = d.cli("gpus")
        assert table.returncode == 0, table.stderr
        assert "Fake GPU" in table.stdout
        for rid in placed:
            assert rid in table.stdout

        # Kill one: its replacement gets the same GPU, not the waiting replica's turn.
        victim_id, victim_gpus = next(iter(placed.items()))
        victim_pid = next(r["pid"] for r in view["replicas"] if r["id"] == victim_id)
        os.kill(victim_pid, signal.SIGKILL)

        def replaced():
            v = d.get("gpu-api")
            ids = {r["id"]: r for r in v["replicas"]}
            return v["ready"] == 2 and victim_id not in ids and v
        after = wait_for(replaced, 30, 0.1, what="the replacement")
        new = [r for r in after["replicas"] if r["id"] not in placed]
        assert len(new) == 1 and new[0]["gpus"] == victim_gpus
        assert new[0]["restarts"] == 1
    finally:
        assert d.stop() == 0


def test_memory_hog_is_stopped_as_out_of_memory_and_others_keep_serving(tmp_path) -> None:
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: m
        - kind: api
          name: hog
          python:
            predictor: hog.py
          compute:
            mem_limit: 300Mi
        - kind: api
          name: fine
          python:
            predictor: whoami.py
    """, {**WHOAMI, "hog.py": """\
        import time

        ballast = []

        def init(metadata):
            # Grows past the 300Mi limit and stays there, as a leaking model would.
            for _ in range(40):
                ballast.append(bytearray(32 << 20))
                time.sleep(0.05)

        def predict(sample, metadata):
            return len(ballast)
    """})
    d = Daemon(project, str(tmp_path / "d")).start(wait_live=False)
    try:
        d.wait_status("fine", "live")
        view = d.wait_status("hog", "error (out of memory)", timeout=60)
        assert "above its limit of 300 MiB" in view["last_error"]
        assert "replica hog-" in view["last_error"]
        c = Client(d.port)
        assert all(c.post("/m/fine", {}).status == 200 for _ in range(10))
        r = c.post("/m/hog", {})
        assert r.status == 503 and r.json()["status"] == "error (out of memory)"
    finally:
        assert d.stop() == 0


def test_cpu_busy_api_scales_up_under_load_and_back_down_after(tmp_path) -> None:
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: a
        - kind: api
          name: busy
          python:
            predictor: busy.py
          compute:
            cpu: 100m
            min_replicas: 1
            max_replicas: 3
            target_cpu_utilization: 50
    """, {"busy.py": """\
        import time

        def predict(sample, metadata):
            end = time.perf_counter() + 0.02
            n = 0
            while time.perf_counter() < end:
                n += 1
            return n
    """})
    d = Daemon(project, str(tmp_path / "d"), args=["--autoscale-period", "1", "--downscale-window", "4"]).start()
    timeline: list[tuple[float, int, int]] = []
    stop = threading.Event()
    started = time.monotonic()

    def load() -> None:
        c = Client(d.port)
        for _ in range(3000):
            if stop.is_set():
                return
            c.post("/a/busy", {})

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        up = wait_for(lambda: (v := d.get("busy"))["requested"] == 3 and v, 30, 0.2, what="scale up to 3")
        timeline.append((time.monotonic() - started, up["requested"], up["ready"]))
        wait_for(lambda: d.get("busy")["ready"] == 3, 30, 0.2, what="3 ready replicas")
        stop.set()
        for t in threads:
            t.join()
        stopped = time.monotonic()
        down = wait_for(lambda: (v := d.get("busy"))["requested"] == 1 and v, 30, 0.2, what="scale down to 1")
        # Not before the downscale window has passed since the load stopped.
        assert time.monotonic() - stopped >= 3.0
        wait_for(lambda: len(d.get("busy")["replicas"]) == 1, 30, 0.2, what="drained replicas to stop")
        assert down["status"] == "live"
    finally:
        stop.set()
        for t in threads:
            t.join()
        assert d.stop() == 0


def test_max_replicas_caps_the_processes_of_all_apis_together(tmp_path) -> None:
    """Many APIs asking `cpu: 1m` each fit on cpu; `--max-replicas` keeps the daemon from
    forking them all: the rest wait as `compute unavailable` with the cap as the reason."""
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: m
        - kind: api
          name: first
          python:
            predictor: whoami.py
          compute:
            cpu: 1m
            min_replicas: 2
        - kind: api
          name: second
          python:
            predictor: whoami.py
          compute:
            cpu: 1m
    """, WHOAMI)
    d = Daemon(project, str(tmp_path / "d"), args=["--max-replicas", "2"]).start(wait_live=False)
    try:
        d.wait_status("first", "live")
        waiting = wait_for(lambda: (v := d.get("second"))["status"] == "compute unavailable" and v, 30, 0.1,
                           what="the second API to wait")
        assert waiting["reason"] == "the daemon runs at most 2 replicas (serve --max-replicas), and 2 are running"
        assert waiting["ready"] == 0 and len(d.replica_pids("first")) == 2
        assert "why: the daemon runs at most 2 replicas" in d.cli("get", "second").stdout
    finally:
        assert d.stop() == 0
