"""Measure a reload under load: requests, failures, and the switch-over time.

    .venv/bin/python scripts/reload_under_load.py

Starts a real `cortexd serve` with one API of two replicas, keeps 4 clients posting, edits
the predictor, runs `cortexd reload`, and reports how many requests were answered, how
many were not 200, and how long it took from `reload` until every answer came from the
new version (the last answer of the old version).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.daemon_harness import Client, Daemon, write_project  # noqa: E402  (after sys.path has the repository)

PROJECT = """\
- kind: deployment
  name: demo
- kind: api
  name: model
  python:
    predictor: predictor.py
  compute:
    min_replicas: 2
    cpu: 100m
"""

PREDICTOR = 'def predict(sample, metadata):\n    return {"version": "%s"}\n'


def main() -> int:
    base = tempfile.mkdtemp(prefix="cortexd-reload-")
    project = write_project(os.path.join(base, "p"), PROJECT, {"predictor.py": PREDICTOR % "v1"})
    d = Daemon(project, os.path.join(base, "d")).start()
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        c = Client(d.port)
        while not stop.is_set() and len(results) < 1_000_000:
            r = c.post("/demo/model", {})
            results.append((time.monotonic(), r.status, r.json().get("version", "") if r.status == 200 else ""))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    with open(os.path.join(project, "predictor.py"), "w") as f:
        f.write(PREDICTOR % "v2")
    started = time.monotonic()
    out = d.cli("reload")
    returned = time.monotonic()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    d.stop()
    last_v1 = max(t for t, _, v in results if v == "v1")
    first_v2 = min(t for t, _, v in results if v == "v2")
    failures = [s for _, s, _ in results if s != 200]
    during = [r for r in results if started <= r[0] <= returned]
    print(out.stdout.strip())
    print(f"requests answered:            {len(results)} ({len(during)} while `cortexd reload` ran)")
    print(f"non-200 answers:              {len(failures)}")
    print(f"reload command took:          {returned - started:.2f} s (new replicas started and ready)")
    print(f"first answer from v2 after:   {first_v2 - started:.2f} s")
    print(f"last answer from v1 after:    {last_v1 - started:.2f} s  (switch-over: all traffic on v2 from here)")
    print(f"v1 and v2 answers overlapped: {max(0.0, last_v1 - first_v2) * 1000:.1f} ms")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
