"""How the supervisor handles a replica that fails: load failures, crashes, lost or hung
replicas, memory. Each failure is counted against its slot (backoff), recorded as the API's
last_error with the time, and the replica is replaced while requests wait for it.

A mixin of the Supervisor (fleet/supervisor.py), which holds the state and the decisions
about what runs; this module holds the failure policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cortexd import protocol
from cortexd.daemon.fleet.events import ReplicaOverMemory
from cortexd.daemon.fleet.lifecycle import Lifecycle, Placer
from cortexd.daemon.fleet.state import DRAINING, STOPPING, ApiEntry, Generation, Replica
from cortexd.units import format_bytes

log = logging.getLogger("cortexd.supervisor")

# A predictor that fails to load this many times in a row puts its API in `error`.
LOAD_FAILURES_FOR_ERROR = 3
BACKOFF_FIRST_S = 0.0  # a replica that served and then died is replaced at once
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
OVERDUE_GRACE_S = 1.0  # a hung replica: SIGTERM, then SIGKILL this soon (it cannot drain)


@dataclass
class SupervisorSettings:
    stop_grace_s: float = STOP_GRACE_S
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    hold_requests_max_backoff_s: float = 5.0  # queued requests wait for a replacement starting sooner


def backoff_delay(failures: int, settings: SupervisorSettings) -> float:
    """Delay before restarting a slot after `failures` consecutive unexpected exits."""
    if failures <= 1:
        return BACKOFF_FIRST_S
    doublings: int = 2 ** (failures - 2)  # a non-negative exponent: an int (typeshed says Any)
    return min(settings.backoff_max_s, settings.backoff_base_s * doublings)


class Failures(Lifecycle):
    placer: Placer
    _api_log: Callable[[str, str], None]
    _recent_output: Callable[[str], list[str]]

    def _error(self, entry: ApiEntry, message: str) -> None: ...

    def _unroute(self, entry: ApiEntry, gen: Generation, rep: Replica, restarting: bool) -> None: ...

    def _maybe_stopped(self, entry: ApiEntry) -> None: ...

    def _settle_first(self, entry: ApiEntry) -> None: ...

    def _maybe_switch(self, entry: ApiEntry) -> None: ...

    def _on_load_failed(self, entry: ApiEntry, gen: Generation, rep: Replica, message: str) -> None:
        slot = gen.slot(rep.slot)
        slot.load_failures += 1
        self._error(entry, message)
        self._api_log(entry.name, f"replica {rep.id} failed to load its predictor: {message}")
        if slot.load_failures >= LOAD_FAILURES_FOR_ERROR and gen.error is None:
            gen.error = message
            if gen is entry.current:
                self.router.set_hold_when_empty(entry.name, False)
                self._settle_first(entry)
            elif gen is entry.next:
                self._maybe_switch(entry)

    def _on_over_memory(
        self, entry: ApiEntry, gen: Generation, rep: Replica, event: ReplicaOverMemory, now: float
    ) -> None:
        if rep.over_memory:
            return
        rep.over_memory = True
        gen.oom = True
        if event.killed_by_kernel:
            limit = (f"above its limit of {format_bytes(event.limit_bytes, decimals=0)} (cgroup memory.max)"
                     if event.limit_bytes else "when the machine ran out of memory")
            message = (f"replica {rep.id} was killed by the kernel for using "
                       f"{format_bytes(event.rss_bytes, decimals=0)} of memory, {limit}")
        else:
            message = (f"replica {rep.id} was stopped for using {format_bytes(event.rss_bytes, decimals=0)} of memory, "
                       f"above its limit of {format_bytes(event.limit_bytes, decimals=0)}")
        if rep.failure is not None:  # already being replaced (its connection dropped as it died)
            rep.failure, rep.signalled = message, True
            self._error(entry, message)
            self._api_log(entry.name, message)
            return
        self._fail_replica(entry, gen, rep, message, now, signal="kill")

    def _fail_replica(self, entry: ApiEntry, gen: Generation, rep: Replica, message: str, now: float,
                      signal: str | None) -> None:
        """Stop a replica that cannot serve (lost, hung, over memory): counted as a failure now,
        so its replacement may start while it is reaped, and requests wait for that meanwhile.
        `signal`: "kill" now, "term" now (SIGKILL after a grace), or None (it probably died by
        itself: SIGKILL only if it is still there after the grace)."""
        if rep.failure is not None:
            return
        rep.failure = message
        self._error(entry, message)
        self._api_log(entry.name, message)
        log.warning("%s: %s", entry.name, message)
        self._count_failure(entry, gen, rep, now)
        self._unroute(entry, gen, rep, restarting=True)
        if rep.state is not STOPPING:
            rep.advance(STOPPING)
        if signal == "kill":
            rep.signalled = True
            rep.handle.kill()
            rep.stop_deadline = None
            return
        if signal == "term":
            rep.signalled = True
            rep.handle.terminate()
        rep.stop_deadline = now + OVERDUE_GRACE_S

    def _count_failure(self, entry: ApiEntry, gen: Generation, rep: Replica, now: float) -> float:
        slot = gen.slot(rep.slot)
        slot.failures += 1
        slot.restarts += 1
        delay = backoff_delay(slot.failures, self.settings)
        slot.next_start = now + delay
        if gen is entry.current and gen.ready_count() == 0:
            hold = delay <= self.settings.hold_requests_max_backoff_s and gen.error is None
            self.router.set_hold_when_empty(entry.name, hold)
        return delay

    def _on_exit(self, entry: ApiEntry, gen: Generation, rep: Replica, code: int, now: float) -> None:
        del gen.replicas[rep.id]
        self.placer.release(rep.id)
        expected = rep.state in (DRAINING, STOPPING) and rep.failure is None
        if not expected:
            delay = gen.slot(rep.slot).next_start - now
            if rep.failure is None:
                delay = self._count_failure(entry, gen, rep, now)
                if code == protocol.EXIT_LOAD_FAILED:
                    reason = entry.last_error.message if entry.last_error else "the predictor failed to load"
                else:
                    reason = self._crash_reason(rep, code)
                    self._error(entry, reason)
                log.warning("%s: %s", entry.name, reason)
            elif not rep.signalled:  # it died by itself: its own exit says more than what we saw
                self._error(entry, self._crash_reason(rep, code))
            self._api_log(entry.name, f"replica {rep.id} exited unexpectedly (code {code}); "
                          f"restarting in {max(0.0, delay):.0f}s")
        self._unroute(entry, gen, rep, restarting=not expected)
        if gen in entry.retired and not gen.replicas:
            entry.retired.remove(gen)
        self._maybe_stopped(entry)

    def _crash_reason(self, rep: Replica, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = self._recent_output(rep.id)[-8:]
        detail = ("; last output: " + " | ".join(line.strip() for line in tail)) if tail else ""
        return f"replica {rep.id} {how}{detail}"
