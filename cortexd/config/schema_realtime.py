"""The cortex.yaml table of Cortex v0.14-v0.35 realtime APIs, as `Key` rows.

One table for twenty-two releases: a file is a list of resources, each an API (no `kind`
before v0.19, `kind: RealtimeAPI` after) or a TrafficSplitter (v0.19+). Keys that moved
between releases are all accepted where each release put them, and `versions` says which
releases had each; writing the same setting twice (`tracker` and `monitoring`,
`autoscaling.threads_per_worker` and `predictor.threads_per_process`) is an error the rules
report. Keys that cortexd cannot serve are known (so the error says why) but refused;
keys that only tuned Cortex's cluster are accepted with a note that they have no effect.
"""
from __future__ import annotations

from cortexd.config.schema import GPU_KEY, GPU_MEM_KEY, MEM_LIMIT_KEY, TRACKER_KEYS, Key

_NAME_MAX = 63
_PYTHON_PATH_HELP = (
    "folder prepended to the replica's sys.path, relative to the folder holding cortex.yaml "
    "(default: that folder)"
)
_MULTI_MODEL = (
    "cortexd does not serve multi-model APIs (several models, a model folder, or live reloading); "
    "give one model with models.path (or model_path)"
)

API_KINDS: tuple[str, ...] = ("RealtimeAPI", "SyncAPI")  # SyncAPI: the name during v0.19's development
SPLITTER_KIND = "TrafficSplitter"
# Kinds Cortex had that cortexd does not serve, with the one line validate answers.
REFUSED_KINDS: dict[str, str] = {
    "BatchAPI": "BatchAPI (batch jobs over a queue) is not served by cortexd; it serves realtime APIs only",
    "TaskAPI": "TaskAPI (one-off jobs) is not served by cortexd; it serves realtime APIs only",
    "AsyncAPI": "AsyncAPI (queued requests answered later) is not served by cortexd; it serves realtime APIs only",
}
ALL_KINDS: tuple[str, ...] = API_KINDS + (SPLITTER_KIND,) + tuple(REFUSED_KINDS)
PREDICTOR_TYPES: tuple[str, ...] = ("python", "tensorflow", "onnx")
# cortexd's `interface` key: an older release's way of calling the predictor, kept in this
# dialect so that `cortexd convert` can move any project here without touching its code.
INTERFACES: tuple[str, ...] = ("v0.11", "december-2019", "v0.12")


def _name_key(help_text: str) -> Key:
    return Key(
        "name", "str", help_text, required=True,
        pattern=r"[a-z][a-z0-9-]*", pattern_doc="lowercase letters, digits and '-', starting with a letter",
        max_length=_NAME_MAX,
    )


MODELS_KEYS: tuple[Key, ...] = (
    Key("path", "str", "the model: a SavedModel folder (tensorflow) or a folder or file holding one .onnx (onnx); "
        "a path, file://, http(s):// or s3://", check="any_model"),
    Key("signature_key", "str", "tensorflow: the signature to serve (required when the model has several)"),
    Key("paths", "any", "several named models", refused=_MULTI_MODEL),
    Key("dir", "any", "a folder of models", refused=_MULTI_MODEL),
    Key("cache_size", "any", "models kept in memory", refused=_MULTI_MODEL),
    Key("disk_cache_size", "any", "models kept on disk", refused=_MULTI_MODEL),
)

BATCHING_KEYS: tuple[Key, ...] = (
    Key("max_batch_size", "int", "requests gathered into one batch at most", required=True, minimum=2, maximum=1024),
    Key("batch_interval", "duration", "longest wait for more requests before running the batch", required=True,
        minimum=0, min_exclusive=True),
)

DEPENDENCIES_KEYS: tuple[Key, ...] = (
    Key("pip", "str", "requirements file", default="requirements.txt",
        note="cortexd installs the project's requirements.txt, whatever this names"),
    Key("conda", "str", "conda packages file", default="conda-packages.txt",
        note="cortexd does not install conda packages"),
    Key("shell", "str", "system packages script", default="dependencies.sh",
        note="cortexd does not run dependency scripts; install system packages on the host"),
)

PREDICTOR_KEYS: tuple[Key, ...] = (
    Key("type", "str", "the predictor's kind", required=True, choices=PREDICTOR_TYPES),
    Key("path", "str", "file with the predictor class (PythonPredictor, TensorFlowPredictor, ONNXPredictor; "
        "Handler under handler:), relative to the folder holding cortex.yaml (optional for tensorflow and onnx "
        "with interface v0.11 or december-2019)", check="predictor_file"),
    Key("interface", "str", "call the predictor as an older release did: v0.11 (init(model_path, metadata) / "
        "predict(sample, metadata), request handlers), december-2019 (cortexd's first dialect; TensorFlow "
        "outputs keep their shapes), v0.12 (classes, predict(self, payload)); default: by name, as v0.17+",
        choices=INTERFACES, new=True),
    Key("model", "str", "tensorflow/onnx: the model (a path, file://, http(s):// or s3://)", check="any_model",
        versions="v0.14-v0.17"),
    Key("model_path", "str", "tensorflow/onnx: the model (a path, file://, http(s):// or s3://)", check="any_model",
        versions="v0.18-v0.24"),
    Key("models", "section", "tensorflow/onnx: the model", keys=MODELS_KEYS, versions="v0.18+",
        refused_list=_MULTI_MODEL),
    Key("signature_key", "str", "tensorflow: the signature to serve (required when the model has several)"),
    Key("multi_model_reloading", "any", "python: models loaded by the predictor, reloaded live", refused=_MULTI_MODEL,
        versions="v0.25+"),
    Key("server_side_batching", "section", "gather concurrent requests into batches", keys=BATCHING_KEYS,
        versions="v0.19+"),
    Key("v2", "map", "python: the tensors V2 clients see in the model metadata (docs/v2.md): inputs and outputs, "
        "lists of {name, datatype, shape}", new=True),
    Key("processes_per_replica", "int", "serving processes per replica", default=1, minimum=1, maximum=100,
        versions="v0.18+"),
    Key("threads_per_process", "int", "requests each process serves at once (a thread pool)", default=1, minimum=1,
        maximum=1024, versions="v0.18+"),
    Key("config", "map", "dictionary handed to the predictor's constructor"),
    Key("python_path", "str", _PYTHON_PATH_HELP, check="folder"),
    Key("env", "strmap", "environment variables of the replica"),
    Key("nan_as_null", "bool", "send NaN and Infinity in a prediction as null (default: such a prediction is a 500, "
        "since it is not JSON)", default=False, new=True),
    Key("image", "str", "Docker image of the predictor", versions="v0.16+",
        note="cortexd runs predictors in its own Python environment, not an image"),
    Key("tensorflow_serving_image", "str", "Docker image of TensorFlow Serving", versions="v0.16+",
        note="cortexd runs TensorFlow in the replica process"),
    Key("log_level", "str", "log level of Cortex's serving code", default="info",
        choices=("debug", "info", "warning", "error"), versions="v0.26+",
        note="the replica's output goes to the API's log as it is"),
    Key("shm_size", "mem", "size of /dev/shm", versions="v0.26+", note="replicas share the host's /dev/shm"),
    Key("dependencies", "section", "files that install the predictor's packages", keys=DEPENDENCIES_KEYS,
        versions="v0.30+"),
    Key("protobuf_path", "any", "a gRPC API's protobuf file", versions="v0.32+",
        refused="gRPC APIs are not served by cortexd; remove protobuf_path to serve the API over HTTP"),
)

NETWORKING_KEYS: tuple[Key, ...] = (
    Key("endpoint", "str", "URL path of the API, unique", default_doc="/<api>", versions="v0.18+"),
    Key("api_gateway", "str", "AWS API Gateway in front of the API", choices=("public", "none"), versions="v0.18-v0.25",
        note="cortexd has no API Gateway; the API is served on cortexd's port"),
    Key("local_port", "int", "port of a locally deployed API", minimum=1, maximum=65535, versions="v0.16-v0.25",
        note="every API is served on cortexd's port (8888), under its endpoint"),
)

COMPUTE_KEYS: tuple[Key, ...] = (
    Key("cpu", "cpu", "CPU request per replica in cores (\"1\", 0.5, \"500m\")", default=0.2, default_doc="200m"),
    GPU_KEY,
    Key("inf", "int", "AWS Inferentia chips per replica (cortexd serves 0 only)", default=0, minimum=0,
        versions="v0.18+"),
    Key("mem", "mem", "memory request per replica, for admission; a replica may use more", default=None,
        default_doc="none"),
    MEM_LIMIT_KEY,
    GPU_MEM_KEY,
    Key("node_groups", "any", "cluster node groups to run on", versions="v0.34+",
        note="cortexd runs on one machine"),
)

AUTOSCALING_KEYS: tuple[Key, ...] = (
    Key("min_replicas", "int", "minimum number of replicas", default=1, minimum=1),
    Key("max_replicas", "int", "maximum number of replicas (>= min_replicas)", default=100, minimum=1),
    Key("init_replicas", "int", "replicas at start (within [min_replicas, max_replicas])", default_doc="<min_replicas>",
        minimum=1),
    Key("workers_per_replica", "int", "serving processes per replica", default=1, minimum=1, maximum=100,
        versions="v0.14-v0.17"),
    Key("threads_per_worker", "int", "requests each process serves at once (a thread pool)", default=1, minimum=1,
        maximum=1024, versions="v0.14-v0.17"),
    Key("target_cpu_utilization", "int", "autoscale on CPU instead (the rule of v0.11-v0.13 and cortexd's first "
        "dialect): CPU use in percent of the cpu request; not with the request-based keys below",
        minimum=1, maximum=100, new=True),
    Key("target_replica_concurrency", "float", "in-flight requests per replica that autoscaling aims at",
        default_doc="processes_per_replica * threads_per_process", minimum=0, min_exclusive=True),
    Key("max_replica_concurrency", "int", "in-flight requests per replica beyond which requests get 503",
        default=1024, minimum=1, maximum=30000),
    Key("window", "duration", "time over which in-flight requests are averaged (a multiple of 10s)", default=60.0,
        default_doc="60s", minimum=10),
    Key("downscale_stabilization_period", "duration", "no scaling below the highest recommendation of this period",
        default=300.0, default_doc="5m", minimum=0),
    Key("upscale_stabilization_period", "duration", "no scaling above the lowest recommendation of this period",
        default=60.0, default_doc="1m", minimum=0),
    Key("max_downscale_factor", "float", "smallest fraction of the replicas one scaling event keeps", default=0.75,
        minimum=0, maximum=1, max_exclusive=True),
    Key("max_upscale_factor", "float", "largest multiple of the replicas one scaling event reaches", default=1.5,
        minimum=1, min_exclusive=True),
    Key("downscale_tolerance", "float", "recommendations within this fraction below the replicas change nothing",
        default=0.05, minimum=0, maximum=1, max_exclusive=True),
    Key("upscale_tolerance", "float", "recommendations within this fraction above the replicas change nothing",
        default=0.05, minimum=0),
)

UPDATE_STRATEGY_KEYS: tuple[Key, ...] = (
    Key("max_surge", "surge", "replicas above the desired number during an update: a count or a share of the "
        "desired replicas (0: no surge)", default="25%"),
    Key("max_unavailable", "surge", "replicas that may be unavailable during an update: a count or a share of "
        "the desired replicas", default="25%"),
)

API_KEYS: tuple[Key, ...] = (
    _name_key("the API's name, unique in the file"),
    Key("kind", "str", "the resource kind (required from v0.19; none before)", choices=ALL_KINDS),
    Key("endpoint", "str", "URL path of the API, unique", default_doc="/<api>", versions="v0.14-v0.17"),
    Key("predictor", "section", "the predictor (predictor or handler)", keys=PREDICTOR_KEYS, versions="v0.14-v0.33"),
    Key("handler", "section", "the handler (predictor or handler)", keys=PREDICTOR_KEYS, versions="v0.34+"),
    Key("networking", "section", "how the API is reached", keys=NETWORKING_KEYS, versions="v0.16+"),
    Key("compute", "section", "resources per replica", keys=COMPUTE_KEYS),
    Key("autoscaling", "section", "replica counts and request-based autoscaling", keys=AUTOSCALING_KEYS),
    Key("update_strategy", "section", "rolling updates", keys=UPDATE_STRATEGY_KEYS),
    Key("tracker", "section", "track the predictions", keys=TRACKER_KEYS, versions="v0.14-v0.16"),
    Key("monitoring", "section", "track the predictions", keys=TRACKER_KEYS, versions="v0.17-v0.25"),
    Key("pod", "any", "containers (Cortex v0.36+)", refused=(
        "container APIs (pod:, Cortex v0.36 and later) are not served by cortexd; "
        "it serves the predictor APIs of Cortex v0.11-v0.35")),
)

SPLIT_KEYS: tuple[Key, ...] = (
    Key("name", "str", "name of an API of this file", required=True),
    Key("weight", "int", "percent of the requests (the weights of non-shadow APIs sum to 100)", required=True,
        minimum=0, maximum=100),
    Key("shadow", "bool", "send a copy of every request, answer ignored (one shadow per splitter)", default=False,
        versions="v0.31+"),
)

SPLITTER_NETWORKING_KEYS: tuple[Key, ...] = tuple(k for k in NETWORKING_KEYS if k.name != "local_port")

SPLITTER_KEYS: tuple[Key, ...] = (
    _name_key("the splitter's name, unique in the file"),
    Key("kind", "str", "the resource kind", required=True, choices=(SPLITTER_KIND,)),
    Key("networking", "section", "how the splitter is reached", keys=SPLITTER_NETWORKING_KEYS),
    Key("apis", "list", "APIs of this file that share the requests", required=True, keys=SPLIT_KEYS),
)

RESOURCES = (API_KEYS, SPLITTER_KEYS)
