"""The batch former (cortexd/daemon/serving/batcher.py): table tests on an injected clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cortexd.daemon.serving.batcher import FREED, FULL, INTERVAL, Decision, next_batch


@dataclass
class J:
    name: str
    arrived: float
    deadline: float = 1e9
    alive: bool = True


def jobs(spec: str) -> list[J]:
    """'a@0 b@1 x@2!exp c@3!gone': name@arrival, !exp = deadline passed at t=10, !gone = not alive."""
    out = []
    for token in spec.split():
        name, _, rest = token.partition("@")
        arrival, _, flag = rest.partition("!")
        out.append(J(name, float(arrival), deadline=5.0 if flag == "exp" else 1e9, alive=flag != "gone"))
    return out


def names(items: tuple[J, ...]) -> str:
    return " ".join(j.name for j in items)


# (queue, max size, interval, now, freed) -> (sent, trigger, dropped, scanned, wake_at)
CASES = [
    # nothing waits
    ("", 4, 2.0, 10.0, False, ("", None, "", 0, None)),
    ("", 4, 2.0, 10.0, True, ("", None, "", 0, None)),
    # one young job, replica idle: wait for the interval, measured from its arrival
    ("a@9", 4, 2.0, 10.0, False, ("", None, "", 0, 11.0)),
    # ... until the interval passed: sent alone
    ("a@9", 4, 2.0, 11.0, False, ("a", INTERVAL, "", 1, None)),
    ("a@8", 4, 2.0, 10.0, False, ("a", INTERVAL, "", 1, None)),
    # the interval counts from the FIRST waiting job, not the latest
    ("a@8.5 b@9.9", 4, 2.0, 10.5, False, ("a b", INTERVAL, "", 2, None)),
    ("a@8.5 b@9.9", 4, 2.0, 10.4, False, ("", None, "", 0, 10.5)),
    # full: sent at once, whatever the interval; the rest waits, order kept
    ("a@9.9 b@9.9 c@9.9", 3, 2.0, 10.0, False, ("a b c", FULL, "", 3, None)),
    ("a@9 b@9 c@9 d@9 e@9", 3, 2.0, 10.0, False, ("a b c", FULL, "", 3, None)),
    ("a@9 b@9 c@9 d@9 e@9", 3, 2.0, 11.5, True, ("a b c", FULL, "", 3, None)),
    # a replica that just finished takes what waits at once, up to the size
    ("a@9.9 b@9.95", 4, 2.0, 10.0, True, ("a b", FREED, "", 2, None)),
    ("a@9.9", 1, 2.0, 10.0, True, ("a", FULL, "", 1, None)),
    # size 1 is batching of one: every job goes at once
    ("a@10", 1, 2.0, 10.0, False, ("a", FULL, "", 1, None)),
    # interval 0: no waiting at all
    ("a@10", 8, 0.0, 10.0, False, ("a", INTERVAL, "", 1, None)),
    # expired jobs at the front are dropped (answered 504 by the queue), not sent
    ("x@1!exp a@9.9", 4, 2.0, 10.0, False, ("", None, "x", 1, 11.9)),
    ("x@1!exp a@9.9", 4, 2.0, 10.0, True, ("a", FREED, "x", 2, None)),
    ("x@1!exp y@2!gone", 4, 2.0, 10.0, True, ("", None, "x y", 2, None)),
    # dead jobs among the batch are dropped with it; they do not count toward the size
    ("a@9 x@9!exp b@9 y@9!gone c@9 d@9", 3, 2.0, 10.0, False, ("a b c", FULL, "x y", 5, None)),
    # dead jobs after the first live one stay queued while the batch waits (dropped later)
    ("a@9.5 x@9.6!exp", 4, 2.0, 10.0, False, ("", None, "", 0, 11.5)),
    # the interval starts at the first LIVE job
    ("y@1!gone a@9.5", 4, 2.0, 10.0, False, ("", None, "y", 1, 11.5)),
    # a timer that fires a hair early still sends
    ("a@9", 4, 2.0, 11.0 - 1e-9, False, ("a", INTERVAL, "", 1, None)),
]


@pytest.mark.parametrize(
    "queue, size, interval, now, freed, want", CASES, ids=[f"{c[0] or 'empty'}|{c[1]}|{c[3]}|{c[4]}" for c in CASES]
)
def test_next_batch(queue: str, size: int, interval: float, now: float, freed: bool,
                    want: tuple[str, str | None, str, int, float | None]) -> None:
    d = next_batch(jobs(queue), max_batch_size=size, interval_s=interval, now=now, freed=freed)
    assert (names(d.send), d.trigger, names(d.dropped), d.scanned, d.wake_at) == want


def test_expired_are_the_dropped_jobs_still_alive() -> None:
    d = next_batch(jobs("x@1!exp y@2!gone a@9"), max_batch_size=4, interval_s=0.5, now=10.0)
    assert names(d.dropped) == "x y" and names(d.expired) == "x"


def test_popping_scanned_jobs_leaves_the_queue_consistent() -> None:
    """Driving a queue the way dispatch does: pop `scanned`, send `send`; every live job is
    sent exactly once, in arrival order, in batches of at most the size."""
    queue = jobs("a@0 b@0 x@0!exp c@0 d@0 y@0!gone e@0 f@0 g@0")
    sent: list[list[str]] = []
    for _ in range(10):
        d = next_batch(queue, max_batch_size=3, interval_s=1.0, now=10.0, freed=True)
        assert set(map(id, d.send)) | set(map(id, d.dropped)) == set(map(id, queue[: d.scanned]))
        del queue[: d.scanned]
        if not d.send:
            break
        sent.append([j.name for j in d.send])
    assert sent == [["a", "b", "c"], ["d", "e", "f"], ["g"]] and queue == []


def test_only_the_front_of_a_long_queue_is_read() -> None:
    class Endless:
        def __init__(self) -> None:
            self.read = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            while True:
                self.read += 1
                yield J(str(self.read), 0.0)

    q = Endless()
    d = next_batch(q, max_batch_size=4, interval_s=1.0, now=0.0)
    assert d.trigger == FULL and len(d.send) == 4 and q.read == 4


def test_a_size_below_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        next_batch([], max_batch_size=0, interval_s=1.0, now=0.0)


def test_decision_defaults_mean_nothing_to_do() -> None:
    assert Decision() == Decision((), (), 0, None, None)
