from __future__ import annotations

import logging
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from cortexd.config import Tracker
from cortexd.daemon.observe.tracker import PredictionTracker


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CLS = Tracker(model_type="classification")
REG = Tracker(model_type="regression")


def make(tmp_path: Path, clock: FakeClock | None = None, **kwargs: Any) -> PredictionTracker:
    return PredictionTracker(str(tmp_path / "state" / "tracker.db"), clock=clock or FakeClock(), **kwargs)


def figures(tracker: PredictionTracker, api: str) -> tuple[Any, Any]:
    summary = tracker.summary(api)
    assert summary is not None
    return summary["total"], summary["last_hour"]


# ---- figures for known sequences ---------------------------------------------------------

@pytest.mark.parametrize(
    "tracker_cfg, predictions, expected",
    [
        (CLS, ["cat", "dog", "cat", 1, 2, 1, "cat"], {"counts": {"cat": 3, "1": 2, "2": 1, "dog": 1}}),
        (Tracker("classification", "label"),
         [{"label": "setosa", "p": 0.9}, {"label": "virginica"}, {"label": "setosa"}],
         {"counts": {"setosa": 2, "virginica": 1}}),
        (REG, [1, 2.5, -0.5, 4], {"count": 4, "min": -0.5, "max": 4.0, "mean": 1.75}),
        (Tracker("regression", "price"), [{"price": 10}, {"price": 0.25}, {"price": 2.75}],
         {"count": 3, "min": 0.25, "max": 10.0, "mean": 13.0 / 3}),
    ],
    ids=["classification", "classification-key", "regression", "regression-key"],
)
def test_figures_for_a_known_sequence(tmp_path: Path, tracker_cfg: Tracker, predictions: list[Any],
                                      expected: dict[str, Any]) -> None:
    tracker = make(tmp_path)
    tracker.register("api", tracker_cfg)
    for prediction in predictions:
        tracker.observe("api", prediction)
    summary = tracker.summary("api")
    assert summary is not None
    assert summary["model_type"] == tracker_cfg.model_type
    assert summary["total"] == expected
    assert summary["last_hour"] == expected
    if "counts" in expected:   # most frequent first, ties by label
        assert list(summary["total"]["counts"]) == list(expected["counts"])


def test_empty_regression_has_no_min_max_mean(tmp_path: Path) -> None:
    tracker = make(tmp_path)
    tracker.register("r", REG)
    assert figures(tracker, "r") == ({"count": 0, "min": None, "max": None, "mean": None},) * 2


def test_untracked_api_is_ignored(tmp_path: Path) -> None:
    tracker = make(tmp_path)
    tracker.observe("nope", "cat")
    tracker.observe_json_bytes("nope", b"not json at all")
    assert tracker.summary("nope") is None
    assert not tracker.tracked("nope")


@pytest.mark.parametrize(
    "tracker_cfg, prediction",
    [
        (CLS, True),
        (CLS, 1.5),
        (CLS, 2.0),
        (CLS, None),
        (CLS, [1]),
        (CLS, {"label": "a"}),                     # an object but no key configured
        (Tracker("classification", "label"), "a"),  # key configured, not an object
        (Tracker("classification", "label"), {"other": "a"}),
        (Tracker("classification", "label"), {"label": False}),
        (REG, False),
        (REG, "1.5"),
        (REG, None),
        (REG, math.nan),
        (REG, math.inf),
        (REG, 10**400),
        (REG, [1.0]),
        (Tracker("regression", "y"), 1.0),
        (Tracker("regression", "y"), {"y": "3"}),
    ],
)
def test_untrackable_values_are_skipped(tmp_path: Path, tracker_cfg: Tracker, prediction: Any,
                                        caplog: pytest.LogCaptureFixture) -> None:
    tracker = make(tmp_path)
    tracker.register("api", tracker_cfg)
    with caplog.at_level(logging.WARNING, logger="cortexd.tracker"):
        tracker.observe("api", prediction)
    total, hour = figures(tracker, "api")
    assert total in ({"counts": {}}, {"count": 0, "min": None, "max": None, "mean": None})
    assert hour == total
    assert tracker.skipped("api") == 1
    assert len(caplog.records) == 1
    assert "api api" in caplog.records[0].getMessage()


def test_skip_warning_is_rate_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    tracker = make(tmp_path, clock)
    tracker.register("a", CLS)
    tracker.register("b", CLS)
    with caplog.at_level(logging.WARNING, logger="cortexd.tracker"):
        for _ in range(5):
            tracker.observe("a", 1.5)
        tracker.observe("b", True)          # another API warns on its own
        assert len(caplog.records) == 2
        clock.now += 61
        tracker.observe("a", 2.5)
    assert len(caplog.records) == 3
    assert "4 more skipped" in caplog.records[2].getMessage()
    assert tracker.skipped("a") == 6


def test_observe_json_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = make(tmp_path)
    tracker.register("api", Tracker("classification", "class"))
    tracker.observe_json_bytes("api", b'{"class": "b", "probabilities": [0.1, 0.9]}')
    tracker.observe_json_bytes("api", b'{"class": 7}')
    with caplog.at_level(logging.WARNING, logger="cortexd.tracker"):
        tracker.observe_json_bytes("api", b"{broken")
    assert figures(tracker, "api")[0] == {"counts": {"7": 1, "b": 1}}
    assert tracker.skipped("api") == 1
    assert "not JSON" in caplog.records[0].getMessage()


# ---- time buckets ---------------------------------------------------------------------------

def test_last_hour_drops_old_minutes_but_total_keeps_them(tmp_path: Path) -> None:
    clock = FakeClock(3600.0 * 1000)   # on a minute boundary
    tracker = make(tmp_path, clock)
    tracker.register("c", CLS)
    tracker.register("r", REG)
    tracker.observe("c", "old")
    tracker.observe("r", 100)
    clock.now += 30 * 60
    tracker.observe("c", "new")
    tracker.observe("r", 1)
    assert figures(tracker, "c") == ({"counts": {"new": 1, "old": 1}}, {"counts": {"new": 1, "old": 1}})
    clock.now += 30 * 60            # the first minute is now 60 buckets back: outside the hour
    tracker.flush()
    assert figures(tracker, "c") == ({"counts": {"new": 1, "old": 1}}, {"counts": {"new": 1}})
    assert figures(tracker, "r") == (
        {"count": 2, "min": 1.0, "max": 100.0, "mean": 50.5},
        {"count": 1, "min": 1.0, "max": 1.0, "mean": 1.0},
    )
    clock.now += 31 * 60
    assert figures(tracker, "r")[1] == {"count": 0, "min": None, "max": None, "mean": None}


def test_old_buckets_are_pruned_on_disk(tmp_path: Path) -> None:
    clock = FakeClock(3600.0 * 1000)
    tracker = make(tmp_path, clock)
    tracker.register("c", CLS)
    tracker.register("r", REG)
    for minute in range(90):
        tracker.observe("c", "x")
        tracker.observe("r", minute)
        tracker.flush()
        clock.now += 60
    db = sqlite3.connect(str(tmp_path / "state" / "tracker.db"))
    # The flush of minute 89 kept minutes 30..89.
    assert db.execute("SELECT count(*), min(minute) FROM class_buckets").fetchone() == (60, 60000 + 30)
    assert db.execute("SELECT count(*) FROM reg_buckets").fetchone() == (60,)
    assert db.execute("SELECT n FROM class_totals").fetchone() == (90,)
    assert figures(tracker, "c")[0] == {"counts": {"x": 90}}


# ---- persistence ----------------------------------------------------------------------------

def test_figures_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    first = make(tmp_path, clock)
    first.register("c", CLS)
    first.register("r", Tracker("regression", "y"))
    for label in ["a", "b", "a", 3]:
        first.observe("c", label)
    for y in [2, 4.5, -1]:
        first.observe("r", {"y": y})
    before = {api: first.summary(api) for api in ("c", "r")}
    first.flush()
    first.observe("c", "a")          # not flushed yet: close() must write it
    first.close()

    clock.now += 600
    second = make(tmp_path, clock)
    assert second.summary("c") is None   # nothing until registered
    second.register("c", CLS)
    second.register("r", Tracker("regression", "y"))
    assert second.summary("c") == {**before["c"], "total": {"counts": {"a": 3, "3": 1, "b": 1}},
                                   "last_hour": {"counts": {"a": 3, "3": 1, "b": 1}}}
    assert second.summary("r") == before["r"]
    second.observe("r", {"y": 10})
    second.flush()
    second.close()

    third = make(tmp_path, FakeClock(clock.now + 50 * 60))   # the last observation is still within the hour
    third.register("r", Tracker("regression", "y"))
    assert figures(third, "r") == (
        {"count": 4, "min": -1.0, "max": 10.0, "mean": 15.5 / 4},
        {"count": 1, "min": 10.0, "max": 10.0, "mean": 10.0},
    )
    summary = third.summary("r")
    assert summary is not None and summary["since"] == before["r"]["since"]


def test_since_survives_a_restart_before_any_prediction(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    first = make(tmp_path, clock)
    first.register("c", CLS)
    first.close()
    second = make(tmp_path, FakeClock(5000.0))
    second.register("c", CLS)
    summary = second.summary("c")
    assert summary is not None and summary["since"] == 1000.0


def test_reregistering_keeps_figures_and_a_new_model_type_starts_afresh(tmp_path: Path) -> None:
    tracker = make(tmp_path)
    tracker.register("api", CLS)
    tracker.observe("api", "a")
    tracker.register("api", CLS)                      # reload, unchanged
    assert figures(tracker, "api")[0] == {"counts": {"a": 1}}
    tracker.register("api", Tracker("classification", "k"))   # key changed: figures kept, key used
    tracker.observe("api", {"k": "b"})
    assert figures(tracker, "api")[0] == {"counts": {"a": 1, "b": 1}}
    tracker.flush()
    tracker.register("api", REG)                      # counts cannot become min/max
    tracker.observe("api", 2)
    tracker.close()
    again = make(tmp_path)
    again.register("api", REG)
    assert figures(again, "api")[0] == {"count": 1, "min": 2.0, "max": 2.0, "mean": 2.0}


def test_forget_deletes_the_rows(tmp_path: Path) -> None:
    tracker = make(tmp_path)
    tracker.register("gone", CLS)
    tracker.register("kept", CLS)
    tracker.observe("gone", "a")
    tracker.observe("kept", "b")
    tracker.flush()
    tracker.forget("gone")
    tracker.observe("gone", "a")                      # ignored once forgotten
    assert tracker.summary("gone") is None
    tracker.close()
    db = sqlite3.connect(str(tmp_path / "state" / "tracker.db"))
    for table in ("tracked_apis", "class_totals", "class_buckets"):
        assert db.execute(f"SELECT count(*) FROM {table} WHERE api = 'gone'").fetchone() == (0,)
    again = make(tmp_path)
    again.register("gone", CLS)
    again.register("kept", CLS)
    assert figures(again, "gone")[0] == {"counts": {}}
    assert figures(again, "kept")[0] == {"counts": {"b": 1}}


def test_forget_then_register_before_a_flush_starts_afresh(tmp_path: Path) -> None:
    tracker = make(tmp_path)
    tracker.register("api", CLS)
    tracker.observe("api", "old")
    tracker.flush()
    tracker.forget("api")
    tracker.register("api", CLS)
    tracker.observe("api", "new")
    tracker.close()
    again = make(tmp_path)
    again.register("api", CLS)
    assert figures(again, "api")[0] == {"counts": {"new": 1}}


# ---- bounded labels -------------------------------------------------------------------------

def test_labels_are_bounded_in_memory_and_on_disk(tmp_path: Path) -> None:
    tracker = make(tmp_path, max_labels=3)
    tracker.register("api", CLS)
    for label in ["a", "b", "a", "c", "d", "e", "d", "b"]:
        tracker.observe("api", label)
    expected = {"counts": {"a": 2, "b": 2, "other": 3, "c": 1}}
    assert figures(tracker, "api") == (expected, expected)
    tracker.close()
    db = sqlite3.connect(str(tmp_path / "state" / "tracker.db"))
    assert db.execute("SELECT count(DISTINCT label) FROM class_totals").fetchone() == (4,)
    assert db.execute("SELECT count(DISTINCT label) FROM class_buckets").fetchone() == (4,)

    again = make(tmp_path, max_labels=3)
    again.register("api", CLS)
    again.observe("api", "f")       # still full after the restart
    again.observe("api", "c")
    assert figures(again, "api")[0] == {"counts": {"other": 4, "a": 2, "b": 2, "c": 2}}


def test_very_long_labels_are_cut(tmp_path: Path) -> None:
    tracker = make(tmp_path)
    tracker.register("api", CLS)
    tracker.observe("api", "x" * 10_000)
    (label,) = figures(tracker, "api")[0]["counts"]
    assert len(label) == 200


# ---- flushing -------------------------------------------------------------------------------

def test_flush_concurrent_with_observe_loses_nothing(tmp_path: Path) -> None:
    tracker = make(tmp_path)
    tracker.register("c", CLS)
    tracker.register("r", REG)
    n = 20_000
    done = threading.Event()
    flushed = threading.Event()
    waits: list[bool] = []

    def observe() -> None:
        for i in range(n):
            if i % 2000 == 0:
                # Make sure flushes really interleave with observing (the GIL might
                # otherwise let this loop finish inside one flush).
                flushed.clear()
                waits.append(flushed.wait(timeout=10))
            tracker.observe("c", "even" if i % 2 == 0 else "odd")
            tracker.observe("r", i)
        done.set()

    thread = threading.Thread(target=observe)
    thread.start()
    flushes = 0
    while not done.is_set() and flushes < 1_000_000:
        tracker.flush()
        flushes += 1
        flushed.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    tracker.close()
    assert waits == [True] * 10

    again = make(tmp_path)
    again.register("c", CLS)
    again.register("r", REG)
    total, hour = figures(again, "c")
    assert total == hour == {"counts": {"even": n // 2, "odd": n // 2}}
    total, hour = figures(again, "r")
    assert total == hour == {"count": n, "min": 0.0, "max": float(n - 1), "mean": (n - 1) / 2}


def failing_writes(tracker: PredictionTracker, times: int, error: str) -> None:
    """The tracker's database refuses its next `times` writes (a full or locked disk)."""
    store = tracker._store
    real = store.write
    left = [times]

    def write(*args: Any, **kwargs: Any) -> None:
        if left[0]:
            left[0] -= 1
            raise sqlite3.OperationalError(error)
        real(*args, **kwargs)

    store.write = write  # type: ignore[method-assign]


def test_a_failed_write_keeps_the_deltas_for_the_next_flush(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "tracker.db")
    tracker = PredictionTracker(path, clock=FakeClock())
    failing_writes(tracker, 1, "disk I/O error")
    tracker.register("api", CLS)
    tracker.observe("api", "a")
    with caplog.at_level(logging.ERROR, logger="cortexd.tracker"):
        tracker.flush()
    assert "disk I/O error" in caplog.text
    tracker.observe("api", "a")
    tracker.close()
    again = PredictionTracker(path, clock=FakeClock())
    again.register("api", CLS)
    assert figures(again, "api")[0] == {"counts": {"a": 2}}


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    make(tmp_path).close()
    db = sqlite3.connect(str(tmp_path / "state" / "tracker.db"))
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_register_rejects_an_unknown_model_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classification or regression"):
        make(tmp_path).register("api", Tracker("clustering"))


def test_a_long_database_outage_loses_nothing_and_stays_bounded(tmp_path: Path) -> None:
    clock = FakeClock(3600.0 * 1000)
    path = str(tmp_path / "tracker.db")
    tracker = PredictionTracker(path, clock=clock)
    failing_writes(tracker, 3, "database is locked")
    tracker.register("api", CLS)
    for label, step in [("a", 30), ("b", 60), ("c", 0)]:
        tracker.observe("api", label)
        tracker.flush()                              # fails three times
        clock.now += step * 60
    # Minutes past the hour were folded together while the disk was unavailable.
    assert len(tracker._apis["api"].unwritten) == 2
    tracker.flush()                                  # succeeds
    expected = ({"counts": {"a": 1, "b": 1, "c": 1}}, {"counts": {"c": 1}})
    assert figures(tracker, "api") == expected
    tracker.close()
    again = PredictionTracker(path, clock=clock)
    again.register("api", CLS)
    assert figures(again, "api") == expected
