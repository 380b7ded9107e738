"""Model sources: a local path, file://, http(s):// or s3://, fetched into a local cache.

`fetch_model` returns a LOCAL path the replica can open. Remote models are downloaded into
`cache_dir/<scheme>/<key>/`, where the key is a sha256 of the URL and what the server says
about the content (ETag, Last-Modified, Content-Length; the object ETags for s3), so a changed
remote model gets a new entry and an unchanged one is reused without downloading it again.
Every entry is built in a `.partial-*` folder next to it and renamed into place when complete:
a cache entry that exists is whole, and a failed or killed download leaves nothing that could
be used. A `.zip` is unpacked inside the entry before that rename and the path returned is the
unpacked folder, within the limits of cortexd/model_archives.py (size, ratio, members).

Redirects are followed to http:// and https:// only. The cache is kept within a size by
cortexd/model_cache.py (`evict`); an entry's mtime records when it was last used.

Only the standard library is imported here; boto3 is imported when an s3:// model is fetched.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from cortexd import safefs, units
from cortexd.model_archives import ArchiveError, ArchiveLimits, extract
from cortexd.model_cache import evict, touch

__all__ = ["ArchiveLimits", "ModelFetchError", "evict", "fetch_model", "unpack_local_zip", "unpack_zip"]

HTTP_TIMEOUT_S = 60.0  # per socket operation, not for the whole download
CHUNK = 1 << 20
PARTIAL_PREFIX = ".partial-"
STALE_PARTIAL_S = 3600.0  # a partial folder untouched this long belongs to a fetch that died

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

Log = Callable[[str], None]


class ModelFetchError(Exception):
    """The model cannot be made available locally; the message says which source and why."""


def fetch_model(source: str, project_dir: str, cache_dir: str, log: Log, limits: ArchiveLimits | None = None) -> str:
    """Return a local path for `source` (downloading it into cache_dir when it is remote).
    A downloaded zip is unpacked within `limits` (default: ArchiveLimits())."""
    limits = limits or ArchiveLimits()
    if _URL_RE.match(source):
        scheme = source.split("://", 1)[0].lower()
        if scheme in ("http", "https"):
            return _fetch_http(source, cache_dir, log, limits)
        if scheme == "s3":
            from cortexd.model_s3 import fetch_s3  # boto3 is imported only for s3:// models

            return fetch_s3(source, cache_dir, log, limits)
        if scheme == "file":
            path = file_url_path(source, project_dir)
        else:
            raise ModelFetchError(f"{source}: unsupported scheme {scheme!r} (use a path, file://, http(s):// or s3://)")
    else:
        path = local_path(source, project_dir)
    if not os.path.exists(path):
        raise ModelFetchError(f"{source}: model not found at {path}")
    return path


def local_path(source: str, project_dir: str) -> str:
    """A plain path, relative to the project folder unless absolute; ~ is expanded."""
    return os.path.abspath(os.path.join(project_dir, os.path.expanduser(source)))


def file_url_path(url: str, project_dir: str) -> str:
    """file:///abs/path and file://localhost/abs/path are absolute; file://rel/path is read as
    a path relative to the project (a common way of writing it, and there is no other host)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parts.path)
    if parts.netloc in ("", "localhost"):
        return local_path(path, project_dir)
    return local_path(urllib.parse.unquote(parts.netloc) + path, project_dir)


# ---------------------------------------------------------------- pure helpers


def cache_key(url: str, validators: dict[str, Any]) -> str:
    """The cache entry's name for a URL and what identifies its current content."""
    blob = json.dumps({"url": url, "validators": validators}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def entry_name(url_path: str, default: str = "model") -> str:
    """The file or folder name a download keeps inside its entry: the URL's last segment."""
    name = urllib.parse.unquote(url_path.rstrip("/").rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")
    return name or default


def progress_due(done: int, total: int | None, last_done: int, last_at: float, now: float) -> bool:
    """Whether to log download progress now.

    Known size: when a new 10 % mark is passed and 2 s went by since the last line, or every
    10 s whatever the progress (so short downloads stay quiet and long ones stay visible).
    Unknown size: every 5 s.
    """
    elapsed = now - last_at
    if total:
        if elapsed >= 10.0:
            return True
        return elapsed >= 2.0 and done * 10 // total > last_done * 10 // total
    return elapsed >= 5.0


def display_url(url: str) -> str:
    """The URL as logged: without user:password@ and without the query (presigned tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))


def format_bytes(n: int | None) -> str:
    """A download's size for the logs ("size unknown" when the server did not say)."""
    return units.format_bytes(n, none="size unknown")


def is_stale_partial(mtime: float, now: float, max_age: float = STALE_PARTIAL_S) -> bool:
    return now - mtime > max_age


# ---------------------------------------------------------------- cache entries


def _prepare(root: str) -> None:
    # <state>/models and its scheme folders: the daemon's own, 0750 (cortexd/safefs.py).
    safefs.ensure_dir(os.path.dirname(root), safefs.DIR_MODE)
    safefs.ensure_dir(root, safefs.DIR_MODE)
    now = time.time()
    for name in os.listdir(root):
        if not name.startswith(PARTIAL_PREFIX):
            continue
        path = os.path.join(root, name)
        try:
            newest = max([os.path.getmtime(path)] + [
                os.path.getmtime(os.path.join(d, f)) for d, _s, fs in os.walk(path) for f in fs
            ])
        except OSError:
            continue
        if is_stale_partial(newest, now):
            shutil.rmtree(path, ignore_errors=True)


def _commit(partial: str, final: str) -> None:
    """Rename the complete partial folder into place; a concurrent fetch that won is fine."""
    try:
        os.rename(partial, final)
    except OSError:
        if not os.path.isdir(final):
            raise
    touch(final)


def _reused(entry: str) -> None:
    touch(entry)  # recently used: the last to be evicted


def _result_path(entry: str, name: str) -> str:
    """Inside an entry: the file, or for a .zip the folder it was unpacked into."""
    if name.lower().endswith(".zip"):
        return os.path.join(entry, name[:-4] or "model")
    return os.path.join(entry, name)


def _finish_entry(partial: str, name: str, log: Log, shown: str, limits: ArchiveLimits) -> None:
    """Unpack a downloaded .zip inside the partial entry (it is renamed into place after)."""
    if not name.lower().endswith(".zip"):
        return
    archive = os.path.join(partial, name)
    folder = _result_path(partial, name)
    count = _extract(archive, folder, shown, limits)
    os.remove(archive)  # the unpacked folder is what is served; keeping both doubles the disk
    log(f"{shown}: unpacked {count} files")


def _extract(archive: str, dest: str, shown: str, limits: ArchiveLimits) -> int:
    try:
        return extract(archive, dest, shown, limits)
    except ArchiveError as exc:
        raise ModelFetchError(str(exc)) from None


def unpack_zip(archive: str, dest: str, limits: ArchiveLimits | None = None) -> str:
    """Unpack `archive` into the folder `dest` atomically; an existing dest is reused as is."""
    if os.path.isdir(dest):
        return dest
    partial = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=os.path.dirname(dest) or ".")
    try:
        _extract(archive, os.path.join(partial, "x"), archive, limits or ArchiveLimits.from_env())
        _commit(os.path.join(partial, "x"), dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def unpack_local_zip(archive: str, limits: ArchiveLimits | None = None) -> str:
    """Unpack a local .zip model once: into a folder next to it (the folder's name carries the
    zip's size and mtime, so a changed zip is unpacked again), or, when that place is
    read-only, into a new private temporary folder (never a predictable path in /tmp that
    another user could fill first). Limits: `limits`, else those the daemon gave this
    replica (ArchiveLimits.from_env)."""
    st = os.stat(archive)
    sig = hashlib.sha256(f"{os.path.abspath(archive)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    beside = f"{archive}.unpacked-{sig}"
    try:
        return unpack_zip(archive, beside, limits)
    except OSError:  # read-only folder or file system
        elsewhere = safefs.private_tempdir(None, f"cortexd-unzip-{sig}-")
        return unpack_zip(archive, os.path.join(elsewhere, "model"), limits)


# ---------------------------------------------------------------- http(s)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http:// and https:// only (urllib's own also follows ftp://)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not redirect_allowed(newurl):
            fp.close()
            raise ModelFetchError(
                f"{display_url(req.full_url)}: redirected to {display_url(newurl)}; "
                "only redirects to http:// and https:// are followed"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def redirect_allowed(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme.lower() in ("http", "https")


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def _fetch_http(url: str, cache_dir: str, log: Log, limits: ArchiveLimits) -> str:
    shown = display_url(url)
    root = os.path.join(cache_dir, "http")
    _prepare(root)
    name = entry_name(urllib.parse.urlsplit(url).path)
    request = urllib.request.Request(url, headers={"User-Agent": "cortexd"})
    try:
        response = _OPENER.open(request, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise ModelFetchError(f"{shown}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ModelFetchError(f"{shown}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ModelFetchError(f"{shown}: {type(exc).__name__}: {exc}") from None
    with response:
        headers = response.headers
        length_header = headers.get("Content-Length")
        total = int(length_header) if length_header and length_header.isdigit() else None
        etag, modified = headers.get("ETag"), headers.get("Last-Modified")
        if etag or modified:
            entry = os.path.join(root, cache_key(url, {"etag": etag, "last-modified": modified, "length": total}))
            if os.path.isdir(entry):
                # closing the response unread: the body of an unchanged model is not transferred
                log(f"{shown}: unchanged since it was downloaded (cached)")
                _reused(entry)
                return _result_path(entry, name)
        partial = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=root)
        try:
            digest = _stream(response, os.path.join(partial, name), total, shown, log)
            if not (etag or modified):
                # nothing to tell versions apart but the bytes themselves
                entry = os.path.join(root, cache_key(url, {"sha256": digest}))
                if os.path.isdir(entry):
                    log(f"{shown}: same content as the cached copy")
                    _reused(entry)
                    return _result_path(entry, name)
            _finish_entry(partial, name, log, shown, limits)
            _commit(partial, entry)
        except OSError as exc:
            raise ModelFetchError(f"{shown}: saving the download failed: {exc}") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return _result_path(entry, name)


def _stream(response: Any, target: str, total: int | None, shown: str, log: Log) -> str:
    """Copy the body to target; returns its sha256. Raises ModelFetchError when cut short."""
    digest = hashlib.sha256()
    done = last_done = 0
    started = last_at = time.monotonic()
    log(f"{shown}: downloading ({format_bytes(total)})")
    try:
        with open(target, "wb") as out:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if progress_due(done, total, last_done, last_at, now):
                    pct = f" ({done * 100 // total}%)" if total else ""
                    log(f"{shown}: {format_bytes(done)} of {format_bytes(total)}{pct}")
                    last_done, last_at = done, now
            out.flush()
            os.fsync(out.fileno())
    except http.client.IncompleteRead as exc:
        got = format_bytes(done + len(exc.partial))
        raise ModelFetchError(f"{shown}: the connection closed mid-download, after {got}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise ModelFetchError(f"{shown}: download failed after {format_bytes(done)}: {exc}") from None
    if total is not None and done != total:
        raise ModelFetchError(f"{shown}: download truncated: got {done} of {total} bytes")
    log(f"{shown}: downloaded {format_bytes(done)} in {time.monotonic() - started:.1f} s")
    return digest.hexdigest()
