"""The cortex.yaml schema, declared once.

Each key is one `Key` row: its type, default, range or choices, and help text. The loader
validates and fills defaults from these rows, `reference_yaml()` renders them as the
documented reference, and the config dataclasses take their defaults from them. Rules that
tie several keys together (max >= min, exactly one predictor kind, ...) live in rules.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    name: str
    type: str                        # one of TYPE_DOCS' keys
    help: str
    required: bool = False
    default: Any = None              # the value when the key is absent or null
    default_doc: str | None = None   # the default as the reference shows it, when it is not `default`
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None       # full-match regex for a string value
    pattern_doc: str = ""            # the pattern in words, for messages
    max_length: int | None = None
    check: str | None = None         # a named check of the value (files that must exist); see checks.py
    keys: tuple[Key, ...] = ()       # the keys of a "section"
    new: bool = False                # goes beyond the original Cortex


# How each type reads in the reference and in "expected ..." messages.
TYPE_DOCS: dict[str, str] = {
    "str": "<string>",
    "int": "<int>",
    "cpu": "<string | int | float>",
    "mem": "<string | int>",
    "map": "<string: value>",
    "section": "",
}

PREDICTOR_KINDS: tuple[str, ...] = ("python", "tensorflow", "onnx")

# Paths the daemon serves itself; no endpoint may be one of them or lie under one.
RESERVED_PATHS: tuple[str, ...] = ("/healthz", "/readyz", "/metrics", "/v2")  # /v2: the Open Inference Protocol

# Names are used in file and socket names and as labels; 63 like a DNS label (and Kubernetes).
_NAME_MAX = 63

_CONFIG_HELP = "dictionary handed to the predictor's constructor (give this or the API's metadata, not both)"
_PYTHON_PATH_HELP = (
    "folder prepended to the replica's sys.path, relative to the folder holding cortex.yaml "
    "(default: that folder)"
)

DEPLOYMENT_KEYS: tuple[Key, ...] = (
    Key("kind", "str", "the resource kind", required=True, choices=("deployment",)),
    Key(
        "name", "str", "the deployment's name", required=True,
        pattern=r"[a-z0-9_-]+", pattern_doc="lowercase letters, digits, '-' and '_'", max_length=_NAME_MAX,
    ),
)

PYTHON_KEYS: tuple[Key, ...] = (
    Key("predictor", "str", "predictor file, relative to the folder holding cortex.yaml",
        required=True, check="predictor_file"),
    Key("config", "map", _CONFIG_HELP),
    Key("v2", "map", "the tensors V2 clients see in the model metadata (docs/v2.md): inputs and outputs, "
        "lists of {name, datatype, shape}", new=True),
)

TENSORFLOW_KEYS: tuple[Key, ...] = (
    Key("model", "str", "SavedModel: a folder, a .zip, or a folder of numbered versions (highest wins); "
        "a path, file://, http(s):// or s3://", required=True, check="tensorflow_model"),
    Key("predictor", "str", "file with a TensorFlowPredictor class (default: return the model's outputs)",
        check="predictor_file", new=True),
    Key("signature_key", "str", "signature to serve (required when the model has several)"),
    Key("config", "map", _CONFIG_HELP),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
)

ONNX_KEYS: tuple[Key, ...] = (
    Key("model", "str", "a .onnx file: a path, file://, http(s):// or s3://", required=True, check="onnx_model"),
    Key("predictor", "str", "file with an ONNXPredictor class (default: return the model's outputs)",
        check="predictor_file", new=True),
    Key("config", "map", _CONFIG_HELP),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
)

TRACKER_KEYS: tuple[Key, ...] = (
    Key("key", "str", "JSON key to track when the response is an object"),
    Key("model_type", "str", "what the predictions are", required=True, choices=("classification", "regression")),
)

COMPUTE_KEYS: tuple[Key, ...] = (
    Key("min_replicas", "int", "minimum number of replicas", default=1, minimum=1),
    Key("max_replicas", "int", "maximum number of replicas (>= min_replicas)", default=100, minimum=1),
    Key("init_replicas", "int", "replicas at start (within [min_replicas, max_replicas])",
        default=None, default_doc="<min_replicas>", minimum=1),
    Key("target_cpu_utilization", "int", "CPU use, in percent of the cpu request, that autoscaling aims at",
        default=80, minimum=1, maximum=100),
    Key("cpu", "cpu", "CPU request per replica in cores (\"1\", 0.5, \"500m\")", default=0.2, default_doc="200m"),
    Key("gpu", "int", "whole GPUs per replica", default=0, minimum=0),
    Key("mem", "mem", "memory per replica, also its limit (\"1G\", \"512Mi\", \"129e6\")",
        default=None, default_doc="none"),
)

API_KEYS: tuple[Key, ...] = (
    Key("kind", "str", "the resource kind", required=True, choices=("api",)),
    Key(
        "name", "str", "the API's name, unique in the file", required=True,
        pattern=r"[a-z][a-z0-9-]*", pattern_doc="lowercase letters, digits and '-', starting with a letter",
        max_length=_NAME_MAX,
    ),
    Key("endpoint", "str", "URL path of the API, unique", default_doc="/<deployment>/<api>"),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
    Key("python", "section", "a Python predictor (exactly one of python / tensorflow / onnx)", keys=PYTHON_KEYS),
    Key("tensorflow", "section", "a TensorFlow SavedModel", keys=TENSORFLOW_KEYS),
    Key("onnx", "section", "an ONNX model", keys=ONNX_KEYS),
    Key("tracker", "section", "track the predictions", keys=TRACKER_KEYS),
    Key("compute", "section", "replicas and their resources", keys=COMPUTE_KEYS),
    Key("metadata", "map", "handed to the python predictor; for tensorflow/onnx, used as config when config is absent"),
)

RESOURCE_KINDS: dict[str, tuple[Key, ...]] = {"deployment": DEPLOYMENT_KEYS, "api": API_KEYS}

# Names users plausibly write for a key, mapped to the key they meant (for did-you-mean).
ALIASES: dict[str, str] = {
    "predictor_path": "predictor",   # the reference ONNX example writes it
    "model_path": "model",
    "signature": "signature_key",
    "signature_name": "signature_key",
    "type": "model_type",
    "memory": "mem",
    "gpus": "gpu",
    "cpus": "cpu",
}


def keys_by_name(keys: tuple[Key, ...]) -> dict[str, Key]:
    return {key.name: key for key in keys}


def default_of(keys: tuple[Key, ...], name: str) -> Any:
    return keys_by_name(keys)[name].default


def key_homes() -> dict[str, list[str]]:
    """Every key name -> the dotted paths inside an API where it is accepted ("" = the API itself)."""
    homes: dict[str, list[str]] = {}

    def walk(keys: tuple[Key, ...], prefix: str) -> None:
        for key in keys:
            homes.setdefault(key.name, []).append(prefix + key.name)
            if key.type == "section":
                walk(key.keys, prefix + key.name + ".")

    walk(API_KEYS, "")
    return homes


def _default_text(key: Key) -> str:
    if key.default_doc is not None:
        return key.default_doc
    return str(key.default)


def _comment(key: Key) -> str:
    notes = [key.help]
    if key.required:
        notes.append("required")
    elif key.type not in ("section", "map") and (key.default is not None or key.default_doc is not None):
        notes.append(f"default: {_default_text(key)}")
    if key.choices and key.name != "kind":
        notes.append("one of: " + ", ".join(key.choices))
    if key.pattern_doc:
        notes.append(key.pattern_doc)
    if key.minimum is not None and key.maximum is not None:
        notes.append(f"{key.minimum}..{key.maximum}")
    elif key.minimum is not None:
        notes.append(f">= {key.minimum}")
    if key.new:
        notes.append("new")
    return "; ".join(notes)


def _render(keys: tuple[Key, ...], indent: str, first_prefix: str, lines: list[str]) -> None:
    for index, key in enumerate(keys):
        lead = first_prefix if index == 0 else indent
        if key.name == "kind":
            lines.append(f"{lead}kind: {key.choices[0]}")
            continue
        lines.append(f"{lead}{key.name}: {TYPE_DOCS[key.type]}".rstrip() + f"  # {_comment(key)}")
        if key.type == "section":
            _render(key.keys, indent + "  ", indent + "  ", lines)


def reference_yaml() -> str:
    """The documented cortex.yaml reference, rendered from the schema (for docs and `cortexd validate`)."""
    lines: list[str] = []
    for kind_keys in (DEPLOYMENT_KEYS, API_KEYS):
        _render(kind_keys, "  ", "- ", lines)
        lines.append("")
    return "\n".join(lines)
