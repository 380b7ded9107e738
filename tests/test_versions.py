"""Versions map every project path into their snapshot once (daemon/deploy/versions.py)."""

from __future__ import annotations

import os

from cortexd.config import load_config_text
from cortexd.daemon.deploy.versions import VersionFactory


def test_paths_point_into_the_snapshot_even_with_the_state_dir_inside_the_project(tmp_path) -> None:
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "predictor.py").write_text("def predict(sample, metadata):\n    return 1\n")
    (project / "model.onnx").write_bytes(b"model")
    text = """\
- kind: deployment
  name: d
- kind: api
  name: a
  onnx:
    model: model.onnx
    predictor: predictor.py
    python_path: lib
"""
    config = load_config_text(text, str(project / "cortex.yaml"))
    api = config.apis[0]
    # The state dir (hidden, so not copied into snapshots) lives inside the project.
    factory = VersionFactory(str(project / ".cortexd" / "state"))
    snapshot = factory.snapshot(str(project))
    model = factory.fetch_model(api, str(project), lambda m: None)
    version = factory.make(api, snapshot, str(project), model, "fp", None, None)

    assert version.workdir == snapshot.path
    for path, name in ((version.predictor_path, "predictor.py"), (version.model_path, "model.onnx"),
                       (version.python_path, "lib")):
        assert path == os.path.join(snapshot.path, name)
        assert os.path.exists(path)
    # Editing the project afterwards does not reach the version.
    (project / "predictor.py").write_text("broken(")
    assert open(version.predictor_path).read().startswith("def predict")
    assert factory.make(api, snapshot, str(project), model, "fp", None, None).number == 2
