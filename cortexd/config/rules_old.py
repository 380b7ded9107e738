"""Building the Api of a Cortex v0.11 or v0.12-v0.13 API, with those releases' cross-key rules."""
from __future__ import annotations

from typing import Any

from cortexd.config.checks import check_onnx_model, check_tensorflow_model
from cortexd.config.objects import CALL_CLASS, CALL_V011, Api, PredictorSpec, UpdateStrategy
from cortexd.config.rules import ApiDraft, compute_of, endpoint_of, one_of, tracker_of
from cortexd.config.schema import keys_by_name
from cortexd.config.schema_old import V011_API_KEYS, V011_KINDS
from cortexd.config.walk import Scope, Section

_V011_KEYS = keys_by_name(V011_API_KEYS)

# Variables cortexd sets for every replica: an `env` entry must not take them over.
RESERVED_ENV: tuple[str, ...] = ("CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "CORTEXD_API", "CORTEXD_REPLICA_ID")


def env_of(kind_section: Section, path: str, scope: Scope) -> dict[str, str] | None:
    """The replica's extra environment; None after reporting a variable cortexd owns."""
    env: dict[str, str] = kind_section.get("env") or {}
    taken = [name for name in env if name in RESERVED_ENV or name.startswith("CORTEXD_")]
    if taken:
        scope.add(kind_section.key_mark("env"), path + "env",
                  f"{taken[0]} is set by cortexd for each replica; remove it from env")
        return None
    bad = [name for name in env if not name or "=" in name or "\0" in name]
    if bad:
        scope.add(kind_section.key_mark("env"), path + "env", f"{bad[0]!r} is not a valid environment variable name")
        return None
    return env


def _python_path(kind_section: Section, scope: Scope) -> str | None:
    if "python_path" in kind_section.invalid:
        return None
    return kind_section.get("python_path") or scope.project_dir


def build_v011(section: Section, deployment: str | None, scope: Scope) -> ApiDraft:
    """A v0.11 API: `predictor` (python), `tensorflow` or `onnx`, each with its own metadata."""
    name: str | None = section.get("name")
    endpoint, endpoint_mark = endpoint_of(section, deployment, name, scope)
    key = one_of(section, scope, V011_KINDS, _V011_KEYS)
    compute = compute_of(section, scope)
    api: Api | None = None
    if key is not None:
        kind_section: Section = section.get(key)
        kind = "python" if key == "predictor" else key
        python_path = _python_path(kind_section, scope)
        metadata: dict[str, Any] = kind_section.get("metadata") or {}
        if name and endpoint and python_path and compute is not None and "metadata" not in kind_section.invalid:
            api = Api(
                name=name,
                endpoint=endpoint,
                python_path=python_path,
                predictor=PredictorSpec(
                    kind=kind,
                    predictor=kind_section.get("path") if kind == "python" else kind_section.get("request_handler"),
                    model=kind_section.get("model"),
                    signature_key=kind_section.get("signature_key"),
                    config=metadata,
                ),
                tracker=tracker_of(section),
                compute=compute,
                metadata=metadata,
                dialect="v0.11",
                call=CALL_V011,
            )
    return ApiDraft(name, section.key_mark("name"), endpoint, endpoint_mark, api)


def typed_model(kind_section: Section, kind: str, path: str, scope: Scope, model_keys: tuple[str, ...],
                python_model: bool = False) -> tuple[bool, str | None]:
    """(ok, model) of a `predictor: {type, ...}` section: tensorflow and onnx need exactly one
    model key of `model_keys` (checked as that kind of model); python takes none, unless
    `python_model` (v0.11's interface: an optional model fetched for init)."""
    given = [k for k in model_keys if kind_section.has_value(k)]
    if len(given) > 1:
        scope.add(kind_section.key_mark(given[1]), path + given[1],
                  f"{given[0]} is given too (line {kind_section.key_mark(given[0]).line}); keep one")
        return False, None
    if kind == "python" and python_model:   # optional, any format: the predictor loads it
        if not given:
            return True, None
        return given[0] not in kind_section.invalid, kind_section.get(given[0])
    if kind == "python":
        for k in given:
            scope.add(kind_section.key_mark(k), path + k,
                      "a python predictor loads its model itself (pass where it is in config); "
                      f"{k} is for tensorflow and onnx predictors")
        return not given, None
    if not given:
        alternatives = " or ".join(model_keys + (("models.path",) if "model_path" in model_keys else ()))
        scope.add(kind_section.where, path + model_keys[0],
                  f"required for a {kind} predictor: the model to serve ({alternatives})")
        return False, None
    if given[0] in kind_section.invalid:
        return False, None
    model: str = kind_section.get(given[0])
    check = check_tensorflow_model if kind == "tensorflow" else check_onnx_model
    resolved, problem = check(model, scope.project_dir)
    if problem is not None:
        scope.add(kind_section.key_mark(given[0]), path + given[0], problem)
        return False, None
    return True, resolved


def signature_ok(kind_section: Section, kind: str, path: str, scope: Scope) -> bool:
    if kind != "tensorflow" and kind_section.has_value("signature_key"):
        scope.add(kind_section.key_mark("signature_key"), path + "signature_key",
                  f"only tensorflow predictors have a signature_key (this one is {kind})")
        return False
    return True


def update_strategy_of(strategy: Section | None, path: str, scope: Scope) -> UpdateStrategy | None:
    """max_surge and max_unavailable (defaults 25%); both 0 would leave an update no way forward."""
    surge = strategy.get("max_surge", "25%") if strategy is not None else "25%"
    unavailable = strategy.get("max_unavailable", "25%") if strategy is not None else "25%"
    if strategy is not None and {"max_surge", "max_unavailable"} & strategy.invalid:
        return None
    if surge in ("0", "0%") and unavailable in ("0", "0%"):
        assert strategy is not None
        scope.add(strategy.key_mark("max_unavailable"), path + "max_unavailable",
                  "max_surge and max_unavailable cannot both be 0: an update could never replace a replica")
        return None
    return UpdateStrategy(max_surge=surge, max_unavailable=unavailable)


def build_v012(section: Section, deployment: str | None, scope: Scope) -> ApiDraft:
    """A v0.12 (with a deployment) or v0.13 (`deployment` "") API: `predictor: {type, path, ...}`."""
    name: str | None = section.get("name")
    endpoint, endpoint_mark = endpoint_of(section, deployment, name, scope)
    compute = compute_of(section, scope)
    compute_section: Section | None = section.get("compute")
    strategy: UpdateStrategy | None = None
    strategy_ok = True
    surge_keys = {"max_surge", "max_unavailable"}
    if deployment == "" or (compute_section is not None and surge_keys & compute_section.given.keys()):
        strategy = update_strategy_of(compute_section, "compute.", scope)   # v0.13 had one, 25%/25% by default
        strategy_ok = strategy is not None
    api: Api | None = None
    predictor: Section | None = section.get("predictor")
    kind: str | None = predictor.get("type") if predictor is not None else None
    if predictor is not None and kind is not None:
        model_ok, model = typed_model(predictor, kind, "predictor.", scope, ("model",))
        env = env_of(predictor, "predictor.", scope)
        python_path = _python_path(predictor, scope)
        fine = model_ok and signature_ok(predictor, kind, "predictor.", scope) and env is not None and strategy_ok
        if fine and name and endpoint and python_path and compute is not None and "path" in predictor.entries:
            assert env is not None
            api = Api(
                name=name,
                endpoint=endpoint,
                python_path=python_path,
                predictor=PredictorSpec(
                    kind=kind,
                    predictor=predictor.get("path"),
                    model=model,
                    signature_key=predictor.get("signature_key"),
                    config=predictor.get("config") or {}
                ),
                tracker=tracker_of(section),
                compute=compute,
                metadata={},
                dialect="v0.12",
                call=CALL_CLASS,
                update_strategy=strategy,
                env=env,
            )
    return ApiDraft(name, section.key_mark("name"), endpoint, endpoint_mark, api)
