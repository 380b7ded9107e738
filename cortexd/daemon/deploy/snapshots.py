"""Immutable versions of the project (the folder holding cortex.yaml).

Each deployment and each reload takes a snapshot; a replica runs with its version's
snapshot as a writable working directory and its python_path, so a replica of the old
version that restarts mid-update still runs the old files, and edits on disk take effect
at the next reload only.

What is copied: every file of the project except hidden files and folders (``.git``,
``.env``, editor swap files), bytecode (``__pycache__``, ``*.pyc``, ``*.pyo``) and folders
tagged as caches (CACHEDIR.TAG; the store tags its own root).

How, per file:

- Small files (below `LINK_MIN_BYTES`, 1 MiB) are copied. A predictor that writes into a
  small file (a cache, a log) edits its snapshot, never the user's original.
- Large files (models) are shared: first by a reflink (FICLONE: copy-on-write on btrfs,
  XFS; a true private copy that costs no space), else by a hard link, else copied. They go
  through a store of objects (``<root>/.objects``) keyed by the source's
  (device, inode, size, mtime_ns), and each snapshot hard-links the object. So when the
  project cannot be hard-linked from the snapshot root (another filesystem, or another mount
  of the same one, which is what systemd's ProtectSystem= makes of /etc vs. /var/lib, or
  fs.protected_hardlinks for files the daemon's user does not own), a big file is copied
  once per version of that file, not once per reload.
  A hard-linked file is the user's inode: rewriting it in place (``cp new model.onnx``
  writes into the existing file) changes the running version too. Replace models by
  renaming a new file over the old one (``mv``, ``rsync``, ``cp --remove-destination``)
  and versions stay apart. Reflinked and copied files do not have this limit; they are made
  read-only because several versions share them. Either way, a predictor must treat large
  files as read-only (write small files, or new ones, instead).
- Symlinks are kept as symlinks. One that points inside the project is made relative, so
  that it resolves inside the snapshot; one that points outside is made absolute (what is
  outside the project is not versioned, like an absolute model path).

Modes: the store, every version and every folder in it are 0750, copied files 0640 (0750
when executable), the store's own copies of large files read-only (0440/0550), whatever the
umask: a project holds code and credentials, and only the daemon's user (and its group)
may read it. A hard-linked file keeps its owner's mode; the 0750 folders keep others out.

`gc(keep)` removes the versions not in `keep` (the supervisor's versions in use), then the
objects no snapshot uses.
`take` does disk I/O proportional to the project's small files: call it from a thread
(``loop.run_in_executor``), not on the event loop. All methods are thread-safe.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from cortexd import safefs

log = logging.getLogger(__name__)

LINK_MIN_BYTES = 1024 * 1024
MAX_ENTRIES = 100_000          # files + folders + links in one project: a bound, not a quota
OBJECTS_DIR = ".objects"
_TMP_PREFIX = ".tmp-"
_FICLONE = 0x40049409           # _IOW(0x94, 9, int), linux/fs.h


class SnapshotError(Exception):
    """A snapshot could not be taken; the message names the file and why."""


@dataclass(frozen=True)
class Snapshot:
    version_id: str
    path: str                   # the snapshot folder: the replicas' working directory
    files_copied: int = 0
    bytes_copied: int = 0
    files_shared: int = 0       # reflinked or hard-linked (large files)
    bytes_shared: int = 0

    def map_path(self, project_dir: str, path: str) -> str:
        """`path` (inside `project_dir`) as seen inside this snapshot; other paths unchanged.

        E.g. the predictor file or python_path of an API, so that a replica loads the
        snapshot's copy.
        """
        base = os.path.realpath(project_dir)
        real = os.path.realpath(path)
        rel = os.path.relpath(real, base)
        if rel == ".":
            return self.path
        if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
            return path
        return os.path.join(self.path, rel)


@dataclass
class _Counts:
    files_copied: int = 0
    bytes_copied: int = 0
    files_shared: int = 0
    bytes_shared: int = 0
    entries: int = 0


# Cache Directory Tagging Specification (https://bford.info/cachedir/): tar
# --exclude-caches, borg and restic skip such folders, and so do snapshots and fingerprints.
# The store tags its root, so a state directory kept inside the project (a development
# setup) is never copied into itself nor makes every reload look like a change.
CACHEDIR_TAG = "CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def is_tagged_cache_dir(path: str) -> bool:
    """True if `path` holds a CACHEDIR.TAG file with the standard signature."""
    try:
        with open(os.path.join(path, CACHEDIR_TAG), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False


def is_excluded(name: str, is_dir: bool) -> bool:
    """Hidden entries and bytecode are not part of a version."""
    if name.startswith("."):
        return True
    if is_dir:
        return name == "__pycache__"
    return name.endswith((".pyc", ".pyo"))


def snapshot_file_mode(source_mode: int) -> int:
    """A copied file's mode: the source's, owner read/write added, nothing for others and no
    group write (0644 -> 0640, 0755 -> 0750, 0400 -> 0600)."""
    return (stat.S_IMODE(source_mode) & 0o750 & ~0o020) | stat.S_IRUSR | stat.S_IWUSR


def object_mode(source_mode: int) -> int:
    """An object's mode (the store's own copy, shared by versions): read-only, nothing for others."""
    return (stat.S_IMODE(source_mode) & 0o550) | stat.S_IRUSR


def _mkdir(path: str) -> None:
    os.mkdir(path, safefs.DIR_MODE)
    os.chmod(path, safefs.DIR_MODE)  # exactly 0750, whatever the umask


def new_version_id(now: float) -> str:
    """Sortable by time, unique: ``20250102T030405Z-1a2b3c``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


class SnapshotStore:
    """Snapshots under `root` (e.g. ``<state-dir>/snapshots``), created if missing."""

    def __init__(
        self,
        root: str,
        *,
        link_min_bytes: int = LINK_MIN_BYTES,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = os.path.abspath(root)
        self._link_min_bytes = link_min_bytes
        self._max_entries = max_entries
        self._clock = clock
        self.root = safefs.ensure_dir(self.root, safefs.DIR_MODE)
        self._objects = safefs.ensure_dir(os.path.join(self.root, OBJECTS_DIR), safefs.DIR_MODE)
        if not is_tagged_cache_dir(self.root):
            tag = os.path.join(self.root, CACHEDIR_TAG)
            with os.fdopen(safefs.open_reused(tag, os.O_WRONLY | os.O_TRUNC), "wb") as f:
                f.write(CACHEDIR_SIGNATURE
                        + b"\n# cortexd snapshots: derived data, see cortexd/daemon/deploy/snapshots.py\n")
        # _io serialises take() and gc() (disk work, may be slow); _known_lock guards the
        # set of versions and is only held briefly, so path() never waits for a copy.
        self._io = threading.Lock()
        self._known_lock = threading.Lock()
        self._known: set[str] = set()
        with os.scandir(self.root) as it:
            for entry in it:
                # Versions left by an earlier run are known so gc() can remove them.
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                    self._known.add(entry.name)

    # -- versions -------------------------------------------------------------------

    def take(self, project_dir: str) -> Snapshot:
        """Copy `project_dir` into a new version (see the module docstring for how)."""
        src_root = os.path.realpath(project_dir)
        if not os.path.isdir(src_root):
            raise SnapshotError(f"{project_dir}: not a folder")
        with self._io:
            version_id = new_version_id(self._clock())
            tmp = os.path.join(self.root, _TMP_PREFIX + version_id)
            final = os.path.join(self.root, version_id)
            counts = _Counts()
            try:
                _mkdir(tmp)
                self._copy_tree(src_root, tmp, counts)
                os.rename(tmp, final)  # a version exists completely or not at all
            except BaseException:
                _rmtree(tmp)
                raise
            with self._known_lock:
                self._known.add(version_id)
        snap = Snapshot(
            version_id, final, counts.files_copied, counts.bytes_copied, counts.files_shared, counts.bytes_shared
        )
        log.info(
            "snapshot %s of %s: %d files copied (%d bytes), %d shared (%d bytes)",
            version_id, src_root, snap.files_copied, snap.bytes_copied, snap.files_shared, snap.bytes_shared,
        )
        return snap

    def path(self, version_id: str) -> str:
        """Folder of a known version. KeyError if unknown or removed."""
        with self._known_lock:
            if version_id not in self._known:
                raise KeyError(version_id)
        return os.path.join(self.root, version_id)

    def versions(self) -> list[str]:
        with self._known_lock:
            return sorted(self._known)

    def gc(self, keep: Collection[str]) -> list[str]:
        """Remove versions that are not in `keep`; return their ids."""
        keep_set = set(keep)
        with self._io:
            with self._known_lock:
                doomed = sorted(v for v in self._known if v not in keep_set)
                self._known -= set(doomed)
            for v in doomed:
                _rmtree(os.path.join(self.root, v))
            self._remove_leftovers()
        if doomed:
            log.info("removed snapshots %s", ", ".join(doomed))
        return doomed

    # -- copying --------------------------------------------------------------------

    def _copy_tree(self, src_root: str, dst_root: str, counts: _Counts) -> None:
        real_root = os.path.realpath(self.root)
        stack: list[str] = [""]
        while stack:
            rel_dir = stack.pop()
            src_dir = os.path.join(src_root, rel_dir)
            try:
                with os.scandir(src_dir) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise SnapshotError(f"{src_dir}: cannot list: {exc.strerror}") from exc
            for entry in entries:
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                try:
                    is_link = entry.is_symlink()
                    is_dir = not is_link and entry.is_dir(follow_symlinks=False)
                except OSError as exc:
                    raise SnapshotError(f"{entry.path}: {exc.strerror}") from exc
                if is_excluded(entry.name, is_dir):
                    continue
                if is_dir and (os.path.realpath(entry.path) == real_root or is_tagged_cache_dir(entry.path)):
                    continue  # the store (or another cache) inside the project: never copied
                counts.entries += 1
                if counts.entries > self._max_entries:
                    raise SnapshotError(
                        f"{src_root}: more than {self._max_entries} files and folders; "
                        "is cortex.yaml in the right folder?"
                    )
                dst = os.path.join(dst_root, rel)
                try:
                    if is_link:
                        self._copy_symlink(src_root, entry.path, rel_dir, dst)
                    elif is_dir:
                        _mkdir(dst)
                        stack.append(rel)
                    elif entry.is_file(follow_symlinks=False):
                        self._copy_file(entry.path, dst, entry.stat(follow_symlinks=False), counts)
                    # fifos, sockets and devices are not part of a project
                except SnapshotError:
                    raise
                except OSError as exc:
                    raise SnapshotError(f"{entry.path}: cannot copy: {exc.strerror or exc}") from exc

    def _copy_symlink(self, src_root: str, src: str, rel_dir: str, dst: str) -> None:
        target = os.readlink(src)
        resolved = os.path.realpath(src)
        inside = resolved == src_root or resolved.startswith(src_root + os.sep)
        if not os.path.exists(resolved):
            new_target = target  # dangling: keep it as the user wrote it
        elif inside:
            new_target = os.path.relpath(resolved, os.path.join(src_root, rel_dir))
        else:
            new_target = resolved
        os.symlink(new_target, dst)

    def _copy_file(self, src: str, dst: str, st: os.stat_result, counts: _Counts) -> None:
        if st.st_size >= self._link_min_bytes:
            obj = self._object_for(src, st)
            try:
                os.link(obj, dst)
                counts.files_shared += 1
                counts.bytes_shared += st.st_size
                return
            except OSError as exc:
                # EMLINK: the object reached the filesystem's link limit. Copy instead.
                log.debug("cannot link %s into snapshot (%s); copying", src, exc)
        shutil.copy2(src, dst)
        # The working directory is writable (owner write even when the source was read-only),
        # and private to the daemon's user and group.
        os.chmod(dst, snapshot_file_mode(st.st_mode))
        counts.files_copied += 1
        counts.bytes_copied += st.st_size

    def _object_for(self, src: str, st: os.stat_result) -> str:
        """The object holding this version of `src`, created on first use."""
        key = f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
        obj = os.path.join(self._objects, key)
        if os.path.exists(obj):
            return obj
        tmp = os.path.join(self._objects, _TMP_PREFIX + secrets.token_hex(8))
        how = share_file(src, tmp)
        if how != "link":
            # Our own copy: make it read-only, so a predictor cannot write into a model that
            # other versions share. (A hard link is the user's inode; its mode is theirs.)
            os.chmod(tmp, object_mode(os.stat(tmp).st_mode))
        os.rename(tmp, obj)
        log.debug("object %s for %s (%s)", key, src, how)
        return obj

    def _remove_leftovers(self) -> None:
        # Half-written versions and objects from a crash, and objects that no snapshot
        # links any more. An object's link count is 1 (only the store) when unused; a
        # hard-linked object also counts the user's file, and stays while that file is the
        # same inode (then the next snapshot reuses it at no cost).
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.startswith(_TMP_PREFIX):
                    _rmtree(entry.path)
        with os.scandir(self._objects) as it:
            for entry in it:
                try:
                    if entry.name.startswith(_TMP_PREFIX) or entry.stat(follow_symlinks=False).st_nlink <= 1:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass


def share_file(src: str, dst: str) -> str:
    """Make `dst` hold `src`'s content as cheaply as the filesystems allow.

    Returns "reflink", "link" or "copy".
    """
    try:
        _reflink(src, dst)
        return "reflink"
    except OSError:
        _unlink_quiet(dst)
    try:
        os.link(src, dst)
        return "link"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    shutil.copy2(src, dst)
    return "copy"


def _reflink(src: str, dst: str) -> None:
    with open(src, "rb") as fsrc, open(dst, "xb") as fdst:
        fcntl.ioctl(fdst.fileno(), _FICLONE, fsrc.fileno())
    shutil.copystat(src, dst)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmtree(path: str) -> None:
    """Remove a folder even if a replica made parts of it read-only."""

    def fix_and_retry(func: Callable[..., Any], p: str, _exc: Any) -> None:
        try:
            parent = os.path.dirname(p)
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", p, exc)

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix_and_retry)
    else:
        shutil.rmtree(path, onerror=fix_and_retry)
