"""Per-replica cgroup v2 memory limits, where the daemon owns a delegated cgroup subtree.

Under systemd with `Delegate=yes` the service's cgroup is the daemon's to manage. Then each
replica gets a child cgroup with `memory.max` = its API's `mem`, so the kernel enforces the
limit even between the daemon's once-a-second psutil readings, and `memory.events` tells,
when a replica dies, whether the kernel's OOM killer did it.

cgroup v2's "no internal processes" rule: a cgroup that hands the memory controller to its
children may hold no process itself. So the daemon first moves itself into a leaf child
`daemon`, then enables `+memory` in its cgroup's `cgroup.subtree_control`:

    <own cgroup>/                  cgroup.subtree_control: +memory
        daemon/                    the daemon's own process
        replica-<id>/              one replica (and its children): memory.max, memory.events

Anywhere else (cgroup v1, a read-only /sys/fs/cgroup, a cgroup shared with other processes,
no memory controller) it is a no-op, and the psutil limit in compute.memory_events is the
only enforcement. Every function takes the cgroup filesystem's root (and the text of
/proc/self/cgroup) as values, so tests run against a fake tree in a temporary folder.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("cortexd.cgroups")

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"
DAEMON_LEAF = "daemon"
REPLICA_PREFIX = "replica-"
DISABLE_ENV = "CORTEXD_CGROUPS"  # "0"/"off": never touch cgroups (psutil limits only)


# ---------------------------------------------------------------- pure parsing


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The cgroup v2 path of a process from the text of /proc/<pid>/cgroup ("0::/a/b" -> "/a/b").

    None when there is no unified-hierarchy line (a cgroup v1 only system).
    """
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return path.removesuffix(" (deleted)")
    return None


def parse_keyed(text: str) -> dict[str, int]:
    """A flat keyed file ("oom_kill 2\\nmax 5\\n", memory.events) as {key: value}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def replica_cgroup_name(replica_id: str) -> str:
    """A directory name for a replica id (ids are `<api>-<n>`; anything odd becomes '_')."""
    return REPLICA_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", replica_id)


def memory_max_value(limit: int | None) -> str:
    return "max" if limit is None else str(int(limit))


@dataclass(frozen=True)
class Delegation:
    """What the daemon may do with cgroups: `path` is its own cgroup's folder when usable."""

    path: str | None
    reason: str  # why not, or what is used


def check_delegation(
    root: str,
    proc_self_cgroup: str,
    pid: int,
    can_write: Callable[[str], bool] = lambda path: os.access(path, os.W_OK),
) -> Delegation:
    """Whether the cgroup holding `pid` is a cgroup v2 subtree the daemon may manage alone.

    Reads only; changes nothing. Usable when: the root is a cgroup2 mount; the process's own
    cgroup is not the root (that is the whole machine's) and offers the memory controller;
    its folder, cgroup.procs and cgroup.subtree_control are writable; and no other process
    is in it (otherwise moving ourselves out and enabling memory would need to move others).
    A daemon restarted inside a subtree it already set up (its own cgroup is then the
    `daemon` leaf) is not nested further: that leaf's parent is checked instead.
    """
    if not os.path.isfile(os.path.join(root, "cgroup.controllers")):
        return Delegation(None, f"{root} is not a cgroup v2 mount (cgroup v1 or hybrid)")
    rel = own_cgroup(proc_self_cgroup)
    if rel is None:
        return Delegation(None, "the daemon is in no cgroup v2 group (/proc/self/cgroup has no 0:: line)")
    if rel == "/":
        return Delegation(None, "the daemon runs in the root cgroup, which is the machine's, not delegated")
    path = os.path.join(root, rel.lstrip("/"))
    if os.path.basename(rel) == DAEMON_LEAF and _memory_enabled(os.path.dirname(path)):
        path = os.path.dirname(path)  # our own leaf from an earlier start: manage its parent again
    controllers = _read(os.path.join(path, "cgroup.controllers"))
    if controllers is None:
        return Delegation(None, f"{path}: cgroup.controllers cannot be read")
    if "memory" not in controllers.split():
        listed = controllers.strip() or "none"
        return Delegation(None, f"{path}: the memory controller is not delegated (controllers: {listed})")
    for target in (path, os.path.join(path, "cgroup.procs"), os.path.join(path, "cgroup.subtree_control")):
        if not can_write(target):
            return Delegation(None, f"{target} is not writable (run under systemd with Delegate=yes)")
    others = [p for p in _pids(os.path.join(path, "cgroup.procs")) if p != pid]
    if others:
        listed = ", ".join(map(str, others[:5]))
        return Delegation(None, f"{path} also holds other processes ({listed}): not delegated to the daemon alone")
    return Delegation(path, f"cgroup v2 memory.max per replica under {path}")


def _memory_enabled(path: str) -> bool:
    text = _read(os.path.join(path, "cgroup.subtree_control"))
    return text is not None and "memory" in text.split()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _write(path: str, value: str) -> None:
    # one value per write(2), as cgroupfs wants; on a fake tree "w" keeps the last value
    with open(path, "w") as f:
        f.write(value)


def _pids(procs_file: str) -> list[int]:
    text = _read(procs_file) or ""
    return [int(line) for line in text.split() if line.isdigit()]


# ---------------------------------------------------------------- changes


def take_over(path: str, pid: int) -> None:
    """Move `pid` (the daemon) into the leaf `daemon` and give children the memory controller.

    Raises OSError when the kernel refuses (the caller falls back to psutil limits).
    """
    leaf = os.path.join(path, DAEMON_LEAF)
    os.makedirs(leaf, exist_ok=True)
    _write(os.path.join(leaf, "cgroup.procs"), str(pid))
    if not _memory_enabled(path):
        _write(os.path.join(path, "cgroup.subtree_control"), "+memory")


def create_replica_cgroup(path: str, replica_id: str, limit: int | None) -> str:
    """A child cgroup for one replica with memory.max = limit ("max" without one).

    Swap is switched off where the kernel offers memory.swap.max (otherwise a replica over
    its limit would be swapped out and slowed instead of stopped), and memory.oom.group is
    set so that an OOM kill takes the replica's whole process tree, not one worker of it.
    """
    cg = os.path.join(path, replica_cgroup_name(replica_id))
    os.makedirs(cg, exist_ok=True)
    _write(os.path.join(cg, "memory.max"), memory_max_value(limit))
    for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
        if os.path.exists(os.path.join(cg, name)):
            _write(os.path.join(cg, name), value)
    return cg


def attach(cg: str, pid: int) -> None:
    _write(os.path.join(cg, "cgroup.procs"), str(pid))


def oom_kills(cg: str) -> int:
    """How many processes the kernel's OOM killer killed in this cgroup (memory.events)."""
    return parse_keyed(_read(os.path.join(cg, "memory.events")) or "").get("oom_kill", 0)


def memory_peak(cg: str) -> int | None:
    """The cgroup's highest memory use (memory.peak, Linux >= 5.19), None where not offered."""
    text = _read(os.path.join(cg, "memory.peak"))
    return int(text.split()[0]) if text and text.split()[0].isdigit() else None


def remove_cgroup(cg: str) -> bool:
    """Kill what is left in the cgroup (cgroup.kill, Linux >= 5.14) and remove it.

    False when it is still busy (processes dying right now): the caller tries again later.
    """
    kill = os.path.join(cg, "cgroup.kill")
    if os.path.exists(kill) and _pids(os.path.join(cg, "cgroup.procs")):
        try:
            _write(kill, "1")
        except OSError:
            pass
    try:
        _rmdir_cgroup(cg)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def _rmdir_cgroup(cg: str) -> None:
    try:
        os.rmdir(cg)  # cgroupfs removes a cgroup together with its interface files
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        # Only a plain folder answers ENOTEMPTY (cgroupfs says EBUSY): a fake tree in a test,
        # whose "interface files" are regular files. Remove them and try once more.
        for name in os.listdir(cg):
            full = os.path.join(cg, name)
            if os.path.isfile(full):
                os.unlink(full)
        os.rmdir(cg)


# ---------------------------------------------------------------- the daemon's view


@dataclass(frozen=True)
class KernelOom:
    """A replica's cgroup recorded OOM kills: what the supervisor reports."""

    kills: int
    peak_bytes: int | None
    limit_bytes: int | None


class ReplicaCgroups:
    """The daemon's replica cgroups under its delegated cgroup `path`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._groups: dict[str, tuple[str, int | None]] = {}  # replica id -> (folder, limit)
        self._busy: set[str] = set()  # folders that could not be removed yet

    def attach(self, replica_id: str, pid: int, limit: int | None) -> str:
        """Create the replica's cgroup and move `pid` into it (right after spawn)."""
        self._retry_removals()
        cg = create_replica_cgroup(self.path, replica_id, limit)
        self._groups[replica_id] = (cg, limit)
        attach(cg, pid)
        return cg

    def finish(self, replica_id: str) -> KernelOom | None:
        """After the replica exited: whether the kernel OOM-killed in its cgroup; removes it."""
        entry = self._groups.pop(replica_id, None)
        if entry is None:
            return None
        cg, limit = entry
        try:
            kills, peak = oom_kills(cg), memory_peak(cg)
        except (OSError, ValueError):
            kills, peak = 0, None
        try:
            if not remove_cgroup(cg):
                self._busy.add(cg)
        except OSError as exc:
            log.warning("cannot remove %s: %s", cg, exc)
        return KernelOom(kills, peak, limit) if kills > 0 else None

    def _retry_removals(self) -> None:
        for cg in list(self._busy):
            try:
                if remove_cgroup(cg):
                    self._busy.discard(cg)
            except OSError:
                self._busy.discard(cg)


def remove_stale_replica_cgroups(path: str) -> None:
    """Replica cgroups left by an earlier daemon in the same subtree (it was SIGKILLed)."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        full = os.path.join(path, name)
        if name.startswith(REPLICA_PREFIX) and os.path.isdir(full):
            try:
                remove_cgroup(full)
            except OSError:
                pass


def open_replica_cgroups(
    env: Mapping[str, str] | None = None,
    root: str = CGROUP_ROOT,
    proc_self_cgroup: str = PROC_SELF_CGROUP,
    pid: int | None = None,
) -> ReplicaCgroups | None:
    """Set up per-replica cgroups when the daemon's cgroup is delegated to it; else None.

    Logs which memory enforcement is in use. Never raises: anything unexpected means psutil
    limits only.
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    if env.get(DISABLE_ENV, "").strip().lower() in ("0", "off", "no", "false"):
        log.info("memory limits: psutil readings only (%s=%s)", DISABLE_ENV, env[DISABLE_ENV])
        return None
    text = _read(proc_self_cgroup)
    if text is None:
        log.info("memory limits: psutil readings only (%s cannot be read)", proc_self_cgroup)
        return None
    found = check_delegation(root, text, pid)
    if found.path is None:
        log.info("memory limits: psutil readings only (%s)", found.reason)
        return None
    try:
        take_over(found.path, pid)
    except OSError as exc:
        log.warning("memory limits: psutil readings only (cannot set up %s: %s)", found.path, exc)
        return None
    remove_stale_replica_cgroups(found.path)
    log.info("memory limits: %s, and psutil readings", found.reason)
    return ReplicaCgroups(found.path)
