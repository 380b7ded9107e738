"""Table tests of the Cortex dialects: which one a file is read in, what each maps to, and
every dialect's errors in its own terms (file:line:column, did-you-mean against its keys)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cortexd.config import (
    Autoscaling,
    Compute,
    ConfigError,
    ConfigIssue,
    PredictorSpec,
    Tracker,
    TrafficSplit,
    UpdateStrategy,
    load_config_text,
    validate_report,
)
from cortexd.config.dialects import SEED, detect
from cortexd.config.loader import validate_text
from cortexd.config.objects import CALL_CLASS, CALL_CLASS_KWARGS, CALL_HANDLER, CALL_MODULE, CALL_V011, Batching
from cortexd.config.schema_realtime import AUTOSCALING_KEYS
from cortexd.config.yamlsrc import YamlSource


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "p.py").write_text("class PythonPredictor: ...\n")
    (tmp_path / "h.py").write_text("def pre_inference(sample, signature, metadata): return sample\n")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    saved = tmp_path / "saved" / "1"
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"pb")
    (tmp_path / "lib").mkdir()
    return tmp_path


def text(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


def issues(project: Path, source: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text(source), str(project / "cortex.yaml"))
    return info.value.errors


def load(project: Path, source: str, head: str = ""):  # type: ignore[no-untyped-def]
    return load_config_text(head + text(source), str(project / "cortex.yaml"))


# --- detection ---------------------------------------------------------------------------------

DEP = "- kind: deployment\n  name: dep\n"

DETECTION: list[tuple[str, str, str]] = [
    # (file, dialect id, evidence fragment)
    (DEP + "- kind: api\n  name: a\n  python: {predictor: p.py}\n", "seed", "python (line 5)"),
    (DEP + "- kind: api\n  name: a\n  onnx: {model: model.onnx}\n", "seed", ""),   # both read it: the seed
    (DEP + "- kind: api\n  name: a\n  onnx: {model: m, request_handler: h.py}\n", "v0.11", "onnx.request_handler"),
    (DEP + "- kind: api\n  name: a\n  tensorflow: {model: m, metadata: {}}\n", "v0.11", "tensorflow.metadata"),
    (DEP + "- kind: api\n  name: a\n  predictor: {path: p.py}\n", "v0.11", "predictor.path"),
    (DEP + "- kind: api\n  name: a\n  predictor: {type: python, path: p.py}\n", "v0.12", "predictor.type"),
    ("- name: a\n  predictor: {type: python, path: p.py}\n", "v0.12", "predictor.type"),
    ("- name: a\n  predictor: {type: python, path: p.py}\n  compute: {min_replicas: 2}\n", "v0.12", "predictor.type"),
    ("- name: a\n  predictor: {type: python, path: p.py}\n  autoscaling: {min_replicas: 2}\n", "realtime", "autoscaling"),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n", "realtime", "kind: RealtimeAPI"),
    ("- name: a\n  kind: SyncAPI\n  predictor: {type: python, path: p.py}\n", "realtime", "kind: SyncAPI"),
    ("- name: a\n  kind: BatchAPI\n", "realtime", "kind: BatchAPI"),
    ("- name: a\n  pod: {containers: []}\n", "realtime", "pod"),
    ("- name: a\n  handler: {type: python, path: p.py}\n", "realtime", "handler"),
    ("- name: a\n  predictor: {type: python, path: p.py, threads_per_process: 2}\n", "realtime", "predictor.threads_per_process"),
    ("- kind: api\n  name: a\n  python: {predictor: p.py}\n", "seed", "python"),   # no deployment: said in seed terms
    ("- name: a\n", "v0.12", ""),
    ("kind: api\n", "seed", ""),
]


@pytest.mark.parametrize(
    ("source", "dialect", "evidence"), DETECTION, ids=[f"detect{i}" for i in range(len(DETECTION))]
)
def test_detection(source: str, dialect: str, evidence: str) -> None:
    src = YamlSource(source)
    found = detect(src.compose(), src)
    assert found.dialect.id == dialect
    assert evidence in found.evidence


def test_validate_names_the_dialect_it_read(project: Path) -> None:
    path = project / "cortex.yaml"
    path.write_text("- name: iris\n  predictor:\n    type: python\n    path: p.py\n")
    report = validate_report(str(path))
    assert report.errors == []
    assert report.headline() == "cortex.yaml: Cortex v0.12\u2013v0.13 dialect (read from predictor.type (line 3))"
    path.write_text(DEP + "- kind: api\n  name: a\n  python: {predictor: p.py}\n")
    assert validate_report(str(path)).dialect is SEED


# --- each dialect maps onto the one internal model ------------------------------------------


def test_v011_maps_to_module_calls_with_metadata(project: Path) -> None:
    config = load(project, """
    - kind: api
      name: py
      predictor: {path: p.py, model: model.onnx, python_path: lib, metadata: {k: v}}
      tracker: {model_type: classification}
      compute: {min_replicas: 2, max_replicas: 3, mem: 1Gi, cpu: 1}
    - kind: api
      name: tf
      tensorflow: {model: saved, request_handler: h.py, signature_key: predict, metadata: {a: 1}}
    - kind: api
      name: ox
      onnx: {model: model.onnx}
    """, DEP)
    assert config.dialect == "v0.11" and config.deployment == "dep"
    py, tf, ox = config.apis
    assert py.predictor == PredictorSpec("python", str(project / "p.py"), str(project / "model.onnx"), None, {"k": "v"})
    assert (py.call, py.dialect, py.endpoint, py.python_path) == (CALL_V011, "v0.11", "/dep/py", str(project / "lib"))
    assert py.tracker == Tracker("classification")
    assert py.compute == Compute(min_replicas=2, max_replicas=3, init_replicas=2, cpu=1.0, mem=2**30)
    assert py.autoscaling is None   # the CPU rule of v0.11
    assert tf.predictor == PredictorSpec(
        "tensorflow", str(project / "h.py"), str(project / "saved"), "predict", {"a": 1}
    )
    assert ox.predictor == PredictorSpec("onnx", None, str(project / "model.onnx"), None, {})


def test_v012_with_a_deployment_and_v013_without(project: Path) -> None:
    v012 = load(project, """
    - kind: api
      name: a
      predictor: {type: onnx, path: p.py, model: model.onnx, config: {c: 1}, env: {MODE: fast}}
    """, DEP)
    (api,) = v012.apis
    assert (api.endpoint, api.call, api.env, api.update_strategy) == ("/dep/a", CALL_CLASS, {"MODE": "fast"}, None)
    assert api.predictor == PredictorSpec("onnx", str(project / "p.py"), str(project / "model.onnx"), None, {"c": 1})
    v013 = load(project, """
    - name: a
      predictor: {type: tensorflow, path: p.py, model: saved, signature_key: serving_default}
      compute: {max_surge: 1, mem: 100M}
    """)
    assert v013.dialect == "v0.12" and v013.deployment == ""
    (api,) = v013.apis
    assert api.endpoint == "/a"
    assert api.update_strategy == UpdateStrategy("1", "25%")
    assert api.compute.mem == 100 * 10**6 and api.compute.mem_limit is None   # mem is a request


def test_realtime_maps_every_section(project: Path) -> None:
    config = load(project, """
    - name: a
      kind: RealtimeAPI
      predictor:
        type: python
        path: p.py
        processes_per_replica: 2
        threads_per_process: 4
        server_side_batching: {max_batch_size: 4, batch_interval: 100ms}
        config: {k: 1}
        env: {X: "1"}
      networking: {endpoint: /v1/a}
      compute: {cpu: 500m, gpu: 1, mem: 1G, mem_limit: 2G}
      autoscaling:
        min_replicas: 2
        max_replicas: 5
        target_replica_concurrency: 3.5
        window: 30s
        downscale_stabilization_period: 2m
        max_upscale_factor: 3
      update_strategy: {max_surge: 0, max_unavailable: 50%}
      monitoring: {model_type: regression}
    - name: b
      handler: {type: tensorflow, path: p.py, models: {path: saved, signature_key: s}}
    """)
    a, b = config.apis
    assert (a.endpoint, a.call, a.threads_per_process, a.processes_per_replica) == ("/v1/a", CALL_CLASS_KWARGS, 4, 2)
    assert a.batching == Batching(4, 0.1)
    assert a.env == {"X": "1"} and a.predictor.config == {"k": 1}
    assert a.compute == Compute(
        min_replicas=2, max_replicas=5, init_replicas=2, cpu=0.5, gpu=1, mem=10**9, mem_limit=2 * 10**9
    )
    assert a.autoscaling == Autoscaling(target_replica_concurrency=3.5, window_s=30.0,
                                        downscale_stabilization_period_s=120.0, max_upscale_factor=3.0)
    assert a.update_strategy == UpdateStrategy("0", "50%")
    assert a.tracker == Tracker("regression")
    assert (b.endpoint, b.call) == ("/b", CALL_HANDLER)
    assert b.predictor == PredictorSpec("tensorflow", str(project / "p.py"), str(project / "saved"), "s", {})
    # target_replica_concurrency defaults to processes_per_replica * threads_per_process
    assert b.autoscaling == Autoscaling(target_replica_concurrency=1.0)


def test_realtime_v014_keys_where_v014_put_them(project: Path) -> None:
    (api,) = load(project, """
    - name: a
      endpoint: old/style
      predictor: {type: onnx, path: p.py, model: model.onnx}
      autoscaling: {workers_per_replica: 2, threads_per_worker: 3}
      tracker: {model_type: classification, key: label}
    """).apis
    assert (api.endpoint, api.processes_per_replica, api.threads_per_process) == ("/old/style", 2, 3)
    assert api.autoscaling is not None and api.autoscaling.target_replica_concurrency == 6.0
    assert api.tracker == Tracker("classification", "label")


def test_interfaces_and_the_cpu_rule_in_the_newest_dialect(project: Path) -> None:
    a, b, c = load(project, """
    - name: a
      kind: RealtimeAPI
      predictor: {type: onnx, interface: december-2019, models: {path: model.onnx}}
      autoscaling: {target_cpu_utilization: 60}
    - name: b
      kind: RealtimeAPI
      predictor: {type: python, path: p.py, interface: v0.11, models: {path: model.onnx}}
    - name: c
      kind: RealtimeAPI
      predictor: {type: python, path: p.py, interface: v0.12}
    """).apis
    assert (a.call, a.autoscaling, a.compute.target_cpu_utilization) == (CALL_MODULE, None, 60)
    assert (b.call, b.predictor.model) == (CALL_V011, str(project / "model.onnx"))
    assert c.call == CALL_CLASS


def test_traffic_splitter(project: Path) -> None:
    config = load(project, """
    - {name: a, kind: RealtimeAPI, predictor: {type: python, path: p.py}}
    - {name: b, kind: RealtimeAPI, predictor: {type: python, path: p.py}}
    - name: split
      kind: TrafficSplitter
      networking: {endpoint: /ab}
      apis:
        - {name: a, weight: 30}
        - {name: b, weight: 70}
        - {name: a2, weight: 0, shadow: true}
    - {name: a2, kind: RealtimeAPI, predictor: {type: python, path: p.py}}
    """)
    (splitter,) = config.splitters
    assert (splitter.name, splitter.endpoint) == ("split", "/ab")
    assert splitter.apis == (TrafficSplit("a", 30), TrafficSplit("b", 70), TrafficSplit("a2", 0, True))
    assert [api.name for api in config.apis] == ["a", "b", "a2"]


def test_autoscaling_dataclass_defaults_match_the_schema() -> None:
    schema = {key.name: key.default for key in AUTOSCALING_KEYS}
    auto = Autoscaling()
    assert auto.max_replica_concurrency == schema["max_replica_concurrency"]
    assert auto.window_s == schema["window"]
    assert auto.downscale_stabilization_period_s == schema["downscale_stabilization_period"]
    assert auto.upscale_stabilization_period_s == schema["upscale_stabilization_period"]
    for name in ("max_downscale_factor", "max_upscale_factor", "downscale_tolerance", "upscale_tolerance"):
        assert getattr(auto, name) == schema[name], name


@pytest.mark.parametrize(
    ("surge", "unavailable", "desired", "expected"),
    [("25%", "25%", 4, (1, 1)), ("25%", "25%", 1, (1, 0)), ("0", "25%", 3, (0, 0 + 1)), ("5", "0", 2, (5, 0)),
     ("50%", "50%", 3, (2, 1)), ("0%", "0%", 4, (0, 1))],
)
def test_update_strategy_resolves_as_kubernetes(
    surge: str, unavailable: str, desired: int, expected: tuple[int, int]
) -> None:
    assert UpdateStrategy(surge, unavailable).resolve(desired) == expected


# --- errors, in each dialect's terms ----------------------------------------------------------

# (file, [(line, column, api, key path, message fragment)])
ERRORS: list[tuple[str, list[tuple[int, int | None, str | None, str, str]]]] = [
    # v0.11: did-you-mean against v0.11's keys
    (DEP + "- kind: api\n  name: a\n  predictor: {path: p.py, metdata: {}}\n",
     [(5, None, "a", "predictor.metdata", 'did you mean "metadata"? (accepted: path, model, python_path, metadata)')]),
    (DEP + "- kind: api\n  name: a\n  onnx: {model: model.onnx, request_handler: h.py, config: {}}\n",
     [(5, None, "a", "onnx.config", "(accepted: model, request_handler, python_path, metadata)")]),
    (DEP + "- kind: api\n  name: a\n  predictor: {path: p.py}\n  onnx: {model: model.onnx, request_handler: h.py}\n",
     [(6, 3, "a", "onnx", "give exactly one of predictor, tensorflow, onnx (predictor is given at line 5)")]),
    (DEP + "- kind: api\n  name: a\n  predictor: {path: gone.py, metadata: {}}\n",
     [(5, None, "a", "predictor.path", "file not found: ")]),
    # v0.12-v0.13
    ("- name: a\n  predictor: {type: pyhton, path: p.py}\n",
     [(2, None, "a", "predictor.type", 'must be one of: python, tensorflow, onnx (got "pyhton"); did you mean "python"?')]),
    ("- name: a\n  predictor: {type: onnx, path: p.py}\n",
     [(2, 3, "a", "predictor.model", "required for a onnx predictor: the model to serve (model)")]),
    ("- name: a\n  predictor: {type: python, path: p.py, model: model.onnx}\n",
     [(2, None, "a", "predictor.model", "a python predictor loads its model itself")]),
    ("- name: a\n  predictor: {type: python, path: p.py}\n  compute: {max_surge: 0, max_unavailable: 0}\n",
     [(3, None, "a", "compute.max_unavailable", "max_surge and max_unavailable cannot both be 0")]),
    ("- name: a\n  predictor: {type: python, path: p.py, env: {CUDA_VISIBLE_DEVICES: '0'}}\n",
     [(2, None, "a", "predictor.env", "CUDA_VISIBLE_DEVICES is set by cortexd for each replica")]),
    ("- name: a\n  predictor: {type: python, path: p.py}\n  compute: {max_surge: 110%}\n",
     [(3, None, "a", "compute.max_surge", "a percentage must be at most 100%")]),
    ("- name: a\n  predictor: {type: python, path: p.py}\n  compute: {min_replica: 2}\n",
     [(3, None, "a", "compute.min_replica", 'did you mean "min_replicas"?')]),
    # v0.14-v0.35: where moved keys belong, refusals, Cortex's own cross-key rules
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n  compute: {min_replicas: 2}\n",
     [(4, None, "a", "compute.min_replicas", "it belongs at autoscaling.min_replicas")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n  autoscaling: {window: 15s}\n",
     [(4, None, "a", "autoscaling.window", "must be a multiple of 10s")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n  autoscaling: {window: 60}\n",
     [(4, None, "a", "autoscaling.window", 'a unit is needed: "60s", "60ms" or "60m"?')]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n  autoscaling: {max_upscale_factor: 1}\n",
     [(4, None, "a", "autoscaling.max_upscale_factor", "must be > 1 (got 1)")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n  autoscaling: {target_replica_concurrency: 0}\n",
     [(4, None, "a", "autoscaling.target_replica_concurrency", "must be > 0 (got 0)")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n"
     "  autoscaling: {target_cpu_utilization: 50, window: 60s}\n",
     [(4, None, "a", "autoscaling.window", "autoscales on CPU; request-based keys do not apply then")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n  tracker: {model_type: regression}\n"
     "  monitoring: {model_type: regression}\n",
     [(5, 3, "a", "monitoring", "tracker is given too (line 4); they mean the same, keep one")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py, threads_per_process: 2}\n"
     "  autoscaling: {threads_per_worker: 2}\n",
     [(4, None, "a", "autoscaling.threads_per_worker", "predictor.threads_per_process is given too")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py,"
     " server_side_batching: {max_batch_size: 4, batch_interval: 1}}\n",
     [(3, None, "a", "predictor.server_side_batching.batch_interval", 'a unit is needed: "1s"')]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: onnx, path: p.py, model_path: model.onnx, model: model.onnx}\n",
     [(3, None, "a", "predictor.model_path", "model is given too (line 3); keep one")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: tensorflow, path: p.py}\n",
     [(3, 3, "a", "predictor.model", "the model to serve (model or model_path or models.path)")]),
    ("- name: a\n  kind: RealtimeAPI\n  networking: {endpoint: /healthz}\n  predictor: {type: python, path: p.py}\n",
     [(3, None, "a", "networking.endpoint", "is reserved for the daemon")]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n  compute: {inf: 1}\n",
     [(4, None, "a", "compute.inf", "cortexd does not serve AWS Inferentia")]),
    ("- name: a\n  kind: RealtimeAPi\n  predictor: {type: python, path: p.py}\n",
     [(2, 3, "a", "kind", 'did you mean "RealtimeAPI"?')]),
    ("- name: a\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n- name: a\n  kind: RealtimeAPI\n"
     "  predictor: {type: python, path: p.py}\n",
     [(4, 3, "a", "name", "duplicate API name (first at line 1)")]),
    ("- {name: a, kind: RealtimeAPI, predictor: {type: python, path: p.py}}\n"
     "- {name: s, kind: TrafficSplitter, apis: [{name: a, weight: 60}, {name: a, weight: 40}]}\n",
     [(2, 67, "s", "apis", 'api "a" is listed twice (first at line 2)')]),
    ("- {name: a, kind: RealtimeAPI, predictor: {type: python, path: p.py}}\n"
     "- {name: s, kind: TrafficSplitter, apis: [{name: a, weight: 60}, {name: b, weight: 40}]}\n",
     [(2, 67, "s", "apis", '"b" is not an API of this file')]),
    # a default endpoint /<name> may not be one of the daemon's paths
    ("- name: metrics\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n",
     [(1, 3, "metrics", "name", "the default endpoint /metrics is reserved for the daemon (/metrics); set an endpoint")]),
    ("- name: healthz\n  predictor: {type: python, path: p.py}\n",
     [(1, 3, "healthz", "name", "the default endpoint /healthz is reserved")]),
]


def _column(source: str, line: int, key_path: str) -> int:
    """Where the key path's last name is written on `line` (1-based), for flow mappings."""
    written = source.splitlines()[line - 1]
    name = key_path.rsplit(".", 1)[-1]
    return written.rindex(name + ":") + 1 if name + ":" in written else written.index(name) + 1


@pytest.mark.parametrize(("source", "want"), ERRORS, ids=[f"err{i}" for i in range(len(ERRORS))])
def test_errors_in_the_dialects_terms(
    project: Path, source: str, want: list[tuple[int, int | None, str | None, str, str]]
) -> None:
    got = issues(project, source)
    expected = [(w[0], w[1] if w[1] is not None else _column(source, w[0], w[3]), w[2], w[3]) for w in want]
    assert [(i.line, i.column, i.api, i.key_path) for i in got] == expected, [str(i) for i in got]
    for issue, case in zip(got, want, strict=True):
        assert case[4] in issue.message, str(issue)


# What cortexd does not serve: refused with one line that says so, never ignored.
REFUSED: list[tuple[str, str, str]] = [
    ("- name: j\n  kind: BatchAPI\n  predictor: {type: python, path: p.py}\n", "kind", "BatchAPI (batch jobs over a queue) is not served"),
    ("- name: j\n  kind: TaskAPI\n  definition: {path: p.py}\n", "kind", "TaskAPI (one-off jobs) is not served"),
    ("- name: j\n  kind: AsyncAPI\n  handler: {type: python, path: p.py}\n", "kind", "AsyncAPI (queued requests answered later) is not served"),
    ("- name: j\n  kind: RealtimeAPI\n  pod: {containers: [{name: api, image: x}]}\n", "pod", "container APIs (pod:, Cortex v0.36 and later)"),
    ("- name: j\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py, multi_model_reloading: {path: s3://b/m}}\n",
     "predictor.multi_model_reloading", "does not serve multi-model APIs"),
    ("- name: j\n  kind: RealtimeAPI\n  predictor: {type: onnx, path: p.py, models: [{name: x, model_path: m}]}\n",
     "predictor.models", "does not serve multi-model APIs"),
    ("- name: j\n  kind: RealtimeAPI\n  predictor: {type: onnx, path: p.py, models: {dir: s3://b/models}}\n",
     "predictor.models.dir", "does not serve multi-model APIs"),
    ("- name: j\n  kind: RealtimeAPI\n  handler: {type: python, path: p.py, protobuf_path: a.proto}\n",
     "handler.protobuf_path", "gRPC APIs are not served by cortexd"),
]


@pytest.mark.parametrize(
    ("source", "key_path", "fragment"), REFUSED, ids=[r[1] + str(i) for i, r in enumerate(REFUSED)]
)
def test_what_cortexd_does_not_serve_is_refused_in_one_line(
    project: Path, source: str, key_path: str, fragment: str
) -> None:
    (issue,) = issues(project, source)
    assert issue.key_path == key_path and fragment in issue.message, str(issue)


def test_keys_without_effect_are_noted_not_refused(project: Path) -> None:
    path = project / "cortex.yaml"
    path.write_text(text("""
    - name: a
      kind: RealtimeAPI
      predictor: {type: python, path: p.py, image: me/img:1, log_level: debug}
      networking: {api_gateway: none}
    """))
    report = validate_report(str(path))
    assert report.errors == [] and report.config is not None
    assert [(n.line, n.key_path) for n in report.notes] == [(3, "predictor.image"), (3, "predictor.log_level"),
                                                             (4, "networking.api_gateway")]
    assert all(n.message.startswith("accepted without effect: ") for n in report.notes)


# --- bounds ----------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_with_its_line(project: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        prev, cur = chr(ord("a") + n - 1), chr(ord("a") + n)
        refs = ", ".join([f"*{prev}"] * 9)
        levels.append(f"{cur}: &{cur} [{refs}]")
    body = "\n".join("    " + line for line in levels)
    path = project / "cortex.yaml"
    path.write_text(DEP + "- kind: api\n  name: a\n  python: {predictor: p.py}\n  metadata:\n" + body + "\n")
    assert path.stat().st_size < 1000
    (issue,) = validate_report(str(path)).errors
    assert "YAML aliases here expand to more than 100,000 nodes" in issue.message
    assert issue.line == 12   # level f (line 12) is the first past 100,000 nodes: 9**6 * 10/9 and more


def test_an_oversize_file_is_refused_with_its_line(project: Path) -> None:
    path = project / "cortex.yaml"
    filler = "# " + "x" * 1021 + "\n"   # 1 KiB lines
    path.write_text(DEP + filler * 1100)
    (issue,) = validate_report(str(path)).errors
    assert issue.message.startswith("the file is 1,126,431 bytes")
    assert "at most 1,048,576 bytes (1 MiB)" in issue.message
    assert issue.line == 2 + 1024   # the line holding the byte past 1 MiB: 31 + 1023 * 1024 bytes come before it
    with pytest.raises(ConfigError):
        load_config_text(path.read_text(), str(path))


@pytest.mark.parametrize(("count", "ok"), [(1000, True), (1001, False)])
def test_at_most_1000_apis(project: Path, count: int, ok: bool) -> None:
    source = "".join(f"- name: a{i}\n  predictor: {{type: python, path: p.py}}\n" for i in range(count))
    report = validate_text(source, str(project / "cortex.yaml"))
    if ok:
        assert report.errors == [] and report.config is not None and len(report.config.apis) == 1000
    else:
        (issue,) = report.errors
        assert (issue.line, issue.key_path) == (2001, "[1000]")
        assert "at most 1,000 APIs per cortex.yaml; this file declares 1,001" in issue.message


def test_convert_keeps_batching_gpu_memory_and_the_v2_declaration(tmp_path: Path) -> None:
    from cortexd.config.convert import convert_text

    (tmp_path / "p.py").write_text("def predict(sample, metadata):\n    return sample\n")
    seed = (
        "- kind: deployment\n  name: d\n- kind: api\n  name: a\n  python:\n    predictor: p.py\n"
        "    server_side_batching: {max_batch_size: 8, batch_interval: 5ms}\n"
        "    v2: {inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]}\n"
        "  compute: {gpu: 0.5, gpu_mem: 1Gi, mem: 100Mi, mem_limit: 200Mi}\n"
    )
    path = str(tmp_path / "cortex.yaml")
    converted = convert_text(seed, path)
    assert converted.text is not None, converted.problems
    before, after = load_config_text(seed, path).apis[0], load_config_text(converted.text, path).apis[0]
    assert (after.batching, after.compute, after.v2) == (before.batching, before.compute, before.v2)
    assert after.dialect == "realtime"
