"""`cortexd gpus`' framework lines: the probe's child process, its parsing and its wording."""

from __future__ import annotations

import sys

import pytest

from cortexd import gpu_probe
from cortexd.gpu_probe import describe, parse_probe_output, probe_framework, probe_frameworks


@pytest.mark.parametrize(
    "report, line",
    [
        ({"framework": "tensorflow", "distribution": "tensorflow", "version": "2.21.0", "cuda": "12.5.1", "gpus": 2,
          "usable": True}, "tensorflow 2.21.0: CUDA 12.5.1, sees 2 GPUs"),
        ({"framework": "torch", "distribution": "torch", "version": "2.11.0+cu130", "cuda": "13.0", "gpus": 1,
          "usable": True}, "torch 2.11.0+cu130: CUDA 13.0, sees 1 GPU"),
        ({"framework": "torch", "distribution": "torch", "version": "2.13.0+cpu", "cuda": None, "gpus": 0,
          "usable": False}, "torch 2.13.0+cpu: CPU only (built without CUDA)"),
        ({"framework": "tensorflow", "distribution": "tensorflow-cpu", "version": "2.21.0", "cuda": None, "gpus": 0,
          "usable": False}, "tensorflow-cpu 2.21.0: CPU only (built without CUDA)"),
        ({"framework": "onnxruntime", "distribution": "onnxruntime-gpu", "version": "1.26.0", "cuda": "12.8", "gpus": 0,
          "usable": False}, "onnxruntime-gpu 1.26.0: CUDA 12.8 build, but sees no GPU"),
        ({"framework": "onnxruntime", "distribution": "onnxruntime-gpu", "version": "1.26.0", "cuda": "12.8", "gpus": 2,
          "usable": False, "detail": "preloading CUDA libraries failed: x"},
         "onnxruntime-gpu 1.26.0: CUDA 12.8 build, but sees no GPU; preloading CUDA libraries failed: x"),
        ({"framework": "tensorflow", "installed": True, "usable": False,
          "error": "the probe did not finish within 120s"},
         "tensorflow: cannot tell (the probe did not finish within 120s)"),
    ],
)
def test_describe(report: dict[str, object], line: str) -> None:
    assert describe(report) == line


def test_parse_takes_the_report_after_any_chatter() -> None:
    out = 'Failed to load libcublas.so.13\n{"framework": "onnxruntime", "installed": true, "version": "1.2"}\n'
    assert parse_probe_output("onnxruntime", 0, out, "")["version"] == "1.2"


@pytest.mark.parametrize(
    "code, out, err, error",
    [
        (-11, "", "Fatal Python error: Segmentation fault\n",
         "the probe failed (killed by signal 11): Fatal Python error"),
        (1, '{"framework": "torch"}', "", "the probe failed (exit 1)"),  # another framework's report
        (1, "{not json", "ImportError: x", "the probe failed (exit 1): ImportError: x"),
    ],
)
def test_parse_reports_a_failed_child(code: int, out: str, err: str, error: str) -> None:
    report = parse_probe_output("tensorflow", code, out, err)
    assert report["usable"] is False and report["error"].startswith(error)


def test_probe_in_a_child_of_a_missing_interpreter_is_a_report() -> None:
    report = probe_framework("torch", python="/nonexistent/python")
    assert report["installed"] is False and "cannot run /nonexistent/python" in report["error"]


def test_unknown_framework_in_the_child() -> None:
    assert gpu_probe.probe_here("jax") == {
        "framework": "jax", "installed": False,
        "error": "unknown framework 'jax'; known: onnxruntime, tensorflow, torch"}


@pytest.mark.slow
def test_probes_of_what_is_installed_here() -> None:
    """Every framework installed here reports; none imports in this (the daemon's) process."""
    before = set(sys.modules)
    reports = probe_frameworks()
    assert not {"tensorflow", "torch", "onnxruntime"} & (set(sys.modules) - before)
    by_name = {r["framework"]: r for r in reports}
    for name in gpu_probe.FRAMEWORKS:
        installed = __import__("importlib.util").util.find_spec(name) is not None
        assert (name in by_name) == installed, name
        if installed:
            report = by_name[name]
            assert report.get("version"), report
            assert "error" not in report, report
            line = describe(report)
            assert line.startswith(f"{report['distribution']} {report['version']}: "), line
            # no GPU in CI: nothing claims to see one
            assert report["usable"] is False or report["gpus"], report
