"""What the daemon and its replica processes agree on: exit codes, paths, and the two
messages that cross between them, typed, with their encoding in this one module.

- `ReplicaSpec`: what a replica runs. The daemon writes it into an anonymous memory file
  (memfd) that the replica inherits as a descriptor (`--spec-fd`): no path in a shared
  folder that another user could plant, swap or read.
- `Ready` / `LoadFailed`: status messages, one JSON object per line on the status pipe
  (`--status-fd`), from the replica to the daemon.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

# A replica that cannot load its predictor exits with this code, so the supervisor backs off
# instead of restarting it in a tight loop (gunicorn's WORKER_BOOT_ERROR).
EXIT_LOAD_FAILED = 3
# A replica that found its parent gone (the daemon died before PDEATHSIG was armed).
EXIT_ORPHANED = 4

PREDICT_PATH = "/predict"
INFO_PATH = "/info"

EVENT_READY = "ready"
EVENT_LOAD_FAILED = "load_failed"


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs to load and serve its predictor."""

    api_name: str
    kind: str  # python | onnx | tensorflow
    predictor_path: str | None
    model_path: str | None  # local path: the daemon fetched remote models already
    signature_key: str | None
    config: dict[str, Any]
    python_path: str
    gpus: list[int] = field(default_factory=list)  # indices as seen through CUDA_VISIBLE_DEVICES
    cpu: float = 0.2
    gpu_share: float = 0.0  # of its one card (0.25, 0.5), 1.0 for whole GPUs, 0 without a GPU
    gpu_mem: int | None = None  # bytes of GPU memory per GPU: the frameworks' limits (replica/gpu_limits.py)
    # Server-side batching (cortexd/replica/batching.py): 0 = off; else the API's
    # max_batch_size, and the replica answers POST /predict-batch (cortexd/batchframe.py).
    max_batch_size: int = 0
    # How predictions go out (cortexd/replica/bodies.py render_prediction): NaN/Infinity as
    # null instead of a 500, and a str as text/plain (Cortex v0.18 on) instead of a JSON string.
    nan_as_null: bool = False
    str_as_text: bool = False
    # How the user's code is called and answers (the API's cortex.yaml dialect decides; see
    # cortexd/callconv.py and cortexd/config/dialects.py).
    # It also decides the TensorFlow outputs' form and the status of a predictor exception.
    call: str = "module"
    threads: int = 1  # requests served at once through a thread pool (threads_per_process)
    env: dict[str, str] = field(default_factory=dict)  # set before the user's code is imported


@dataclass(frozen=True)
class Ready:
    info: dict[str, Any] = field(default_factory=dict)  # what GET <endpoint> shows of the model
    pid: int = 0


@dataclass(frozen=True)
class LoadFailed:
    message: str
    traceback: str = ""


StatusMessage = Ready | LoadFailed


def encode_spec(spec: ReplicaSpec) -> bytes:
    return json.dumps(dataclasses.asdict(spec)).encode()


def decode_spec(data: bytes) -> ReplicaSpec:
    return ReplicaSpec(**json.loads(data))


def spec_fd(spec: ReplicaSpec) -> int:
    """A sealed-off anonymous file holding the encoded spec, positioned at its start, for
    the replica to inherit. The caller closes its copy once the replica has started."""
    fd = os.memfd_create("cortexd-replica-spec", os.MFD_CLOEXEC)
    data = encode_spec(spec)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_spec_fd(fd: int) -> ReplicaSpec:
    chunks = []
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    return decode_spec(b"".join(chunks))


def encode_status(message: StatusMessage) -> bytes:
    event = EVENT_READY if isinstance(message, Ready) else EVENT_LOAD_FAILED
    return (json.dumps({"event": event, **dataclasses.asdict(message)}) + "\n").encode()


def decode_status(line: bytes) -> StatusMessage | None:
    """One line of the status pipe; None for a line that is not a message we know."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    event = data.get("event")
    if event == EVENT_READY:
        info = data.get("info")
        return Ready(info if isinstance(info, dict) else {}, int(data.get("pid") or 0))
    if event == EVENT_LOAD_FAILED:
        return LoadFailed(str(data.get("message", "")), str(data.get("traceback", "")))
    return None


def header_value(lower_block: bytes | bytearray, name: bytes) -> bytes | None:
    """The value of header `name` (lowercase, e.g. b"content-length") in a lowercased header
    block that starts at its first line's CRLF or earlier; None when absent. Both ends of the
    daemon-replica hop parse heads with it: they only ever need one or two headers."""
    at = lower_block.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = lower_block.find(b"\r\n", start)
    return bytes(lower_block[start : end if end >= 0 else len(lower_block)]).strip()
