"""When a batching API's queue sends a batch, and which requests go in it: a pure decision.

The queue (dispatch.py) asks `next_batch` whenever something changed for an idle batching
replica: a request arrived, a replica finished (`freed=True`), or the timer the previous
decision asked for fired. The rules, in order:

1. Dead jobs at the front (deadline passed, or no longer alive because the client left or
   the job was settled elsewhere) are skipped and handed back as `dropped`: the queue
   answers an expired one 504 now rather than sending it.
2. `max_batch_size` live jobs waiting: send them now ("full").
3. The first live job has waited `batch_interval` or more: send what is waiting ("interval").
4. A replica just finished and jobs are waiting: send them at once, up to
   `max_batch_size` ("freed"). They queued while every replica was busy; waiting out an
   interval on top would leave the replica idle while work waits.
5. Otherwise send nothing and ask again at the first live job's arrival + interval.

The batch is always the OLDEST live jobs, in arrival order; a job is never skipped for a
later one. The clock is the caller's (`now`, the same clock as `arrived` and `deadline`),
so every rule is a table test.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

# asyncio may run a timer a clock-resolution early; a job due within this is due.
_SLACK_S = 1e-6

FULL = "full"
INTERVAL = "interval"
FREED = "freed"


class Waiting(Protocol):
    """What the former reads of a queued job (dispatch.Job has these)."""

    @property
    def arrived(self) -> float: ...  # when it entered the queue

    @property
    def deadline(self) -> float: ...  # when it is answered 504 if still unanswered

    @property
    def alive(self) -> bool: ...  # False once settled elsewhere (client left, failed)


T = TypeVar("T", bound=Waiting)


@dataclass(frozen=True)
class Decision(Generic[T]):
    """What to do now. Pop `scanned` jobs from the front of the queue: they are exactly
    `send` (the batch, in order) and `dropped` (dead ones), interleaved as they were."""

    send: tuple[T, ...] = ()
    dropped: tuple[T, ...] = ()
    scanned: int = 0
    wake_at: float | None = None  # nothing sent: decide again at this time; None: nothing waits
    trigger: str | None = None  # FULL, INTERVAL or FREED when `send` is not empty

    @property
    def expired(self) -> tuple[T, ...]:
        """The dropped jobs the queue must answer 504 (the others were settled already)."""
        return tuple(job for job in self.dropped if job.alive)


def _dead(job: Waiting, now: float) -> bool:
    return not job.alive or job.deadline <= now


def next_batch(
    waiting: Iterable[T], *, max_batch_size: int, interval_s: float, now: float, freed: bool = False
) -> Decision[T]:
    """The decision for one idle batching replica (see the module doc).

    `waiting` is the queue in arrival order; only its front is read: the dead jobs before
    the batch and at most `max_batch_size` live ones, so a decision costs O(batch), not
    O(queue).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    live: list[T] = []
    dropped: list[T] = []
    leading_dead = 0  # dead jobs before the first live one
    scanned = 0
    for job in waiting:
        scanned += 1
        if _dead(job, now):
            dropped.append(job)
            if not live:
                leading_dead += 1
            continue
        live.append(job)
        if len(live) == max_batch_size:
            break
    if not live:
        return Decision(dropped=tuple(dropped), scanned=scanned)
    if len(live) == max_batch_size:
        trigger: str | None = FULL
    elif now + _SLACK_S >= live[0].arrived + interval_s:
        trigger = INTERVAL
    elif freed:
        trigger = FREED
    else:
        trigger = None
    if trigger is None:
        # Keep the live jobs (and dead ones among them, dropped at the next decision).
        return Decision(
            dropped=tuple(dropped[:leading_dead]),
            scanned=leading_dead,
            wake_at=live[0].arrived + interval_s,
        )
    return Decision(send=tuple(live), dropped=tuple(dropped), scanned=scanned, trigger=trigger)
