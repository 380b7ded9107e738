"""Starting a real `cortexd serve` for integration tests, and talking to it over real HTTP.

Every wait here is on a condition with a deadline; nothing sleeps a fixed time to hope.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cortexd import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Never(AssertionError):
    """Raised by a condition that can no longer come true (the daemon exited): wait_for gives
    up at once instead of waiting out its timeout."""


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Never:
            raise
        except Exception as exc:  # a daemon still starting refuses connections
            last_exc = exc
        time.sleep(interval)
    suffix = f" (last error: {last_exc})" if last_exc else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{suffix}")


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A keep-alive HTTP client for one thread."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        if isinstance(body, str):
            body = body.encode()
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                all_headers = {"Content-Type": "application/json", **(headers or {})}
                self.conn.request(method, path, body=body, headers=all_headers)
                resp = self.conn.getresponse()
                data = resp.read()
                result = Response(resp.status, data, {k.lower(): v for k, v in resp.getheaders()})
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return result
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed between requests: reconnect once.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post(self, path: str, body: Any) -> Response:
        return self.request("POST", path, body if isinstance(body, (bytes, str)) else json.dumps(body))

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Load:
    """Client threads posting to `paths` in turn while the `with` block runs (bounded in count and
    time). `results` holds (time answered, path, status, body) in the order answered.

    body(path, n) is the body of the n-th request (n counts across all threads); entering waits
    for more than `started` answers, so the load is flowing when the block begins.
    """

    def __init__(self, port: int, paths: list[str], body: Callable[[str, int], Any] = lambda path, n: {},
                 threads: int = 2, started: int = 20) -> None:
        self.port = port
        self.paths = paths
        self.body = body
        self.started = started
        self.results: list[tuple[float, str, int, bytes]] = []
        self.stop_event = threading.Event()
        self.numbers = itertools.count()  # next() on it is atomic: each request its own n
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        c = Client(self.port)
        deadline = time.monotonic() + 240
        for _ in range(200_000):
            if self.stop_event.is_set() or time.monotonic() >= deadline:
                break
            n = next(self.numbers)
            path = self.paths[n % len(self.paths)]
            r = c.post(path, self.body(path, n))
            self.results.append((time.monotonic(), path, r.status, r.body))
        c.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        try:
            wait_for(lambda: len(self.results) > self.started, 20, what="load to start")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join()

    def statuses(self, path: str | None = None) -> Counter[int]:
        """How many answers had each status (to requests to `path`, or to all)."""
        return Counter(s for _, p, s, _ in self.results if path is None or p == path)

    def count(self) -> int:
        return len(self.results)


class Daemon:
    """A real `cortexd serve` on a project folder, on a free loopback port."""

    def __init__(self, project: str, base: str, env: dict[str, str] | None = None, args: list[str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.preexec = preexec  # run in the daemon's process before exec (e.g. setrlimit)
        self.project = project
        self.base = base
        self.port = free_port()
        self.runtime_dir = os.path.join(base, "run")
        self.state_dir = os.path.join(base, "state")
        self.log_dir = os.path.join(base, "log")
        self.env = {**os.environ, **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = os.path.join(base, "daemon.stderr")

    def start(self, wait_live: bool = True, timeout: float = 60.0) -> Daemon:
        os.makedirs(self.base, exist_ok=True)
        stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "cortexd", "serve",
                "--config", os.path.join(self.project, "cortex.yaml"),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--runtime-dir", self.runtime_dir, "--state-dir", self.state_dir, "--log-dir", self.log_dir,
                *self.args,
            ],
            stdout=stderr,
            stderr=stderr,
            env=self.env,
            cwd=self.base,
            preexec_fn=self.preexec,
        )
        stderr.close()
        wait_for(self._listening, timeout=30, what="the daemon to listen")
        if wait_live:
            self.wait_all_live(timeout)
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise Never(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            pass
        return os.path.exists(os.path.join(self.runtime_dir, "control.sock"))

    def stderr(self) -> str:
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def control(self, request: dict[str, Any]) -> Any:
        return cli.call(self.runtime_dir, request)

    def get(self, api: str | None = None) -> Any:
        return self.control({"cmd": "get", "api": api})

    def status(self, api: str) -> str:
        return self.get(api)["status"]

    def wait_status(self, api: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(lambda: (v := self.get(api))["status"] == status and v, timeout, what=f"{api} to be {status}")

    def wait_all_live(self, timeout: float = 60.0) -> None:
        wait_for(lambda: all(a["status"] == "live" for a in self.get()["apis"]), timeout, 0.1, what="all APIs live")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cortexd", *args],
            capture_output=True, text=True, timeout=timeout,
            env={**self.env, "CORTEXD_RUNTIME_DIR": self.runtime_dir},
        )

    def client(self) -> Client:
        return Client(self.port)

    def replica_pids(self, api: str) -> list[int]:
        return [r["pid"] for r in self.get(api)["replicas"] if r["pid"]]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.stderr()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def write_project(root: str, yaml_text: str, files: dict[str, str]) -> str:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "cortex.yaml"), "w") as f:
        f.write(textwrap.dedent(yaml_text))
    for name, content in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(content))
    return root


@contextlib.contextmanager
def http_server(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server on a free port, each request answered by `handler` on its own
    thread; yields the base URL (http://127.0.0.1:PORT). Shut down after, without waiting for
    handlers still running (a test's slow or endless answers)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves the files under `directory` (functools.partial it in) without a log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
