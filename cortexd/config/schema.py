"""The cortex.yaml schema, declared once: the `Key` row type and the seed dialect's tables.

Each key is one `Key` row: its type, default, range or choices, and help text. The loader
validates and fills defaults from these rows, `reference_yaml()` renders them as the
documented reference, and the config dataclasses take their defaults from them. Rules that
tie several keys together (max >= min, exactly one predictor kind, ...) live in rules*.py.

This module holds the seed dialect (the `python:` / `onnx:` / `tensorflow:` sections cortexd
started from); the tables of the other Cortex releases are in schema_old.py (v0.11, v0.12-v0.13)
and schema_realtime.py (v0.14-v0.35), written with the same rows.
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
    minimum: float | None = None     # for int, float and duration (seconds) keys
    maximum: float | None = None
    min_exclusive: bool = False      # the minimum itself is refused (factors, concurrency)
    max_exclusive: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None       # full-match regex for a string value
    pattern_doc: str = ""            # the pattern in words, for messages
    max_length: int | None = None
    check: str | None = None         # a named check of the value (files that must exist); see checks.py
    keys: tuple[Key, ...] = ()       # the keys of a "section", or of each item of a "list"
    new: bool = False                # goes beyond the original Cortex
    versions: str = ""               # the Cortex releases that had the key, when not all of the dialect's
    note: str | None = None          # accepted, but cortexd gives it no effect: validate says so (why)
    refused: str | None = None       # known, but cortexd does not serve it: any value is an error (why)
    refused_list: str | None = None  # a "section" written as a list is refused with this message


# How each type reads in the reference and in "expected ..." messages.
TYPE_DOCS: dict[str, str] = {
    "str": "<string>",
    "int": "<int>",
    "float": "<float>",
    "bool": "<bool>",
    "cpu": "<string | int | float>",
    "gpu": "<int | float>",
    "mem": "<string | int>",
    "duration": "<duration>",        # Go's syntax, as Cortex read it: 60s, 5m, 1m30s, 100ms
    "surge": "<string | int>",       # a count (5) or a share of the desired replicas ("25%")
    "map": "<string: value>",
    "strmap": "<string: string>",
    "any": "<value>",                # only for refused keys: whatever was written is refused
    "section": "",
    "list": "",                      # a list of mappings, each with `keys`
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

# Server-side batching (docs/batching.md): the same two keys in python, tensorflow and onnx.
BATCHING_KEYS: tuple[Key, ...] = (
    # The frame that carries a batch to a replica (cortexd/batchframe.py) holds up to 65536.
    Key("max_batch_size", "int", "most requests run together as one batch", required=True,
        minimum=1, maximum=65536),
    Key("batch_interval", "duration",
        "longest wait for more requests after the first one, before a batch that is not full is run "
        "(\"10ms\", \"0.5s\")", required=True),
)
_BATCHING_HELP = "run requests that arrive together as one batch (see docs/batching.md)"

PYTHON_KEYS: tuple[Key, ...] = (
    Key("predictor", "str", "predictor file, relative to the folder holding cortex.yaml",
        required=True, check="predictor_file"),
    Key("config", "map", _CONFIG_HELP),
    Key("server_side_batching", "section", _BATCHING_HELP, keys=BATCHING_KEYS),
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
    Key("server_side_batching", "section", _BATCHING_HELP, keys=BATCHING_KEYS),
)

ONNX_KEYS: tuple[Key, ...] = (
    Key("model", "str", "a .onnx file: a path, file://, http(s):// or s3://", required=True, check="onnx_model"),
    Key("predictor", "str", "file with an ONNXPredictor class (default: return the model's outputs)",
        check="predictor_file", new=True),
    Key("config", "map", _CONFIG_HELP),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
    Key("server_side_batching", "section", _BATCHING_HELP, keys=BATCHING_KEYS, new=True),
)

TRACKER_KEYS: tuple[Key, ...] = (
    Key("key", "str", "JSON key to track when the response is an object"),
    Key("model_type", "str", "what the predictions are", required=True, choices=("classification", "regression")),
)

# cortexd's own hard memory limit, in every dialect (Cortex's `mem` is a request, never a limit).
GPU_KEY = Key("gpu", "gpu", "GPUs per replica: whole GPUs (1, 2) or a share of one GPU (0.25, 0.5)", default=0)
GPU_MEM_KEY = Key("gpu_mem", "mem", "GPU memory per replica on each of its GPUs: placement only where it is free, "
                  "and its limit (\"6Gi\"; needs gpu)", default=None, default_doc="none", new=True)
MEM_LIMIT_KEY = Key(
    "mem_limit", "mem", "memory limit per replica: a replica above it is stopped, \"error (out of memory)\"",
    default=None, default_doc="none", new=True,
)

COMPUTE_KEYS: tuple[Key, ...] = (
    Key("min_replicas", "int", "minimum number of replicas", default=1, minimum=1),
    Key("max_replicas", "int", "maximum number of replicas (>= min_replicas)", default=100, minimum=1),
    Key("init_replicas", "int", "replicas at start (within [min_replicas, max_replicas])",
        default=None, default_doc="<min_replicas>", minimum=1),
    Key("target_cpu_utilization", "int", "CPU use, in percent of the cpu request, that autoscaling aims at",
        default=80, minimum=1, maximum=100),
    Key("cpu", "cpu", "CPU request per replica in cores (\"1\", 0.5, \"500m\")", default=0.2, default_doc="200m"),
    GPU_KEY,
    Key("mem", "mem",
        "memory request per replica, for admission; a replica may use more (\"1G\", \"512Mi\", \"129e6\")",
        default=None, default_doc="none"),
    MEM_LIMIT_KEY,
    GPU_MEM_KEY,
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
    Key("nan_as_null", "bool", "send NaN and Infinity in a prediction as null (default: such a prediction is a 500, "
        "since it is not JSON)", default=False, new=True),
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
    "memory_limit": "mem_limit",
    "mem_max": "mem_limit",
    "gpus": "gpu",
    "gpu_memory": "gpu_mem",
    "cpus": "cpu",
    "threads": "threads_per_process",
    "processes": "processes_per_replica",
}


def keys_by_name(keys: tuple[Key, ...]) -> dict[str, Key]:
    return {key.name: key for key in keys}


def default_of(keys: tuple[Key, ...], name: str) -> Any:
    return keys_by_name(keys)[name].default


def key_homes(api_keys: tuple[Key, ...] | None = None) -> dict[str, list[str]]:
    """Every key name -> the dotted paths inside an API where it is accepted ("" = the API itself).

    `api_keys` is a dialect's API table (default: the seed's)."""
    homes: dict[str, list[str]] = {}

    def walk(keys: tuple[Key, ...], prefix: str) -> None:
        for key in keys:
            homes.setdefault(key.name, []).append(prefix + key.name)
            if key.type == "section":
                walk(key.keys, prefix + key.name + ".")

    walk(API_KEYS if api_keys is None else api_keys, "")
    return homes


def _default_text(key: Key) -> str:
    if key.default_doc is not None:
        return key.default_doc
    return str(key.default)


def _range_text(key: Key) -> str | None:
    def show(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else str(value)

    low, high = key.minimum, key.maximum
    if low is not None and high is not None:
        left = "(" if key.min_exclusive else "["
        right = ")" if key.max_exclusive else "]"
        if not key.min_exclusive and not key.max_exclusive:
            return f"{show(low)}..{show(high)}"
        return f"{left}{show(low)}, {show(high)}{right}"
    if low is not None:
        return f"{'>' if key.min_exclusive else '>='} {show(low)}"
    if high is not None:
        return f"{'<' if key.max_exclusive else '<='} {show(high)}"
    return None


def key_comment(key: Key) -> str:
    """What the reference says of a key after its `#`: help, required or default, rules."""
    notes = [key.help]
    if key.required:
        notes.append("required")
    elif (key.type not in ("section", "map", "strmap", "list")
          and (key.default is not None or key.default_doc is not None)):
        notes.append(f"default: {_default_text(key)}")
    if key.choices and key.name != "kind":
        notes.append("one of: " + ", ".join(key.choices))
    if key.pattern_doc:
        notes.append(key.pattern_doc)
    bounds = _range_text(key)
    if bounds:
        notes.append(bounds)
    if key.versions:
        notes.append(key.versions)
    if key.new:
        notes.append("new")
    if key.refused:
        notes.append("refused: " + key.refused)
    elif key.note:
        notes.append("no effect: " + key.note)
    return "; ".join(notes)


def render_keys(keys: tuple[Key, ...], indent: str, first_prefix: str, lines: list[str]) -> None:
    """One resource's keys as commented YAML (sections and lists nested under their key)."""
    for index, key in enumerate(keys):
        lead = first_prefix if index == 0 else indent
        if key.name == "kind" and key.choices:
            lines.append(f"{lead}kind: {key.choices[0]}")
            continue
        lines.append(f"{lead}{key.name}: {TYPE_DOCS[key.type]}".rstrip() + f"  # {key_comment(key)}")
        if key.type == "section":
            render_keys(key.keys, indent + "  ", indent + "  ", lines)
        elif key.type == "list":
            render_keys(key.keys, indent + "    ", indent + "  - ", lines)


def render_reference(resources: tuple[tuple[Key, ...], ...]) -> str:
    lines: list[str] = []
    for kind_keys in resources:
        render_keys(kind_keys, "  ", "- ", lines)
        lines.append("")
    return "\n".join(lines)


def reference_yaml() -> str:
    """The documented cortex.yaml reference of the seed dialect, rendered from the schema."""
    return render_reference((DEPLOYMENT_KEYS, API_KEYS))
