"""The daemon's one loop that changes state: events in, the supervisor reconciles, readings
are taken, systemd is told we are alive.

- Every event (fleet/events.py) and every posted job runs behind a barrier: an exception is
  logged with its traceback and counted, and the loop goes on. A loop that died silently
  would leave dead replicas `ready` and nothing restarted, limited or scaled.
- Readings (CPU, memory and GPUs of every replica, through psutil and NVML) are taken on a
  worker thread once a second; their results come back as a job on this loop, which turns
  them into memory-limit events and autoscaling decisions.
- `last_tick` is when the loop last went round: /healthz says 200 and the systemd watchdog
  is petted only while it is recent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from cortexd.daemon.deploy.blocking import run_blocking
from cortexd.daemon.fleet.events import Event, ReplicaExited
from cortexd.daemon.fleet.supervisor import Supervisor
from cortexd.daemon.systemd import Notifier

log = logging.getLogger("cortexd")

TICK_S = 1.0
STALL_S = 10.0  # /healthz fails when the loop has not gone round for this long

Job = Callable[[], None]
Item = Event | Job


class EventPump:
    def __init__(
        self,
        supervisor: Supervisor,
        notifier: Notifier,
        status_line: Callable[[], str],
        read: Callable[[dict[str, int]], Any],
        readings_done: Callable[[Any], None],
        on_exit: Callable[[ReplicaExited], None],
    ) -> None:
        self.supervisor = supervisor
        self.notifier = notifier
        self._status_line = status_line
        self._read = read  # blocking: pids -> readings (on a worker thread)
        self._readings_done = readings_done  # on the loop: readings -> events, autoscaling
        self._on_exit = on_exit  # forget per-replica caches (psutil objects, log tails)
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.last_tick = time.monotonic()
        self.errors = 0  # exceptions caught by the barrier (shown in /metrics)
        self._reading = False

    def post(self, item: Item) -> None:
        self.queue.put_nowait(item)

    def loop_age(self) -> float:
        return time.monotonic() - self.last_tick

    async def run(self) -> None:
        next_read = 0.0
        next_watchdog = 0.0
        watchdog_s = self.notifier.watchdog_interval()  # None: systemd asked for no pings (or not us)
        while True:
            now = time.monotonic()
            self.last_tick = now
            wake = self.supervisor.next_wakeup()
            due = min(next_read, next_watchdog) if self.notifier.enabled else next_read
            timeout = max(0.0, min(due, wake if wake is not None else due) - now)
            try:
                self.run_item(await asyncio.wait_for(self.queue.get(), timeout))
                while not self.queue.empty():
                    self.run_item(self.queue.get_nowait())
            except asyncio.TimeoutError:
                pass
            if time.monotonic() >= next_read:
                next_read = time.monotonic() + TICK_S
                self._start_reading()
            self._guarded(self.supervisor.reconcile, "reconcile")
            if self.notifier.enabled and time.monotonic() >= next_watchdog:
                # Sent from this loop only, so a wedged loop stops the pings and systemd restarts us.
                next_watchdog = time.monotonic() + (watchdog_s or TICK_S)
                if watchdog_s is not None:  # WATCHDOG_PID naming another process: not ours to ping
                    self.notifier.watchdog()
                self._guarded(lambda: self.notifier.status(self._status_line()), "status")

    def run_item(self, item: Item) -> None:
        if callable(item):
            self._guarded(item, "job")
            return
        self._guarded(lambda: self.supervisor.handle(item), type(item).__name__)
        if isinstance(item, ReplicaExited):
            self._guarded(lambda: self._on_exit(item), "exit bookkeeping")

    def _guarded(self, step: Callable[[], None], what: str) -> None:
        try:
            step()
        except Exception:
            self.errors += 1
            log.exception("the main loop caught an error in %s and goes on", what)

    def _start_reading(self) -> None:
        if self._reading:  # the last readings are still being taken (a slow NVML, a huge tree)
            return
        self._reading = True
        pids = self.supervisor.replica_pids()
        task = asyncio.ensure_future(run_blocking(self._read, pids, name="cortexd-readings"))
        task.add_done_callback(self._readings_taken)

    def _readings_taken(self, task: asyncio.Future[Any]) -> None:
        self._reading = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.errors += 1
            log.error("taking replica readings failed (tried again in %.0fs): %s", TICK_S, exc)
            return
        readings = task.result()
        self.post(lambda: self._readings_done(readings))
