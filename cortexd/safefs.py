"""Folders and files cortexd makes for itself, made so that no other local user can steer them.

cortexd runs as root (or as its own user under systemd) and writes logs, a database,
snapshots that replicas import, and sockets. Another local user who could create, swap or
link any of these could read request bodies or have the daemon's user run their code. So:

- A folder cortexd keeps files in (state, runtime, log, and the folders inside them) is a
  real folder owned by the daemon's user and writable by no one else. Every folder above it
  belongs to root or to that user and, unless it is sticky like /tmp, is writable by no one
  else either; a symbolic link on the way must belong to root or that user. A folder that
  fails is refused with `UnsafePath`, whose message names the folder and the fix.
- A missing folder is created with exactly the mode asked (chmod after mkdir: the umask can
  neither widen nor narrow it). An existing one keeps its owner; read and search bits beyond
  the mode asked are taken away (such a folder is cortexd's alone).
- Files are opened with O_NOFOLLOW (a planted symlink fails instead of redirecting a write),
  new files with O_EXCL (nothing pre-existing is reused), and files that are reused (logs, the
  tracker database) must be regular files of the daemon's user with a single link, and get
  their mode set exactly.

`ensure_dir` returns the folder's resolved path: callers use that, so a symlink swapped after
the check cannot redirect them.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
import tempfile
from dataclasses import dataclass
from typing import IO

log = logging.getLogger("cortexd.safefs")

DIR_MODE = 0o750   # state, log, runtime and the folders inside them
FILE_MODE = 0o640  # logs, tracker.db, snapshot files
PRIVATE_DIR_MODE = 0o700  # replica sockets
PARENT_MODE = 0o755  # folders above cortexd's own that it has to create (e.g. ~/.local/state)


class UnsafePath(Exception):
    """A folder or file cortexd would use could be controlled by another user; str() says
    which one, why, and what to do."""


@dataclass(frozen=True)
class Entry:
    """What the checks need to know of one path (from lstat/stat): pure data for tests."""

    path: str
    uid: int
    mode: int  # st_mode, file type bits included

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> Entry:
        return cls(path, st.st_uid, st.st_mode)


def user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


# ---------------------------------------------------------------- pure decisions


def own_dir_problem(entry: Entry, euid: int) -> str | None:
    """Why the folder cortexd keeps its files in cannot be used, or None."""
    path, mode = entry.path, entry.mode
    if stat.S_ISLNK(mode):  # only reached when a caller passes lstat of the resolved path
        return f"{path} is a symbolic link; pass the folder it points to"
    if not stat.S_ISDIR(mode):
        return f"{path} is not a folder; remove it or choose another path"
    if entry.uid != euid:
        return (
            f"{path} belongs to {user_name(entry.uid)}, not to {user_name(euid)} who runs cortexd, so that "
            f"user could plant or swap files in it; remove it (rm -r {path}) and cortexd creates it, "
            "or choose another folder"
        )
    if stat.S_IMODE(mode) & 0o022:
        who = "everyone" if stat.S_IMODE(mode) & 0o002 else "its group"
        return (
            f"{path} is writable by {who} (mode {stat.S_IMODE(mode):04o}), so another user could plant "
            f"or swap files in it; make it private: chmod go-w {path}"
        )
    return None


def parent_dir_problem(entry: Entry, euid: int) -> str | None:
    """Why a folder above cortexd's own makes it unsafe, or None. Root's and the daemon
    user's folders are trusted; so is a world-writable one if it is sticky (/tmp), since
    there nobody may rename or remove another's entries. (Group-writable system folders such
    as Ubuntu's /var/log, root:syslog 0775, are accepted: their group is a system one.)"""
    path, mode = entry.path, entry.mode
    if entry.uid not in (0, euid):
        return (
            f"{path} belongs to {user_name(entry.uid)}, who could move the folders inside it; "
            "keep cortexd's folders under folders of root or of the user running cortexd"
        )
    if stat.S_IMODE(mode) & 0o002 and not mode & stat.S_ISVTX:
        return (
            f"{path} is writable by everyone and not sticky (mode {stat.S_IMODE(mode):04o}), so anyone "
            f"could swap the folders inside it; fix it (chmod o-w {path}, or chmod +t for a shared "
            "temporary folder) or keep cortexd's folders elsewhere"
        )
    return None


def link_problem(entry: Entry, euid: int) -> str | None:
    """A symbolic link on the way to a folder: only root's and the daemon user's are followed."""
    if stat.S_ISLNK(entry.mode) and entry.uid not in (0, euid):
        return (
            f"{entry.path} is a symbolic link made by {user_name(entry.uid)}, who could point it "
            f"anywhere; remove it (rm {entry.path}) or pass the real folder"
        )
    return None


def reused_file_problem(path: str, st: os.stat_result, euid: int) -> str | None:
    """Why an existing file cortexd appends to (a log, the database) cannot be reused, or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file; remove it"
    if st.st_uid != euid:
        return f"{path} belongs to {user_name(st.st_uid)}, not to {user_name(euid)}; remove it (rm {path})"
    if st.st_nlink != 1:
        # A hard link planted to another file would make our writes land there.
        return f"{path} has {st.st_nlink} hard links; cortexd writes only files of its own: remove it (rm {path})"
    return None


def tightened_mode(mode: int, wanted: int) -> int:
    """The permission bits of an existing folder with anything beyond `wanted` taken away."""
    return stat.S_IMODE(mode) & (wanted | stat.S_ISGID)  # setgid kept: group inheritance


# ---------------------------------------------------------------- folders


def _components(path: str) -> list[str]:
    """"/a/b/c" -> ["/a", "/a/b", "/a/b/c"]."""
    out: list[str] = []
    current = os.sep
    for part in path.split(os.sep):
        if part:
            current = os.path.join(current, part)
            out.append(current)
    return out


def _check_links(path: str, euid: int) -> None:
    for comp in _components(os.path.abspath(path)):
        try:
            st = os.lstat(comp)
        except FileNotFoundError:
            return  # the rest does not exist yet: created below, under checked folders
        except NotADirectoryError:
            return
        problem = link_problem(Entry.of(comp, st), euid)
        if problem:
            raise UnsafePath(problem)


def _check_parents(real: str, euid: int, deepest: str | None = None) -> None:
    """Check the folders above `real` (only down to `deepest` when given: the rest is missing)."""
    for comp in [os.sep] + _components(deepest or os.path.dirname(real)):
        problem = parent_dir_problem(Entry.of(comp, os.stat(comp)), euid)
        if problem:
            raise UnsafePath(f"cannot use {real}: {problem}")


def _mkdir_exact(path: str, mode: int) -> bool:
    """Create `path` with exactly `mode`; False if it already existed."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)  # the umask may have taken bits away
    return True


def ensure_dir(path: str, mode: int = DIR_MODE, *, group: str | None = None) -> str:
    """Make sure `path` is a folder only the daemon's user controls; create it (and missing
    folders above it, with PARENT_MODE) when missing. Returns the resolved path.

    `group`: a group name that gets the folder as its group when cortexd creates it and the
    group exists (the runtime folder: members of "cortexd" reach the control socket).
    Raises UnsafePath (see the module docstring) or OSError when it cannot be created.
    """
    euid = os.geteuid()
    path = os.path.abspath(path)
    _check_links(path, euid)
    real = os.path.realpath(path)
    missing: list[str] = []
    probe = real
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    if missing:
        _check_parents(real, euid, deepest=probe)  # the deepest existing folder and above
        for created in reversed(missing):
            _mkdir_exact(created, mode if created == real else PARENT_MODE)
        if group is not None:
            _chgrp(real, group)
    _check_parents(real, euid)
    st = os.lstat(real)
    problem = own_dir_problem(Entry.of(real, st), euid)
    if problem:
        raise UnsafePath(problem)
    narrowed = tightened_mode(st.st_mode, mode)
    if narrowed != stat.S_IMODE(st.st_mode):
        os.chmod(real, narrowed)
        log.info("made %s private (mode %04o -> %04o)", real, stat.S_IMODE(st.st_mode), narrowed)
    return real


def _chgrp(path: str, group: str) -> None:
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except (KeyError, PermissionError):
        pass  # no such group here (development, tests), or not ours to give


def private_tempdir(parent: str | None, prefix: str) -> str:
    """A new folder with an unpredictable name, mode 0700, made by mkdir (never reused)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


# ---------------------------------------------------------------- files


_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def create_new(path: str, mode: int = FILE_MODE) -> int:
    """A new file, opened for writing: fails if anything (a file, a symlink) is there already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    os.fchmod(fd, mode)
    return fd


def open_reused(path: str, flags: int, mode: int = FILE_MODE) -> int:
    """Open (creating if missing) a file cortexd keeps across runs, e.g. a log to append to.

    Refuses a symlink, another user's file, or a file with other hard links; sets `mode`."""
    try:
        fd = os.open(path, flags | os.O_CREAT | _NOFOLLOW, mode)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePath(
                f"{path} is a symbolic link; cortexd does not follow links it did not make: remove it (rm {path})"
            ) from exc
        raise
    try:
        st = os.fstat(fd)
        problem = reused_file_problem(path, st, os.geteuid())
        if problem:
            raise UnsafePath(problem)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: str, mode: int = FILE_MODE) -> IO[str]:
    """A text file to append lines to (see open_reused)."""
    fd = open_reused(path, os.O_WRONLY | os.O_APPEND, mode)
    return os.fdopen(fd, "a", encoding="utf-8")


def prepare_file(path: str, mode: int = FILE_MODE) -> None:
    """Make sure `path` exists as cortexd's own file with `mode` before a library (SQLite)
    opens it by name: it then finds a file it may use, not one another user planted."""
    os.close(open_reused(path, os.O_RDWR, mode))
