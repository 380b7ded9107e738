"""Checks of single values that the schema names: files that must exist, model sources, endpoints.

Each path check takes the value as written and the project folder and returns
(resolved value, error message or None). Pure apart from looking at the file system.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable
from urllib.parse import urlsplit

from cortexd import savedmodel
from cortexd.config.schema import RESERVED_PATHS
from cortexd.model_shapes import local_batch_problem

CheckResult = tuple[str, "str | None"]

MODEL_SOURCES = "a path (relative to the folder holding cortex.yaml, or absolute), file://, http://, https:// or s3://"
_S3_RE = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.+)$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")


def resolve(project_dir: str, path: str) -> str:
    """An absolute, normalised path; relative paths are relative to the project folder."""
    return os.path.normpath(os.path.join(project_dir, path))


def _relative_note(written: str, resolved: str) -> str:
    if os.path.isabs(written):
        return resolved
    return f"{resolved} (relative paths are read from the folder holding cortex.yaml)"


def check_predictor_file(value: str, project_dir: str) -> CheckResult:
    path = resolve(project_dir, value)
    if os.path.isfile(path):
        return path, None
    if os.path.isdir(path):
        return path, f"{path} is a folder; expected a Python file (e.g. predictor.py)"
    return path, f"file not found: {_relative_note(value, path)}"


def check_folder(value: str, project_dir: str) -> CheckResult:
    path = resolve(project_dir, value)
    if os.path.isdir(path):
        return path, None
    if os.path.exists(path):
        return path, f"{path} is not a folder; expected an existing folder"
    return path, f"folder not found: {_relative_note(value, path)}"


def _remote_problem(value: str) -> str | None:
    """None when a remote model source is well formed (its existence is checked when it is fetched)."""
    scheme = value.split("://", 1)[0].lower()
    if scheme == "s3":
        if _S3_RE.match(value) is None:
            return f'"{value}" is not a valid S3 location; expected s3://bucket/key (e.g. s3://my-bucket/model.onnx)'
        return None
    parts = urlsplit(value)
    if not parts.netloc:
        return f'"{value}" has no host; expected {scheme}://host/path'
    return None


def model_source(value: str, project_dir: str) -> tuple[str, bool, str | None]:
    """(resolved, is_local, problem): a local model becomes an absolute path; a URL is kept as written."""
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme in ("http", "https", "s3"):
        return value, False, _remote_problem(value)
    if scheme == "file":
        rest = value[len("file://"):]
        # file://localhost/abs/path is the RFC 8089 spelling of file:///abs/path.
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest:
            return value, True, f'"{value}" names no file; expected file:///absolute/path or file://relative/path'
        return resolve(project_dir, rest), True, None
    if scheme:
        return value, False, f'unsupported scheme "{scheme}://"; expected {MODEL_SOURCES}'
    return resolve(project_dir, value), True, None


def check_onnx_model(value: str, project_dir: str) -> CheckResult:
    path, local, problem = model_source(value, project_dir)
    if problem or not local:
        return path, problem
    if os.path.isfile(path):
        return path, None
    if os.path.isdir(path):
        return path, f"{path} is a folder; expected a .onnx file"
    return path, f"model not found: {_relative_note(value, path)}"


def check_tensorflow_model(value: str, project_dir: str) -> CheckResult:
    path, local, problem = model_source(value, project_dir)
    if problem or not local:
        return path, problem
    expected = (
        "expected a SavedModel folder (with saved_model.pb), a .zip of one, "
        "or a folder of numbered versions (1/, 2/, ...)"
    )
    if os.path.isfile(path):
        if zipfile.is_zipfile(path):
            return path, None
        return path, f"{path} is a file but not a .zip; {expected}"
    if not os.path.isdir(path):
        return path, f"model not found: {_relative_note(value, path)}"
    try:
        savedmodel.locate(path)  # the replica's own rule (cortexd/savedmodel.py)
    except savedmodel.NotASavedModel as exc:
        return path, f"{exc}; {expected}"
    return path, None


def batching_problem(kind: str, model: str | None, signature_key: str | None) -> str | None:
    """Why a model cannot be served with server_side_batching, when that can be told now: a
    local ONNX file or SavedModel whose inputs/outputs lack a dynamic first dimension. A
    remote model is checked by the replica when it loads it."""
    if kind not in ("onnx", "tensorflow") or not model or not os.path.isabs(model):
        return None
    return local_batch_problem(kind, model, signature_key)


def check_any_model(value: str, project_dir: str) -> CheckResult:
    """A model of any format (a file or a folder), for predictors that load it themselves."""
    path, local, problem = model_source(value, project_dir)
    if problem or not local:
        return path, problem
    if os.path.exists(path):
        return path, None
    return path, f"model not found: {_relative_note(value, path)}"


# The checks the schema's `check` field names.
CHECKS: dict[str, Callable[[str, str], CheckResult]] = {
    "predictor_file": check_predictor_file,
    "folder": check_folder,
    "onnx_model": check_onnx_model,
    "tensorflow_model": check_tensorflow_model,
    "any_model": check_any_model,
}


def normalise_endpoint(value: str) -> str:
    """'/' in front, trailing '/' removed: "iris/" -> "/iris"."""
    if not value.startswith("/"):
        value = "/" + value
    return value.rstrip("/")


def endpoint_problem(endpoint: str) -> str | None:
    """Why a normalised endpoint cannot be served, or None."""
    if endpoint in ("", "/"):
        return 'must be a path below "/", e.g. /my-deployment/my-api'
    segments = endpoint[1:].split("/")
    for segment in segments:
        if segment == "":
            return f'"{endpoint}" has an empty segment ("//")'
        if segment in (".", ".."):
            return f'"{endpoint}" has a "{segment}" segment'
        if _SEGMENT_RE.match(segment) is None:
            return (
                f'"{endpoint}" has characters not allowed in a URL path; use letters, digits and - _ . ~ '
                f"(no spaces, '?', '#' or '%')"
            )
    return None


def reserved_prefix(endpoint: str) -> str | None:
    """The reserved path an endpoint is or lies under, or None."""
    for reserved in RESERVED_PATHS:
        if endpoint == reserved or endpoint.startswith(reserved + "/"):
            return reserved
    return None
