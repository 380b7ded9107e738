"""Per-API log files: replica output and the daemon's messages about the API.

Lines are prefixed with the time and the replica id (or "cortexd"), written to
<log_dir>/<api>.log and rotated by size. The last lines of each replica are also kept in
memory, so a crash's reason (its traceback) can go into the API's last_error.

`write` is called on the daemon's event loop for every line a replica prints; it only
queues the line. A writer thread does the file I/O (write, flush, rotate), so a chatty
replica or a slow disk never stalls the proxy.

Logs may hold request bodies (`?debug=true`) and tracebacks with data in them: the folder is
0750 and every file 0640 whatever the umask, opened without following symlinks and only if
it is the daemon's own file (cortexd/safefs.py).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from typing import IO

from cortexd import safefs

log = logging.getLogger("cortexd.logs")

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
TAIL_LINES = 40


def log_path(log_dir: str, api: str) -> str:
    return os.path.join(log_dir, f"{api}.log")


class ApiLogs:
    def __init__(self, log_dir: str, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.log_dir = safefs.ensure_dir(log_dir, safefs.DIR_MODE)
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, IO[str]] = {}  # the writer thread's alone
        self._tails: dict[str, deque[str]] = {}  # the event loop's alone
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_lines, name="cortexd-logs", daemon=True)
        self._writer.start()

    def write(self, api: str, source: str, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        self._queue.put((api, f"{stamp} [{source}] {line}\n"))
        if source != "cortexd":
            tail = self._tails.get(source)
            if tail is None:
                tail = self._tails[source] = deque(maxlen=TAIL_LINES)
            tail.append(line)

    def recent(self, replica_id: str) -> list[str]:
        return list(self._tails.get(replica_id, ()))

    def forget_replica(self, replica_id: str) -> None:
        self._tails.pop(replica_id, None)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer (bounded: a stuck disk does not hold shutdown)."""
        self._queue.put(None)
        self._writer.join(timeout)

    # -- the writer thread -------------------------------------------------------------------

    def _write_lines(self) -> None:
        while True:
            item = self._queue.get()
            touched: set[str] = set()
            while item is not None:
                try:
                    self._append(*item)
                    touched.add(item[0])
                except OSError as exc:  # a full disk loses lines, never the daemon
                    log.error("cannot write the log of %s: %s", item[0], exc)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            for api in touched:  # one flush per burst, not per line
                self._flush(api)
            if item is None:
                for f in self._files.values():
                    f.close()
                self._files.clear()
                return

    def _append(self, api: str, text: str) -> None:
        f = self._file(api)
        f.write(text)
        if f.tell() > self.max_bytes:
            self._rotate(api)

    def _flush(self, api: str) -> None:
        f = self._files.get(api)
        if f is not None:
            try:
                f.flush()
            except OSError as exc:
                log.error("cannot write the log of %s: %s", api, exc)

    def _file(self, api: str) -> IO[str]:
        f = self._files.get(api)
        if f is None:
            f = self._files[api] = safefs.open_append(log_path(self.log_dir, api), safefs.FILE_MODE)
        return f

    def _rotate(self, api: str) -> None:
        self._files.pop(api).close()
        base = log_path(self.log_dir, api)
        for n in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{base}.{n}"):
                os.replace(f"{base}.{n}", f"{base}.{n + 1}")
        os.replace(base, f"{base}.1")


def read_tail(path: str, lines: int) -> list[str]:
    """The last `lines` lines of a file, read from the end (logs can be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block = 8192
            data = b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
                block *= 2
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]
