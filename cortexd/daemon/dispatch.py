"""Per-API request queue and dispatch to idle ready replicas (the proxy's hot path).

Each API has one bounded FIFO of waiting requests and a set of idle replicas. A replica
takes one request at a time: a request takes an idle replica at once, or waits in the queue
until one is released, or until its deadline passes. Replicas enter when they are ready
(`add`), leave when they die (`remove`) or are drained (`drain`: they finish the request
they hold, then the callback fires). Everything here runs on the daemon's one event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from cortexd.daemon.upstream import UpstreamConnection


class QueueFull(Exception):
    pass


class NoReplicas(Exception):
    pass


class DeadlineExceeded(Exception):
    pass


@dataclass(eq=False)
class ReplicaLink:
    """The proxy's view of one ready replica."""

    replica_id: str
    conn: UpstreamConnection
    version: int
    busy: bool = False
    active: bool = True  # False once drained or removed: never handed out again
    on_drained: Callable[[], None] | None = None
    served: int = 0


@dataclass(eq=False)
class ApiQueue:
    name: str
    max_queue: int
    links: dict[str, ReplicaLink] = field(default_factory=dict)
    idle: deque[ReplicaLink] = field(default_factory=deque)
    waiters: deque[asyncio.Future[ReplicaLink]] = field(default_factory=deque)
    in_flight: int = 0
    # While a replacement for a crashed replica is starting, requests wait for it (up to
    # their deadline) instead of failing with 503; the supervisor turns this on and off.
    hold_when_empty: bool = False

    @property
    def queued(self) -> int:
        return len(self.waiters)

    def has_replicas(self) -> bool:
        return bool(self.links)

    # -- the hot path -------------------------------------------------------------------

    async def acquire(self, timeout: float) -> ReplicaLink:
        idle = self.idle
        while idle:
            link = idle.popleft()
            if link.active:
                link.busy = True
                return link
        if not self.links and not self.hold_when_empty:
            raise NoReplicas()
        if len(self.waiters) >= self.max_queue:
            raise QueueFull()
        fut: asyncio.Future[ReplicaLink] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded() from None
        except asyncio.CancelledError:
            # The client went away while waiting: give back a replica we were handed.
            if fut.done() and not fut.cancelled():
                self.release(fut.result())
            raise
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self.waiters.remove(fut)
            except ValueError:
                pass

    def release(self, link: ReplicaLink) -> None:
        link.busy = False
        if not link.active:
            self._finish_drain(link)
            return
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                link.busy = True
                fut.set_result(link)
                return
        self.idle.append(link)

    # -- membership (driven by the supervisor) ------------------------------------------

    def add(self, link: ReplicaLink) -> None:
        self.links[link.replica_id] = link
        self.release(link)

    def drain(self, replica_id: str, on_drained: Callable[[], None]) -> None:
        """Stop handing the replica out; call on_drained once its current request is done."""
        link = self.links.pop(replica_id, None)
        if link is None:
            on_drained()
            return
        link.active = False
        link.on_drained = on_drained
        if not link.busy:
            self._finish_drain(link)
        if not self.links and not self.hold_when_empty:
            self._fail_waiters()

    def remove(self, replica_id: str) -> None:
        """The replica died: forget it at once (a request it held fails on its own)."""
        link = self.links.pop(replica_id, None)
        if link is not None:
            link.active = False
            link.conn.close()
        if not self.links and not self.hold_when_empty:
            self._fail_waiters()

    def set_hold_when_empty(self, hold: bool) -> None:
        self.hold_when_empty = hold
        if not hold and not self.links:
            self._fail_waiters()

    def _finish_drain(self, link: ReplicaLink) -> None:
        link.conn.close()
        callback, link.on_drained = link.on_drained, None
        if callback is not None:
            callback()

    def _fail_waiters(self) -> None:
        """No replica is left to serve the queue: answer waiters now rather than at their deadline."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(NoReplicas())
