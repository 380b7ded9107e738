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
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cortexd.daemon.observe.tracker_db import TrackerDb
from cortexd.daemon.observe.tracker_figures import (
    BUCKET_SECONDS,
    CLASSIFICATION,
    HOUR_BUCKETS,
    OTHER_LABEL,
    REGRESSION,
    TOTALS_ONLY,
    WARN_INTERVAL_S,
    ApiTrack,
    Figures,
    Skip,
    bucket,
    copy,
    empty,
    extract_value,
    merge,
    older_part,
    public,
)

if TYPE_CHECKING:
    from cortexd.config import Tracker

log = logging.getLogger("cortexd.tracker")

# Parsing the answer is most of what tracking costs a request: ujson (installed with Sanic)
# does it about 5x faster than json (bench/README.md: the tracker's cost per request).
try:
    from ujson import loads as _loads
except ImportError:  # pragma: no cover - Sanic depends on ujson on CPython
    _loads = json.loads


class PredictionTracker:
    """Tracks predictions of the registered APIs; see the module docstring."""

    def __init__(self, db_path: str, clock: Callable[[], float] = time.time, max_labels: int = 100) -> None:
        self._clock = clock
        self._max_labels = max_labels
        self._lock = threading.Lock()        # guards _apis contents; never held across I/O
        self._db_lock = threading.Lock()     # serialises use of the one connection (flush, register, forget)
        self._apis: dict[str, ApiTrack] = {}
        self._forgotten: set[str] = set()    # rows to delete at the next flush
        self._last_prune_minute: int | None = None
        self._closed = False
        self.warnings: list[str] = []  # what happened to the database file (shown by `get`, /metrics)
        self._store = TrackerDb(db_path, max_labels)

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
                loaded = TrackerDb.fresh(model_type, now)
            else:
                loaded = self._store.load(api, model_type, now)
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
        except Skip as skip:
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

    def _skipped(self, api: str, track: ApiTrack, reason: str) -> None:
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
            total = copy(track.total)
            hour = empty(model_type)
            for buckets in (track.minutes, track.pending):
                for minute, figures in buckets.items():
                    if buckets is track.pending:
                        merge(model_type, total, figures)
                    if minute >= cutoff:
                        merge(model_type, hour, figures)
            since = track.since
        return {
            "model_type": model_type,
            "total": public(model_type, total),
            "last_hour": public(model_type, hour),
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
                batch: list[tuple[str, ApiTrack, dict[int, Figures]]] = []
                for api, track in self._apis.items():
                    # Work under the lock is bounded: pending has a minute or two of at most
                    # max_labels + 1 labels, and the sweep below sees at most ~61 keys.
                    pending = track.pending
                    if pending:
                        track.pending = {}
                        model_type = track.model_type
                        for minute, figures in pending.items():
                            merge(model_type, track.total, figures)
                            merge(model_type, bucket(track.minutes, minute, model_type), figures)
                            merge(model_type, bucket(track.unwritten, minute, model_type), figures)
                    for minute in [m for m in track.minutes if m < cutoff]:
                        del track.minutes[minute]
                    if track.unwritten:
                        batch.append((api, track, track.unwritten))
                        track.unwritten = {}
            prune = self._last_prune_minute != now_minute
            if self._store.file_replaced():
                self._recreate()
                return
            if not forgotten and not batch and not prune:
                return
            try:
                self._store.write(forgotten, reborn, batch, cutoff, prune)
            except sqlite3.Error as exc:
                self._restore(forgotten, batch, cutoff)
                log.error("tracker: cannot write %s: %s (will retry)", self._store.path, exc)
                return
            if prune:
                self._last_prune_minute = now_minute

    def _recreate(self) -> None:
        """Start a new database file and write every figure held in memory into it (they
        include everything flushed so far), so deleting tracker.db loses nothing."""
        self._store.reconnect()
        with self._lock:
            tracks = [(api, track, {**track.minutes, TOTALS_ONLY: older_part(track)})
                      for api, track in self._apis.items()]
            for _, track, _ in tracks:
                track.unwritten = {}
        cutoff = int(self._clock()) // BUCKET_SECONDS - HOUR_BUCKETS + 1
        self._store.write(set(), [], tracks, cutoff, prune=False)
        message = f"{self._store.path} was deleted while cortexd ran; recreated it from the figures in memory"
        self.warnings.append(message)
        log.warning("tracker: %s", message)

    def _restore(self, forgotten: set[str], batch: list[tuple[str, ApiTrack, dict[int, Figures]]],
                 cutoff: int) -> None:
        with self._lock:
            self._forgotten |= forgotten
            for api, track, unwritten in batch:
                if self._apis.get(api) is not track:
                    continue        # forgotten meanwhile: its deltas are moot
                for minute, figures in unwritten.items():
                    # Minutes past the hour only matter for the totals: fold them into one
                    # entry, so a database that stays broken for days does not grow memory.
                    key = minute if minute >= cutoff else TOTALS_ONLY
                    merge(track.model_type, bucket(track.unwritten, key, track.model_type), figures)

    def close(self) -> None:
        """Flush and close the database."""
        self.flush()
        with self._db_lock:
            if not self._closed:
                self._closed = True
                self._store.close()


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


