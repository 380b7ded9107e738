"""examples/pytorch-iris through a real daemon: a PyTorch model made at start-up (CPU here)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from tests.daemon_harness import REPO, Client, Daemon

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (cortexd[torch])"),
]

EXAMPLE = os.path.join(REPO, "examples", "pytorch-iris")


def test_pytorch_iris_example_classifies_one_sample_and_a_batch(tmp_path) -> None:
    project = str(tmp_path / "pytorch-iris")
    shutil.copytree(EXAMPLE, project)
    with open(os.path.join(project, "sample.json")) as f:
        sample = json.load(f)
    d = Daemon(project, str(tmp_path / "d")).start(timeout=120)
    try:
        c = Client(d.port)
        answer = c.post("/iris/pytorch", sample)
        assert (answer.status, answer.json()) == (200, "setosa")
        virginica = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1}
        batch = c.post("/iris/pytorch", [sample, virginica])
        assert (batch.status, batch.json()) == (200, ["setosa", "virginica"])
        assert c.post("/iris/pytorch", {"sepal_length": 1}).status == 500  # a missing feature: the predictor's error
        logs = d.cli("logs", "pytorch").stdout
        assert "pytorch-iris: trained on cpu (cpu)" in logs  # no GPU here
        accuracy = float(logs.split("training accuracy ")[1].split()[0])
        assert accuracy >= 0.9
    finally:
        assert d.stop() == 0
