"""The package's requirements per platform: onnxruntime-gpu only on x86_64 Linux, the [gpu]
extra's one CUDA major, torch kept out of the dependencies (read from pyproject.toml itself, no
install)."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra brings tomli before 3.11
    import tomli as tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LINUX_X86 = {"platform_machine": "x86_64", "sys_platform": "linux"}
LINUX_ARM = {"platform_machine": "aarch64", "sys_platform": "linux"}
MAC_ARM = {"platform_machine": "arm64", "sys_platform": "darwin"}


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        table: dict[str, Any] = tomllib.load(f)["project"]
    return table


def names_for(requirements: list[str], platform: dict[str, str], extra: str = "") -> dict[str, Requirement]:
    out = {}
    for line in requirements:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({**platform, "extra": extra}):
            out[req.name] = req
    return out


@pytest.mark.parametrize("platform, onnxruntime", [(LINUX_X86, "onnxruntime-gpu"), (LINUX_ARM, "onnxruntime"),
                                                   (MAC_ARM, "onnxruntime")])
def test_one_onnxruntime_per_platform(project: dict[str, Any], platform: dict[str, str], onnxruntime: str) -> None:
    names = names_for(project["dependencies"], platform)
    assert {"onnxruntime", "onnxruntime-gpu"} & set(names) == {onnxruntime}
    assert "packaging" in names and "torch" not in names


def test_gpu_extra_pins_one_cuda_major(project: dict[str, Any]) -> None:
    gpu = names_for(project["optional-dependencies"]["gpu"], LINUX_X86, "gpu")
    ort, tf = gpu["onnxruntime-gpu"], gpu["tensorflow"]
    assert ort.extras == {"cuda", "cudnn"} and tf.extras == {"and-cuda"}
    # onnxruntime-gpu 1.27 moved to CUDA 13; TensorFlow ships CUDA 12 builds only
    assert ort.specifier.contains("1.26.0") and not ort.specifier.contains("1.27.0")
    assert tf.specifier.contains("2.21.0") and not tf.specifier.contains("2.17.0")  # cuDNN 9 from 2.18
    assert names_for(project["optional-dependencies"]["gpu"], LINUX_ARM, "gpu") == {}


def test_torch_is_an_extra(project: dict[str, Any]) -> None:
    assert "torch" in names_for(project["optional-dependencies"]["torch"], LINUX_X86, "torch")
