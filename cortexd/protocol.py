"""What the daemon and its replica processes agree on: exit codes, paths, status messages."""

from __future__ import annotations

# A replica that cannot load its predictor exits with this code, so the supervisor backs off
# instead of restarting it in a tight loop (gunicorn's WORKER_BOOT_ERROR).
EXIT_LOAD_FAILED = 3
# A replica that found its parent gone (the daemon died before PDEATHSIG was armed).
EXIT_ORPHANED = 4

PREDICT_PATH = "/predict"
INFO_PATH = "/info"

# Status messages: one JSON object per line on the status pipe (fd given by --status-fd).
EVENT_READY = "ready"
EVENT_LOAD_FAILED = "load_failed"


def header_value(lower_block: bytes | bytearray, name: bytes) -> bytes | None:
    """The value of header `name` (lowercase, e.g. b"content-length") in a lowercased header
    block that starts at its first line's CRLF or earlier; None when absent. Both ends of the
    daemon-replica hop parse heads with it: they only ever need one or two headers."""
    at = lower_block.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = lower_block.find(b"\r\n", start)
    return bytes(lower_block[start : end if end >= 0 else len(lower_block)]).strip()
