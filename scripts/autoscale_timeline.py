"""Print an autoscaling run as a timeline (load, CPU % of request, replicas) and the GPU placement.

    .venv/bin/python scripts/autoscale_timeline.py

Starts a real `cortexd serve` (short autoscaling windows, CORTEXD_FAKE_GPUS=2) on a
temporary project with a CPU-busy API and a `gpu: 1` API of three replicas, drives load
for a while, stops it, and samples `cortexd get --json` once a second.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.daemon_harness import Client, Daemon, wait_for, write_project  # noqa: E402  (after sys.path has the repo)

PROJECT = """\
- kind: deployment
  name: demo
- kind: api
  name: busy
  python:
    predictor: busy.py
  compute:
    cpu: 200m
    min_replicas: 1
    max_replicas: 4
    target_cpu_utilization: 60
- kind: api
  name: on-gpu
  python:
    predictor: busy.py
  compute:
    gpu: 1
    cpu: 100m
    min_replicas: 3
"""

BUSY = """\
import time

def predict(sample, metadata):
    end = time.perf_counter() + 0.01
    while time.perf_counter() < end:
        pass
    return "ok"
"""


def main() -> int:
    base = tempfile.mkdtemp(prefix="cortexd-autoscale-")
    project = write_project(os.path.join(base, "p"), PROJECT, {"busy.py": BUSY})
    d = Daemon(project, os.path.join(base, "d"), env={"CORTEXD_FAKE_GPUS": "2"},
               args=["--autoscale-period", "2", "--downscale-window", "10"])
    d.start(wait_live=False)
    d.wait_status("busy", "live")
    wait_for(lambda: d.get("on-gpu")["ready"] == 2, 60, what="two GPU replicas")
    stop = threading.Event()
    clients = 0
    sent = [0]

    def load() -> None:
        c = Client(d.port)
        while not stop.is_set() and sent[0] < 100_000:
            c.post("/demo/busy", {})
            sent[0] += 1

    threads: list[threading.Thread] = []
    started = time.monotonic()
    cpu_head = "cpu % of request (per replica)"
    print(f"{'t (s)':>6}  {'clients':>7}  {'req/s':>6}  {cpu_head:<34}  replicas ready/requested")
    last = 0
    for second in range(45):
        if second == 2:
            for _ in range(3):
                t = threading.Thread(target=load)
                t.start()
                threads.append(t)
            clients = 3
        if second == 18:
            stop.set()
            for t in threads:
                t.join()
            clients = 0
        view = d.get("busy")
        cpus = [r["cpu_percent"] / 0.2 for r in view["replicas"] if r["state"] == "ready"]
        rate = sent[0] - last
        last = sent[0]
        cpu_text = " ".join(f"{c:.0f}" for c in cpus)
        elapsed = time.monotonic() - started
        print(f"{elapsed:6.0f}  {clients:7d}  {rate:6d}  {cpu_text:<34}  {view['ready']}/{view['requested']}")
        time.sleep(1)
    print()
    print("$ cortexd gpus")
    print(d.cli("gpus").stdout)
    view = d.get("on-gpu")
    print(f"on-gpu: {view['status']} ({view['reason']})")
    d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
