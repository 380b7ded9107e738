"""s3:// model sources (see cortexd/models.py for the cache they go into); boto3 is imported
only when an s3:// model is fetched."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any

from cortexd.model_archives import ArchiveLimits
from cortexd.models import (
    PARTIAL_PREFIX,
    Log,
    ModelFetchError,
    _commit,
    _finish_entry,
    _prepare,
    _result_path,
    _reused,
    cache_key,
    entry_name,
    format_bytes,
    progress_due,
)


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/key/parts -> (bucket, "key/parts")."""
    rest = url.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ModelFetchError(f"{url}: no bucket name (expected s3://bucket/key)")
    return bucket, key


def _s3_client(log: Log) -> Any:
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        raise ModelFetchError("s3:// models need boto3: install cortexd[s3]") from None
    session = boto3.session.Session()
    # recent boto3 reads these itself; passing them keeps older versions working the same
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    if session.get_credentials() is None:
        log("no AWS credentials found: reading s3 without signing (works for public buckets)")
        config = config.merge(Config(signature_version=UNSIGNED))
    return session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1", config=config)


def _s3_error(url: str, exc: Exception) -> ModelFetchError:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return ModelFetchError(f"{url}: {err.get('Code', '?')}: {err.get('Message') or 'request failed'}")
    return ModelFetchError(f"{url}: {type(exc).__name__}: {exc}")


def _s3_objects(client: Any, url: str, bucket: str, key: str) -> tuple[bool, list[tuple[str, str, int]]]:
    """(is_folder, [(key, etag, size)]): one object, or every object under the prefix key/."""
    from botocore.exceptions import BotoCoreError, ClientError

    head_error: Exception | None = None
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            return False, [(key, str(head.get("ETag", "")), int(head.get("ContentLength", 0)))]
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied"):
                raise _s3_error(url, exc) from None
            head_error = exc  # maybe a folder (SavedModel): look under key/
        except BotoCoreError as exc:
            raise _s3_error(url, exc) from None
    prefix = key.rstrip("/") + "/" if key else ""
    found: list[tuple[str, str, int]] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # folder markers made by consoles
                    found.append((obj["Key"], str(obj.get("ETag", "")), int(obj.get("Size", 0))))
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(url, exc) from None  # e.g. NoSuchBucket, AccessDenied: more telling than HEAD's bare 404
    if not found:
        if head_error is not None and "404" not in str(head_error) and "NotFound" not in str(head_error):
            raise _s3_error(url, head_error) from None  # 403 on HEAD: denied, or no such object
        under = f"s3://{bucket}/{prefix}" if prefix else "the bucket"
        raise ModelFetchError(f"{url}: no object at this key, and no objects under {under}")
    return True, sorted(found)


def fetch_s3(url: str, cache_dir: str, log: Log, limits: ArchiveLimits) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_s3_url(url)
    client = _s3_client(log)
    root = os.path.join(cache_dir, "s3")
    _prepare(root)
    is_folder, objects = _s3_objects(client, url, bucket, key)
    name = entry_name(key, default=bucket)
    entry = os.path.join(root, cache_key(url, {"objects": objects}))
    result = os.path.join(entry, name) if is_folder else _result_path(entry, name)
    if os.path.isdir(entry):
        log(f"{url}: unchanged since it was downloaded (cached)")
        _reused(entry)
        return result
    total = sum(size for _k, _e, size in objects)
    log(f"{url}: downloading {len(objects)} object(s) ({format_bytes(total)})")
    progress = _Progress(url, total, log)
    started = time.monotonic()
    partial = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=root)
    try:
        for obj_key, _etag, _size in objects:
            if is_folder:
                rel = obj_key[len(key.rstrip("/") + "/"):] if key else obj_key
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise ModelFetchError(f"{url}: unsafe object key {obj_key!r}")
                target = os.path.join(partial, name, *rel.split("/"))
            else:
                target = os.path.join(partial, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            client.download_file(bucket, obj_key, target, Callback=progress)
        log(f"{url}: downloaded {format_bytes(total)} in {time.monotonic() - started:.1f} s")
        if not is_folder:
            _finish_entry(partial, name, log, url, limits)
        _commit(partial, entry)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(url, exc) from None
    except OSError as exc:
        raise ModelFetchError(f"{url}: saving the download failed: {exc}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return result


class _Progress:
    """boto3's transfer callback (called from its worker threads with byte increments)."""

    def __init__(self, url: str, total: int, log: Log) -> None:
        self._url, self._total, self._log = url, total, log
        self._lock = threading.Lock()
        self._done = self._last_done = 0
        self._last_at = time.monotonic()

    def __call__(self, amount: int) -> None:
        with self._lock:
            self._done += amount
            now = time.monotonic()
            if progress_due(self._done, self._total, self._last_done, self._last_at, now):
                pct = f" ({self._done * 100 // self._total}%)" if self._total else ""
                self._log(f"{self._url}: {format_bytes(self._done)} of {format_bytes(self._total)}{pct}")
                self._last_done, self._last_at = self._done, now
