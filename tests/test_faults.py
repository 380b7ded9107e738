"""The fault suite: each fault a careless or hostile user caused, reproduced against a real
daemon, and what the user sees after it is repaired (status codes, `get`, /readyz, /healthz)."""

from __future__ import annotations

import glob
import http.server
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon_harness import Client, Daemon, Load, http_server, pid_alive, wait_for, write_project

pytestmark = pytest.mark.slow

FAULTY = """
import sys, time

def predict(sample, metadata):
    if isinstance(sample, dict):
        if sample.get("exit"):
            sys.exit(3)
        if sample.get("interrupt"):
            raise KeyboardInterrupt()
        if sample.get("hang"):
            time.sleep(3600)
        if sample.get("deep"):
            value = 1
            for _ in range(990):
                value = [value]
            return value
        if "sleep" in sample:
            time.sleep(sample["sleep"])
    return sample
"""

FAULTY_YAML = """
- kind: deployment
  name: f
- kind: api
  name: echo
  python:
    predictor: faulty.py
  compute:
    min_replicas: 2
    cpu: 100m
- kind: api
  name: sleepy
  python:
    predictor: faulty.py
  compute:
    cpu: 100m
"""


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("faulty")
    d = Daemon(write_project(str(base / "p"), FAULTY_YAML, {"faulty.py": FAULTY}), str(base / "d"),
               args=["--request-timeout", "3"]).start()
    yield d
    assert d.stop() == 0, d.stderr()


def wait_serving(d: Daemon, path: str, within: float) -> float:
    """Seconds until `path` answers 200 again (a fresh connection per try)."""
    started = time.monotonic()
    wait_for(lambda: Client(d.port, timeout=10).post(path, {"ok": 1}).status == 200, within, 0.1,
             what=f"{path} to serve again")
    return time.monotonic() - started


def test_nested_json_and_exits_in_predict_never_wedge_a_replica(faulty: Daemon) -> None:
    pids = sorted(faulty.replica_pids("echo"))
    c = faulty.client()
    for _ in range(100):
        r = c.post("/f/echo", b"[" * 5000)
        assert r.status == 400 and "nesting" in r.json()["error"], r.body
    for body, says in (({"deep": True}, "cannot be encoded as JSON"), ({"exit": True}, "SystemExit"),
                       ({"interrupt": True}, "KeyboardInterrupt")):
        r = c.post("/f/echo", body)
        assert r.status == 500 and says in r.json()["error"], r.body
    statuses = [c.post("/f/echo", {"n": n}).status for n in range(1000)]
    assert statuses == [200] * 1000
    assert sorted(faulty.replica_pids("echo")) == pids  # nothing had to be replaced
    view = faulty.get("echo")
    assert view["status"] == "live" and view["ready"] == 2


@pytest.mark.parametrize("fault", ["hang", "sigstop"])
def test_hung_or_stopped_replica_is_replaced(faulty: Daemon, fault: str) -> None:
    before = set(faulty.replica_pids("echo"))
    c = Client(faulty.port)
    if fault == "hang":
        r = c.post("/f/echo", {"hang": True})
    else:
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGSTOP)
        # Both replicas get a request: the stopped one cannot answer within the timeout.
        results: list[int] = []
        def call() -> None:
            results.append(Client(faulty.port).post("/f/echo", {"sleep": 0.5}).status)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200, 504], results
        r = None
    if r is not None:
        assert r.status == 504 and "request timeout (3s)" in r.json()["error"], r.body
    faulted_at = time.monotonic()
    took = wait_serving(faulty, "/f/echo", 3 + 5)
    wait_for(lambda: faulty.get("echo")["ready"] == 2 and len(before & set(faulty.replica_pids("echo"))) == 1,
             20, 0.1, what="the replacement replica")
    view = faulty.get("echo")
    assert view["status"] == "live"
    assert "did not answer within the request timeout (3s)" in view["last_error"], view
    assert view["last_error_at"] and view["last_error_at"][:4].isdigit()
    gone = (before - set(faulty.replica_pids("echo"))).pop()
    wait_for(lambda: not pid_alive(gone), 10, what="the hung replica to be killed")
    assert faulty.client().get("/readyz").status == 200
    print(f"\n{fault}: serving again {took:.2f}s after the fault; replaced in {time.monotonic() - faulted_at:.2f}s")


def test_kill_9_of_every_replica_under_load_fails_no_request(faulty: Daemon) -> None:
    with Load(faulty.port, ["/f/echo"], lambda path, n: {"sleep": 0.005, "n": n}, threads=4, started=50) as load:
        victims = faulty.replica_pids("echo")
        killed_at = time.monotonic()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: faulty.get("echo")["ready"] == 2 and not set(victims) & set(faulty.replica_pids("echo")),
                 30, 0.1, what="replacements")
        recovered = time.monotonic() - killed_at
        before = load.count()
        wait_for(lambda: load.count() > before + 50, 20, what="load after the replacements")
    assert set(load.statuses()) == {200}, load.statuses()
    assert "killed by signal 9" in faulty.get("echo")["last_error"]
    print(f"\nkill -9 of both replicas: replaced in {recovered:.2f}s, {load.count()} requests, all 200")


def test_latency_has_sub_millisecond_resolution(faulty: Daemon) -> None:
    c = faulty.client()
    for _ in range(300):
        assert c.post("/f/sleepy", {"sleep": 0.0003}).status == 200
    p50 = faulty.get("sleepy")["metrics"]["p50_ms"]
    # The event loop's clock would give whole milliseconds (0.0 or 1.0); a 0.3 ms sleep
    # plus the round trip lies strictly between.
    assert p50 >= 0.3 and p50 != round(p50), p50


SLOW_YAML = """
- kind: deployment
  name: s
- kind: api
  name: fast
  python:
    predictor: echo.py
- kind: api
  name: slow
  onnx:
    model: {url}/model.onnx
"""


class _Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        for _ in range(300):  # a byte every second, for at most five minutes
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(1.0)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def slow_host_project(tmp_path: Any) -> Iterator[str]:
    """A project whose API "slow" fetches its model from a host that trickles it (and "fast" needs nothing)."""
    with http_server(_Trickle) as url:
        yield write_project(str(tmp_path / "p"), SLOW_YAML.format(url=url),
                            {"echo.py": "def predict(sample, metadata):\n    return sample\n"})


def test_a_slow_model_host_delays_only_its_own_api_and_never_sigterm(tmp_path: Any, slow_host_project: str) -> None:
    started = time.monotonic()
    d = Daemon(slow_host_project, str(tmp_path / "d"), args=["--prepare-timeout", "6"]).start(wait_live=False)
    d.wait_status("fast", "live", timeout=15)
    assert time.monotonic() - started < 15
    assert d.client().post("/s/fast", {"x": 1}).json() == {"x": 1}
    slow = d.get("slow")
    assert slow["status"] == "creating" and slow["reason"] == "fetching the model", slow
    r = d.client().post("/s/slow", {})
    assert r.status == 503 and "creating" in r.json()["error"]
    view = d.wait_status("slow", "error", timeout=20)
    assert "not ready to deploy within 6s (still fetching the model)" in view["last_error"], view
    assert d.client().get("/healthz").status == 200
    stopping = time.monotonic()
    assert d.stop(timeout=10) == 0
    assert time.monotonic() - stopping < 2.5


def test_sigterm_during_a_model_fetch_is_honoured_at_once(tmp_path: Any, slow_host_project: str) -> None:
    d = Daemon(slow_host_project, str(tmp_path / "d")).start(wait_live=False)
    d.wait_status("fast", "live", timeout=15)
    stopping = time.monotonic()
    assert d.stop(timeout=10) == 0
    assert time.monotonic() - stopping < 2.5


BROKEN_YAML = """
- kind: deployment
  name: b
- kind: api
  name: good
  python:
    predictor: echo.py
- kind: api
  name: broken
  python:
    predictor: broken.py
"""


def test_removing_an_api_whose_predictor_never_loaded(tmp_path: Any) -> None:
    project = write_project(str(tmp_path / "p"), BROKEN_YAML, {
        "echo.py": "def predict(sample, metadata):\n    return sample\n",
        "broken.py": "def init(metadata):\n    raise RuntimeError('no weights')\n\n"
                     "def predict(sample, metadata):\n    return 1\n",
    })
    d = Daemon(project, str(tmp_path / "d")).start(wait_live=False)
    try:
        d.wait_status("good", "live")
        d.wait_status("broken", "error", timeout=60)
        assert d.client().get("/readyz").status == 503
        with open(os.path.join(project, "cortex.yaml"), "w") as f:
            f.write(BROKEN_YAML.split("- kind: api\n  name: broken")[0])
        out = d.cli("reload", timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_for(lambda: [a["name"] for a in d.get()["apis"]] == ["good"], 10, what="broken to be gone")
        assert d.client().get("/readyz").status == 200
        assert d.client().post("/b/broken", {}).status == 404
    finally:
        assert d.stop() == 0


def test_a_corrupt_tracker_db_is_moved_aside_and_counted_afresh(tmp_path: Any) -> None:
    project = write_project(str(tmp_path / "p"), """
        - kind: deployment
          name: t
        - kind: api
          name: cls
          python:
            predictor: echo.py
          tracker:
            model_type: classification
    """, {"echo.py": "def predict(sample, metadata):\n    return sample\n"})
    base = tmp_path / "d"
    (base / "state").mkdir(parents=True)
    (base / "state" / "tracker.db").write_bytes(b"this is not a database" * 100)
    d = Daemon(project, str(base)).start()
    try:
        assert glob.glob(str(base / "state" / "tracker.db.corrupt-*"))
        listing = d.get()
        assert any("could not be read" in w and "moved it to" in w for w in listing["warnings"]), listing
        assert d.client().post("/t/cls", '"a"').status == 200
        wait_for(lambda: d.get("cls")["tracker"]["total"]["counts"] == {"a": 1}, 10, what="the prediction tracked")
        metrics = d.client().get("/metrics").body.decode()
        assert "cortexd_warnings 1.0" in metrics
        os.unlink(base / "state" / "tracker.db")  # deleted while running: recreated, nothing lost
        wait_for(lambda: os.path.exists(base / "state" / "tracker.db") and any(
            "deleted while cortexd ran" in w for w in d.get()["warnings"]), 10, what="tracker.db to be recreated")
    finally:
        assert d.stop() == 0
    d = Daemon(project, str(base)).start()
    try:
        assert d.get("cls")["tracker"]["total"]["counts"] == {"a": 1}
    finally:
        assert d.stop() == 0


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))


def test_slow_header_clients_under_a_low_file_limit(tmp_path: Any) -> None:
    project = write_project(str(tmp_path / "p"), FAULTY_YAML.replace("min_replicas: 2", "min_replicas: 1"),
                            {"faulty.py": FAULTY})
    d = Daemon(project, str(tmp_path / "d"), args=["--header-timeout", "2"], preexec=_low_file_limit).start()
    sockets: list[socket.socket] = []
    try:
        early = Client(d.port)
        assert early.post("/f/echo", {"a": 1}).status == 200
        for _ in range(300):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", d.port))
                s.sendall(b"POST /f/echo HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            except OSError:
                s.close()
                continue
            sockets.append(s)
        assert early.post("/f/echo", {"a": 2}).status == 200  # connections already open are untouched
        # Past the header timeout the slow clients are closed and new clients are served.
        took = wait_serving(d, "/f/echo", 2 + 8)
        health = d.client().get("/healthz")
        assert health.status == 200 and health.json()["main_loop_tick_age_s"] < 5
        for s in sockets:  # every slow client was answered (408 or 503) or closed
            try:
                data = s.recv(64)
            except ConnectionResetError:
                data = b""
            assert data == b"" or data.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), data
        print(f"\n300 slow-header clients under a 160-file limit: new clients served again after {took:.2f}s")
    finally:
        for s in sockets:
            s.close()
        assert d.stop() == 0


def test_a_replica_that_cannot_be_started_does_not_stop_the_loop(tmp_path: Any) -> None:
    project = write_project(str(tmp_path / "p"), FAULTY_YAML.replace("min_replicas: 2", "min_replicas: 1"),
                            {"faulty.py": FAULTY})
    d = Daemon(project, str(tmp_path / "d")).start()
    try:
        for snapshot in glob.glob(os.path.join(d.state_dir, "snapshots", "*")):
            os.system(f"rm -rf '{snapshot}'")
        os.kill(d.replica_pids("echo")[0], signal.SIGKILL)
        view = d.wait_status("echo", "error", timeout=30)
        assert "cannot start a replica" in view["last_error"], view
        health = d.client().get("/healthz")
        assert health.status == 200, health.body
        out = d.cli("reload", "--force", "echo", timeout=60)  # a new snapshot: serving again
        assert out.returncode == 0, out.stdout + out.stderr
        assert d.client().post("/f/echo", {"a": 1}).status == 200
    finally:
        assert d.stop() == 0


SLOW_INIT = """
import time

def init(metadata):
    time.sleep(120)

def predict(sample, metadata):
    return "slow"
"""


def test_a_slow_init_never_blocks_another_apis_reload(tmp_path: Any) -> None:
    quick_only = """
        - kind: deployment
          name: r
        - kind: api
          name: quick
          python:
            predictor: quick.py
    """
    project = write_project(str(tmp_path / "p"), quick_only, {
        "quick.py": "def predict(sample, metadata):\n    return 'v1'\n", "slow.py": SLOW_INIT,
    })
    d = Daemon(project, str(tmp_path / "d")).start()
    try:
        with open(os.path.join(project, "cortex.yaml"), "a") as f:
            f.write("- kind: api\n  name: slow\n  python:\n    predictor: slow.py\n")
        first = subprocess.Popen([sys.executable, "-m", "cortexd", "reload"],
                                 env={**d.env, "CORTEXD_RUNTIME_DIR": d.runtime_dir},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: d.get("slow")["replicas"], 20, what="the slow API's replica to start")
        with open(os.path.join(project, "quick.py"), "w") as f:
            f.write("def predict(sample, metadata):\n    return 'v2'\n")
        started = time.monotonic()
        out = d.cli("reload", timeout=60)
        took = time.monotonic() - started
        assert out.returncode == 0, out.stdout + out.stderr
        assert "quick: ok: now serving version 2" in out.stdout
        assert "slow: unchanged (an earlier reload is still deploying it)" in out.stdout
        assert took < 30, took  # not the slow init's 120 s
        assert d.client().post("/r/quick", {}).json() == "v2"
        assert first.poll() is None  # the first reload still waits for its own API
        first.kill()
        first.wait()
    finally:
        assert d.stop() == 0
