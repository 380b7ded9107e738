"""The cortex.yaml tables of Cortex v0.11 and of Cortex v0.12-v0.13, as `Key` rows.

v0.11 (November 2019): `kind: deployment` + `kind: api`; a Python API names its file in
`predictor.path` (module functions init(model_path, metadata) / predict(sample, metadata));
ONNX and TensorFlow APIs give `model` and an optional `request_handler` file.

v0.12 (December 2019) put every kind under `predictor:` with a `type` and made predictors
classes; v0.13 (January 2020) dropped `kind` and the deployment (a list of APIs, endpoint
/<api name>) and added `max_surge` / `max_unavailable` to `compute`. cortexd reads both
forms as one dialect: a file with a deployment is v0.12, one without is v0.13.
"""
from __future__ import annotations

from cortexd.config.schema import COMPUTE_KEYS, DEPLOYMENT_KEYS, MEM_LIMIT_KEY, TRACKER_KEYS, Key

_NAME_MAX = 63
_PYTHON_PATH_HELP = (
    "folder prepended to the replica's sys.path, relative to the folder holding cortex.yaml "
    "(default: that folder)"
)
_METADATA_HELP = "dictionary handed to the predictor's functions"


def _name_key(help_text: str) -> Key:
    return Key(
        "name", "str", help_text, required=True,
        pattern=r"[a-z][a-z0-9-]*", pattern_doc="lowercase letters, digits and '-', starting with a letter",
        max_length=_NAME_MAX,
    )


# ------------------------------------------------------------------------------ v0.11

V011_PREDICTOR_KEYS: tuple[Key, ...] = (
    Key("path", "str", "file with init(model_path, metadata) and predict(sample, metadata), relative to the "
        "folder holding cortex.yaml", required=True, check="predictor_file"),
    Key("model", "str", "a file or folder fetched before init() and passed to it as model_path "
        "(a path, file://, http(s):// or s3://)", check="any_model"),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
    Key("metadata", "map", _METADATA_HELP),
)

V011_TENSORFLOW_KEYS: tuple[Key, ...] = (
    Key("model", "str", "SavedModel: a folder, a .zip, or a folder of numbered versions (highest wins); "
        "a path, file://, http(s):// or s3://", required=True, check="tensorflow_model"),
    Key("request_handler", "str", "file with pre_inference(sample, signature, metadata) and/or "
        "post_inference(prediction, signature, metadata)", check="predictor_file"),
    Key("signature_key", "str", "signature to serve (required when the model has several)"),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
    Key("metadata", "map", "dictionary handed to the request handler's functions"),
)

V011_ONNX_KEYS: tuple[Key, ...] = (
    Key("model", "str", "a .onnx file: a path, file://, http(s):// or s3://", required=True, check="onnx_model"),
    Key("request_handler", "str", "file with pre_inference(sample, signature, metadata) and/or "
        "post_inference(prediction, signature, metadata)", check="predictor_file"),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
    Key("metadata", "map", "dictionary handed to the request handler's functions"),
)

V011_API_KEYS: tuple[Key, ...] = (
    Key("kind", "str", "the resource kind", required=True, choices=("api",)),
    _name_key("the API's name, unique in the file"),
    Key("endpoint", "str", "URL path of the API, unique", default_doc="/<deployment>/<api>"),
    Key("predictor", "section", "a Python predictor (exactly one of predictor / tensorflow / onnx)",
        keys=V011_PREDICTOR_KEYS),
    Key("tensorflow", "section", "a TensorFlow SavedModel", keys=V011_TENSORFLOW_KEYS),
    Key("onnx", "section", "an ONNX model", keys=V011_ONNX_KEYS),
    Key("tracker", "section", "track the predictions", keys=TRACKER_KEYS),
    Key("compute", "section", "replicas and their resources", keys=COMPUTE_KEYS),
)

V011_KINDS: tuple[str, ...] = ("predictor", "tensorflow", "onnx")

# ------------------------------------------------------------------------------ v0.12-v0.13

V012_TYPES: tuple[str, ...] = ("python", "tensorflow", "onnx")

V012_PREDICTOR_KEYS: tuple[Key, ...] = (
    Key("type", "str", "the predictor's kind", required=True, choices=V012_TYPES),
    Key("path", "str", "file with a PythonPredictor, TensorFlowPredictor or ONNXPredictor class, relative to "
        "the folder holding cortex.yaml", required=True, check="predictor_file"),
    Key("model", "str", "tensorflow: a SavedModel (folder, .zip, numbered versions); onnx: a .onnx file; "
        "a path, file://, http(s):// or s3:// (required for tensorflow and onnx)", check="any_model"),
    Key("signature_key", "str", "tensorflow: the signature to serve (required when the model has several)"),
    Key("config", "map", "dictionary handed to the predictor's constructor"),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
    Key("env", "strmap", "environment variables of the replica"),
)

V012_COMPUTE_KEYS: tuple[Key, ...] = tuple(k for k in COMPUTE_KEYS if k.name != "mem_limit") + (
    Key("max_surge", "surge", "replicas above the desired number during an update: a count or a share "
        "of the desired replicas", default="25%", versions="v0.13"),
    Key("max_unavailable", "surge", "replicas that may be unavailable during an update: a count or a share "
        "of the desired replicas", default="25%", versions="v0.13"),
    MEM_LIMIT_KEY,
)

V012_API_KEYS: tuple[Key, ...] = (
    Key("kind", "str", "the resource kind (v0.12; v0.13 files have none)", choices=("api",), versions="v0.12"),
    _name_key("the API's name, unique in the file"),
    Key("endpoint", "str", "URL path of the API, unique", default_doc="/<deployment>/<api> (v0.12), /<api> (v0.13)"),
    Key("predictor", "section", "the predictor", required=True, keys=V012_PREDICTOR_KEYS),
    Key("tracker", "section", "track the predictions", keys=TRACKER_KEYS),
    Key("compute", "section", "replicas and their resources", keys=V012_COMPUTE_KEYS),
)

V011_RESOURCES = (DEPLOYMENT_KEYS, V011_API_KEYS)
V012_RESOURCES = (DEPLOYMENT_KEYS, V012_API_KEYS)
