"""Keeping the model cache (<state-dir>/models) within `serve --model-cache-size`.

The cache holds one entry per downloaded model version: `<cache>/<scheme>/<key>/`. An entry
that a kept path lies in (the models of the versions running now, and of the version before
each, for going back) is never removed. The others are removed least recently used first
(an entry's mtime is set when it is made and each time a fetch reuses it) until the whole
cache, kept entries included, fits in `max_bytes`. `.partial-*` folders belong to fetches in
progress and are left to models.py, which removes stale ones.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass

PARTIAL_PREFIX = ".partial-"
DEFAULT_MAX_BYTES = 20 << 30  # 20 GiB


@dataclass(frozen=True)
class CacheEntry:
    path: str
    size: int
    last_used: float


def plan_eviction(entries: Iterable[CacheEntry], kept: Collection[str], max_bytes: int) -> list[str]:
    """The entries to remove, oldest first, so that what remains fits in max_bytes; kept ones
    (by path) are never chosen, even when they alone exceed it."""
    entries = list(entries)
    total = sum(e.size for e in entries)
    doomed: list[str] = []
    for entry in sorted(entries, key=lambda e: (e.last_used, e.path)):
        if total <= max_bytes:
            break
        if entry.path in kept:
            continue
        doomed.append(entry.path)
        total -= entry.size
    return doomed


def entry_of(path: str, cache_dir: str) -> str | None:
    """The cache entry (<cache>/<scheme>/<key>) a path lies in, or None if it is not in the cache."""
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(cache_dir))
    parts = rel.split(os.sep)
    if rel.startswith("..") or os.path.isabs(rel) or len(parts) < 2:
        return None
    return os.path.join(os.path.realpath(cache_dir), parts[0], parts[1])


def _size(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512 or st.st_size
    return total


def list_entries(cache_dir: str) -> list[CacheEntry]:
    root = os.path.realpath(cache_dir)
    found: list[CacheEntry] = []
    for scheme in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        scheme_dir = os.path.join(root, scheme)
        if scheme.startswith(".") or not os.path.isdir(scheme_dir):
            continue
        for name in sorted(os.listdir(scheme_dir)):
            path = os.path.join(scheme_dir, name)
            if name.startswith(PARTIAL_PREFIX) or not os.path.isdir(path) or os.path.islink(path):
                continue
            found.append(CacheEntry(path, _size(path), os.lstat(path).st_mtime))
    return found


def evict(cache_dir: str, keep: Collection[str], max_bytes: int) -> list[str]:
    """Remove cache entries that no path in `keep` lies in, least recently used first, until
    the cache holds at most max_bytes. Returns the removed entries. Blocking disk work: call
    it from a thread, after a reload (or an API's removal) settled."""
    kept = {e for e in (entry_of(p, cache_dir) for p in keep if p) if e is not None}
    doomed = plan_eviction(list_entries(cache_dir), kept, max_bytes)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def touch(entry: str) -> None:
    """Mark an entry as just used (made, or reused by a fetch)."""
    try:
        os.utime(entry)
    except OSError:
        pass
