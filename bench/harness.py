"""Processes the benchmark drives: wrk runs, the servers under test, CPU accounting.

Every wait is on a condition with a deadline; every server started here is stopped by the
context manager that started it, even when a run fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
POST_LUA = os.path.join(BENCH_DIR, "post.lua")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Never(RuntimeError):
    """Raised by a condition that can no longer come true (the server exited, its API failed):
    wait_for gives up at once instead of waiting out its timeout."""


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Never:
            raise
        except Exception as exc:  # servers refuse connections while they start
            last = exc
        time.sleep(interval)
    suffix = f" (last error: {last})" if last else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


# -- wrk ---------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: int  # connect + read + write + timeout + non-2xx answers
    error_detail: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def parse_wrk(stdout: str) -> WrkResult:
    """The BENCH_RESULT line post.lua prints at the end of a wrk run."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line[len("BENCH_RESULT "):])
            lat = data["latency_us"]
            return WrkResult(
                requests=data["requests"],
                duration_s=data["duration_us"] / 1e6,
                errors=sum(data["errors"].values()),
                error_detail=data["errors"],
                p50_ms=lat["p50"] / 1000.0,
                p90_ms=lat["p90"] / 1000.0,
                p99_ms=lat["p99"] / 1000.0,
                max_ms=lat["max"] / 1000.0,
            )
    raise RuntimeError(f"wrk printed no result:\n{stdout[-2000:]}")


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does this)")
    return path


def run_wrk(url: str, body_file: str, connections: int, duration_s: int, timeout_s: int = 10,
            header_length: int | None = None) -> WrkResult:
    """One wrk thread (the machine is small: a second thread would take CPU from the server),
    `connections` keep-alive connections each posting the body back to back. wrk takes whole
    seconds only. header_length: the body is V2's binary form, its JSON header that long."""
    cmd = [
        wrk_path(), "-t1", f"-c{connections}", f"-d{int(duration_s)}s", f"--timeout={int(timeout_s)}s",
        "-s", POST_LUA, url,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30,
        env={**os.environ, "BENCH_BODY_FILE": body_file, "BENCH_HEADER_LENGTH": str(header_length or "")},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return parse_wrk(proc.stdout)


# -- CPU accounting ----------------------------------------------------------------------


@dataclass
class ProcessTree:
    """A server and its descendants: CPU seconds used, summed over all of them."""

    root_pid: int
    _seen: dict[int, psutil.Process] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.root_pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:  # keep Process objects: their identity survives pid reuse checks
            self._seen.setdefault(p.pid, p)
        return procs

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += t.user + t.system
        return total

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds (user + system) of each live process of the tree, by pid."""
        out: dict[int, float] = {}
        for p in self.processes():
            try:
                t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            out[p.pid] = t.user + t.system
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes()]


# -- servers -----------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    path: str  # the URL path to POST to
    proc: subprocess.Popen[bytes]
    tree: ProcessTree
    log_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # BENCH_CORTEXD_PATH: a folder holding another `cortexd` package to measure instead of
    # this checkout's (to compare two versions of the hot path on the same machine).
    roots = [p for p in (env.get("BENCH_CORTEXD_PATH"), REPO, env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(roots)
    # Same thread settings everywhere: onnxruntime sessions are made with 1 intra-op thread;
    # numpy's BLAS (used by nobody on the hot path) is kept to one thread too.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


@contextlib.contextmanager
def started_server(name: str, cmd: list[str], env: dict[str, str], cwd: str, log_path: str, port: int, path: str,
                   ready: Callable[[Server], bool], timeout: float, what: str, interval: float = 0.05
                   ) -> Iterator[Server]:
    """`cmd` started with its output in log_path, yielded as a Server once ready(server) (an
    exit first is an error with the log's tail); stopped after, even when the run fails."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=cwd)
    server = Server(name, port, path, proc, ProcessTree(proc.pid), log_path)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise Never(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
            return ready(server)

        wait_for(up, timeout, what, interval)
        yield server
    finally:
        _stop(proc)


@contextlib.contextmanager
def ceiling_server(model_path: str, workdir: str, replica_app: bool = False) -> Iterator[Server]:
    """bench/ceiling_server.py on a free port (or, with replica_app, cortexd's replica app on TCP)."""
    port = free_port()
    name = "replica-direct" if replica_app else "ceiling"
    cmd = [sys.executable, os.path.join(BENCH_DIR, "ceiling_server.py"), model_path, "--port", str(port)]
    if replica_app:
        cmd.append("--replica")
    with started_server(name, cmd, _env(), workdir, os.path.join(workdir, f"{name}-{port}.log"), port, "/predict",
                        lambda _: port_open(port), 60, f"the {name} server to listen") as server:
        yield server


def cortex_yaml(api: str, model_path: str, replicas: int, tracker: bool) -> str:
    """The project of one cortexd run: one ONNX API, its replica count pinned.

    min = max = init, so the autoscaler keeps the count the run asks for. cpu 500m:
    onnxruntime gets ceil(0.5) = 1 intra-op thread, and two replicas pass the admission
    check on a 2-core machine.
    """
    lines = [
        "- kind: deployment",
        "  name: bench",
        "",
        "- kind: api",
        f"  name: {api}",
        "  onnx:",
        f"    model: {model_path}",
    ]
    if tracker:
        lines += ["  tracker:", "    model_type: classification", "    key: label"]
    lines += [
        "  compute:",
        f"    min_replicas: {replicas}",
        f"    max_replicas: {replicas}",
        f"    init_replicas: {replicas}",
        "    cpu: 500m",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def cortexd_server(project: str, workdir: str, api: str, replicas: int, extra_env: dict[str, str] | None = None,
                   extra_args: list[str] | None = None) -> Iterator[Server]:
    """A real `cortexd serve` on the project folder, on a free loopback port, until its API is live."""
    from cortexd import cli

    port = free_port()
    base = os.path.join(workdir, f"cortexd-{port}")
    runtime_dir = os.path.join(base, "run")
    log_path = os.path.join(base, "daemon.log")
    os.makedirs(base, exist_ok=True)
    cmd = [
        sys.executable, "-m", "cortexd", "serve",
        "--config", os.path.join(project, "cortex.yaml"),
        "--host", "127.0.0.1", "--port", str(port),
        "--runtime-dir", runtime_dir,
        "--state-dir", os.path.join(base, "state"),
        "--log-dir", os.path.join(base, "log"),
        *(extra_args or []),
    ]
    env = {**_env(), "CORTEXD_LOG_LEVEL": "WARNING", **(extra_env or {})}

    def live(server: Server) -> bool:
        view = cli.call(runtime_dir, {"cmd": "get", "api": api})
        if view["status"] in ("error", "error (out of memory)", "compute unavailable"):
            raise Never(f"api {api} is {view['status']}: {view.get('reason') or view.get('last_error')}")
        if view["status"] == "live" and view["ready"] == replicas:
            server.path = view["endpoint"]
            return True
        return False

    with started_server(f"cortexd:{api}", cmd, env, base, log_path, port, "", live, 120,
                        f"cortexd's API {api} to be live with {replicas} replicas", interval=0.1) as server:
        yield server
