"""End to end: a real `cortexd serve`, real replica processes, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from tests.daemon_harness import Client, Daemon, Load, pid_alive, wait_for, write_project

pytestmark = pytest.mark.slow

PROJECT_YAML = """\
- kind: deployment
  name: shop

- kind: api
  name: module-form
  python:
    predictor: module_form.py
  metadata:
    scale: 2

- kind: api
  name: class-form
  endpoint: /custom/path/
  python:
    predictor: class_form.py
    config:
      greeting: hello

- kind: api
  name: slow
  python:
    predictor: slow.py

- kind: api
  name: broken
  python:
    predictor: broken.py
"""

FILES = {
    "module_form.py": """\
        import numpy as np

        state = {}

        def init(metadata):
            state["scale"] = metadata["scale"]

        def predict(sample, metadata):
            if sample.get("boom"):
                raise ValueError("boom requested")
            x = np.array(sample["x"], dtype=np.float32) * state["scale"]
            return {"doubled": x, "sum": np.float64(x.sum()), "count": np.int64(len(x)), "same": metadata is not None}
    """,
    "class_form.py": """\
        class PythonPredictor:
            def __init__(self, config):
                self.greeting = config["greeting"]

            def predict(self, payload):
                return f"{self.greeting} {payload['name']}"
    """,
    "slow.py": """\
        import time

        def predict(sample, metadata):
            time.sleep(sample.get("sleep", 0))
            return {"slept": sample.get("sleep", 0)}
    """,
    "broken.py": """\
        def init(metadata):
            raise RuntimeError("cannot open weights.bin")

        def predict(sample, metadata):
            return None
    """,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("serving")
    project = write_project(str(base / "project"), PROJECT_YAML, FILES)
    d = Daemon(project, str(base / "daemon"), args=["--request-timeout", "3", "--max-queue", "2", "--max-body", "64Ki"])
    d.start(wait_live=False)
    for api in ("module-form", "class-form", "slow"):
        d.wait_status(api, "live")
    yield d
    code = d.stop()
    assert code == 0, d.stderr()


def test_module_form_predicts_with_numpy_values_as_plain_json(daemon: Daemon) -> None:
    r = daemon.client().post("/shop/module-form", {"x": [1, 2, 3]})
    assert r.status == 200, r.body
    assert r.json() == {"doubled": [2.0, 4.0, 6.0], "sum": 12.0, "count": 3, "same": True}
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["access-control-allow-origin"] == "*"


def test_class_form_gets_config_and_custom_endpoint_is_normalised(daemon: Daemon) -> None:
    c = daemon.client()
    r = c.post("/custom/path", {"name": "ada"})
    assert (r.status, r.json()) == (200, "hello ada")
    assert c.post("/custom/path/", {"name": "bob"}).json() == "hello bob"


def test_get_endpoint_describes_the_api(daemon: Daemon) -> None:
    r = daemon.client().get("/shop/module-form")
    assert r.status == 200
    body = r.json()
    assert body["api"] == "module-form" and body["status"] == "live"
    assert "POST /shop/module-form" in body["usage"]


def test_body_that_is_not_json_is_400_saying_why(daemon: Daemon) -> None:
    r = daemon.client().post("/shop/module-form", b"{not json")
    assert r.status == 400
    assert "not valid JSON" in r.json()["error"]


def test_predictor_exception_is_500_with_message_and_traceback_in_log(daemon: Daemon) -> None:
    r = daemon.client().post("/shop/module-form", {"boom": True})
    assert r.status == 500
    assert r.json()["error"] == "prediction failed: ValueError: boom requested"
    log_file = os.path.join(daemon.log_dir, "module-form.log")
    wait_for(lambda: "Traceback" in open(log_file).read() and "boom requested" in open(log_file).read(),
             10, what="the traceback in the API log")


def test_debug_logs_the_sample_and_prediction(daemon: Daemon) -> None:
    r = daemon.client().post("/custom/path?debug=true", {"name": "debugged-name"})
    assert r.status == 200
    out = daemon.cli("logs", "class-form")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: "debugged-name" in daemon.cli("logs", "class-form").stdout, 10, what="debug lines")
    text = daemon.cli("logs", "class-form").stdout
    assert "sample" in text and "prediction" in text and "hello debugged-name" in text


def test_body_over_the_limit_is_413(daemon: Daemon) -> None:
    r = daemon.client().post("/shop/module-form", json.dumps({"x": [1] * 40000}))
    assert r.status == 413
    assert "larger than the limit" in r.json()["error"]


def test_unknown_path_is_404_listing_nothing(daemon: Daemon) -> None:
    r = daemon.client().post("/shop/nope", {})
    assert r.status == 404
    body = r.json()
    assert set(body) == {"error"} and "module-form" not in body["error"]


def test_healthz(daemon: Daemon) -> None:
    assert daemon.client().get("/healthz").status == 200


def test_prediction_longer_than_timeout_is_504_and_replica_recovers(daemon: Daemon) -> None:
    c = daemon.client()
    started = time.monotonic()
    r = c.post("/shop/slow", {"sleep": 4.5})
    assert r.status == 504
    assert time.monotonic() - started < 4.4
    # The replica finishes its request, then serves again.
    wait_for(lambda: daemon.client().post("/shop/slow", {"sleep": 0}).status == 200, 15, 0.2,
             what="slow to serve again")


def test_queue_full_is_503_with_retry_after(daemon: Daemon) -> None:
    results: list[int] = []

    def call(sleep: float) -> None:
        results.append(Client(daemon.port).post("/shop/slow", {"sleep": sleep}).status)

    threads = [threading.Thread(target=call, args=(0.8,)) for _ in range(3)]  # 1 running + 2 queued
    for t in threads:
        t.start()
    wait_for(lambda: daemon.get("slow")["replicas"] and _queued(daemon) >= 2, 10, 0.02, what="a full queue")
    r = daemon.client().post("/shop/slow", {"sleep": 0})
    for t in threads:
        t.join()
    assert r.status == 503
    assert r.headers["retry-after"].isdigit()
    assert "queue is full" in r.json()["error"]
    assert results == [200, 200, 200]  # queued requests are served in turn, within the timeout


def _queued(daemon: Daemon) -> int:
    return daemon.get("slow")["queue"]["queued"]


def test_failing_init_puts_api_in_error_and_others_keep_serving(daemon: Daemon) -> None:
    view = daemon.wait_status("broken", "error", timeout=60)
    assert "cannot open weights.bin" in view["last_error"]
    assert "broken.py" in view["last_error"]
    r = daemon.client().post("/shop/broken", {})
    assert r.status == 503
    assert r.json()["status"] == "error"
    assert "retry-after" in r.headers
    assert daemon.client().post("/custom/path", {"name": "still"}).status == 200


def test_cli_get_json_has_the_spec_fields(daemon: Daemon) -> None:
    out = daemon.cli("get", "--json")
    assert out.returncode == 0, out.stderr
    apis = {a["name"]: a for a in json.loads(out.stdout)["apis"]}
    a = apis["module-form"]
    for key in ("name", "status", "endpoint", "requested", "ready", "last_error", "replicas", "metrics", "tracker"):
        assert key in a
    assert a["ready"] == 1 and a["requested"] == 1
    rep = a["replicas"][0]
    for key in ("id", "pid", "state", "gpus", "cpu_percent", "rss_bytes", "restarts"):
        assert key in rep
    assert a["metrics"]["requests"] >= 1 and a["metrics"]["2xx"] >= 1
    one = json.loads(daemon.cli("get", "class-form", "--json").stdout)
    assert one["name"] == "class-form" and one["endpoint"] == "/custom/path"


def test_cli_predict_and_unknown_api(daemon: Daemon, tmp_path) -> None:
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"name": "cli"}))
    out = daemon.cli("predict", "class-form", str(sample))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == "hello cli"
    bad = daemon.cli("predict", "missing", str(sample))
    assert bad.returncode == 1 and "no API named 'missing'" in bad.stderr


def test_cli_without_daemon_says_so(tmp_path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "cortexd", "get", "--runtime-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 3 and "no cortexd is running" in out.stderr


# -- processes: crashes, signals ------------------------------------------------------------

CRASH_YAML = """\
- kind: deployment
  name: crash

- kind: api
  name: echo
  python:
    predictor: echo.py
  compute:
    min_replicas: 2
"""

ECHO = {
    "echo.py": """\
        import time

        def predict(sample, metadata):
            time.sleep(sample.get("sleep", 0))
            return sample
    """,
}


def test_kill_9_of_a_replica_under_load_costs_at_most_one_request(tmp_path) -> None:
    d = Daemon(write_project(str(tmp_path / "p"), CRASH_YAML, ECHO), str(tmp_path / "d")).start()
    try:
        victim = d.get("echo")["replicas"][0]
        with Load(d.port, ["/crash/echo"], lambda path, n: {"sleep": 0.01, "n": n}, threads=4) as load:
            os.kill(victim["pid"], signal.SIGKILL)
            wait_for(lambda: (v := d.get("echo"))["ready"] == 2
                     and victim["id"] not in [r["id"] for r in v["replicas"]], 30, 0.1, what="a replacement replica")
            before = load.count()
            wait_for(lambda: load.count() > before + 20, 20, what="load after the replacement")
        failures = [s for _, _, s, _ in load.results if s != 200]
        assert len(failures) <= 1, failures
        view = d.get("echo")
        assert view["status"] == "live"
        assert sum(r["restarts"] for r in view["replicas"]) == 1
        assert "killed by signal 9" in view["last_error"]
    finally:
        assert d.stop() == 0


def test_sigterm_finishes_requests_in_flight_exits_0_and_leaves_no_replica(tmp_path) -> None:
    d = Daemon(write_project(str(tmp_path / "p"), CRASH_YAML, ECHO), str(tmp_path / "d")).start()
    pids = d.replica_pids("echo")
    assert len(pids) == 2
    result: dict[str, int] = {}

    def slow_call() -> None:
        result["status"] = Client(d.port).post("/crash/echo", {"sleep": 1.5}).status

    t = threading.Thread(target=slow_call)
    t.start()
    wait_for(lambda: d.get("echo")["queue"]["in_flight"] == 1, 10, 0.02, what="request in flight")
    d.signal(signal.SIGTERM)
    t.join(30)
    assert result.get("status") == 200
    assert d.proc is not None and d.proc.wait(30) == 0
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), 10, what=f"replica {pid} to exit")
    assert not os.path.exists(os.path.join(d.runtime_dir, "control.sock"))


def test_sigkill_of_the_daemon_takes_its_replicas_down(tmp_path) -> None:
    d = Daemon(write_project(str(tmp_path / "p"), CRASH_YAML, ECHO), str(tmp_path / "d")).start()
    pids = d.replica_pids("echo")
    d.kill()
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), 10, what=f"replica {pid} to die with the daemon")


def test_invalid_config_does_not_start(tmp_path) -> None:
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: x
        - kind: api
          name: a
          python:
            predictor: missing.py
          compute:
            min_replica: 1
    """, {})
    d = Daemon(project, str(tmp_path / "d"))
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "cortexd", "serve", "--config", os.path.join(project, "cortex.yaml"),
         "--port", str(d.port), "--runtime-dir", d.runtime_dir, "--state-dir", d.state_dir, "--log-dir", d.log_dir],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "missing.py" in out.stderr and "min_replicas" in out.stderr
