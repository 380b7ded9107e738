"""Building the Api of a Cortex v0.14-v0.35 realtime API, and TrafficSplitters, with the rules
those releases checked between keys (Cortex's own validations, in cortexd's words)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cortexd.config.checks import batching_problem
from cortexd.config.errors import ConfigIssue
from cortexd.config.objects import (
    CALL_CLASS,
    CALL_CLASS_KWARGS,
    CALL_HANDLER,
    CALL_MODULE,
    CALL_V011,
    Api,
    Autoscaling,
    Batching,
    Compute,
    PredictorSpec,
    Tracker,
    TrafficSplit,
    TrafficSplitter,
)
from cortexd.config.rules import (
    ApiDraft,
    checked_endpoint,
    default_endpoint,
    gpu_mem_ok,
    mem_limit_ok,
    one_of,
    replica_counts,
    tracker_of,
    v2_declaration,
)
from cortexd.config.rules_old import env_of, signature_ok, typed_model, update_strategy_of
from cortexd.config.schema import COMPUTE_KEYS as COMPUTE_KEYS_SEED
from cortexd.config.schema import Key, default_of, keys_by_name
from cortexd.config.schema_realtime import API_KEYS, AUTOSCALING_KEYS, COMPUTE_KEYS
from cortexd.config.walk import Entry, Scope, Section
from cortexd.config.yamlsrc import Mark

_KEYS = keys_by_name(API_KEYS)
_TICK_S = 10.0   # Cortex measured in-flight requests every 10 seconds; windows are multiples of it


def _default(keys: tuple[Key, ...], name: str, section: Section | None) -> Any:
    return default_of(keys, name) if section is None else section.get(name, default_of(keys, name))


def _one(section: Section, names: tuple[str, str], scope: Scope, path: str = "") -> str | None:
    """The one of two keys with the same meaning (they moved between releases) that is given."""
    given = [n for n in names if section.has_value(n)]
    if len(given) == 2:
        scope.add(section.key_mark(given[1]), path + given[1],
                  f"{path}{given[0]} is given too (line {section.key_mark(given[0]).line}); "
                  "they mean the same, keep one")
        return "!"
    return given[0] if given else None


def _endpoint(section: Section, name: str | None, scope: Scope) -> tuple[str | None, Mark, bool]:
    """(endpoint, where, ok): `endpoint` (v0.14-v0.17) or `networking.endpoint` (v0.18+), default /<name>."""
    networking: Section | None = section.get("networking")
    entries: list[tuple[Entry, str]] = []
    if "endpoint" in section.entries:
        entries.append((section.entries["endpoint"], "endpoint"))
    if networking is not None and "endpoint" in networking.entries:
        entries.append((networking.entries["endpoint"], "networking.endpoint"))
    if len(entries) == 2:
        scope.add(entries[1][0].mark, "networking.endpoint",
                  f"endpoint is given too (line {entries[0][0].mark.line}); they mean the same, keep one")
        return None, entries[1][0].mark, False
    if entries:
        entry, path = entries[0]
        endpoint = checked_endpoint(entry, path, scope)
        return endpoint, entry.mark, endpoint is not None
    invalid = "endpoint" in section.invalid or (networking is not None and "endpoint" in networking.invalid)
    if invalid or name is None:
        return None, section.key_mark("name"), not invalid
    endpoint = default_endpoint(name, section.key_mark("name"), scope)
    return endpoint, section.key_mark("name"), endpoint is not None


def _model(ps: Section, kind: str, path: str, scope: Scope, python_model: bool) -> tuple[bool, str | None, str | None]:
    """(ok, model, signature_key) of the predictor: `model` (v0.14-v0.17), `model_path` (v0.18-v0.24)
    or `models.path` (v0.18+, one model); the signature from the predictor or from `models`.
    `python_model`: a python predictor may have one (v0.11's interface)."""
    models: Section | None = ps.get("models")
    if "models" in ps.invalid:
        return False, None, None
    if models is not None:
        if kind == "python" and python_model and models.has_value("path") and not models.invalid:
            return True, models.get("path"), None
        if kind == "python":
            scope.add(ps.key_mark("models"), path + "models", "a python predictor takes no models; "
                      "it loads its model itself (pass where it is in config)")
            return False, None, None
        if models.invalid:
            return False, None, None   # refused or wrong keys inside: already reported
        if not models.has_value("path"):
            scope.add(models.where, path + "models.path", "required: cortexd serves one model per API (models.path)")
            return False, None, None
        if ps.has_value("model") or ps.has_value("model_path"):
            other = "model" if ps.has_value("model") else "model_path"
            scope.add(models.where, path + "models", f"{other} is given too (line {ps.key_mark(other).line}); keep one")
            return False, None, None
        if "path" in models.invalid:
            return False, None, None
        signature = _one_signature(ps, models, path, scope)
        if signature == "!":
            return False, None, None
        from cortexd.config.checks import check_onnx_model, check_tensorflow_model

        check = check_tensorflow_model if kind == "tensorflow" else check_onnx_model
        resolved, problem = check(models.get("path"), scope.project_dir)
        if problem is not None:
            scope.add(models.key_mark("path"), path + "models.path", problem)
            return False, None, None
        return True, resolved, signature
    ok, model = typed_model(ps, kind, path, scope, ("model", "model_path"), python_model)
    return ok, model, ps.get("signature_key")


def _one_signature(ps: Section, models: Section, path: str, scope: Scope) -> str | None:
    if ps.has_value("signature_key") and models.has_value("signature_key"):
        scope.add(models.key_mark("signature_key"), path + "models.signature_key",
                  f"signature_key is given too (line {ps.key_mark('signature_key').line}); keep one")
        return "!"
    signature_key: str | None = models.get("signature_key") or ps.get("signature_key")
    return signature_key


def _parallelism(ps: Section, auto: Section | None, path: str, scope: Scope) -> tuple[int, int] | None:
    """(processes per replica, threads per process) from the predictor (v0.18+) or autoscaling (v0.14-v0.17)."""
    pairs = (("processes_per_replica", "workers_per_replica"), ("threads_per_process", "threads_per_worker"))
    values: list[int] = []
    for new, old in pairs:
        if ps.has_value(new) and auto is not None and auto.has_value(old):
            scope.add(auto.key_mark(old), f"autoscaling.{old}",
                      f"{path}{new} is given too (line {ps.key_mark(new).line}); they mean the same, keep one")
            return None
        if new in ps.invalid or (auto is not None and old in auto.invalid):
            return None
        values.append(ps.get(new) or (auto.get(old) if auto is not None else None) or 1)
    return values[0], values[1]


_REQUEST_BASED = tuple(k.name for k in AUTOSCALING_KEYS[AUTOSCALING_KEYS.index(
    next(k for k in AUTOSCALING_KEYS if k.name == "target_replica_concurrency")):])


def _cpu_rule(auto: Section | None, scope: Scope) -> tuple[bool, int | None]:
    """(ok, target_cpu_utilization): cortexd's key for keeping the CPU rule, alone."""
    if auto is None or not auto.has_value("target_cpu_utilization"):
        return True, None
    mixed = [k for k in _REQUEST_BASED if auto.has_value(k)]
    if mixed:
        scope.add(auto.key_mark(mixed[0]), f"autoscaling.{mixed[0]}",
                  f"target_cpu_utilization (line {auto.key_mark('target_cpu_utilization').line}) autoscales on CPU; "
                  "request-based keys do not apply then: keep one rule")
        return False, None
    return True, auto.get("target_cpu_utilization")


def _autoscaling(auto: Section | None, concurrency: int, scope: Scope) -> Autoscaling | None:
    if auto is not None and auto.invalid:
        return None
    target = _default(AUTOSCALING_KEYS, "target_replica_concurrency", auto) or float(concurrency)
    most = _default(AUTOSCALING_KEYS, "max_replica_concurrency", auto)
    window = _default(AUTOSCALING_KEYS, "window", auto)
    if auto is not None and target > most:
        where = ("target_replica_concurrency" if auto.has_value("target_replica_concurrency")
                 else "max_replica_concurrency")
        scope.add(auto.key_mark(where), f"autoscaling.{where}",
                  f"target_replica_concurrency ({target:g}) must be <= max_replica_concurrency ({most})")
        return None
    if auto is not None and abs(window / _TICK_S - round(window / _TICK_S)) > 1e-9:
        scope.add(auto.key_mark("window"), "autoscaling.window",
                  f"must be a multiple of 10s (in-flight requests are measured every 10 seconds); got {window:g}s")
        return None
    return Autoscaling(
        target_replica_concurrency=float(target),
        max_replica_concurrency=most,
        window_s=window,
        downscale_stabilization_period_s=_default(AUTOSCALING_KEYS, "downscale_stabilization_period", auto),
        upscale_stabilization_period_s=_default(AUTOSCALING_KEYS, "upscale_stabilization_period", auto),
        max_downscale_factor=_default(AUTOSCALING_KEYS, "max_downscale_factor", auto),
        max_upscale_factor=_default(AUTOSCALING_KEYS, "max_upscale_factor", auto),
        downscale_tolerance=_default(AUTOSCALING_KEYS, "downscale_tolerance", auto),
        upscale_tolerance=_default(AUTOSCALING_KEYS, "upscale_tolerance", auto),
    )


def _compute(section: Section, counts: tuple[int, int, int], scope: Scope, cpu_target: int | None) -> Compute | None:
    compute: Section | None = section.get("compute")
    if "compute" in section.invalid or (compute is not None and compute.invalid):
        return None
    if compute is not None and compute.get("inf", 0) > 0:
        scope.add(compute.key_mark("inf"), "compute.inf",
                  "cortexd does not serve AWS Inferentia; run the API on cpu or gpu (remove inf)")
        return None
    if not mem_limit_ok(compute, scope) or not gpu_mem_ok(compute, scope):
        return None
    low, high, init = counts
    return Compute(
        min_replicas=low, max_replicas=high, init_replicas=init,
        target_cpu_utilization=(
            cpu_target if cpu_target is not None else default_of(COMPUTE_KEYS_SEED, "target_cpu_utilization")
        ),
        cpu=_default(COMPUTE_KEYS, "cpu", compute), gpu=_default(COMPUTE_KEYS, "gpu", compute),
        mem=_default(COMPUTE_KEYS, "mem", compute), mem_limit=_default(COMPUTE_KEYS, "mem_limit", compute),
        gpu_mem=_default(COMPUTE_KEYS, "gpu_mem", compute),
    )


def _batching(ps: Section, kind: str, model: str | None, signature: str | None, scope: Scope,
              path: str) -> tuple[bool, Batching | None]:
    batch: Section | None = ps.get("server_side_batching")
    if "server_side_batching" in ps.invalid:
        return False, None
    if batch is None:
        return True, None
    # Cortex gathered a batch from its threads, so it tied max_batch_size to threads_per_process
    # and had no batching for ONNX; cortexd's daemon forms the batches itself, for every kind.
    size, interval = batch.get("max_batch_size"), batch.get("batch_interval")
    if size is None or interval is None:
        return False, None  # reported while reading the section
    problem = batching_problem(kind, model, signature)
    if problem is not None:
        scope.add(ps.key_mark("server_side_batching"), path + "server_side_batching", problem)
        return False, None
    return True, Batching(max_batch_size=size, batch_interval_s=interval)


def _tracker(section: Section, scope: Scope) -> tuple[bool, Tracker | None]:
    which = _one(section, ("tracker", "monitoring"), scope)
    if which == "!":
        return False, None
    return True, tracker_of(section, which) if which else None


_INTERFACE_CALLS: dict[str, str] = {"v0.11": CALL_V011, "december-2019": CALL_MODULE, "v0.12": CALL_CLASS}


def _file_given(ps: Section, kind: str, interface: str | None, path: str, scope: Scope) -> bool:
    """`path` is required, but for tensorflow and onnx APIs of the interfaces where the model
    answers by itself (v0.11 without a request handler, december-2019 without a predictor)."""
    if ps.has_value("path"):
        return "path" not in ps.invalid
    if kind != "python" and interface in ("v0.11", "december-2019"):
        return True
    scope.add(ps.where, path + "path", "required: the predictor's file, relative to the folder holding cortex.yaml")
    return False


def build_realtime(section: Section, deployment: str | None, scope: Scope) -> ApiDraft:
    """A v0.14-v0.35 API (`deployment` is always "": these releases had none)."""
    name: str | None = section.get("name")
    endpoint, endpoint_mark, endpoint_ok = _endpoint(section, name, scope)
    key = one_of(section, scope, ("predictor", "handler"), _KEYS, required="pod" not in section.given)
    auto: Section | None = section.get("autoscaling")
    counts = replica_counts(auto, "autoscaling.", scope) if "autoscaling" not in section.invalid else None
    tracker_ok, tracker = _tracker(section, scope)
    strategy = update_strategy_of(section.get("update_strategy"), "update_strategy.", scope)
    api: Api | None = None
    ps: Section | None = section.get(key) if key else None
    kind: str | None = ps.get("type") if ps is not None else None
    if ps is not None and key is not None and kind is not None:
        path = key + "."
        interface = ps.get("interface")
        call = _INTERFACE_CALLS.get(interface) or (CALL_HANDLER if key == "handler" else CALL_CLASS_KWARGS)
        file_ok = _file_given(ps, kind, interface, path, scope)
        model_ok, model, signature = _model(ps, kind, path, scope, python_model=interface == "v0.11")
        sig_ok = signature_ok(ps, kind, path, scope)
        env = env_of(ps, path, scope)
        parallel = _parallelism(ps, auto, path, scope)
        cpu_ok, cpu_target = _cpu_rule(auto, scope)
        autoscaling = _autoscaling(auto, parallel[0] * parallel[1], scope) if parallel and cpu_ok else None
        batch_ok, batching = _batching(ps, kind, model, signature, scope, path) if model_ok else (False, None)
        v2, v2_ok = v2_declaration(ps, kind, scope, path + "v2")
        compute = _compute(section, counts, scope, cpu_target) if counts is not None and cpu_ok else None
        python_path = ps.get("python_path") or scope.project_dir
        ready = (model_ok and sig_ok and env is not None and parallel and autoscaling and batch_ok and tracker_ok
                 and v2_ok)
        if (ready and file_ok and name and endpoint and endpoint_ok and compute and strategy
                and "interface" not in ps.invalid):
            assert env is not None and parallel is not None
            api = Api(
                name=name,
                endpoint=endpoint,
                python_path=python_path,
                predictor=PredictorSpec(
                    kind=kind, predictor=ps.get("path"), model=model, signature_key=signature,
                    config=ps.get("config") or {},
                ),
                tracker=tracker,
                compute=compute,
                metadata={},
                batching=batching,
                threads_per_process=parallel[1],
                dialect="realtime",
                call=call,
                autoscaling=autoscaling if cpu_target is None else None,
                update_strategy=strategy,
                env=env,
                processes_per_replica=parallel[0],
                v2=v2,
                nan_as_null=bool(ps.get("nan_as_null")),
            )
    return ApiDraft(name, section.key_mark("name"), endpoint, endpoint_mark, api)


# ---------------------------------------------------------------------------- TrafficSplitter


@dataclass(frozen=True)
class SplitterDraft:
    splitter: TrafficSplitter | None
    targets: tuple[tuple[str, Mark], ...]      # the API names it sends to, and where each is written
    api: str | None
    prefix: str


def build_splitter(section: Section, scope: Scope) -> tuple[ApiDraft, SplitterDraft]:
    """A TrafficSplitter; the weights and shadows are checked here, its targets by check_targets."""
    name: str | None = section.get("name")
    endpoint, endpoint_mark, endpoint_ok = _endpoint(section, name, scope)
    splits: list[Section] = section.get("apis") or []
    targets = tuple((s.get("name"), s.key_mark("name")) for s in splits if s.get("name"))
    ok = "apis" in section.entries
    seen: dict[str, Mark] = {}
    for split in splits:
        target = split.get("name")
        if target in seen:
            scope.add(split.key_mark("name"), "apis",
                      f'api "{target}" is listed twice (first at line {seen[target].line})')
            ok = False
        elif target:
            seen[target] = split.key_mark("name")
    shadows = [s for s in splits if s.get("shadow", False)]
    if len(shadows) > 1:
        scope.add(shadows[1].key_mark("shadow"), "apis", f"only one shadow API per splitter (the first is at line "
                  f"{shadows[0].key_mark('shadow').line})")
        ok = False
    total = sum(s.get("weight", 0) for s in splits if not s.get("shadow", False))
    if ok and splits and total != 100:
        scope.add(section.key_mark("apis"), "apis",
                  f"the weights of the APIs (shadows aside) must sum to 100; they sum to {total}")
        ok = False
    splitter = None
    if ok and name and endpoint and endpoint_ok:
        splitter = TrafficSplitter(name, endpoint, tuple(
            TrafficSplit(s.get("name"), s.get("weight"), bool(s.get("shadow", False))) for s in splits))
    return ApiDraft(name, section.key_mark("name"), endpoint, endpoint_mark, None), SplitterDraft(
        splitter, targets, scope.api, scope.prefix)


def check_targets(drafts: list[SplitterDraft], apis: set[str], splitters: set[str], file: str,
                  issues: list[ConfigIssue]) -> set[int]:
    """Every splitter sends to APIs of this file (not to splitters); the indexes of those that do not."""
    bad: set[int] = set()
    for index, draft in enumerate(drafts):
        for target, mark in draft.targets:
            if target in apis:
                continue
            why = ("is a TrafficSplitter; a splitter sends to APIs" if target in splitters
                   else "is not an API of this file")
            issues.append(
                ConfigIssue(file, mark.line, mark.column, draft.api, draft.prefix + "apis", f'"{target}" {why}')
            )
            bad.add(index)
    return bad
