"""Prediction tracking: class counts or regression stats per API, kept in SQLite.

The proxy calls `observe` (or `observe_json_bytes`) for every 200 answer of a tracked API,
on the event loop. That path only adds to this minute's pending bucket under a short lock
(no I/O); a separate thread calls `flush()` at least every second, which swaps the pending
buckets out under the lock, folds them into the in-memory figures, and writes them to
SQLite (WAL) outside the lock. `summary` adds what is still pending, so it is always exact.

Figures are kept twice:
- running totals since the API was first deployed (one row per label / per API), and
- per-minute buckets, pruned past an hour, for the "last hour" figures.
Both live in memory (so `summary` never does I/O) and on disk (so a restart resumes them).

Classification labels are bounded: the first `max_labels` distinct labels of an API are kept,
later new ones are counted under "other", so a model that answers free text cannot grow
memory or the database without bound.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Union

from cortexd import safefs

if TYPE_CHECKING:
    from cortexd.config import Tracker

log = logging.getLogger("cortexd.tracker")

CLASSIFICATION = "classification"
REGRESSION = "regression"
OTHER_LABEL = "other"
BUCKET_SECONDS = 60
HOUR_BUCKETS = 60            # "last hour" = the current minute bucket and the 59 before it
MAX_LABEL_CHARS = 200        # a longer label is cut, so one row cannot hold a whole document
WARN_INTERVAL_S = 60.0       # at most one "skipped" warning per API per interval
_TOTALS_ONLY = -(2**62)      # unwritten deltas older than the hour: they only add to the totals

# Classification figures: label -> count.  Regression figures: [count, sum, min, max].
ClassFigures = dict[str, int]
RegFigures = list[float]
Figures = Union[ClassFigures, RegFigures]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracked_apis (
    api TEXT PRIMARY KEY, model_type TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS class_totals (
    api TEXT NOT NULL, label TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (api, label));
CREATE TABLE IF NOT EXISTS class_buckets (
    api TEXT NOT NULL, minute INTEGER NOT NULL, label TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (api, minute, label));
CREATE TABLE IF NOT EXISTS reg_totals (
    api TEXT PRIMARY KEY, count INTEGER NOT NULL, sum REAL NOT NULL, min REAL, max REAL);
CREATE TABLE IF NOT EXISTS reg_buckets (
    api TEXT NOT NULL, minute INTEGER NOT NULL, count INTEGER NOT NULL, sum REAL NOT NULL,
    min REAL, max REAL, PRIMARY KEY (api, minute));
"""

_TABLES = ("tracked_apis", "class_totals", "class_buckets", "reg_totals", "reg_buckets")


class _Skip(Exception):
    """A prediction that cannot be tracked; the message says why (for the warning)."""


@dataclass
class _ApiTrack:
    model_type: str
    key: str | None
    since: float
    total: Figures
    minutes: dict[int, Figures]            # minute -> figures, last hour only (flushed part)
    pending: dict[int, Figures]            # minute -> observed since the last flush (the hot path writes only here)
    unwritten: dict[int, Figures] = field(default_factory=dict)   # flushed into memory, disk write failed
    labels: set[str] = field(default_factory=set)   # known labels (classification), bounded
    skipped: int = 0                       # predictions skipped since this process started
    skipped_unreported: int = 0
    last_warning: float = -math.inf


def _empty(model_type: str) -> Figures:
    if model_type == CLASSIFICATION:
        return {}
    return [0, 0.0, math.inf, -math.inf]


def _merge(model_type: str, into: Figures, delta: Figures) -> None:
    if model_type == CLASSIFICATION:
        assert isinstance(into, dict) and isinstance(delta, dict)
        for label, n in delta.items():
            into[label] = into.get(label, 0) + n
    else:
        assert isinstance(into, list) and isinstance(delta, list)
        into[0] += delta[0]
        into[1] += delta[1]
        if delta[2] < into[2]:
            into[2] = delta[2]
        if delta[3] > into[3]:
            into[3] = delta[3]


def _public(model_type: str, figures: Figures) -> dict[str, Any]:
    """Figures as `cortexd get --json` shows them (SPEC section 6)."""
    if model_type == CLASSIFICATION:
        assert isinstance(figures, dict)
        # Most frequent first, so tables and JSON read the same way.
        ordered = sorted(figures.items(), key=lambda item: (-item[1], item[0]))
        return {"counts": dict(ordered)}
    assert isinstance(figures, list)
    count = int(figures[0])
    if count == 0:
        return {"count": 0, "min": None, "max": None, "mean": None}
    return {"count": count, "min": figures[2], "max": figures[3], "mean": figures[1] / count}


def extract_value(prediction: Any, model_type: str, key: str | None) -> str | float:
    """The tracked value of one prediction: a label (classification) or a number (regression).

    Raises _Skip with the reason when the prediction cannot be tracked.
    """
    if key is not None:
        if not isinstance(prediction, dict):
            raise _Skip(f"tracker.key is {key!r} but the prediction is a {_type_name(prediction)}, not an object")
        if key not in prediction:
            raise _Skip(f"the prediction has no key {key!r}")
        value = prediction[key]
    else:
        value = prediction
    if model_type == CLASSIFICATION:
        # bool is an int subclass; a True/False "class" is almost surely a mistake, so skip it.
        if isinstance(value, str):
            return value[:MAX_LABEL_CHARS]
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise _Skip(f"classification tracks strings or integers, got {_type_name(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            raise _Skip("regression value is too large for a float") from None
        if not math.isfinite(number):
            raise _Skip(f"regression tracks finite numbers, got {value!r}")
        return number
    raise _Skip(f"regression tracks numbers, got {_type_name(value)}")


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", float: "float", int: "integer"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


# Parsing the answer is most of what tracking costs a request: ujson (installed with Sanic)
# does it about 5x faster than json (bench/README.md: the tracker's cost per request).
try:
    from ujson import loads as _loads
except ImportError:  # pragma: no cover - Sanic depends on ujson on CPython
    _loads = json.loads


class PredictionTracker:
    """Tracks predictions of the registered APIs; see the module docstring."""

    def __init__(self, db_path: str, clock: Callable[[], float] = time.time, max_labels: int = 100) -> None:
        self._db_path = db_path
        self._clock = clock
        self._max_labels = max_labels
        self._lock = threading.Lock()        # guards _apis contents; never held across I/O
        self._db_lock = threading.Lock()     # serialises use of the one connection (flush, register, forget)
        self._apis: dict[str, _ApiTrack] = {}
        self._forgotten: set[str] = set()    # rows to delete at the next flush
        self._last_prune_minute: int | None = None
        self._closed = False
        self.warnings: list[str] = []  # what happened to the database file (shown by `get`, /metrics)
        self._db, self._inode = self._connect()

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        # The database holds what predictions said: 0640 in a 0750 folder whatever the umask.
        # SQLite gives its -wal and -shm files the database file's mode.
        parent = safefs.ensure_dir(os.path.dirname(os.path.abspath(self._db_path)), safefs.DIR_MODE)
        self._db_path = os.path.join(parent, os.path.basename(self._db_path))
        safefs.prepare_file(self._db_path, safefs.FILE_MODE)
        for suffix in ("-wal", "-shm"):
            if os.path.lexists(self._db_path + suffix):
                safefs.prepare_file(self._db_path + suffix, safefs.FILE_MODE)
        # check_same_thread=False: the daemon registers from the loop and flushes from a thread;
        # _db_lock makes that use sequential.
        db = sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db, os.stat(self._db_path).st_ino

    def _file_replaced(self) -> bool:
        """The database file was deleted (or swapped) under us: writes would go nowhere."""
        try:
            return os.stat(self._db_path).st_ino != self._inode
        except FileNotFoundError:
            return True

    # ---- registration -------------------------------------------------------------------

    def register(self, api: str, tracker: Tracker) -> None:
        """Track `api` with `tracker` (model_type, key); loads what disk holds for it.

        Registering again with the same model_type keeps the figures (a reload); a changed
        model_type starts afresh, because counts and min/max cannot be converted.
        Reads SQLite: call it at startup/reload, not per request.
        """
        model_type = tracker.model_type
        if model_type not in (CLASSIFICATION, REGRESSION):
            raise ValueError(f"tracker.model_type must be classification or regression, got {model_type!r}")
        with self._lock:
            current = self._apis.get(api)
            if current is not None and current.model_type == model_type:
                current.key = tracker.key
                return
        now = self._clock()
        with self._db_lock:
            if api in self._forgotten:
                # forget() then register() before a flush: the old rows are still on disk but
                # must not come back; the pending delete runs first at the next flush.
                loaded = self._fresh(model_type, now)
            else:
                loaded = self._load(api, model_type, now)
        loaded.key = tracker.key
        with self._lock:
            current = self._apis.get(api)
            if current is not None and current.model_type == model_type:
                current.key = tracker.key
                return
            self._apis[api] = loaded

    def tracked(self, api: str) -> bool:
        """Whether `api` has a tracker (the proxy reads the body only then)."""
        return api in self._apis

    def forget(self, api: str) -> None:
        """Stop tracking `api` and delete its figures (it was removed from cortex.yaml).

        Memory is cleared at once; the rows are deleted at the next `flush()`, so this does no I/O.
        """
        with self._lock:
            self._apis.pop(api, None)
            self._forgotten.add(api)

    # ---- the hot path ---------------------------------------------------------------------

    def observe(self, api: str, prediction: Any) -> None:
        """Count one prediction of `api`. Never raises; untrackable values are skipped with a warning."""
        track = self._apis.get(api)
        if track is None:
            return
        try:
            value = extract_value(prediction, track.model_type, track.key)
        except _Skip as skip:
            self._skipped(api, track, str(skip))
            return
        minute = int(self._clock()) // BUCKET_SECONDS
        # One update of the pending bucket; flush() folds it into totals and the hour.
        with self._lock:
            pending = track.pending
            figures: Any = pending.get(minute)   # ClassFigures or RegFigures, by the value's type
            if isinstance(value, str):
                if figures is None:
                    figures = pending[minute] = {}
                labels = track.labels
                if value not in labels:
                    if len(labels) < self._max_labels:
                        labels.add(value)
                    else:
                        value = OTHER_LABEL
                figures[value] = figures.get(value, 0) + 1
            else:
                if figures is None:
                    pending[minute] = [1, value, value, value]
                    return
                figures[0] += 1
                figures[1] += value
                if value < figures[2]:
                    figures[2] = value
                if value > figures[3]:
                    figures[3] = value

    def observe_json_bytes(self, api: str, body: bytes) -> None:
        """`observe` for a raw JSON response body; parses only when `api` is tracked."""
        track = self._apis.get(api)
        if track is None:
            return
        if type(body) is not bytes and str(getattr(body, "content_type", "")).startswith("text/plain"):
            # A str prediction sent as text (serving/answers.py): the label itself.
            self.observe(api, bytes(body).decode("utf-8", "replace"))
            return
        try:
            prediction = _loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            self._skipped(api, track, f"the response is not JSON ({exc})")
            return
        self.observe(api, prediction)

    def _skipped(self, api: str, track: _ApiTrack, reason: str) -> None:
        # Counted without the lock: only the loop thread writes these two ints.
        track.skipped += 1
        track.skipped_unreported += 1
        now = self._clock()
        if now - track.last_warning < WARN_INTERVAL_S:
            return
        others = track.skipped_unreported - 1
        track.last_warning = now
        track.skipped_unreported = 0
        more = f" ({others} more skipped since the last warning)" if others > 0 else ""
        log.warning("api %s: tracker skipped a prediction: %s%s", api, reason, more, extra={"api": api})

    # ---- reading ------------------------------------------------------------------------

    def summary(self, api: str) -> dict[str, Any] | None:
        """{"model_type", "total": {...}, "last_hour": {...}, "since"} or None when not tracked.

        Classification figures are {"counts": {label: n}} (most frequent first); regression
        figures are {"count", "min", "max", "mean"} (None while count is 0). `since` is the
        Unix time the API was first tracked. No I/O.
        """
        cutoff = int(self._clock()) // BUCKET_SECONDS - HOUR_BUCKETS + 1
        with self._lock:
            track = self._apis.get(api)
            if track is None:
                return None
            model_type = track.model_type
            total = _copy(track.total)
            hour = _empty(model_type)
            for buckets in (track.minutes, track.pending):
                for minute, figures in buckets.items():
                    if buckets is track.pending:
                        _merge(model_type, total, figures)
                    if minute >= cutoff:
                        _merge(model_type, hour, figures)
            since = track.since
        return {
            "model_type": model_type,
            "total": _public(model_type, total),
            "last_hour": _public(model_type, hour),
            "since": since,
        }

    def skipped(self, api: str) -> int:
        """Predictions of `api` skipped (untrackable) since this process started."""
        track = self._apis.get(api)
        return 0 if track is None else track.skipped

    def apis(self) -> list[str]:
        return sorted(self._apis)

    # ---- persistence --------------------------------------------------------------------

    def flush(self) -> None:
        """Write pending deltas to SQLite; blocking, call it from a thread.

        Safe while other threads keep observing: the deltas are swapped out under the short
        lock and written outside it. On a database error the deltas are kept (nothing is
        lost, the next flush retries) and the error is logged, not raised.
        """
        with self._db_lock:
            if self._closed:
                return
            now_minute = int(self._clock()) // BUCKET_SECONDS
            cutoff = now_minute - HOUR_BUCKETS + 1
            with self._lock:
                forgotten = self._forgotten
                self._forgotten = set()
                # Forgotten then registered again before this flush: its row must come back.
                reborn = [(api, self._apis[api].model_type, self._apis[api].since)
                          for api in forgotten if api in self._apis]
                batch: list[tuple[str, _ApiTrack, dict[int, Figures]]] = []
                for api, track in self._apis.items():
                    # Work under the lock is bounded: pending has a minute or two of at most
                    # max_labels + 1 labels, and the sweep below sees at most ~61 keys.
                    pending = track.pending
                    if pending:
                        track.pending = {}
                        model_type = track.model_type
                        for minute, figures in pending.items():
                            _merge(model_type, track.total, figures)
                            _merge(model_type, _bucket(track.minutes, minute, model_type), figures)
                            _merge(model_type, _bucket(track.unwritten, minute, model_type), figures)
                    for minute in [m for m in track.minutes if m < cutoff]:
                        del track.minutes[minute]
                    if track.unwritten:
                        batch.append((api, track, track.unwritten))
                        track.unwritten = {}
            prune = self._last_prune_minute != now_minute
            if self._file_replaced():
                self._recreate()
                return
            if not forgotten and not batch and not prune:
                return
            try:
                self._write(forgotten, reborn, batch, cutoff, prune)
            except sqlite3.Error as exc:
                self._restore(forgotten, batch, cutoff)
                log.error("tracker: cannot write %s: %s (will retry)", self._db_path, exc)
                return
            if prune:
                self._last_prune_minute = now_minute

    def _recreate(self) -> None:
        """Start a new database file and write every figure held in memory into it (they
        include everything flushed so far), so deleting tracker.db loses nothing."""
        self._db.close()
        self._db, self._inode = self._connect()
        with self._lock:
            tracks = [(api, track, {**track.minutes, _TOTALS_ONLY: _older_part(track)})
                      for api, track in self._apis.items()]
            for _, track, _ in tracks:
                track.unwritten = {}
        cutoff = int(self._clock()) // BUCKET_SECONDS - HOUR_BUCKETS + 1
        self._write(set(), [], tracks, cutoff, prune=False)
        message = f"{self._db_path} was deleted while cortexd ran; recreated it from the figures in memory"
        self.warnings.append(message)
        log.warning("tracker: %s", message)

    def _write(self, forgotten: set[str], reborn: list[tuple[str, str, float]],
               batch: list[tuple[str, _ApiTrack, dict[int, Figures]]], cutoff: int, prune: bool) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for api in forgotten:
                for table in _TABLES:
                    db.execute(f"DELETE FROM {table} WHERE api = ?", (api,))
            db.executemany("INSERT INTO tracked_apis (api, model_type, since) VALUES (?, ?, ?)", reborn)
            for api, track, pending in batch:
                db.execute(
                    "INSERT INTO tracked_apis (api, model_type, since) VALUES (?, ?, ?) "
                    "ON CONFLICT (api) DO UPDATE SET model_type = excluded.model_type",
                    (api, track.model_type, track.since),
                )
                if track.model_type == CLASSIFICATION:
                    self._write_class(api, pending, cutoff)
                else:
                    self._write_reg(api, pending, cutoff)
            if prune:
                db.execute("DELETE FROM class_buckets WHERE minute < ?", (cutoff,))
                db.execute("DELETE FROM reg_buckets WHERE minute < ?", (cutoff,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write_class(self, api: str, pending: dict[int, Figures], cutoff: int) -> None:
        total: ClassFigures = {}
        bucket_rows: list[tuple[str, int, str, int]] = []
        for minute, figures in pending.items():
            _merge(CLASSIFICATION, total, figures)
            if minute >= cutoff:
                assert isinstance(figures, dict)
                bucket_rows.extend((api, minute, label, n) for label, n in figures.items())
        self._db.executemany(
            "INSERT INTO class_totals (api, label, n) VALUES (?, ?, ?) "
            "ON CONFLICT (api, label) DO UPDATE SET n = n + excluded.n",
            [(api, label, n) for label, n in total.items()],
        )
        self._db.executemany(
            "INSERT INTO class_buckets (api, minute, label, n) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (api, minute, label) DO UPDATE SET n = n + excluded.n",
            bucket_rows,
        )

    def _write_reg(self, api: str, pending: dict[int, Figures], cutoff: int) -> None:
        total = _empty(REGRESSION)
        bucket_rows: list[tuple[str, int, int, float, float, float]] = []
        for minute, figures in pending.items():
            _merge(REGRESSION, total, figures)
            if minute >= cutoff:
                assert isinstance(figures, list)
                bucket_rows.append((api, minute, int(figures[0]), figures[1], figures[2], figures[3]))
        assert isinstance(total, list)
        self._db.execute(
            "INSERT INTO reg_totals (api, count, sum, min, max) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (api) DO UPDATE SET count = count + excluded.count, sum = sum + excluded.sum, "
            "min = min(min, excluded.min), max = max(max, excluded.max)",
            (api, int(total[0]), total[1], total[2], total[3]),
        )
        self._db.executemany(
            "INSERT INTO reg_buckets (api, minute, count, sum, min, max) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (api, minute) DO UPDATE SET count = count + excluded.count, "
            "sum = sum + excluded.sum, min = min(min, excluded.min), max = max(max, excluded.max)",
            bucket_rows,
        )

    def _restore(self, forgotten: set[str], batch: list[tuple[str, _ApiTrack, dict[int, Figures]]],
                 cutoff: int) -> None:
        with self._lock:
            self._forgotten |= forgotten
            for api, track, unwritten in batch:
                if self._apis.get(api) is not track:
                    continue        # forgotten meanwhile: its deltas are moot
                for minute, figures in unwritten.items():
                    # Minutes past the hour only matter for the totals: fold them into one
                    # entry, so a database that stays broken for days does not grow memory.
                    key = minute if minute >= cutoff else _TOTALS_ONLY
                    _merge(track.model_type, _bucket(track.unwritten, key, track.model_type), figures)

    def _fresh(self, model_type: str, now: float) -> _ApiTrack:
        return _ApiTrack(model_type=model_type, key=None, since=now, total=_empty(model_type), minutes={}, pending={})

    def _load(self, api: str, model_type: str, now: float) -> _ApiTrack:
        db = self._db
        row = db.execute("SELECT model_type, since FROM tracked_apis WHERE api = ?", (api,)).fetchone()
        if row is None or row[0] != model_type:
            # Record `since` now, so "total since first deployed" holds even across a restart
            # that comes before the first prediction.
            db.execute("BEGIN")
            try:
                for table in _TABLES:
                    db.execute(f"DELETE FROM {table} WHERE api = ?", (api,))
                db.execute("INSERT INTO tracked_apis (api, model_type, since) VALUES (?, ?, ?)",
                           (api, model_type, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return self._fresh(model_type, now)
        track = self._fresh(model_type, float(row[1]))
        cutoff = int(now) // BUCKET_SECONDS - HOUR_BUCKETS + 1
        if model_type == CLASSIFICATION:
            total = track.total
            assert isinstance(total, dict)
            for label, n in db.execute("SELECT label, n FROM class_totals WHERE api = ?", (api,)):
                total[label] = int(n)
                if label != OTHER_LABEL and len(track.labels) < self._max_labels:
                    track.labels.add(label)
            for minute, label, n in db.execute(
                "SELECT minute, label, n FROM class_buckets WHERE api = ? AND minute >= ?", (api, cutoff)
            ):
                bucket = _bucket(track.minutes, int(minute), CLASSIFICATION)
                assert isinstance(bucket, dict)
                bucket[label] = int(n)
        else:
            reg = db.execute("SELECT count, sum, min, max FROM reg_totals WHERE api = ?", (api,)).fetchone()
            if reg is not None:
                track.total = _reg_row(reg)
            for minute, *rest in db.execute(
                "SELECT minute, count, sum, min, max FROM reg_buckets WHERE api = ? AND minute >= ?", (api, cutoff)
            ):
                track.minutes[int(minute)] = _reg_row(rest)
        return track

    def close(self) -> None:
        """Flush and close the database."""
        self.flush()
        with self._db_lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _older_part(track: _ApiTrack) -> Figures:
    """The total minus what the per-minute buckets hold (figures older than an hour)."""
    model_type = track.model_type
    if model_type == CLASSIFICATION:
        total = track.total
        assert isinstance(total, dict)
        older: ClassFigures = dict(total)
        for figures in track.minutes.values():
            assert isinstance(figures, dict)
            for label, n in figures.items():
                older[label] = older.get(label, 0) - n
        return {label: n for label, n in older.items() if n > 0}
    # Regression: count and sum subtract; min/max of the whole total are kept (they bound the part).
    reg = list(track.total)
    for figures in track.minutes.values():
        assert isinstance(figures, list)
        reg[0] -= figures[0]
        reg[1] -= figures[1]
    return reg if reg[0] > 0 else _empty(REGRESSION)


def open_tracker(db_path: str, **kwargs: Any) -> PredictionTracker:
    """The tracker on `db_path`; a file SQLite cannot read is moved aside (with the time in its
    name) and a fresh database started, so a corrupt file never stops the daemon."""
    try:
        return PredictionTracker(db_path, **kwargs)
    except (sqlite3.DatabaseError, OSError) as exc:
        aside = f"{db_path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        for suffix in ("", "-wal", "-shm"):
            try:
                os.replace(db_path + suffix, aside + suffix)
            except FileNotFoundError:
                pass
        tracker = PredictionTracker(db_path, **kwargs)
        message = f"{db_path} could not be read ({exc}); moved it to {aside} and started a new one"
        tracker.warnings.append(message)
        log.warning("tracker: %s", message)
        return tracker


def _reg_row(row: Any) -> RegFigures:
    count, total, low, high = row
    return [int(count), float(total),
            math.inf if low is None else float(low), -math.inf if high is None else float(high)]


def _bucket(buckets: dict[int, Figures], minute: int, model_type: str) -> Figures:
    figures = buckets.get(minute)
    if figures is None:
        figures = buckets[minute] = _empty(model_type)
    return figures


def _copy(figures: Figures) -> Figures:
    return dict(figures) if isinstance(figures, dict) else list(figures)
