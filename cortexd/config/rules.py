"""Rules that tie several keys of one API together, and building the Api object.

Each rule only looks at values that passed their own checks (walk.py), so one mistake
gives one error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortexd.config.checks import endpoint_problem, normalise_endpoint, reserved_prefix
from cortexd.config.objects import Api, Compute, PredictorSpec, Tracker
from cortexd.config.schema import API_KEYS, COMPUTE_KEYS, PREDICTOR_KINDS, default_of, keys_by_name
from cortexd.config.walk import Scope, Section
from cortexd.config.yamlsrc import Mark

_API_KEYS = keys_by_name(API_KEYS)


@dataclass(frozen=True)
class ApiDraft:
    """What the file-level rules (unique names and endpoints) need, valid API or not."""

    name: str | None
    name_mark: Mark
    endpoint: str | None          # normalised; None when unknown (invalid, or the deployment name is)
    endpoint_mark: Mark           # the endpoint key, or the name for a default endpoint
    api: Api | None               # None when this API has errors


def predictor_kind(section: Section, scope: Scope) -> str | None:
    """The one of python / tensorflow / onnx that the API gives; reports none or several."""
    given = [kind for kind in PREDICTOR_KINDS if kind in section.given]
    if not given:
        scope.add(section.where, "", f"give exactly one of {', '.join(PREDICTOR_KINDS)} (none given)")
        return None
    first = given[0]
    for extra in given[1:]:
        first_line = section.key_mark(first).line
        scope.add(
            section.key_mark(extra), extra,
            f"give exactly one of {', '.join(PREDICTOR_KINDS)} ({first} is given at line {first_line})",
        )
    if len(given) > 1:
        return None
    if first not in section.entries and first not in section.invalid:
        # `python:` with nothing under it: say what it needs, as for an empty mapping.
        for key in _API_KEYS[first].keys:
            if key.required:
                scope.add(section.key_mark(first), f"{first}.{key.name}", f"required: {key.help}")
        return None
    return first if first in section.entries else None


def endpoint_of(section: Section, deployment: str | None, name: str | None, scope: Scope) -> tuple[str | None, Mark]:
    """The API's normalised endpoint (explicit or default) and where to point errors about it."""
    if "endpoint" in section.entries:
        entry = section.entries["endpoint"]
        endpoint = normalise_endpoint(entry.value)
        problem = endpoint_problem(endpoint)
        if problem is None:
            reserved = reserved_prefix(endpoint)
            if reserved is not None:
                problem = f'"{endpoint}" is reserved for the daemon ({reserved}); choose another path'
        if problem is not None:
            scope.add(entry.mark, "endpoint", problem)
            return None, entry.mark
        return endpoint, entry.mark
    name_mark = section.key_mark("name")
    if "endpoint" in section.invalid or deployment is None or name is None:
        return None, name_mark
    # Names are restricted to URL-safe characters; a reserved deployment name is reported once, at the deployment.
    return f"/{deployment}/{name}", name_mark


def _python_path(section: Section, kind_section: Section, kind: str, scope: Scope) -> str | None:
    if section.has_value("python_path") and kind_section.has_value("python_path"):
        scope.add(
            kind_section.key_mark("python_path"), f"{kind}.python_path",
            f"python_path is also given at the API (line {section.key_mark('python_path').line}); keep one",
        )
        return None
    if "python_path" in section.invalid or "python_path" in kind_section.invalid:
        return None
    return kind_section.get("python_path") or section.get("python_path") or scope.project_dir


def _predictor_config(section: Section, kind_section: Section, kind: str, scope: Scope) -> dict[str, Any] | None:
    if "config" in kind_section.entries and "metadata" in section.entries:
        scope.add(
            kind_section.key_mark("config"), f"{kind}.config",
            f"give either {kind}.config or metadata (line {section.key_mark('metadata').line}), not both; "
            "they play the same role",
        )
        return None
    if "config" in kind_section.invalid or "metadata" in section.invalid:
        return None
    return kind_section.get("config") or section.get("metadata") or {}


def _compute_value(compute: Section | None, key: str) -> Any:
    return default_of(COMPUTE_KEYS, key) if compute is None else compute.get(key, default_of(COMPUTE_KEYS, key))


def compute_of(section: Section, scope: Scope) -> Compute | None:
    """Compute with defaults filled and the bounds between replica counts checked."""
    if "compute" in section.invalid:
        return None
    compute: Section | None = section.get("compute")
    invalid = compute.invalid if compute is not None else set()
    low = _compute_value(compute, "min_replicas")
    high = _compute_value(compute, "max_replicas")
    bounds_ok = not {"min_replicas", "max_replicas"} & invalid
    if bounds_ok and high < low:
        assert compute is not None  # the defaults (1, 100) are ordered
        if "max_replicas" in compute.entries:
            scope.add(compute.key_mark("max_replicas"), "compute.max_replicas", f"must be >= min_replicas ({low})")
        else:
            scope.add(
                compute.key_mark("min_replicas"), "compute.min_replicas",
                f"must be <= max_replicas ({high}, the default); set max_replicas too",
            )
        bounds_ok = False
    init = _compute_value(compute, "init_replicas")
    if init is None:
        init = low
    elif bounds_ok and not low <= init <= high:
        assert compute is not None
        scope.add(
            compute.key_mark("init_replicas"), "compute.init_replicas",
            f"must be within [min_replicas, max_replicas] = [{low}, {high}] (got {init})",
        )
        return None
    if invalid or not bounds_ok:
        return None
    return Compute(
        min_replicas=low,
        max_replicas=high,
        init_replicas=init,
        target_cpu_utilization=_compute_value(compute, "target_cpu_utilization"),
        cpu=_compute_value(compute, "cpu"),
        gpu=_compute_value(compute, "gpu"),
        mem=_compute_value(compute, "mem"),
    )


def tracker_of(section: Section) -> Tracker | None:
    tracker: Section | None = section.get("tracker")
    if tracker is None or "model_type" not in tracker.entries:
        return None
    return Tracker(model_type=tracker.get("model_type"), key=tracker.get("key"))


def _v2_declaration(kind_section: Section, kind: str, scope: Scope) -> tuple[dict[str, Any] | None, bool]:
    """(the python.v2 declaration checked, whether it is valid); (None, True) when absent."""
    value = kind_section.get("v2") if kind == "python" else None
    if value is None:
        return None, True
    from cortexd.v2.metadata import DeclarationError, parse_declaration

    try:
        return parse_declaration(value, f"{kind}.v2"), True
    except DeclarationError as exc:
        scope.add(kind_section.key_mark("v2"), exc.path, exc.problem)
        return None, False


def build_api(section: Section, deployment: str | None, scope: Scope) -> ApiDraft:
    """Apply the API's cross-key rules and build the Api from whatever passed.

    The caller drops the Api when any error was reported for this API (here or while reading it).
    """
    name: str | None = section.get("name")
    endpoint, endpoint_mark = endpoint_of(section, deployment, name, scope)
    kind = predictor_kind(section, scope)
    compute = compute_of(section, scope)
    api: Api | None = None
    if kind is not None:
        kind_section: Section = section.get(kind)
        python_path = _python_path(section, kind_section, kind, scope)
        config = _predictor_config(section, kind_section, kind, scope)
        v2, v2_ok = _v2_declaration(kind_section, kind, scope)
        if name and endpoint and python_path and config is not None and compute is not None and v2_ok:
            api = Api(
                name=name,
                endpoint=endpoint,
                python_path=python_path,
                predictor=PredictorSpec(
                    kind=kind,
                    predictor=kind_section.get("predictor"),
                    model=kind_section.get("model"),
                    signature_key=kind_section.get("signature_key"),
                    config=config,
                ),
                tracker=tracker_of(section),
                compute=compute,
                metadata=section.get("metadata") or {},
                v2=v2,
            )
    return ApiDraft(name, section.key_mark("name"), endpoint, endpoint_mark, api)
