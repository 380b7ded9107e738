"""A real daemon talking to systemd's notify socket, and stopping gracefully (issue 5, SPEC 6).

The test binds the AF_UNIX datagram socket systemd would (NOTIFY_SOCKET), with SO_PASSCRED
so every message carries the sender's pid, as systemd sees it with NotifyAccess=main.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest

from tests.daemon_harness import Client, Daemon, pid_alive, wait_for, write_project

pytestmark = pytest.mark.slow

PROJECT = """\
- kind: deployment
  name: sd

- kind: api
  name: echo
  python:
    predictor: echo.py
  compute:
    cpu: 100m
"""

# With "hold", the request stays in the replica until that file exists: requests can be kept
# in flight for as long as a test needs, without sleeping for a guessed time.
ECHO = {
    "echo.py": """\
        import os
        import time

        def predict(sample, metadata):
            hold = sample.get("hold")
            deadline = time.monotonic() + 120
            while hold and not os.path.exists(hold) and time.monotonic() < deadline:
                time.sleep(0.01)
            return sample
    """,
}

WATCHDOG_USEC = 2_000_000
STATUS_SUMMARY = re.compile(r"^\d+ APIs?(: \d+ [a-z ()]+(, \d+ [a-z ()]+)*)?$")


@dataclass
class Message:
    at: float                 # time.monotonic() when received
    pid: int                  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]


class NotifySocket:
    """Binds a notify socket and records what arrives, on a reader thread."""

    def __init__(self, path: str, port: int) -> None:
        self.path = path
        self.port = port
        self.messages: list[Message] = []
        self.listening_at_ready: bool | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        creds = struct.calcsize("iII")
        while not self._stop.is_set():
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:creds])[0]
            fields = dict(line.split("=", 1) for line in data.decode("utf-8").splitlines() if "=" in line)
            if fields.get("READY") == "1" and self.listening_at_ready is None:
                # Checked the moment READY arrives: the proxy must already accept connections.
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    self.listening_at_ready = True
                except OSError:
                    self.listening_at_ready = False
            self.messages.append(Message(at, pid, fields))

    def with_field(self, key: str, value: str | None = None, after: int = 0) -> list[tuple[int, Message]]:
        return [(i, m) for i, m in enumerate(self.messages) if i >= after and key in m.fields
                and (value is None or m.fields[key] == value)]

    def wait(self, key: str, value: str | None = None, after: int = 0, timeout: float = 30.0,
             what: str | None = None) -> tuple[int, Message]:
        found = wait_for(lambda: self.with_field(key, value, after), timeout, 0.02,
                         what=what or f"{key}={value or '*'} on the notify socket")
        return found[0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[str]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="cortexd-sd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(tmp_path: Any, short_dir: str, env: dict[str, str]) -> tuple[Daemon, NotifySocket]:
    project = write_project(str(tmp_path / "p"), PROJECT, ECHO)
    d = Daemon(project, str(tmp_path / "d"), env=env)
    notify = NotifySocket(os.path.join(short_dir, "notify"), d.port)
    d.env["NOTIFY_SOCKET"] = notify.path
    d.start()
    return d, notify


def test_ready_status_watchdog_reloading_and_stopping(tmp_path, short_dir) -> None:
    d, notify = start(tmp_path, short_dir, {"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        assert d.proc is not None
        # READY=1 once the proxy listens, with a one-line summary.
        _, ready = notify.wait("READY", "1")
        assert notify.listening_at_ready is True
        assert STATUS_SUMMARY.match(ready.fields["STATUS"]), ready.fields
        notify.wait("STATUS", "1 API: 1 live", what="STATUS=1 API: 1 live")

        # WATCHDOG=1 every half of WATCHDOG_USEC, from the main loop.
        pings = wait_for(lambda: (w := notify.with_field("WATCHDOG", "1")) and len(w) >= 7 and w, 30, 0.05,
                         what="seven WATCHDOG=1")
        gaps = [b.at - a.at for (_, a), (_, b) in pairwise(pings)]
        assert 0.7 <= statistics.median(gaps) <= 1.3, gaps
        # A gap as long as WATCHDOG_USEC would get the service killed by systemd.
        assert max(gaps) < 0.9 * WATCHDOG_USEC / 1e6, gaps

        # `cortexd reload`: RELOADING=1 with MONOTONIC_USEC, then READY=1.
        mark = len(notify.messages)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        out = d.cli("reload")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert out.returncode == 0, out.stdout + out.stderr
        i_reloading, reloading = notify.wait("RELOADING", "1", after=mark)
        assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
        _, ready = notify.wait("READY", "1", after=i_reloading + 1, what="READY=1 after RELOADING=1")
        assert STATUS_SUMMARY.match(ready.fields["STATUS"]), ready.fields

        # SIGHUP is a reload too.
        mark = len(notify.messages)
        d.signal(signal.SIGHUP)
        i_reloading, _ = notify.wait("RELOADING", "1", after=mark)
        notify.wait("READY", "1", after=i_reloading + 1, what="READY=1 after the SIGHUP reload")

        # SIGTERM: STOPPING=1, exit 0.
        mark = len(notify.messages)
        d.signal(signal.SIGTERM)
        notify.wait("STOPPING", "1", after=mark)
        assert d.proc.wait(60) == 0, d.stderr()

        # Every periodic or READY status is the summary; only the daemon itself spoke.
        for m in notify.messages:
            if "STATUS" in m.fields and "RELOADING" not in m.fields and "STOPPING" not in m.fields:
                assert STATUS_SUMMARY.match(m.fields["STATUS"]), m.fields
        assert {m.pid for m in notify.messages} == {d.proc.pid}
    finally:
        d.kill()
        notify.close()


def test_no_watchdog_when_watchdog_pid_is_another_process(tmp_path, short_dir) -> None:
    # WATCHDOG_PID names the process systemd watches; inherited by someone else, it is not ours.
    d, notify = start(tmp_path, short_dir, {"WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"})
    try:
        _, ready = notify.wait("READY", "1")
        notify.wait("STATUS", "1 API: 1 live", what="STATUS=1 API: 1 live")
        # Absence can only be observed over time: watch for 2.5 times the ping interval it would have.
        window_end = ready.at + 2.5 * WATCHDOG_USEC / 2 / 1e6
        wait_for(lambda: time.monotonic() > window_end, 10, 0.05, what="the observation window")
        assert not notify.with_field("WATCHDOG"), [m.fields for m in notify.messages]
        assert d.stop() == 0
        assert notify.with_field("STOPPING", "1")
        assert not notify.with_field("WATCHDOG")
    finally:
        d.kill()
        notify.close()


def test_sigterm_finishes_every_request_in_flight_and_queued(tmp_path, short_dir) -> None:
    project = write_project(str(tmp_path / "p"), PROJECT.replace("cpu: 100m", "cpu: 100m\n    min_replicas: 2"), ECHO)
    d = Daemon(project, str(tmp_path / "d")).start()
    try:
        pids = d.replica_pids("echo")
        assert len(pids) == 2
        gate = os.path.join(short_dir, "release")
        results: dict[int, tuple[int, Any]] = {}

        def call(n: int) -> None:
            r = Client(d.port).post("/sd/echo", {"n": n, "hold": gate})
            results[n] = (r.status, r.json())

        threads = [threading.Thread(target=call, args=(n,)) for n in range(5)]
        for t in threads:
            t.start()
        wait_for(lambda: d.get("echo")["queue"] == {"in_flight": 2, "queued": 3}, 20, 0.02,
                 what="two requests running and three queued")
        d.signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", d.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        # Draining: no new connections, the held requests still running, the daemon still up.
        wait_for(refused, 20, 0.02, what="the proxy to stop accepting")
        assert d.proc is not None and d.proc.poll() is None and not results

        open(gate, "w").close()
        for t in threads:
            t.join(30)
        assert results == {n: (200, {"n": n, "hold": gate}) for n in range(5)}
        assert d.proc.wait(60) == 0, d.stderr()
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 10, what=f"replica {pid} to exit")
        assert not os.path.exists(os.path.join(d.runtime_dir, "control.sock"))
    finally:
        open(os.path.join(short_dir, "release"), "w").close()
        d.kill()
