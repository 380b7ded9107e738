"""Batch sizes over the last minutes (cortexd/daemon/observe/batch_stats.py), on an injected clock."""

from __future__ import annotations

import pytest

from cortexd.daemon.observe.batch_stats import BatchStats, bucket_label, render_lines, size_bucket


@pytest.mark.parametrize(
    "size, bucket, label",
    [(1, 0, "1"), (2, 1, "2"), (3, 2, "3-4"), (4, 2, "3-4"), (5, 3, "5-8"), (8, 3, "5-8"), (9, 4, "9-16"),
     (32, 5, "17-32"), (33, 6, "33-64"), (256, 8, "129-256")],
)
def test_size_buckets(size: int, bucket: int, label: str) -> None:
    assert size_bucket(size) == bucket and bucket_label(bucket) == label


def test_average_distribution_and_triggers() -> None:
    stats = BatchStats(window_s=60, slot_s=10)
    for t, size, trigger in [(0.0, 1, "interval"), (1.0, 8, "full"), (2.0, 8, "full"), (3.0, 3, "freed")]:
        stats.record(size, t, trigger, wait_s=size * 0.002)
    s = stats.summary(5.0)
    assert s["batches"] == 4 and s["requests"] == 20 and s["average_size"] == 5.0
    assert s["sizes"] == {"1": 1, "3-4": 1, "5-8": 2}
    assert s["triggers"] == {"freed": 1, "full": 2, "interval": 1}
    assert s["average_wait_ms"] == pytest.approx(2.0)


# (records as (time, size), the time asked, the batches counted)
WINDOW_CASES = [
    ([(0.0, 4)], 0.0, 1),
    ([(0.0, 4)], 59.0, 1),          # inside the 60 s window
    ([(0.0, 4)], 69.9, 1),          # its 10 s slot still overlaps the window
    ([(0.0, 4)], 70.0, 0),          # the whole slot has left it
    ([(0.0, 4), (65.0, 2)], 75.0, 1),
    ([(0.0, 1), (15.0, 1), (31.0, 1), (200.0, 1)], 200.0, 1),
    ([], 10.0, 0),
]


@pytest.mark.parametrize("records, now, batches", WINDOW_CASES)
def test_old_batches_leave_the_window(records: list[tuple[float, int]], now: float, batches: int) -> None:
    stats = BatchStats(window_s=60, slot_s=10)
    for t, size in records:
        stats.record(size, t)
    assert stats.summary(now)["batches"] == batches


def test_an_empty_window_has_no_averages() -> None:
    s = BatchStats().summary(100.0)
    assert s == {"window_s": 300.0, "batches": 0, "requests": 0, "average_size": None, "average_wait_ms": None,
                 "sizes": {}, "triggers": {}}


def test_slots_are_bounded_by_the_window() -> None:
    stats = BatchStats(window_s=60, slot_s=10)
    for i in range(10_000):
        stats.record(1, i * 1.0)
    assert len(stats._slots) <= 7
    # the window is (9939, 9999]: slots 9930-9939 .. 9990-9999 overlap it (exact to one slot)
    assert stats.summary(9_999.0)["batches"] == 70


@pytest.mark.parametrize("window, slot", [(60, 0), (5, 10)])
def test_bad_windows_are_refused(window: float, slot: float) -> None:
    with pytest.raises(ValueError, match="need 0 < slot_s <= window_s"):
        BatchStats(window_s=window, slot_s=slot)


def test_render_lines() -> None:
    stats = BatchStats(window_s=300, slot_s=10)
    for size, trigger in [(32, "full"), (32, "full"), (5, "interval"), (1, "freed")]:
        stats.record(size, 1.0, trigger, wait_s=size * 0.001)
    lines = render_lines(stats.summary(2.0), max_batch_size=32, interval_s=0.002)
    assert lines[0] == ("batching (max_batch_size 32, batch_interval 2ms): 4 batches, 70 requests in the last 5 min; "
                        "average size 17.5, average wait 1 ms")
    assert lines[1] == "  batch sizes  1: 25%  5-8: 25%  17-32: 50%"
    assert lines[2] == "  sent because replica freed: 25%  full: 50%  interval passed: 25%"
    assert render_lines(BatchStats().summary(0.0)) == ["batching: no batches in the last 5 min"]
