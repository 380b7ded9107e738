"""What an API's replicas depend on, as one comparable string.

`api_fingerprint` hashes (sha256) four parts separately and joins them:

- ``config``: the API's configuration except ``name``, ``endpoint`` and ``compute``.
  The name is the identity of the API, not part of its content. An endpoint change only
  moves the route (the proxy switches it atomically; the replicas need not restart), and
  compute changes are classified by `reload_plan` itself (bounds -> scale in place,
  cpu/gpu/mem -> replace). Everything else (predictor kind and path, model as written,
  signature key, config/metadata, tracker, python_path) counts.
- ``predictor``: the content of the predictor file.
- ``model``: the content of the local model (a file, or a folder walked recursively).
- ``python``: every ``*.py`` file under python_path (the modules a predictor imports), except
  in hidden folders, ``__pycache__``, virtual environments, site-packages and folders
  tagged CACHEDIR.TAG (cortexd's snapshot store).

The result looks like ``config=<16 hex> predictor=<16 hex> model=<16 hex> python=<16 hex>``
(64 bits of each sha256 are plenty to notice a change; this is not a security boundary).
Equality of the whole string is what decides; `changed_parts` turns two strings into the
list of what changed, for the reload report.

Speed: files up to `FULL_HASH_MAX_BYTES` are hashed by content. Larger files (models of
hundreds of MB to GB, read on every reload) are identified by size + mtime_ns + inode
instead: replacing a file (cp, mv, rsync, a new download) changes at least one of them.
The inode-change time is deliberately left out: hard-linking a file into a snapshot
(see snapshots.py) changes it without changing the content. An in-place rewrite of a big
file that keeps size and mtime (e.g. ``cp -p`` onto the same inode with the same size)
is not noticed; ``cortexd reload --force API`` covers that case.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from cortexd.daemon.deploy.snapshots import is_tagged_cache_dir

if TYPE_CHECKING:
    from cortexd.config import Api

log = logging.getLogger(__name__)

FULL_HASH_MAX_BYTES = 16 * 1024 * 1024

# Bounds of the walk over python_path: a python_path that points at a huge tree (a home
# folder, "/") must not stall a reload. Past the bound the hash says "truncated" (so it is
# still deterministic) and a warning names the folder.
MAX_PY_FILES = 5000
MAX_DIRS = 2000
MAX_MODEL_FILES = 100_000

# Folders under python_path that hold installed packages or tool state, not the user's code.
_SKIP_DIR_NAMES = frozenset({"__pycache__", "site-packages", "dist-packages", "node_modules"})

_DIGEST_CHARS = 16
_CHUNK = 1024 * 1024


def api_fingerprint(
    api: Api,
    model_local_path: str | None,
    *,
    extra: Mapping[str, str] | None = None,
) -> str:
    """Fingerprint of everything a replica of `api` runs, except its compute and route.

    `model_local_path` is the model on local disk (for a remote model: its fetched copy);
    None when there is no model or it is not fetched yet (then only the URL, part of the
    config, counts). `extra` adds named parts, e.g. ``{"env": <hash of requirements.txt>}``
    so that a change of the deployment's environment replaces every API.
    """
    parts = fingerprint_parts(api, model_local_path)
    for name, value in sorted((extra or {}).items()):
        parts[name] = _short(hashlib.sha256(value.encode("utf-8")).hexdigest())
    return " ".join(f"{k}={v}" for k, v in parts.items())


def fingerprint_parts(api: Api, model_local_path: str | None) -> dict[str, str]:
    """The parts of `api_fingerprint`, by name, in a fixed order."""
    return {
        "config": _short(config_digest(api)),
        "predictor": _short(_file_or_absent(api.predictor.predictor)),
        "model": _short(tree_digest(model_local_path) if model_local_path else _sha(b"no local model")),
        "python": _short(python_files_digest(api.python_path)),
    }


def changed_parts(old: str, new: str) -> list[str]:
    """Names of the parts that differ between two fingerprints, e.g. ``["predictor"]``.

    Strings not in the ``name=value`` form compare as a whole: ``["fingerprint"]``.
    """
    if old == new:
        return []
    a, b = _split(old), _split(new)
    if a is None or b is None:
        return ["fingerprint"]
    return [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def config_digest(api: Api) -> str:
    """sha256 of the API's configuration without name, endpoint, compute and the settings that
    only steer the daemon (autoscaling, update_strategy: reload_plan applies them in place)."""
    data: dict[str, Any] = dataclasses.asdict(api)
    for key in ("name", "endpoint", "compute", "autoscaling", "update_strategy"):
        data.pop(key, None)
    # default=repr: YAML can produce dates and other non-JSON scalars in metadata.
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=repr)
    return _sha(blob.encode("utf-8"))


def file_digest(path: str) -> str:
    """sha256 of a file's content, or of its identity when it is larger than the bound."""
    h = hashlib.sha256()
    _feed_file(h, path, os.stat(path))
    return h.hexdigest()


def tree_digest(path: str) -> str:
    """sha256 of a file, or of every file under a folder (relative names included)."""
    h = hashlib.sha256()
    try:
        st = os.stat(path)
    except OSError as exc:
        h.update(f"absent:{exc.errno}".encode())
        return h.hexdigest()
    if not stat.S_ISDIR(st.st_mode):
        h.update(b"file\0")
        _feed_file(h, path, st)
        return h.hexdigest()
    _feed_files(h, _walk_files(path, skip_hidden=False, suffix=None), MAX_MODEL_FILES, f"model folder {path}")
    return h.hexdigest()


def python_files_digest(root: str) -> str:
    """sha256 over the ``*.py`` files under `root`, skipping hidden folders, bytecode
    caches and virtual environments (bounded, see MAX_PY_FILES / MAX_DIRS)."""
    h = hashlib.sha256()
    if not os.path.isdir(root):
        h.update(b"absent")
        return h.hexdigest()
    _feed_files(h, _walk_files(root, skip_hidden=True, suffix=".py"), MAX_PY_FILES, f"python_path {root}")
    return h.hexdigest()


def _feed_files(h: Any, files: Iterator[tuple[str, str, os.stat_result]], limit: int, what: str) -> None:
    """Feed each file's relative name and content to h, at most `limit` files."""
    for count, (rel, full, fst) in enumerate(files, 1):
        if count > limit:
            log.warning("%s has more than %d files to fingerprint; fingerprint truncated", what, limit)
            h.update(b"truncated")
            return
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        _feed_file(h, full, fst)


def _walk_files(root: str, *, skip_hidden: bool, suffix: str | None) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative name, path, stat) of regular files under root, sorted, bounded by MAX_DIRS.

    Symlinked folders are not followed (cycles, and trees outside the project); symlinked
    files are followed (their content is what Python imports).
    """
    stack = [""]
    dirs_seen = 0
    while stack:
        rel_dir = stack.pop()
        dirs_seen += 1
        if dirs_seen > MAX_DIRS:
            log.warning("%s has more than %d folders; fingerprint covers the first ones", root, MAX_DIRS)
            return
        full_dir = os.path.join(root, rel_dir)
        try:
            with os.scandir(full_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[str] = []
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if skip_hidden and _skip_dir(entry.path, entry.name):
                        continue
                    subdirs.append(rel)
                    continue
                if suffix is not None and not entry.name.endswith(suffix):
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield rel, entry.path, st
        # Reverse so that popping visits folders in sorted order (deterministic).
        stack.extend(reversed(subdirs))


def _skip_dir(path: str, name: str) -> bool:
    if name in _SKIP_DIR_NAMES or name.endswith(".egg-info"):
        return True
    # A virtual environment, whatever its name (venv, env, .venv are common), or a tagged
    # cache such as cortexd's own snapshot store kept inside the project.
    return os.path.exists(os.path.join(path, "pyvenv.cfg")) or is_tagged_cache_dir(path)


def _feed_file(h: Any, path: str, st: os.stat_result) -> None:
    if st.st_size > FULL_HASH_MAX_BYTES:
        h.update(f"big:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}\0".encode())
        return
    h.update(f"size:{st.st_size}\0".encode())
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        h.update(f"unreadable:{exc.errno}".encode())


def _file_or_absent(path: str | None) -> str:
    if path is None:
        return _sha(b"no predictor file")
    try:
        return file_digest(path)
    except OSError as exc:
        # Validation checked it exists; a file deleted since simply counts as changed and
        # the new replicas will report the real error.
        return _sha(f"absent:{path}:{exc.errno}".encode())


def _split(fp: str) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for item in fp.split(" "):
        name, sep, value = item.partition("=")
        if not sep or not name:
            return None
        out[name] = value
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _short(hexdigest: str) -> str:
    return hexdigest[:_DIGEST_CHARS]
