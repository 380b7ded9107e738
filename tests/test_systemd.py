"""sd_notify through a real datagram socket bound by the test."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator

import pytest

from cortexd.daemon.systemd import (
    Notifier,
    child_env,
    monotonic_usec,
    parse_watchdog_interval,
    status_line,
)


@pytest.fixture
def notify_sock(tmp_path: os.PathLike[str]) -> Iterator[tuple[socket.socket, str]]:
    path = os.path.join(str(tmp_path), "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode("utf-8")
    return dict(line.split("=", 1) for line in data.split("\n"))


def _nothing_pending(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


def test_ready_status_stopping(notify_sock: tuple[socket.socket, str]) -> None:
    sock, path = notify_sock
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready("2 APIs: 2 live")
    assert _recv(sock) == {"READY": "1", "STATUS": "2 APIs: 2 live"}
    n.status("2 APIs: 1 live, 1 updating")
    assert _recv(sock) == {"STATUS": "2 APIs: 1 live, 1 updating"}
    n.stopping()
    assert _recv(sock) == {"STOPPING": "1", "STATUS": "stopping"}
    assert _nothing_pending(sock)


def test_reloading_carries_monotonic_usec(notify_sock: tuple[socket.socket, str]) -> None:
    sock, path = notify_sock
    n = Notifier({"NOTIFY_SOCKET": path})
    before = monotonic_usec()
    n.reloading("reloading")
    after = monotonic_usec()
    msg = _recv(sock)
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    n.ready("1 API: 1 live")
    assert _recv(sock)["READY"] == "1"


def test_abstract_socket(notify_sock: tuple[socket.socket, str]) -> None:
    name = f"cortexd-test-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert _recv(sock) == {"WATCHDOG": "1"}
    finally:
        sock.close()


def test_status_text_cannot_inject_and_is_utf8(notify_sock: tuple[socket.socket, str]) -> None:
    sock, path = notify_sock
    n = Notifier({"NOTIFY_SOCKET": path})
    n.status("api “iris” failed\nREADY=1")
    assert _recv(sock) == {"STATUS": "api “iris” failed READY=1"}


def test_no_notify_socket_sends_nothing(notify_sock: tuple[socket.socket, str]) -> None:
    sock, _ = notify_sock
    n = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    n.ready("x")
    n.reloading("x")
    n.status("x")
    n.watchdog()
    n.stopping()
    n.extend_timeout(10)
    assert n.watchdog_interval() is None
    assert _nothing_pending(sock)


def test_missing_socket_path_is_not_fatal(tmp_path: os.PathLike[str]) -> None:
    n = Notifier({"NOTIFY_SOCKET": os.path.join(str(tmp_path), "absent.sock")})
    assert not n.enabled
    n.ready("x")  # no exception


def test_peer_gone_after_connect_is_not_fatal(notify_sock: tuple[socket.socket, str]) -> None:
    sock, path = notify_sock
    n = Notifier({"NOTIFY_SOCKET": path})
    sock.close()
    os.unlink(path)
    n.watchdog()
    n.watchdog()  # second failure takes the quiet path


def test_watchdog_interval_through_notifier(notify_sock: tuple[socket.socket, str]) -> None:
    _, path = notify_sock
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}
    assert Notifier(env, pid=4242).watchdog_interval() == 15.0
    assert Notifier(env, pid=4243).watchdog_interval() is None


def test_extend_timeout(notify_sock: tuple[socket.socket, str]) -> None:
    sock, path = notify_sock
    Notifier({"NOTIFY_SOCKET": path}).extend_timeout(90)
    assert _recv(sock) == {"EXTEND_TIMEOUT_USEC": "90000000"}


@pytest.mark.parametrize(
    ("env", "pid", "expected"),
    [
        ({}, 1, None),
        ({"WATCHDOG_USEC": "30000000"}, 1, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 1, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, 1, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, 1, None),
        ({"WATCHDOG_USEC": "500000"}, 1, 0.25),
        ({"WATCHDOG_USEC": "0"}, 1, None),
        ({"WATCHDOG_USEC": "-5"}, 1, None),
        ({"WATCHDOG_USEC": "soon"}, 1, None),
        ({"WATCHDOG_USEC": ""}, 1, None),
    ],
)
def test_parse_watchdog_interval(env: dict[str, str], pid: int, expected: float | None) -> None:
    assert parse_watchdog_interval(env, pid) == expected


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({}, "0 APIs"),
        ({"a": "live"}, "1 API: 1 live"),
        ({"a": "creating", "b": "live", "c": "live"}, "3 APIs: 2 live, 1 creating"),
        (
            {"a": "error", "b": "updating", "c": "compute unavailable", "d": "weird", "e": "live"},
            "5 APIs: 1 live, 1 updating, 1 compute unavailable, 1 error, 1 weird",
        ),
        ({"a": "error (out of memory)", "b": "stopped"}, "2 APIs: 1 error (out of memory), 1 stopped"),
    ],
)
def test_status_line(statuses: dict[str, str], expected: str) -> None:
    assert status_line(statuses) == expected


def test_child_env_strips_systemd_only_variables() -> None:
    env = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "INVOCATION_ID": "abc",
    }
    assert child_env(env) == {"PATH": "/usr/bin", "INVOCATION_ID": "abc"}
