"""Can each installed framework use the GPU? For `cortexd gpus`.

Importing TensorFlow or PyTorch takes seconds and hundreds of MiB, and loads CUDA into the
process: the daemon must never do it. So each framework is probed in a child process of its
own (`python -m cortexd.gpu_probe FRAMEWORK`, with the interpreter the replicas use), which
prints one JSON object, and a framework that crashes or hangs its probe affects only its line.

    $ python -m cortexd.gpu_probe tensorflow
    {"framework": "tensorflow", "installed": true, "version": "2.21.0", "cuda": "12.5.1", "gpus": 2, ...}

`probe_frameworks` runs the probes (in parallel, bounded in time) and `describe` turns a
report into the line `cortexd gpus` prints: "tensorflow 2.21.0: CUDA 12.5.1, sees 2 GPUs".
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

FRAMEWORKS: tuple[str, ...] = ("onnxruntime", "tensorflow", "torch")
PROBE_TIMEOUT_S = 120.0  # TensorFlow's first import on a cold disk can take a minute

# The distributions that provide each module, the GPU build first (the report names the one installed).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
    "torch": ("torch",),
}


# --------------------------------------------------------------------------- in the child


def _distribution(module: str) -> str | None:
    for name in _DISTRIBUTIONS.get(module, (module,)):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _probe_onnxruntime() -> dict[str, Any]:
    import onnxruntime as ort

    report: dict[str, Any] = {"version": ort.__version__}
    if hasattr(ort, "preload_dlls"):
        try:  # CUDA and cuDNN from the nvidia-* wheels, as the replica loads them
            ort.preload_dlls()
        except Exception as exc:
            report["detail"] = f"preloading CUDA libraries failed: {exc}"
    cuda = getattr(ort, "cuda_version", None)
    if cuda is None:
        try:
            from onnxruntime.capi import build_and_package_info as info

            cuda = getattr(info, "cuda_version", None)
        except ImportError:
            cuda = None
    providers = list(ort.get_available_providers())
    report["providers"] = providers
    report["cuda"] = cuda or None
    # onnxruntime has no stable way to list GPUs across its versions; what the CUDA driver
    # shows this process is what its CUDA provider would get.
    gpus = _cuda_driver_devices()
    report["gpus"] = gpus
    report["usable"] = "CUDAExecutionProvider" in providers and bool(cuda) and bool(gpus)
    return report


def _cuda_driver_devices() -> int:
    """Devices the CUDA driver (libcuda) shows this process; 0 without a driver."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    if lib.cuInit(0) != 0:
        return 0
    count = ctypes.c_int()
    return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0


def _probe_tensorflow() -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its start-up chatter is not the report
    import tensorflow as tf

    info = dict(tf.sysconfig.get_build_info())
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "version": tf.__version__,
        "cuda": info.get("cuda_version") if info.get("is_cuda_build") else None,
        "gpus": len(gpus),
        "usable": bool(gpus),
    }


def _probe_torch() -> dict[str, Any]:
    import torch

    available = bool(torch.cuda.is_available())
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count() if available else 0,
        "usable": available,
    }


_PROBES: dict[str, Callable[[], dict[str, Any]]] = {
    "onnxruntime": _probe_onnxruntime,
    "tensorflow": _probe_tensorflow,
    "torch": _probe_torch,
}


def probe_here(framework: str) -> dict[str, Any]:
    """Probe `framework` in this process (the child's side)."""
    report: dict[str, Any] = {"framework": framework, "installed": False}
    if framework not in _PROBES:
        report["error"] = f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}"
        return report
    if importlib.util.find_spec(framework) is None:
        return report
    report.update(installed=True, distribution=_distribution(framework))
    try:
        report.update(_PROBES[framework]())
    except Exception as exc:  # a broken install is a finding, not a crash
        report.update(usable=False, error=f"{type(exc).__name__}: {exc}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(FRAMEWORKS)
    for name in names:
        print(json.dumps(probe_here(name)), flush=True)
    return 0


# --------------------------------------------------------------------------- in the daemon


def parse_probe_output(framework: str, returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The child's report, or a report of what went wrong with the child."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                report = json.loads(line)
            except ValueError:
                break
            if isinstance(report, dict) and report.get("framework") == framework:
                return report
    tail = " | ".join(s.strip() for s in stderr.strip().splitlines()[-3:])
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    return {"framework": framework, "installed": True, "usable": False,
            "error": f"the probe failed ({how})" + (f": {tail}" if tail else "")}


def probe_framework(framework: str, python: str = sys.executable, env: Mapping[str, str] | None = None,
                    timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run the probe of one framework in a child process; never raises."""
    child_env = dict(os.environ if env is None else env)
    child_env.pop("CUDA_VISIBLE_DEVICES", None)  # the machine's view, not one replica's
    try:
        done = subprocess.run([python, "-m", "cortexd.gpu_probe", framework], capture_output=True, text=True,
                              timeout=timeout, env=child_env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"framework": framework, "installed": True, "usable": False,
                "error": f"the probe did not finish within {timeout:.0f}s"}
    except OSError as exc:
        return {"framework": framework, "installed": False, "usable": False, "error": f"cannot run {python}: {exc}"}
    return parse_probe_output(framework, done.returncode, done.stdout, done.stderr)


def probe_frameworks(python: str = sys.executable, env: Mapping[str, str] | None = None,
                     timeout: float = PROBE_TIMEOUT_S, frameworks: Sequence[str] = FRAMEWORKS) -> list[dict[str, Any]]:
    """Reports of the installed frameworks, in FRAMEWORKS order (run it off the event loop)."""
    with ThreadPoolExecutor(max_workers=len(frameworks) or 1) as pool:
        reports = list(pool.map(lambda name: probe_framework(name, python, env, timeout), frameworks))
    return [r for r in reports if r.get("installed")]


def describe(report: Mapping[str, Any]) -> str:
    """One line: "tensorflow 2.21.0: CUDA 12.5.1, sees 2 GPUs"; "torch 2.13.0+cpu: CPU only (built without CUDA)"."""
    name = str(report.get("distribution") or report.get("framework"))
    head = f"{name} {report['version']}" if report.get("version") else name
    if report.get("error"):
        return f"{head}: cannot tell ({report['error']})"
    cuda = report.get("cuda")
    if not cuda:
        return f"{head}: CPU only (built without CUDA)"
    gpus = report.get("gpus")
    if report.get("usable"):
        seen = f", sees {gpus} GPU{'s' if gpus != 1 else ''}" if gpus is not None else ""
        return f"{head}: CUDA {cuda}{seen}"
    why = f"; {report['detail']}" if report.get("detail") else ""
    return f"{head}: CUDA {cuda} build, but sees no GPU{why}"


if __name__ == "__main__":
    sys.exit(main())
