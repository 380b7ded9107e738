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
