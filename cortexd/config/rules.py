"""Rules that tie several keys of one API together, and building the Api object (seed dialect).

Each rule only looks at values that passed their own checks (walk.py), so one mistake
gives one error. The helpers here (one_of, endpoint_of, replica_counts, ...) serve the other
dialects' rules too (rules_old.py, rules_realtime.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortexd.config.checks import batching_problem, endpoint_problem, normalise_endpoint, reserved_prefix
from cortexd.config.objects import Api, Batching, Compute, PredictorSpec, Tracker
from cortexd.config.schema import API_KEYS, COMPUTE_KEYS, PREDICTOR_KINDS, Key, default_of, keys_by_name
from cortexd.config.walk import Entry, Scope, Section
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


def one_of(
    section: Section, scope: Scope, kinds: tuple[str, ...] = PREDICTOR_KINDS, api_keys: dict[str, Key] = _API_KEYS,
    required: bool = True,
) -> str | None:
    """The one of `kinds` (sections of the API) that is given; reports none (when required) or several."""
    given = [kind for kind in kinds if kind in section.given]
    if not given:
        if required:
            scope.add(section.where, "", f"give exactly one of {', '.join(kinds)} (none given)")
        return None
    first = given[0]
    for extra in given[1:]:
        first_line = section.key_mark(first).line
        scope.add(
            section.key_mark(extra), extra,
            f"give exactly one of {', '.join(kinds)} ({first} is given at line {first_line})",
        )
    if len(given) > 1:
        return None
    if first not in section.entries and first not in section.invalid:
        # `python:` with nothing under it: say what it needs, as for an empty mapping.
        for key in api_keys[first].keys:
            if key.required:
                scope.add(section.key_mark(first), f"{first}.{key.name}", f"required: {key.help}")
        return None
    return first if first in section.entries else None


def predictor_kind(section: Section, scope: Scope) -> str | None:
    """The one of python / tensorflow / onnx that the API gives; reports none or several."""
    return one_of(section, scope)


def checked_endpoint(entry: Entry, key_path: str, scope: Scope) -> str | None:
    """An endpoint as written, normalised, or None after reporting why it cannot be served."""
    endpoint = normalise_endpoint(entry.value)
    problem = endpoint_problem(endpoint)
    if problem is None:
        reserved = reserved_prefix(endpoint)
        if reserved is not None:
            problem = f'"{endpoint}" is reserved for the daemon ({reserved}); choose another path'
    if problem is not None:
        scope.add(entry.mark, key_path, problem)
        return None
    return endpoint


def default_endpoint(name: str, name_mark: Mark, scope: Scope) -> str | None:
    """/<name>, the default of dialects without a deployment; a reserved one is reported at the name."""
    reserved = reserved_prefix(f"/{name}")
    if reserved is not None:
        scope.add(name_mark, "name", f'the default endpoint /{name} is reserved for the daemon ({reserved}); '
                  "set an endpoint or rename the API")
        return None
    return f"/{name}"


def endpoint_of(section: Section, deployment: str | None, name: str | None, scope: Scope) -> tuple[str | None, Mark]:
    """The API's normalised endpoint (explicit or default) and where to point errors about it.

    The default is /<deployment>/<api>, or /<api> for dialects without a deployment
    (`deployment` ""); None for an invalid deployment name."""
    if "endpoint" in section.entries:
        entry = section.entries["endpoint"]
        return checked_endpoint(entry, "endpoint", scope), entry.mark
    name_mark = section.key_mark("name")
    if "endpoint" in section.invalid or deployment is None or name is None:
        return None, name_mark
    if deployment == "":
        return default_endpoint(name, name_mark, scope), name_mark
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


def mem_limit_ok(compute: Section | None, scope: Scope, path: str = "compute.") -> bool:
    """A hard limit below the request would stop every replica that uses what it asked for."""
    if compute is None:
        return True
    mem, limit = compute.get("mem"), compute.get("mem_limit")
    if mem is not None and limit is not None and limit < mem:
        scope.add(compute.key_mark("mem_limit"), path + "mem_limit",
                  f"must be >= mem, the request ({mem} bytes); got {limit} bytes")
        return False
    return True


def gpu_mem_ok(compute: Section | None, scope: Scope, path: str = "compute.") -> bool:
    """GPU memory is a resource of a GPU: asking for it without a GPU is a mistake."""
    if compute is None or "gpu_mem" not in compute.entries or "gpu" in compute.invalid or compute.get("gpu"):
        return True
    scope.add(compute.key_mark("gpu_mem"), path + "gpu_mem",
              "needs gpu (whole GPUs or a share of one, e.g. gpu: 0.5); without a GPU there is no GPU memory")
    return False


def replica_counts(counts: Section | None, path: str, scope: Scope) -> tuple[int, int, int] | None:
    """(min, max, init) replicas of the section that holds them, defaults filled and bounds checked;
    None after reporting a problem (or when one of them was invalid)."""
    invalid = counts.invalid if counts is not None else set()
    low = _compute_value(counts, "min_replicas")
    high = _compute_value(counts, "max_replicas")
    bounds_ok = not {"min_replicas", "max_replicas"} & invalid
    if bounds_ok and high < low:
        assert counts is not None  # the defaults (1, 100) are ordered
        if "max_replicas" in counts.entries:
            scope.add(counts.key_mark("max_replicas"), path + "max_replicas", f"must be >= min_replicas ({low})")
        else:
            scope.add(
                counts.key_mark("min_replicas"), path + "min_replicas",
                f"must be <= max_replicas ({high}, the default); set max_replicas too",
            )
        bounds_ok = False
    init = _compute_value(counts, "init_replicas")
    if init is None:
        init = low
    elif bounds_ok and not low <= init <= high:
        assert counts is not None
        scope.add(
            counts.key_mark("init_replicas"), path + "init_replicas",
            f"must be within [min_replicas, max_replicas] = [{low}, {high}] (got {init})",
        )
        return None
    if not bounds_ok or {"min_replicas", "max_replicas", "init_replicas"} & invalid:
        return None
    return low, high, init


def compute_of(section: Section, scope: Scope) -> Compute | None:
    """Compute with defaults filled and the bounds between replica counts checked."""
    if "compute" in section.invalid:
        return None
    compute: Section | None = section.get("compute")
    invalid = compute.invalid if compute is not None else set()
    counts = replica_counts(compute, "compute.", scope)
    if counts is None or invalid or not mem_limit_ok(compute, scope) or not gpu_mem_ok(compute, scope):
        return None
    low, high, init = counts
    return Compute(
        min_replicas=low,
        max_replicas=high,
        init_replicas=init,
        target_cpu_utilization=_compute_value(compute, "target_cpu_utilization"),
        cpu=_compute_value(compute, "cpu"),
        gpu=_compute_value(compute, "gpu"),
        mem=_compute_value(compute, "mem"),
        mem_limit=_compute_value(compute, "mem_limit"),
        gpu_mem=_compute_value(compute, "gpu_mem"),
    )


def tracker_of(section: Section, key: str = "tracker") -> Tracker | None:
    tracker: Section | None = section.get(key)
    if tracker is None or "model_type" not in tracker.entries:
        return None
    return Tracker(model_type=tracker.get("model_type"), key=tracker.get("key"))


def batching_of(kind_section: Section, kind: str, scope: Scope) -> tuple[Batching | None, bool]:
    """(server-side batching, ok): None when not asked for; ok is False after an error.

    The model check runs only on a model that passed its own checks (a local path by now)."""
    batching: Section | None = kind_section.get("server_side_batching")
    if batching is None:
        return None, "server_side_batching" not in kind_section.invalid
    if batching.invalid or "max_batch_size" not in batching.entries or "batch_interval" not in batching.entries:
        return None, False  # reported while reading the section
    if "model" in kind_section.entries:
        problem = batching_problem(kind, kind_section.get("model"), kind_section.get("signature_key"))
        if problem is not None:
            scope.add(kind_section.key_mark("server_side_batching"), f"{kind}.server_side_batching", problem)
            return None, False
    return Batching(batching.get("max_batch_size"), batching.get("batch_interval")), True


def v2_declaration(kind_section: Section, kind: str, scope: Scope, path: str | None = None
                   ) -> tuple[dict[str, Any] | None, bool]:
    """(the python.v2 declaration checked, whether it is valid); (None, True) when absent."""
    value = kind_section.get("v2") if kind == "python" else None
    if value is None:
        return None, True
    from cortexd.v2.metadata import DeclarationError, parse_declaration

    try:
        return parse_declaration(value, path or f"{kind}.v2"), True
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
        batching, batching_ok = batching_of(kind_section, kind, scope)
        v2, v2_ok = v2_declaration(kind_section, kind, scope)
        if (name and endpoint and python_path and config is not None and compute is not None and batching_ok
                and v2_ok):
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
                batching=batching,
                v2=v2,
                nan_as_null=bool(section.get("nan_as_null")),
            )
    return ApiDraft(name, section.key_mark("name"), endpoint, endpoint_mark, api)
