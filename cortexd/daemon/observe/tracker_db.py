"""The tracker's SQLite file: its schema, writing flushed figures, loading an API's figures.

One connection, used under the tracker's own lock (tracker.py): the daemon registers from
the loop and flushes from a thread. The file holds what predictions said: 0640 in a 0750
folder whatever the umask (cortexd/safefs.py); SQLite gives its -wal and -shm files the
database file's mode.
"""

from __future__ import annotations

import os
import sqlite3

from cortexd import safefs
from cortexd.daemon.observe.tracker_figures import (
    BUCKET_SECONDS,
    CLASSIFICATION,
    HOUR_BUCKETS,
    OTHER_LABEL,
    REGRESSION,
    ApiTrack,
    ClassFigures,
    Figures,
    bucket,
    empty,
    merge,
    reg_row,
)

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



class TrackerDb:
    def __init__(self, path: str, max_labels: int) -> None:
        self.path = path
        self._max_labels = max_labels
        self._db, self._inode = self._connect()

    def reconnect(self) -> None:
        """A new file (the old one was deleted under us)."""
        self._db.close()
        self._db, self._inode = self._connect()

    def close(self) -> None:
        self._db.close()

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        # The database holds what predictions said: 0640 in a 0750 folder whatever the umask.
        # SQLite gives its -wal and -shm files the database file's mode.
        parent = safefs.ensure_dir(os.path.dirname(os.path.abspath(self.path)), safefs.DIR_MODE)
        self.path = os.path.join(parent, os.path.basename(self.path))
        safefs.prepare_file(self.path, safefs.FILE_MODE)
        for suffix in ("-wal", "-shm"):
            if os.path.lexists(self.path + suffix):
                safefs.prepare_file(self.path + suffix, safefs.FILE_MODE)
        # check_same_thread=False: the daemon registers from the loop and flushes from a thread;
        # _db_lock makes that use sequential.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db, os.stat(self.path).st_ino

    def file_replaced(self) -> bool:
        """The database file was deleted (or swapped) under us: writes would go nowhere."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def write(self, forgotten: set[str], reborn: list[tuple[str, str, float]],
               batch: list[tuple[str, ApiTrack, dict[int, Figures]]], cutoff: int, prune: bool) -> None:
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
            merge(CLASSIFICATION, total, figures)
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
        total = empty(REGRESSION)
        bucket_rows: list[tuple[str, int, int, float, float, float]] = []
        for minute, figures in pending.items():
            merge(REGRESSION, total, figures)
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

    @staticmethod
    def fresh(model_type: str, now: float) -> ApiTrack:
        return ApiTrack(model_type=model_type, key=None, since=now, total=empty(model_type), minutes={}, pending={})

    def load(self, api: str, model_type: str, now: float) -> ApiTrack:
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
            return self.fresh(model_type, now)
        track = self.fresh(model_type, float(row[1]))
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
                figures = bucket(track.minutes, int(minute), CLASSIFICATION)
                assert isinstance(figures, dict)
                figures[label] = int(n)
        else:
            reg = db.execute("SELECT count, sum, min, max FROM reg_totals WHERE api = ?", (api,)).fetchone()
            if reg is not None:
                track.total = reg_row(reg)
            for minute, *rest in db.execute(
                "SELECT minute, count, sum, min, max FROM reg_buckets WHERE api = ? AND minute >= ?", (api, cutoff)
            ):
                track.minutes[int(minute)] = reg_row(rest)
        return track
