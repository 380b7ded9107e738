"""Replicas on real GPUs through a real daemon (`make test-gpu`, scripts/gpu-check.sh).

Skipped where NVML finds no GPU. Each test checks what a replica itself sees: its
CUDA_VISIBLE_DEVICES (read from /proc/<pid>/environ), the devices the CUDA driver lists
inside it (through libcuda with ctypes, so no framework is needed for that), which
execution provider onnxruntime took, and what TensorFlow lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cortexd.daemon.fleet.gpus import GpuInfo, RealNvml
from cortexd.daemon.observe.api_logs import log_path
from tests import modelgen
from tests.daemon_harness import REPO, Client, Daemon, wait_for, write_project

pytestmark = pytest.mark.gpu

SAMPLE = [5.1, 3.5, 1.4, 0.2]

# The CUDA driver's own view from inside a replica: how many devices, and their UUIDs.
CUDA_PROBE = """\
    import ctypes
    import json
    import os


    def cuda_devices():
        lib = ctypes.CDLL("libcuda.so.1")
        rc = lib.cuInit(0)
        if rc != 0:
            return {"init_error": rc, "count": 0, "uuids": []}
        count = ctypes.c_int()
        lib.cuDeviceGetCount(ctypes.byref(count))
        get_uuid = getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid
        uuids = []
        for i in range(count.value):
            dev = ctypes.c_int()
            lib.cuDeviceGet(ctypes.byref(dev), i)
            raw = (ctypes.c_ubyte * 16)()
            get_uuid(raw, dev)
            h = bytes(raw).hex()
            uuids.append(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        return {"init_error": 0, "count": count.value, "uuids": uuids}


    def init(metadata):
        seen = {"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **cuda_devices()}
        print("cuda-probe: " + json.dumps(seen), flush=True)


    def predict(sample, metadata):
        return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **cuda_devices()}
"""


@pytest.fixture(scope="module")
def gpus() -> Iterator[list[GpuInfo]]:
    nvml = RealNvml()
    if not nvml.available():
        reason = nvml.unavailable_reason()
        nvml.close()
        pytest.skip(f"no NVML GPU: {reason}")
    inventory = nvml.gpus()
    nvml.close()
    yield inventory


def replica_environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    return dict(item.decode("utf-8", "replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def api_log(d: Daemon, api: str) -> str:
    """The API's whole log file (`cortexd logs` shows only its tail)."""
    path = log_path(d.log_dir, api)
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def probes(d: Daemon, api: str) -> list[dict[str, Any]]:
    lines = api_log(d, api).splitlines()
    return [json.loads(line.split("cuda-probe: ", 1)[1]) for line in lines if "cuda-probe: " in line]


def uuid_of(gpus: list[GpuInfo], index: int) -> str:
    return next(g.uuid for g in gpus if g.index == index)


def start(project: str, base: str, apis: list[str], timeout: float = 240) -> Daemon:
    d = Daemon(project, base).start(wait_live=False)
    try:
        for api in apis:
            d.wait_status(api, "live", timeout=timeout)
    except BaseException:
        print(d.stderr())
        for api in apis:
            print(f"--- {api}\n{api_log(d, api)}")
        d.stop()
        raise
    return d


# ---------------------------------------------------------------- any framework


def test_python_replica_sees_exactly_its_gpu_and_a_cpu_replica_sees_none(gpus: list[GpuInfo], tmp_path: Any) -> None:
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: g
        - kind: api
          name: on-gpu
          python:
            predictor: probe.py
          compute:
            gpu: 1
        - kind: api
          name: no-gpu
          python:
            predictor: probe.py
    """, {"probe.py": CUDA_PROBE})
    d = start(project, str(tmp_path / "d"), ["on-gpu", "no-gpu"])
    try:
        rep = d.get("on-gpu")["replicas"][0]
        assert len(rep["gpus"]) == 1
        uuid = uuid_of(gpus, rep["gpus"][0])
        assert replica_environ(rep["pid"])["CUDA_VISIBLE_DEVICES"] == uuid
        seen = Client(d.port).post("/g/on-gpu", {}).json()
        assert seen["cuda_visible_devices"] == uuid and seen["init_error"] == 0 and seen["count"] == 1, seen
        if uuid.startswith("GPU-"):  # a MIG device's driver UUID is the MIG one, listed differently
            assert seen["uuids"] == [uuid], seen

        none = Client(d.port).post("/g/no-gpu", {}).json()
        assert none["cuda_visible_devices"] == "" and none["count"] == 0, none  # cuInit: no device

        table = d.cli("gpus")
        assert table.returncode == 0, table.stderr
        assert next(g.name for g in gpus if g.index == rep["gpus"][0]) in table.stdout
        assert rep["id"] in table.stdout
        print("\n" + table.stdout)
    finally:
        assert d.stop() == 0, d.stderr()


def test_two_replicas_on_two_different_gpus(gpus: list[GpuInfo], tmp_path: Any) -> None:
    if len(gpus) < 2:
        pytest.skip(f"the machine has {len(gpus)} GPU")
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: g
        - kind: api
          name: pair
          python:
            predictor: probe.py
          compute:
            gpu: 1
            min_replicas: 2
    """, {"probe.py": CUDA_PROBE})
    d = start(project, str(tmp_path / "d"), ["pair"])
    try:
        replicas = d.get("pair")["replicas"]
        assert len(replicas) == 2
        indices = [r["gpus"][0] for r in replicas]
        assert len(set(indices)) == 2, replicas
        seen = wait_for(lambda: (p := probes(d, "pair")) and len(p) >= 2 and p, 30, what="both replicas' probes")
        by_pid = {p["pid"]: p for p in seen}
        for rep in replicas:
            probe = by_pid[rep["pid"]]
            uuid = uuid_of(gpus, rep["gpus"][0])
            assert probe["cuda_visible_devices"] == uuid and probe["count"] == 1, probe
            if uuid.startswith("GPU-"):
                assert probe["uuids"] == [uuid], probe
    finally:
        assert d.stop() == 0, d.stderr()


# ---------------------------------------------------------------- ONNX on CUDA


ONNX_PREDICTOR = """\
    import os


    class ONNXPredictor:
        def __init__(self, onnx_client, config):
            self.client = onnx_client

        def predict(self, payload):
            scores, labels = self.client.predict(payload)
            return {
                "providers": self.client.session.get_providers(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "scores": scores,
            }
"""


def test_onnx_replica_runs_on_cuda_on_its_gpu(gpus: list[GpuInfo], tmp_path: Any) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no CUDA provider ({ort.get_available_providers()}): install onnxruntime-gpu")
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: g
        - kind: api
          name: onnx-gpu
          onnx:
            model: linear.onnx
            predictor: predictor.py
          compute:
            gpu: 1
    """, {"predictor.py": ONNX_PREDICTOR})
    modelgen.onnx_linear(os.path.join(project, "linear.onnx"))
    d = start(project, str(tmp_path / "d"), ["onnx-gpu"])
    try:
        log = api_log(d, "onnx-gpu")
        rep = d.get("onnx-gpu")["replicas"][0]
        uuid = uuid_of(gpus, rep["gpus"][0])
        assert replica_environ(rep["pid"])["CUDA_VISIBLE_DEVICES"] == uuid
        # The replica says which provider it got; a fallback line names what was available.
        assert "running on CUDAExecutionProvider (GPU 0)" in log, log
        r = Client(d.port).post("/g/onnx-gpu", [SAMPLE])
        assert r.status == 200, r.body
        body = r.json()
        assert body["providers"][0] == "CUDAExecutionProvider" and body["cuda_visible_devices"] == uuid
        np.testing.assert_allclose(body["scores"], modelgen.linear_scores([SAMPLE]), rtol=1e-3, atol=1e-4)
    finally:
        assert d.stop() == 0, d.stderr()


# ---------------------------------------------------------------- TensorFlow on a GPU


TF_PREDICTOR = """\
    import tensorflow as tf


    class TensorFlowPredictor:
        def __init__(self, tf_client, config):
            self.client = tf_client
            self.gpus = [d.name for d in tf.config.list_physical_devices("GPU")]

        def predict(self, payload):
            out = self.client.predict(payload)
            probe = tf.constant([[1.0, 2.0]]) * 2.0  # placed on the GPU when TensorFlow has one
            return {"gpus": self.gpus, "device": probe.device, "label": out["label"]}
"""


def tensorflow_with_cuda() -> str | None:
    """None when this interpreter's TensorFlow is built with CUDA, else why not (checked in a child:
    importing TensorFlow here would also initialise the GPU in the test process)."""
    code = "import tensorflow as tf, sys; sys.stdout.write(str(tf.test.is_built_with_cuda()))"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        return f"tensorflow cannot be imported: {result.stderr.strip().splitlines()[-1:] or result.returncode}"
    if result.stdout.strip() != "True":
        return ("this TensorFlow has no CUDA (tensorflow-cpu): pip install 'tensorflow[and-cuda]' "
                "(scripts/gpu-check.sh does)")
    return None


def test_tensorflow_replica_sees_exactly_one_gpu(gpus: list[GpuInfo], tmp_path: Any) -> None:
    why_not = tensorflow_with_cuda()
    if why_not:
        pytest.skip(why_not)
    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: g
        - kind: api
          name: tf-gpu
          tensorflow:
            model: model
            predictor: predictor.py
          compute:
            gpu: 1
    """, {"predictor.py": TF_PREDICTOR})
    # Saved in a child without GPUs, so that this process never holds GPU memory.
    build = (f"import sys; sys.path.insert(0, {REPO!r}); from tests import modelgen; "
             f"modelgen.tf_saved_model({os.path.join(project, 'model')!r})")
    subprocess.run([sys.executable, "-c", build], check=True, timeout=300,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
    d = start(project, str(tmp_path / "d"), ["tf-gpu"], timeout=300)
    try:
        rep = d.get("tf-gpu")["replicas"][0]
        assert replica_environ(rep["pid"])["CUDA_VISIBLE_DEVICES"] == uuid_of(gpus, rep["gpus"][0])
        r = Client(d.port).post("/g/tf-gpu", {"x": [SAMPLE]})
        assert r.status == 200, r.body
        body = r.json()
        assert body["gpus"] == ["/physical_device:GPU:0"], body
        assert body["device"].endswith("GPU:0"), body
        assert body["label"] == modelgen.linear_labels([SAMPLE])
    finally:
        assert d.stop() == 0, d.stderr()
