"""Where cortexd keeps its files: systemd's directories, root's defaults, or per-user ones.

Every folder here is checked and created by cortexd/safefs.py (`prepare_daemon_dirs`): owned
by the daemon's user, writable by no one else, mode 0750 when cortexd creates it. Nothing is
ever kept at a predictable path in a shared folder such as /tmp: replica sockets go to a
folder made afresh, with an unpredictable name, at every start (`new_replica_socket_dir`).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
from dataclasses import dataclass

from cortexd import safefs

SYSTEM_CONFIG = "/etc/cortexd/cortex.yaml"


def _is_root() -> bool:
    return os.geteuid() == 0


def default_state_dir() -> str:
    # systemd sets these from StateDirectory= etc.; they win over our own defaults.
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    if _is_root():
        return "/var/lib/cortexd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "cortexd")


def default_runtime_dir() -> str:
    if os.environ.get("CORTEXD_RUNTIME_DIR"):
        return os.environ["CORTEXD_RUNTIME_DIR"]
    if os.environ.get("RUNTIME_DIRECTORY"):
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    if _is_root():
        return "/run/cortexd"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "cortexd")
    # No per-user runtime folder (no login session): a folder of the user's own, never a
    # predictable name in /tmp that another user could create first.
    return os.path.join(default_state_dir(), "run")


def default_log_dir() -> str:
    if os.environ.get("LOGS_DIRECTORY"):
        return os.environ["LOGS_DIRECTORY"].split(":")[0]
    if _is_root():
        return "/var/log/cortexd"
    return os.path.join(default_state_dir(), "log")


def default_config() -> str:
    if _is_root() or os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return "cortex.yaml"


def control_socket(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, "control.sock")


# ---------------------------------------------------------------- making the folders

RUNTIME_GROUP = "cortexd"  # members may use the control socket (the CLI)
# A replica's socket is <folder>/<replica id>.sock, and AF_UNIX paths end at 108 bytes: the
# folder stays within this many so that ids ("<api>-<n>", API names up to 63 characters) fit.
MAX_SOCKET_DIR = 34
SOCKET_DIR_PREFIX = "r-"
TMP_SOCKET_DIR_PREFIX = "cortexd-r-"
STALE_SCAN_LIMIT = 100


@dataclass(frozen=True)
class DaemonDirs:
    state: str
    runtime: str
    log: str


def prepare_daemon_dirs(state_dir: str, runtime_dir: str, log_dir: str) -> DaemonDirs:
    """Check (or create) the daemon's three folders; their resolved paths.

    Raises safefs.UnsafePath naming the folder and the fix; the daemon prints it and exits 2.
    """
    return DaemonDirs(
        state=safefs.ensure_dir(state_dir, safefs.DIR_MODE),
        runtime=safefs.ensure_dir(runtime_dir, safefs.DIR_MODE, group=RUNTIME_GROUP),
        log=safefs.ensure_dir(log_dir, safefs.DIR_MODE),
    )


def socket_dir_parent(runtime_dir: str, tmp: str = "/tmp") -> str:
    """Where this start's replica socket folder is made: the runtime folder, or /tmp when the
    runtime folder's path is too long for socket names (a fresh 0700 folder with an
    unpredictable name is as safe there: mkdir never reuses what another user made)."""
    if len(os.path.join(runtime_dir, SOCKET_DIR_PREFIX + "xxxxxxxx")) <= MAX_SOCKET_DIR:
        return runtime_dir
    return tmp


def new_replica_socket_dir(runtime_dir: str) -> str:
    """A new private folder (0700, unpredictable name) for this start's replica sockets.
    Leftovers of earlier starts that no replica listens in any more are removed first."""
    parent = socket_dir_parent(runtime_dir)
    prefix = SOCKET_DIR_PREFIX if parent == runtime_dir else TMP_SOCKET_DIR_PREFIX
    remove_stale_socket_dirs(parent, prefix)
    return safefs.private_tempdir(parent, prefix)


def remove_stale_socket_dirs(parent: str, prefix: str) -> list[str]:
    """Remove socket folders of ours (owner, prefix) in which no socket accepts a connection:
    a daemon killed with SIGKILL leaves its folder; its replicas died with it."""
    removed: list[str] = []
    euid = os.geteuid()
    try:
        names = sorted(n for n in os.listdir(parent) if n.startswith(prefix))[:STALE_SCAN_LIMIT]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid:
            continue
        if any(_listening(os.path.join(path, s)) for s in _names(path) if s.endswith(".sock")):
            continue  # another daemon (same runtime folder) is using it
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _names(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _listening(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    try:
        sock.connect(path)
        return True
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        sock.close()
