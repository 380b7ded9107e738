"""sd_notify for the daemon: READY / RELOADING / STOPPING / STATUS / WATCHDOG.

Sending goes through the `sdnotify` package, which connects a datagram socket to
``$NOTIFY_SOCKET`` (abstract ``@name`` addresses included: it maps ``@`` to ``\\0``).
Without ``NOTIFY_SOCKET`` every method is a no-op and nothing is sent, so the daemon
behaves the same in a terminal, in tests and under systemd.

The watchdog is deliberately not driven from a timer here: the main loop calls
`Notifier.watchdog()` itself, so a wedged loop stops petting it and systemd restarts us.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import sdnotify

log = logging.getLogger(__name__)

# Variables systemd hands to the main process only. Replicas must not inherit them:
# with NotifyAccess=main systemd would ignore a child's messages anyway, but a replica
# that sees WATCHDOG_USEC or NOTIFY_SOCKET may (through some library) start talking to it.
SYSTEMD_ONLY_ENV: tuple[str, ...] = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)

# Order in which statuses appear in the one-line summary (SPEC section 5); unknown
# statuses follow in alphabetical order.
_STATUS_ORDER: tuple[str, ...] = (
    "live",
    "creating",
    "updating",
    "compute unavailable",
    "error",
    "error (out of memory)",
    "error (out of GPU memory)",
    "stopping",
    "stopped",
)

# STATUS= is shown by `systemctl status`; keep it to one readable line.
_MAX_STATUS_CHARS = 200


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without the variables systemd meant for the main process only."""
    return {k: v for k, v in env.items() if k not in SYSTEMD_ONLY_ENV}


def status_line(statuses: Mapping[str, str]) -> str:
    """One-line summary of API statuses, e.g. ``"3 APIs: 2 live, 1 creating"``.

    `statuses` maps API name -> status. Pure; the order of groups is SPEC order.
    """
    n = len(statuses)
    head = f"{n} API" if n == 1 else f"{n} APIs"
    if n == 0:
        return head
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    known = [s for s in _STATUS_ORDER if s in counts]
    unknown = sorted(s for s in counts if s not in _STATUS_ORDER)
    return head + ": " + ", ".join(f"{counts[s]} {s}" for s in known + unknown)


def _one_line(text: str) -> str:
    # A newline would end the STATUS= assignment and start a new one (e.g. "READY=1"),
    # so a status text can never inject other notifications.
    flat = " ".join(text.split())
    if len(flat) > _MAX_STATUS_CHARS:
        flat = flat[: _MAX_STATUS_CHARS - 1] + "…"
    return flat


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd uses for MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def parse_watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked.

    Like sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be our pid (otherwise the
    variables were inherited from a parent that is the one being watched).
    """
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """sd_notify sender. Construct once in the daemon's main process.

    `env` defaults to `os.environ`, `pid` to `os.getpid()` (tests pass both).
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._pid = os.getpid() if pid is None else pid
        self._sd: sdnotify.SystemdNotifier | None = None
        self._send_failed = False
        address = self._env.get("NOTIFY_SOCKET", "")
        if not address:
            return
        # sdnotify reads the address from os.environ; when a test passes its own env,
        # present that address for the duration of the connect.
        saved = os.environ.get("NOTIFY_SOCKET")
        os.environ["NOTIFY_SOCKET"] = address
        try:
            # debug=True: let connect errors surface so we can log them once, instead of
            # sdnotify's default of swallowing everything silently.
            self._sd = sdnotify.SystemdNotifier(debug=True)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("NOTIFY_SOCKET=%s: cannot connect, not notifying systemd: %s", address, exc)
            self._sd = None
        finally:
            if saved is None:
                os.environ.pop("NOTIFY_SOCKET", None)
            else:
                os.environ["NOTIFY_SOCKET"] = saved

    @property
    def enabled(self) -> bool:
        """True when NOTIFY_SOCKET was set and could be connected."""
        return self._sd is not None

    def _send(self, *assignments: str) -> None:
        if self._sd is None:
            return
        message = "\n".join(assignments)
        # sdnotify encodes with latin-1; round-tripping through UTF-8 makes it send UTF-8
        # bytes (what systemd expects) for any status text instead of failing on "’".
        wire = message.encode("utf-8").decode("latin-1")
        try:
            self._sd.notify(wire)
        except OSError as exc:
            # systemd restarting its manager or a full socket buffer must never take the
            # daemon down; warn once, then stay quiet at debug level.
            if not self._send_failed:
                log.warning("sd_notify failed (%s); further failures logged at debug level", exc)
                self._send_failed = True
            else:
                log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        """READY=1 with a STATUS= line: startup finished, or a reload finished."""
        self._send("READY=1", f"STATUS={_one_line(status)}")

    def reloading(self, status: str) -> None:
        """RELOADING=1 with MONOTONIC_USEC (required by Type=notify-reload, harmless before)."""
        self._send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "stopping") -> None:
        """STOPPING=1: we are shutting down on our own or on SIGTERM."""
        self._send("STOPPING=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """STATUS=<one line> shown by `systemctl status cortexd`."""
        self._send(f"STATUS={_one_line(text)}")

    def extend_timeout(self, seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC: ask for more time while starting, reloading or stopping.

        Useful while large models load before READY=1; each call must come before the
        previous extension runs out.
        """
        self._send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog()` calls (half of WATCHDOG_USEC), or None.

        None when systemd did not ask for a watchdog or NOTIFY_SOCKET is absent.
        """
        if self._sd is None:
            return None
        return parse_watchdog_interval(self._env, self._pid)

    def watchdog(self) -> None:
        """WATCHDOG=1. Call it from the main loop only while the loop is healthy."""
        self._send("WATCHDOG=1")
