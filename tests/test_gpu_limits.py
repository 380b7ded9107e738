"""gpu_mem inside the replica: PyTorch's memory fraction and TensorFlow's logical device, set
as the predictor imports them (replica/gpu_limits.py), with stand-in frameworks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest

from cortexd.protocol import ReplicaSpec
from cortexd.replica.gpu_limits import tensorflow_limit, torch_fraction, torch_limit

GiB = 1024**3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in `torch` with two 16 GiB CUDA devices that records the fractions it was given.
STAND_IN_TORCH = """\
    import sys
    from types import SimpleNamespace

    calls = []
    imported_at = len(sys.modules)


    class _Props:
        total_memory = 16 * 1024**3


    cuda = SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        get_device_properties=lambda device: _Props(),
        set_per_process_memory_fraction=lambda fraction, device: calls.append([fraction, device]),
    )
"""


@pytest.mark.parametrize("gpu_mem, total, fraction", [(4 * GiB, 16 * GiB, 0.25), (6 * GiB, 140 * GiB, 6 / 140),
                                                      (32 * GiB, 16 * GiB, 1.0), (GiB, 0, 1.0)])
def test_torch_fraction(gpu_mem: int, total: int, fraction: float) -> None:
    assert torch_fraction(gpu_mem, total) == pytest.approx(fraction)


def test_torch_limit_on_every_visible_device_and_without_cuda() -> None:
    calls: list[tuple[float, int]] = []
    torch = SimpleNamespace(cuda=SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 1,
        get_device_properties=lambda d: SimpleNamespace(total_memory=16 * GiB),
        set_per_process_memory_fraction=lambda f, d: calls.append((f, d))))
    assert torch_limit(torch, 4 * GiB) == "torch: memory fraction cuda:0 0.2500 of 16384 MiB (gpu_mem 4096 MiB)"
    assert calls == [(0.25, 0)]
    cpu_only = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
    assert torch_limit(cpu_only, GiB) == "torch: no CUDA device, no limit to set"
    broken = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: 1 / 0))
    assert torch_limit(broken, GiB).startswith("torch: could not set the memory fraction: ZeroDivisionError")


def test_tensorflow_limit_is_one_logical_device_per_gpu() -> None:
    configured: list[tuple[str, list[Any]]] = []
    tf = SimpleNamespace(config=SimpleNamespace(
        list_physical_devices=lambda kind: ["GPU:0"],
        set_logical_device_configuration=lambda gpu, configs: configured.append((gpu, configs)),
        LogicalDeviceConfiguration=lambda memory_limit: ("logical", memory_limit)))
    assert tensorflow_limit(tf, 6 * GiB) == "tensorflow: memory_limit 6144 MiB on 1 GPU(s)"
    assert configured == [("GPU:0", [("logical", 6144)])]

    def started(gpu: str, configs: list[Any]) -> None:
        raise RuntimeError("Virtual devices cannot be modified after being initialized")

    tf.config.set_logical_device_configuration = started
    assert tensorflow_limit(tf, GiB) == ("tensorflow: could not set memory_limit: "
                                         "Virtual devices cannot be modified after being initialized")


def run_child(tmp_path: Any, code: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(textwrap.dedent(STAND_IN_TORCH))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=60, cwd=str(tmp_path))


def test_the_limit_is_set_as_the_predictor_imports_torch(tmp_path: Any) -> None:
    """Through load_predictor, as a replica loads a Python predictor that imports torch at its top."""
    (tmp_path / "predictor.py").write_text(textwrap.dedent("""\
        import torch

        SEEN_AT_IMPORT = list(torch.calls)  # the limit is there before the predictor's own code runs


        def predict(sample, metadata):
            return SEEN_AT_IMPORT
    """))
    done = run_child(tmp_path, f"""\
        import json
        from cortexd.protocol import ReplicaSpec
        from cortexd.replica.predictors import load_predictor
        spec = ReplicaSpec(api_name="a", kind="python", predictor_path={str(tmp_path / 'predictor.py')!r},
                           model_path=None, signature_key=None, config={{}}, python_path={str(tmp_path)!r},
                           gpus=[0], gpu_share=0.5, gpu_mem=4 * 1024**3)
        print(json.dumps(load_predictor(spec).predict({{}})))
    """)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [[0.25, 0], [0.25, 1]]
    assert "gpu: torch: memory fraction cuda:0 0.2500 of 16384 MiB" in done.stderr


def test_torch_imported_already_gets_the_limit_at_once_and_no_gpu_mem_sets_nothing(tmp_path: Any) -> None:
    done = run_child(tmp_path, """\
        import json, sys, torch
        from cortexd.replica.gpu_limits import limit_frameworks
        assert limit_frameworks(None) == []
        limit_frameworks(8 * 1024**3, ["torch"])
        limit_frameworks(8 * 1024**3, ["torch"])
        print(json.dumps(torch.calls))
    """)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[0.5, 0], [0.5, 1], [0.5, 0], [0.5, 1]]


def test_a_replica_without_a_gpu_installs_no_hook(tmp_path: Any) -> None:
    (tmp_path / "predictor.py").write_text("import torch\n\ndef predict(sample, metadata):\n    return torch.calls\n")
    spec = ReplicaSpec(api_name="a", kind="python", predictor_path=str(tmp_path / "predictor.py"), model_path=None,
                       signature_key=None, config={}, python_path=str(tmp_path), gpus=[], gpu_mem=GiB)
    done = run_child(tmp_path, f"""\
        import json, sys
        from cortexd.protocol import decode_spec
        from cortexd.replica.predictors import load_predictor
        print(json.dumps(load_predictor(decode_spec({json.dumps(json.dumps(spec.__dict__))}.encode())).predict({{}})))
    """)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
