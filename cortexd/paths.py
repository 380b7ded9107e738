"""Where cortexd keeps its files: systemd's directories, root's defaults, or per-user ones.

Every folder here is checked and created by cortexd/safefs.py (`prepare_daemon_dirs`): owned
by the daemon's user, writable by no one else, mode 0750 when cortexd creates it. Nothing is
ever kept at a predictable path in a shared folder such as /tmp: replica sockets go to a
folder made afresh, with an unpredictable name, at every start (`new_replica_socket_dir`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
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
# A replica's socket is <folder>/<replica id>.sock, and AF_UNIX paths hold 107 bytes: the
# folder stays within this many so that ids ("<api>-<n>": API names up to 63 characters, a
# counter up to 6 digits) fit: 31 + len("/") + 63 + len("-999999.sock") = 107.
MAX_SOCKET_DIR = 31
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


LOCK_NAME = ".lock"


@dataclass
class SocketDir:
    """This start's replica socket folder, and the lock that marks it as in use: a flock the
    kernel drops when the daemon dies, however it dies."""

    path: str
    lock_fd: int

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            os.close(self.lock_fd)
        except OSError:
            pass


def new_replica_socket_dir(runtime_dir: str) -> SocketDir:
    """A new private folder (0700, unpredictable name) for this start's replica sockets.
    Leftovers of earlier starts (their daemon is gone: nobody holds their lock) are removed."""
    parent = socket_dir_parent(runtime_dir)
    prefix = SOCKET_DIR_PREFIX if parent == runtime_dir else TMP_SOCKET_DIR_PREFIX
    remove_stale_socket_dirs(parent, prefix)
    path = safefs.private_tempdir(parent, prefix)
    # Locked under a temporary name, then renamed: a folder with LOCK_NAME is always locked
    # while its daemon lives, so a scan never mistakes a starting daemon's folder for stale.
    pending = os.path.join(path, LOCK_NAME + ".new")
    fd = safefs.create_new(pending, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(pending, os.path.join(path, LOCK_NAME))
    return SocketDir(path, fd)


def remove_stale_socket_dirs(parent: str, prefix: str) -> list[str]:
    """Remove socket folders of ours (owner, prefix) whose lock nobody holds: a daemon killed
    with SIGKILL leaves its folder (its replicas died with it)."""
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
        if stat.S_ISDIR(st.st_mode) and st.st_uid == euid and _abandoned(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _abandoned(folder: str) -> bool:
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no lock yet (being made) or not ours to judge: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its daemon is running
    finally:
        os.close(fd)
    return True
