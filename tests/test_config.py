"""Table tests of cortex.yaml validation: every rule, the located message shape, defaults, paths."""
from __future__ import annotations

import dataclasses
import os
import textwrap
import zipfile
from pathlib import Path

import pytest

from cortexd.config import (
    Compute,
    Config,
    ConfigError,
    ConfigIssue,
    PredictorSpec,
    Tracker,
    load_config,
    load_config_text,
    reference_yaml,
    validate_path,
)
from cortexd.config.checks import endpoint_problem, normalise_endpoint, reserved_prefix
from cortexd.config.schema import API_KEYS, COMPUTE_KEYS, DEPLOYMENT_KEYS, Key

HEADER = "- kind: deployment\n  name: dep\n- kind: api\n  name: iris\n"
BODY_LINE = 5   # the first line of an API body appended to HEADER


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A project folder with every kind of file the configs below point at."""
    (tmp_path / "predictor.py").write_text("def predict(sample, metadata):\n    return 1\n")
    (tmp_path / "onnx_predictor.py").write_text("class ONNXPredictor: ...\n")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "lib").mkdir()
    (tmp_path / "adir").mkdir()
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"pb")
    versions = tmp_path / "versions"
    for version in ("1", "10", "2"):
        (versions / version).mkdir(parents=True)
        (versions / version / "saved_model.pb").write_bytes(b"pb")
    stale = tmp_path / "stale"
    (stale / "1").mkdir(parents=True)
    (stale / "1" / "saved_model.pb").write_bytes(b"pb")
    (stale / "2").mkdir()   # the highest version is empty
    (tmp_path / "empty_model").mkdir()
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        archive.writestr("saved_model.pb", b"pb")
    (tmp_path / "notzip.zip").write_bytes(b"not a zip")
    return tmp_path


def issues_of(project: Path, text: str) -> list[ConfigIssue]:
    path = str(project / "cortex.yaml")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, path)
    assert info.value.errors, "a ConfigError always carries its errors"
    return info.value.errors


def load(project: Path, text: str) -> Config:
    return load_config_text(text, str(project / "cortex.yaml"))


def api_text(body: str) -> str:
    return HEADER + textwrap.dedent(body).strip("\n").replace("\n", "\n  ").join(["  ", "\n"])


# --- one rule, one located error --------------------------------------------------------------

# (API body, (line offset from the body's first line, column, key path, message fragment))
API_CASES: list[tuple[str, tuple[int, int | None, str, str]]] = [
    # exactly one predictor kind
    ("compute: {gpu: 1}", (-2, 3, "", "give exactly one of python, tensorflow, onnx (none given)")),
    ("python: {predictor: predictor.py}\nonnx: {model: model.onnx}",
     (1, 3, "onnx", "give exactly one of python, tensorflow, onnx (python is given at line 5)")),
    ("python: {}", (0, 3, "python.predictor", "required: predictor file")),
    ("python:", (0, 3, "python.predictor", "required: predictor file")),
    ("python: predictor.py", (0, 3, "python", "expected a mapping with keys: predictor, config, server_side_batching, v2, got a scalar")),
    # predictor files
    ("python: {predictor: missing.py}", (0, None, "python.predictor", "file not found: ")),
    ("python: {predictor: adir}", (0, None, "python.predictor", "is a folder; expected a Python file")),
    ("python: {predictor: 3}", (0, None, "python.predictor", "expected a string, got an integer (3)")),
    ("python: {predictor: ''}", (0, None, "python.predictor", "must not be empty")),
    ("onnx: {model: model.onnx, predictor: gone.py}", (0, None, "onnx.predictor", "file not found: ")),
    # onnx models
    ("onnx: {}", (0, 3, "onnx.model", "required: a .onnx file")),
    ("onnx: {model: missing.onnx}", (0, None, "onnx.model", "model not found: ")),
    ("onnx: {model: adir}", (0, None, "onnx.model", "is a folder; expected a .onnx file")),
    ("onnx: {model: 's3://bucket'}", (0, None, "onnx.model", "expected s3://bucket/key")),
    ("onnx: {model: 's3://B/x.onnx'}", (0, None, "onnx.model", "expected s3://bucket/key")),
    ("onnx: {model: 'gs://b/m.onnx'}", (0, None, "onnx.model", 'unsupported scheme "gs://"; expected a path')),
    ("onnx: {model: 'https:///m.onnx'}", (0, None, "onnx.model", "has no host")),
    ("onnx: {model: 'file://'}", (0, None, "onnx.model", "names no file")),
    ("onnx: {model: model.onnx, signature_key: x}",
     (0, None, "onnx.signature_key", "unknown key; it belongs at tensorflow.signature_key (accepted: model, predictor")),
    ("onnx:\n  model: model.onnx\n  predictor_path: onnx_predictor.py",
     (2, None, "onnx.predictor_path", 'unknown key; did you mean "predictor"? (accepted: model, predictor, config, python_path, server_side_batching)')),
    # tensorflow models
    ("tensorflow: {model: empty_model}",
     (0, None, "tensorflow.model", "no saved_model.pb here nor in a numbered version folder (found: nothing)")),
    ("tensorflow: {model: notzip.zip}", (0, None, "tensorflow.model", "is a file but not a .zip")),
    ("tensorflow: {model: nowhere}", (0, None, "tensorflow.model", "model not found: ")),
    ("tensorflow: {model: saved, signature_key: 5}", (0, None, "tensorflow.signature_key", "expected a string")),
    # python_path
    ("python_path: nowhere\npython: {predictor: predictor.py}", (0, 3, "python_path", "folder not found: ")),
    ("python_path: predictor.py\npython: {predictor: predictor.py}", (0, 3, "python_path", "is not a folder")),
    ("python_path: lib\nonnx: {model: model.onnx, python_path: lib}",
     (1, None, "onnx.python_path", "python_path is also given at the API (line 5); keep one")),
    ("python: {predictor: predictor.py, python_path: lib}",
     (0, None, "python.python_path", "unknown key; it belongs at python_path or tensorflow.python_path or onnx.python_path")),
    # config vs metadata
    ("metadata: {a: 1}\nonnx: {model: model.onnx, config: {b: 2}}",
     (1, None, "onnx.config", "give either onnx.config or metadata (line 5), not both")),
    ("python: {predictor: predictor.py, config: [1, 2]}",
     (0, None, "python.config", "expected a mapping of string keys to values, got a list")),
    ("metadata: {1: a}\npython: {predictor: predictor.py}", (0, 3, "metadata", "keys must be strings (got an integer (1))")),
    # tracker
    ("tracker: {key: label}\npython: {predictor: predictor.py}",
     (0, 3, "tracker.model_type", "required: what the predictions are (one of: classification, regression)")),
    ("tracker: {model_type: classifcation}\npython: {predictor: predictor.py}",
     (0, None, "tracker.model_type", 'must be one of: classification, regression (got "classifcation"); did you mean "classification"?')),
    ("tracker: {model_type: regression, key: 1}\npython: {predictor: predictor.py}",
     (0, None, "tracker.key", "expected a string, got an integer (1)")),
    # compute: types and ranges
    ("python: {predictor: predictor.py}\ncompute: {min_replicas: 0}", (1, None, "compute.min_replicas", "must be >= 1 (got 0)")),
    ("python: {predictor: predictor.py}\ncompute: {min_replicas: '2'}",
     (1, None, "compute.min_replicas", 'expected an integer, got a string ("2")')),
    ("python: {predictor: predictor.py}\ncompute: {min_replicas: true}",
     (1, None, "compute.min_replicas", "expected an integer, got a boolean (true)")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: 1.5}",
     (1, None, "compute.gpu", "1.5 is neither a whole number of GPUs nor a share of one; use 1 or 2 GPUs")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: -1}", (1, None, "compute.gpu", "must be >= 0 GPUs, got -1")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: -0.5}", (1, None, "compute.gpu", "must be >= 0 GPUs, got -0.5")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: '1'}",
     (1, None, "compute.gpu", 'expected whole GPUs as an integer (1, 2) or a share of one GPU as a number below 1 (0.25, 0.5), got "1"')),
    ("python: {predictor: predictor.py}\ncompute: {gpu: .nan}", (1, None, "compute.gpu", "must be >= 0 GPUs, got nan")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: true}", (1, None, "compute.gpu", "got a boolean (true)")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: 1, gpu_mem: 6g}",
     (1, None, "compute.gpu_mem", 'did you mean "6G" or "6Gi"?')),
    ("python: {predictor: predictor.py}\ncompute: {gpu: 1, gpu_mem: 0}", (1, None, "compute.gpu_mem", "must be > 0 bytes")),
    ("python: {predictor: predictor.py}\ncompute: {gpu_mem: 6Gi}",
     (1, None, "compute.gpu_mem", "needs gpu (whole GPUs or a share of one, e.g. gpu: 0.5)")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: 0, gpu_mem: 6Gi}", (1, None, "compute.gpu_mem", "needs gpu")),
    ("python: {predictor: predictor.py}\ncompute: {gpu: 1, gpu_memory: 6Gi}",
     (1, None, "compute.gpu_memory", 'unknown key; did you mean "gpu_mem"?')),
    ("python: {predictor: predictor.py}\ncompute: {target_cpu_utilization: 0}",
     (1, None, "compute.target_cpu_utilization", "must be between 1 and 100 (got 0)")),
    ("python: {predictor: predictor.py}\ncompute: {target_cpu_utilization: 101}",
     (1, None, "compute.target_cpu_utilization", "must be between 1 and 100 (got 101)")),
    ("python: {predictor: predictor.py}\ncompute: {cpu: 0}", (1, None, "compute.cpu", "must be > 0 cores")),
    ("python: {predictor: predictor.py}\ncompute: {cpu: lots}", (1, None, "compute.cpu", '"200m" = 0.2 cores')),
    ("python: {predictor: predictor.py}\ncompute: {mem: 512m}", (1, None, "compute.mem", 'did you mean "512M" or "512Mi"?')),
    ("python: {predictor: predictor.py}\ncompute: {mem: [1]}", (1, None, "compute.mem", "got a list")),
    ("python: {predictor: predictor.py}\ncompute: 3", (1, 3, "compute", "expected a mapping with keys: min_replicas, max_replicas")),
    ("python: {predictor: predictor.py}\ncompute: {min_replica: 2}",
     (1, None, "compute.min_replica", 'unknown key; did you mean "min_replicas"? (accepted: min_replicas, max_replicas, '
      "init_replicas, target_cpu_utilization, cpu, gpu, mem, mem_limit, gpu_mem)")),
    # compute: bounds between keys
    ("python: {predictor: predictor.py}\ncompute: {min_replicas: 3, max_replicas: 2}",
     (1, None, "compute.max_replicas", "must be >= min_replicas (3)")),
    ("python: {predictor: predictor.py}\ncompute: {min_replicas: 101}",
     (1, None, "compute.min_replicas", "must be <= max_replicas (100, the default); set max_replicas too")),
    ("python: {predictor: predictor.py}\ncompute: {min_replicas: 2, init_replicas: 1}",
     (1, None, "compute.init_replicas", "must be within [min_replicas, max_replicas] = [2, 100] (got 1)")),
    ("python: {predictor: predictor.py}\ncompute: {max_replicas: 3, init_replicas: 4}",
     (1, None, "compute.init_replicas", "must be within [min_replicas, max_replicas] = [1, 3] (got 4)")),
    # endpoints
    ("endpoint: /healthz\npython: {predictor: predictor.py}", (0, 3, "endpoint", '"/healthz" is reserved for the daemon')),
    ("endpoint: readyz/x/\npython: {predictor: predictor.py}", (0, 3, "endpoint", '"/readyz/x" is reserved for the daemon')),
    ("endpoint: /metrics/\npython: {predictor: predictor.py}", (0, 3, "endpoint", '"/metrics" is reserved')),
    ("endpoint: /\npython: {predictor: predictor.py}", (0, 3, "endpoint", 'must be a path below "/"')),
    ("endpoint: /a//b\npython: {predictor: predictor.py}", (0, 3, "endpoint", 'has an empty segment ("//")')),
    ("endpoint: /a/../b\npython: {predictor: predictor.py}", (0, 3, "endpoint", 'has a ".." segment')),
    ("endpoint: /a b\npython: {predictor: predictor.py}", (0, 3, "endpoint", "characters not allowed in a URL path")),
    ("endpoint: /a?x=1\npython: {predictor: predictor.py}", (0, 3, "endpoint", "characters not allowed in a URL path")),
    # unknown and repeated keys at the API level
    ("min_replicas: 2\npython: {predictor: predictor.py}",
     (0, 3, "min_replicas", "unknown key; it belongs at compute.min_replicas (accepted: kind, name, endpoint")),
    ("predictor: predictor.py\npython: {predictor: predictor.py}",
     (0, 3, "predictor", "it belongs at python.predictor or tensorflow.predictor or onnx.predictor")),
    ("metdata: {}\npython: {predictor: predictor.py}", (0, 3, "metdata", 'did you mean "metadata"?')),
    ("python: {predictor: predictor.py}\ntracker: {model_type: regression}\ntracker: {model_type: regression}",
     (2, 3, "tracker", "given twice (first at line 6)")),
    ("python: {predictor: predictor.py}\n!foo tag: 1", (1, 3, "", "keys must be strings")),
    ("python: {predictor: !weird x}", (0, None, "python.predictor", "invalid YAML: could not determine a constructor")),
]


@pytest.mark.parametrize(("body", "want"), API_CASES, ids=[case[0].split("\n")[-1][:40] for case in API_CASES])
def test_one_mistake_gives_one_located_error(project: Path, body: str, want: tuple[int, int | None, str, str]) -> None:
    offset, column, key_path, fragment = want
    text = api_text(body)
    if column is None:
        line = text.splitlines()[BODY_LINE + offset - 1]
        column = line.index(key_path.rsplit(".", 1)[-1] + ":") + 1
    issues = issues_of(project, text)
    assert len(issues) == 1, [str(issue) for issue in issues]
    issue = issues[0]
    assert (issue.line, issue.column, issue.api, issue.key_path) == (BODY_LINE + offset, column, "iris", key_path)
    assert fragment in issue.message
    assert str(issue).startswith(f"cortex.yaml:{BODY_LINE + offset}:{column}: api \"iris\": ")


# (whole file, [(line, column, api, key path, message fragment)]) for rules about the file and its resources
FILE_CASES: list[tuple[str, list[tuple[int, int, str | None, str, str]]]] = [
    ("", [(1, 1, None, "", "the file is empty; expected a YAML list with one `kind: deployment`")]),
    ("kind: api\nname: x\n", [(1, 1, None, "", "expected a YAML list with one `kind: deployment` item and any number "
                                               "of `kind: api` items, got a mapping")]),
    ("- kind: api\n  name: a\n  python: {predictor: predictor.py}\n",
     [(1, 1, None, "", "no deployment: add an item `- kind: deployment` with a `name`")]),
    ("- kind: deployment\n  name: dep\n- kind: deployment\n  name: other\n",
     [(3, 3, None, "[1]", "only one `kind: deployment` is allowed (the first is at line 1)")]),
    ("- kind: deployment\n  name: Dep\n", [(2, 3, None, "deployment.name", "must be lowercase letters, digits, '-' and '_' (got \"Dep\")")]),
    ("- kind: deployment\n  name: " + "d" * 64 + "\n", [(2, 3, None, "deployment.name", "must be at most 63 characters")]),
    ("- kind: deployment\n", [(1, 3, None, "deployment.name", "required: the deployment's name")]),
    ("- kind: deployment\n  name: dep\n  nmae: x\n", [(3, 3, None, "deployment.nmae", 'did you mean "name"? (accepted: kind, name)')]),
    ("- kind: deployment\n  name: dep\n- just a string\n", [(3, 3, None, "[1]", "expected a mapping with kind: deployment, api, got a scalar")]),
    ("- kind: deployment\n  name: dep\n- name: x\n", [(3, 3, None, "[1].kind", "required: the resource kind (one of: deployment, api)")]),
    ("- kind: deployment\n  name: dep\n- kind: apis\n", [(3, 9, None, "[1].kind", 'must be one of: deployment, api (got "apis")')]),
    ("- kind: deployment\n  name: dep\n- kind: api\n  python: {predictor: predictor.py}\n",
     [(3, 3, None, "[1].name", "required: the API's name, unique in the file (lowercase letters, digits and '-', starting with a letter)")]),
    ("- kind: deployment\n  name: dep\n- kind: api\n  name: 7\n  python: {predictor: predictor.py}\n",
     [(4, 3, None, "[1].name", "expected a string, got an integer (7)")]),
    ("- kind: deployment\n  name: dep\n- kind: api\n  name: Iris\n  python: {predictor: predictor.py}\n",
     [(4, 3, "Iris", "name", "must be lowercase letters, digits and '-', starting with a letter (got \"Iris\")")]),
    ("- kind: deployment\n  name: dep\n- kind: api\n  name: 1a\n  python: {predictor: predictor.py}\n",
     [(4, 3, "1a", "name", "starting with a letter")]),
    # duplicates: one error each, not one more for the default endpoint they share
    ("- kind: deployment\n  name: dep\n- kind: api\n  name: a\n  python: {predictor: predictor.py}\n"
     "- kind: api\n  name: a\n  python: {predictor: predictor.py}\n",
     [(7, 3, "a", "name", "duplicate API name (first at line 4)")]),
    ("- kind: deployment\n  name: dep\n- kind: api\n  name: a\n  endpoint: /x/\n  python: {predictor: predictor.py}\n"
     "- kind: api\n  name: b\n  endpoint: x\n  python: {predictor: predictor.py}\n",
     [(9, 3, "b", "endpoint", 'endpoint "/x" is already used by api "a" (line 5)')]),
    ("- kind: deployment\n  name: dep\n- kind: api\n  name: a\n  endpoint: /dep/b\n  python: {predictor: predictor.py}\n"
     "- kind: api\n  name: b\n  python: {predictor: predictor.py}\n",
     [(8, 3, "b", "name", 'endpoint "/dep/b" is already used by api "a" (line 5); set an endpoint')]),
    # a deployment named like a reserved path: one error for all its default endpoints
    ("- kind: deployment\n  name: metrics\n- kind: api\n  name: a\n  python: {predictor: predictor.py}\n"
     "- kind: api\n  name: b\n  python: {predictor: predictor.py}\n",
     [(2, 3, None, "deployment.name", "the default endpoints /metrics/<api> would lie under the reserved path /metrics")]),
    # YAML that does not parse is a located error too
    ("- kind: deployment\n  name: dep\n- kind: api\n  name: [a\n", [(5, 1, None, "", "invalid YAML: ")]),
    ("- kind: deployment\n  name: dep\n   bad: indent\n", [(3, 7, None, "", "invalid YAML: mapping values are not allowed here")]),
    ("- kind: deployment\n\tname: dep\n", [(2, 1, None, "", "found character '\\t' that cannot start any token")]),
    ("- kind: deployment\n  name: dep\n---\n- kind: api\n", [(3, 1, None, "", "invalid YAML: expected a single document")]),
]


@pytest.mark.parametrize(("text", "want"), FILE_CASES, ids=[f"file{i}" for i in range(len(FILE_CASES))])
def test_file_rules(project: Path, text: str, want: list[tuple[int, int, str | None, str, str]]) -> None:
    issues = issues_of(project, text)
    got = [(issue.line, issue.column, issue.api, issue.key_path) for issue in issues]
    assert got == [case[:4] for case in want], [str(issue) for issue in issues]
    for issue, case in zip(issues, want, strict=True):
        assert case[4] in issue.message, str(issue)


# --- message shape ----------------------------------------------------------------------------


def test_message_shape_matches_the_spec_example(project: Path) -> None:
    lines = ["- kind: deployment", "  name: dep", ""]
    lines += ["- kind: api", "  name: other", "  python:", "    predictor: predictor.py", ""]
    lines += ["- kind: api", "  name: iris", "  python:", "    predictor: predictor.py", "  compute:",
              "    max_replicas: 1", "    min_replicas: 2"]
    text = "\n".join(lines) + "\n"
    issues = issues_of(project, text)
    assert [str(issue) for issue in issues] == [
        'cortex.yaml:14:5: api "iris": compute.max_replicas: must be >= min_replicas (2)'
    ]


def test_config_error_lists_every_issue_sorted_by_line(project: Path) -> None:
    text = api_text(
        """
        compute: {gpu: -1}
        python: {predictor: nope.py}
        tracker: {model_type: x}
        """
    ).replace("- kind: deployment\n  name: dep\n", "- kind: deployment\n  name: Dep\n")
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(project / "cortex.yaml"))
    lines = [issue.line for issue in info.value.errors]
    assert lines == sorted(lines) == [2, 5, 6, 7]
    assert str(info.value).splitlines() == [str(issue) for issue in info.value.errors]


def test_a_file_with_three_mistakes_gives_exactly_three_located_errors(project: Path) -> None:
    text = textwrap.dedent(
        """\
        - kind: deployment
          name: shop

        - kind: api
          name: iris
          onnx:
            model: model.onnx
            predictor_path: onnx_predictor.py
          compute:
            min_replicas: 2
            max_replicas: 1

        - kind: api
          name: price
          python:
            predictor: price.py
          tracker:
            model_type: regression
        """
    )
    issues = issues_of(project, text)
    assert [str(issue).split(": ", 3)[:3] for issue in issues] == [
        ["cortex.yaml:8:5", 'api "iris"', "onnx.predictor_path"],
        ["cortex.yaml:11:5", 'api "iris"', "compute.max_replicas"],
        ["cortex.yaml:16:5", 'api "price"', "python.predictor"],
    ]
    assert 'did you mean "predictor"?' in issues[0].message
    assert issues[1].message == "must be >= min_replicas (2)"
    assert issues[2].message.startswith(f"file not found: {project / 'price.py'}")


def test_issue_without_location_names_the_file_only() -> None:
    issue = ConfigIssue("/etc/cortexd/cortex.yaml", 0, 0, None, "", "cannot read the file: No such file or directory")
    assert str(issue) == "cortex.yaml: cannot read the file: No such file or directory"


def test_unnamed_api_is_named_by_its_place_in_the_list(project: Path) -> None:
    text = "- kind: deployment\n  name: dep\n- kind: api\n  compute: {gpu: x}\n"
    got = [str(issue) for issue in issues_of(project, text)]
    assert got == [
        "cortex.yaml:3:3: [1].name: required: the API's name, unique in the file "
        "(lowercase letters, digits and '-', starting with a letter)",
        "cortex.yaml:3:3: [1]: give exactly one of python, tensorflow, onnx (none given)",
        'cortex.yaml:4:13: [1].compute.gpu: expected whole GPUs as an integer (1, 2) or a share of one GPU as a number '
        'below 1 (0.25, 0.5), got "x"',
    ]


# --- valid files: defaults and paths ----------------------------------------------------------


def test_defaults_are_filled(project: Path) -> None:
    config = load(project, api_text("python: {predictor: predictor.py}"))
    assert config.deployment == "dep"
    assert config.path == str(project / "cortex.yaml")
    assert config.project_dir == str(project)
    (api,) = config.apis
    assert api.name == "iris"
    assert api.endpoint == "/dep/iris"
    assert api.python_path == str(project)
    assert api.predictor == PredictorSpec("python", str(project / "predictor.py"), None, None, {})
    assert api.tracker is None
    assert api.metadata == {}
    assert api.compute == Compute(
        min_replicas=1, max_replicas=100, init_replicas=1, target_cpu_utilization=80, cpu=0.2, gpu=0, mem=None
    )


def test_dataclass_defaults_come_from_the_schema() -> None:
    schema = {key.name: key.default for key in COMPUTE_KEYS}
    compute = Compute()
    for name, default in schema.items():
        if name != "init_replicas":   # defaults to min_replicas
            assert getattr(compute, name) == default, name
    assert compute.init_replicas == compute.min_replicas


def test_null_values_mean_the_default(project: Path) -> None:
    body = """
    endpoint: ~
    python_path: ~
    python: {predictor: predictor.py, config: ~}
    tracker: ~
    metadata: ~
    compute: {min_replicas: ~, max_replicas: 5, init_replicas: ~, cpu: ~, mem: ~}
    """
    (api,) = load(project, api_text(body)).apis
    assert api.endpoint == "/dep/iris"
    assert api.python_path == str(project)
    assert api.tracker is None
    assert api.predictor.config == {}
    assert api.compute == Compute(max_replicas=5)
    assert load(project, api_text("python: {predictor: predictor.py}\ncompute: ~")).apis[0].compute == Compute()


def test_init_replicas_defaults_to_min_replicas(project: Path) -> None:
    text = api_text("python: {predictor: predictor.py}\ncompute: {min_replicas: 3, max_replicas: 4}")
    (api,) = load(project, text).apis
    assert (api.compute.min_replicas, api.compute.init_replicas, api.compute.max_replicas) == (3, 3, 4)


def test_every_compute_key_is_read(project: Path) -> None:
    body = """
    python: {predictor: predictor.py}
    compute:
      min_replicas: 2
      max_replicas: 6
      init_replicas: 4
      target_cpu_utilization: 50
      cpu: "1500m"
      gpu: 2
      mem: 1Gi
    """
    (api,) = load(project, api_text(body)).apis
    assert api.compute == Compute(2, 6, 4, 50, 1.5, 2, 2**30)


@pytest.mark.parametrize(
    ("compute", "gpu", "gpu_mem"),
    [
        ("{gpu: 0}", 0, None),
        ("{gpu: 0.25}", 0.25, None),
        ("{gpu: 0.5, gpu_mem: 6Gi}", 0.5, 6 * 2**30),
        ("{gpu: 1}", 1, None),
        ("{gpu: 1.0}", 1, None),
        ("{gpu: 3, gpu_mem: 512Mi}", 3, 512 * 2**20),
        ("{gpu: 0.1, gpu_mem: 1e9}", 0.1, 10**9),
        ("{gpu: 1, gpu_mem: ~}", 1, None),
    ],
)
def test_gpu_shares_and_gpu_memory_are_read(project: Path, compute: str, gpu: float, gpu_mem: int | None) -> None:
    (api,) = load(project, api_text(f"python: {{predictor: predictor.py}}\ncompute: {compute}")).apis
    assert (api.compute.gpu, api.compute.gpu_mem) == (gpu, gpu_mem)


def test_full_api_with_tracker_metadata_and_endpoint(project: Path) -> None:
    body = """
    endpoint: predict/iris/
    python: {predictor: predictor.py}
    tracker: {model_type: classification, key: label}
    metadata: {labels: [a, b], threshold: 0.5}
    """
    (api,) = load(project, api_text(body)).apis
    assert api.endpoint == "/predict/iris"
    assert api.tracker == Tracker("classification", "label")
    assert api.metadata == {"labels": ["a", "b"], "threshold": 0.5}
    assert api.predictor.config == api.metadata   # metadata serves as config


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("model.onnx", "{p}/model.onnx"),
        ("./sub/../model.onnx", "{p}/model.onnx"),
        ("{p}/model.onnx", "{p}/model.onnx"),
        ("file://{p}/model.onnx", "{p}/model.onnx"),
        ("file://model.onnx", "{p}/model.onnx"),
        ("file://localhost{p}/model.onnx", "{p}/model.onnx"),
        ("https://example.com/m.onnx", "https://example.com/m.onnx"),
        ("http://127.0.0.1:9000/m.onnx", "http://127.0.0.1:9000/m.onnx"),
        ("s3://my-bucket/models/m.onnx", "s3://my-bucket/models/m.onnx"),
    ],
)
def test_onnx_model_sources(project: Path, written: str, expected: str) -> None:
    (project / "sub").mkdir()
    body = f"onnx: {{model: '{written.format(p=project)}'}}"
    (api,) = load(project, api_text(body)).apis
    assert api.predictor.model == expected.format(p=project)
    assert api.predictor.kind == "onnx"
    assert api.predictor.predictor is None


@pytest.mark.parametrize("model", ["saved", "versions", "model.zip", "s3://my-bucket/exported_model"])
def test_tensorflow_model_forms(project: Path, model: str) -> None:
    body = f"tensorflow: {{model: '{model}', signature_key: serving_default, predictor: predictor.py}}"
    (api,) = load(project, api_text(body)).apis
    assert api.predictor.model == (model if "://" in model else str(project / model))
    assert api.predictor.signature_key == "serving_default"
    assert api.predictor.predictor == str(project / "predictor.py")


def test_relative_paths_resolve_against_the_folder_holding_cortex_yaml(project: Path, tmp_path: Path) -> None:
    body = """
    python_path: lib
    onnx: {model: model.onnx, predictor: onnx_predictor.py, config: {k: v}}
    """
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)   # the working directory must not matter
    try:
        (api,) = load(project, api_text(body)).apis
    finally:
        os.chdir(cwd)
    assert api.python_path == str(project / "lib")
    assert api.predictor == PredictorSpec(
        "onnx", str(project / "onnx_predictor.py"), str(project / "model.onnx"), None, {"k": "v"}
    )
    assert api.metadata == {}


def test_python_path_inside_the_model_section(project: Path) -> None:
    (api,) = load(project, api_text("tensorflow: {model: saved, python_path: lib}")).apis
    assert api.python_path == str(project / "lib")


def test_anchors_and_merge_keys_are_followed(project: Path) -> None:
    text = textwrap.dedent(
        """\
        - kind: deployment
          name: dep
        - kind: api
          name: a
          python: {predictor: predictor.py}
          compute: &small {cpu: 1, mem: 1G}
        - kind: api
          name: b
          python: {predictor: predictor.py}
          compute:
            <<: *small
            gpu: 1
        """
    )
    first, second = load(project, text).apis
    assert first.compute == Compute(cpu=1.0, mem=10**9)
    assert second.compute == Compute(cpu=1.0, mem=10**9, gpu=1)


def test_deployment_alone_and_order_of_items(project: Path) -> None:
    assert load(project, "- kind: deployment\n  name: my_dep-2\n").apis == ()
    text = "- kind: api\n  name: a\n  python: {predictor: predictor.py}\n- kind: deployment\n  name: late\n"
    (api,) = load(project, text).apis
    assert api.endpoint == "/late/a"


def test_the_config_is_frozen(project: Path) -> None:
    config = load(project, api_text("python: {predictor: predictor.py}"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.apis[0].compute.gpu = 1  # type: ignore[misc]


# --- files on disk ----------------------------------------------------------------------------


def test_load_config_and_validate_path_read_the_file(project: Path) -> None:
    path = project / "cortex.yaml"
    path.write_text(api_text("python: {predictor: predictor.py}"))
    assert load_config(str(path)).apis[0].name == "iris"
    assert validate_path(str(path)) == []
    path.write_text(api_text("python: {predictor: predictor.py}\ncompute: {gpu: -2}"))
    (issue,) = validate_path(str(path))
    assert str(issue) == 'cortex.yaml:6:13: api "iris": compute.gpu: must be >= 0 GPUs, got -2'


def test_unreadable_file_is_an_error(project: Path) -> None:
    missing = project / "nope" / "cortex.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    (issue,) = info.value.errors
    assert (issue.file, issue.line) == (str(missing), 0)
    assert str(issue) == "cortex.yaml: cannot read the file: No such file or directory"
    binary = project / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "cannot read the file" in validate_path(str(binary))[0].message


# --- pure helpers and the schema ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("iris", "/iris"), ("/iris", "/iris"), ("/a/b/", "/a/b"), ("a/b//", "/a/b"), ("/", ""), ("", "")],
)
def test_normalise_endpoint(raw: str, normal: str) -> None:
    assert normalise_endpoint(raw) == normal


@pytest.mark.parametrize(
    ("endpoint", "reserved"),
    [("/healthz", "/healthz"), ("/readyz/a", "/readyz"), ("/metrics", "/metrics"), ("/metricsx", None),
     ("/a/metrics", None), ("/healthz-api", None)],
)
def test_reserved_prefix_is_exact_or_a_whole_segment(endpoint: str, reserved: str | None) -> None:
    assert reserved_prefix(endpoint) == reserved


@pytest.mark.parametrize("endpoint", ["/a", "/a-b_c.d~e/f", "/v1/models/iris:predict"])
def test_endpoint_problem_accepts_url_paths(endpoint: str) -> None:
    assert endpoint_problem(endpoint) is None


def test_reference_names_every_key() -> None:
    text = reference_yaml()

    def names(keys: tuple[Key, ...]) -> list[str]:
        out = []
        for key in keys:
            out.append(key.name)
            out += names(key.keys)
        return out

    for name in names(API_KEYS) + names(DEPLOYMENT_KEYS):
        assert f"{name}:" in text, name
    assert "default: 200m" in text and "default: <min_replicas>" in text


def test_null_python_path_does_not_count_as_given_twice(project: Path) -> None:
    (api,) = load(project, api_text("python_path: ~\nonnx: {model: model.onnx, python_path: lib}")).apis
    assert api.python_path == str(project / "lib")


@pytest.mark.parametrize(("value", "shown"), [("2020", '"2020"'), ("yes", '"yes"'), ("0x1f", '"0x1f"')])
def test_a_string_key_given_a_yaml_non_string_says_to_quote_it(project: Path, value: str, shown: str) -> None:
    (issue,) = issues_of(project, f"- kind: deployment\n  name: {value}\n")
    assert issue.key_path == "deployment.name"
    assert issue.message.endswith(f"quote it if you meant text: {shown}")
    assert load(project, f"- kind: deployment\n  name: '{value}'\n").deployment == value


def test_resources_can_share_keys_through_merges(project: Path) -> None:
    text = textwrap.dedent(
        """\
        - kind: deployment
          name: dep
        - &base
          kind: api
          name: a
          python: {predictor: predictor.py}
        - <<: *base
          name: b
        """
    )
    assert [api.endpoint for api in load(project, text).apis] == ["/dep/a", "/dep/b"]


@pytest.mark.parametrize(
    ("endpoints", "errors"),
    [
        (("/x", "/y"), 0),      # no API uses a default endpoint: the name is harmless
        (("/x", None), 1),      # one does: one error, at the deployment
        ((None, None), 1),      # two do: still one error
    ],
)
def test_a_deployment_named_like_a_reserved_path(project: Path, endpoints: tuple[str | None, ...], errors: int) -> None:
    text = "- kind: deployment\n  name: healthz\n"
    for name, endpoint in zip("ab", endpoints, strict=True):
        text += f"- kind: api\n  name: {name}\n  python: {{predictor: predictor.py}}\n"
        if endpoint:
            text += f"  endpoint: {endpoint}\n"
    if errors == 0:
        assert [api.endpoint for api in load(project, text).apis] == list(endpoints)
    else:
        issues = issues_of(project, text)
        assert [(issue.line, issue.key_path) for issue in issues] == [(2, "deployment.name")]


def test_validate_accepts_every_savedmodel_layout_the_replica_serves(project: Path) -> None:
    """An empty highest version folder beside a complete lower one: the replica serves version 1
    (cortexd/savedmodel.py), so validate does not refuse it."""
    config = load(project, api_text("tensorflow: {model: stale}"))
    assert config.apis[0].predictor.model == str(project / "stale")
