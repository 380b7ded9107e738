"""A replica's gpu_mem applied inside the frameworks that can limit themselves.

- onnxruntime: the CUDA provider's `gpu_mem_limit` (onnx_predictor.session_plan);
- TensorFlow: one logical GPU with `memory_limit` (tf_predictor.configure_runtime, and
  `tensorflow_limit` here for Python predictors that import TensorFlow themselves);
- PyTorch: `torch.cuda.set_per_process_memory_fraction(gpu_mem / the card's memory)`.

A Python predictor imports torch or TensorFlow itself, usually at the top of its file, and
may put a model on the GPU in the same breath; a limit set after that would come too late.
So `limit_frameworks` applies the limit to a framework already imported, and otherwise puts
a finder on `sys.meta_path` that applies it the moment the framework's import finishes,
before any of the predictor's own code runs against it.

These limits bound what each framework's allocator takes; the CUDA context and libraries'
workspaces come on top. The daemon's check (daemon/fleet/gpu_memory.py) allows a margin for
that and stops a replica that goes beyond it anyway.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

MiB = 1024**2


def _log(message: str) -> None:
    sys.stderr.write(f"gpu: {message}\n")
    sys.stderr.flush()


def torch_fraction(gpu_mem: int, total: int) -> float:
    """The per-process memory fraction that caps PyTorch's allocator at gpu_mem (at most 1)."""
    if total <= 0:
        return 1.0
    return min(1.0, gpu_mem / total)


def torch_limit(torch: Any, gpu_mem: int) -> str:
    """Cap PyTorch's CUDA allocator at gpu_mem on every device the replica sees; what was done."""
    try:
        if not torch.cuda.is_available():
            return "torch: no CUDA device, no limit to set"
        done = []
        for device in range(torch.cuda.device_count()):
            total = int(torch.cuda.get_device_properties(device).total_memory)
            fraction = torch_fraction(gpu_mem, total)
            torch.cuda.set_per_process_memory_fraction(fraction, device)
            done.append(f"cuda:{device} {fraction:.4f} of {total // MiB} MiB")
        return f"torch: memory fraction {', '.join(done)} (gpu_mem {gpu_mem // MiB} MiB)"
    except Exception as exc:  # a broken CUDA setup shows up when the model loads, with its own error
        return f"torch: could not set the memory fraction: {type(exc).__name__}: {exc}"


def tensorflow_limit(tf: Any, gpu_mem: int) -> str:
    """One logical GPU of gpu_mem per physical GPU; must come before TensorFlow's runtime starts."""
    try:
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=max(1, gpu_mem // MiB))])
        return f"tensorflow: memory_limit {gpu_mem // MiB} MiB on {len(gpus)} GPU(s)"
    except (RuntimeError, ValueError) as exc:  # the runtime already started
        return f"tensorflow: could not set memory_limit: {exc}"


Limiter = Callable[[Any, int], str]
LIMITERS: dict[str, Limiter] = {"torch": torch_limit, "tensorflow": tensorflow_limit}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds `name` with the other finders and runs `then(module)` once its import finished."""

    def __init__(self, name: str, then: Callable[[types.ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and never in the way of the import it wraps
        spec: importlib.machinery.ModuleSpec | None = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader: Any = spec.loader  # the loader's own exec_module is replaced on this instance
        run = loader.exec_module
        then = self.then

        def exec_module(module: types.ModuleType) -> None:
            run(module)
            then(module)

        loader.exec_module = exec_module
        return spec


def _logging(limiter: Limiter, gpu_mem: int) -> Callable[[types.ModuleType], None]:
    def apply(module: types.ModuleType) -> None:
        _log(limiter(module, gpu_mem))

    return apply


def limit_frameworks(gpu_mem: int | None, frameworks: Sequence[str] = ("torch", "tensorflow")) -> list[str]:
    """Apply gpu_mem to each framework now if imported, else when it is. What was done, now."""
    if not gpu_mem:
        return []
    done = []
    for name in frameworks:
        limiter = LIMITERS[name]
        module = sys.modules.get(name)
        if module is not None:
            done.append(limiter(module, gpu_mem))
            continue
        if any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
            continue
        sys.meta_path.insert(0, _AfterImport(name, _logging(limiter, gpu_mem)))
    for line in done:
        _log(line)
    return done
