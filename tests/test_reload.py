"""`cortexd reload` under concurrent load: not one request may fail."""

from __future__ import annotations

import os
import signal
import textwrap
import time

import pytest

from tests.daemon_harness import Client, Daemon, Load, wait_for, write_project
from tests.modelgen import onnx_linear

pytestmark = pytest.mark.slow


def yaml(apis: str) -> str:
    return "- kind: deployment\n  name: r\n" + textwrap.dedent(apis)


ECHO = """\
    import time

    def predict(sample, metadata):
        time.sleep(0.005)
        return {"version": "v1", "tag": metadata.get("tag")}
"""

# cpu: 100m so that old and new replicas of a rolling update fit this 2-core machine together.
BASE = """
- kind: api
  name: edited
  python:
    predictor: edited.py
  compute:
    min_replicas: 2
    cpu: 100m
- kind: api
  name: meta
  python:
    predictor: meta.py
  metadata:
    tag: one
  compute:
    cpu: 100m
- kind: api
  name: model
  onnx:
    model: linear.onnx
  compute:
    cpu: 100m
- kind: api
  name: doomed
  python:
    predictor: meta.py
  metadata:
    tag: doomed
  compute:
    cpu: 100m
- kind: api
  name: scaled
  python:
    predictor: meta.py
  metadata:
    tag: scaled
  compute:
    cpu: 100m
"""


def reload(d: Daemon, *args: str):
    out = d.cli("reload", *args, timeout=180)
    return out


@pytest.fixture
def project(tmp_path):
    root = write_project(str(tmp_path / "p"), yaml(BASE), {"edited.py": ECHO, "meta.py": ECHO})
    onnx_linear(os.path.join(root, "linear.onnx"))
    return root


def test_reload_under_load_changes_only_what_changed_and_fails_nothing(project, tmp_path) -> None:
    d = Daemon(project, str(tmp_path / "d")).start()
    try:
        pids_before = {a: set(d.replica_pids(a)) for a in ("edited", "meta", "model", "doomed", "scaled")}
        paths = ["/r/edited", "/r/meta", "/r/model", "/r/doomed", "/r/scaled"]
        sample = {"/r/model": [1.0, 2.0, 3.0, 4.0]}
        with Load(d.port, paths, lambda path, n: sample.get(path, {}), threads=3) as load:
            # 1. Without touching any Python file: replace a model, remove an API, add one,
            #    and change only the compute of another.
            onnx_linear(os.path.join(project, "linear.onnx"), features=4, classes=5)
            new_yaml = yaml(BASE)
            new_yaml = new_yaml.replace(
                "- kind: api\n  name: doomed\n  python:\n    predictor: meta.py\n  metadata:\n    tag: doomed\n"
                "  compute:\n    cpu: 100m\n", "")
            new_yaml = new_yaml.replace("    tag: scaled\n  compute:\n",
                                        "    tag: scaled\n  compute:\n    min_replicas: 2\n")
            new_yaml += "- kind: api\n  name: added\n  python:\n    predictor: meta.py\n  metadata:\n    tag: added\n" \
                        "  compute:\n    cpu: 100m\n"
            with open(os.path.join(project, "cortex.yaml"), "w") as f:
                f.write(new_yaml)
            started = time.monotonic()
            out = reload(d)
            took = time.monotonic() - started
            assert out.returncode == 0, out.stdout + out.stderr
            text = out.stdout
            assert "model: replaced (rolling update) (model changed)" in text
            assert "doomed: removed" in text
            assert "scaled: scaled in place (compute.min_replicas 1 -> 2" in text
            assert "edited: unchanged" in text and "meta: unchanged" in text
            assert "added: ok: live" in text
            # The compute-only change restarted nothing: its replica is the same process.
            assert pids_before["scaled"] <= set(d.replica_pids("scaled"))
            assert pids_before["edited"] == set(d.replica_pids("edited"))
            wait_for(lambda: len(d.replica_pids("scaled")) == 2, 30, what="the second scaled replica")

            # 2. Edit a predictor and change metadata. Every API whose python_path holds
            #    the edited file is replaced (Python files under its python_path).
            with open(os.path.join(project, "edited.py"), "w") as f:
                f.write(textwrap.dedent(ECHO).replace('"v1"', '"v2"'))
            with open(os.path.join(project, "cortex.yaml"), "w") as f:
                f.write(new_yaml.replace("tag: one", "tag: two"))
            out = reload(d)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "edited: replaced (rolling update) (predictor changed, python changed)" in out.stdout
            assert "meta: replaced (rolling update) (config changed, python changed)" in out.stdout
            # After reload returns, traffic is on the new versions.
            after = time.monotonic()
            wait_for(lambda: any(t > after and p == "/r/edited" for t, p, _, _ in load.results), 10, what="more load")
        assert took < 120
        c = Client(d.port)
        assert c.post("/r/edited", {}).json()["version"] == "v2"
        assert c.post("/r/meta", {}).json()["tag"] == "two"
        assert len(c.post("/r/model", [1.0, 2.0, 3.0, 4.0]).json()["scores"][0]) == 5
        assert c.post("/r/added", {}).json()["tag"] == "added"
        assert c.post("/r/doomed", {}).status == 404

        for path in ("/r/edited", "/r/meta", "/r/model", "/r/scaled"):
            assert set(load.statuses(path)) == {200}, (path, load.statuses(path))
        # The removed API answered until it drained, then 404 — never an error in between.
        doomed = [s for _, p, s, _ in load.results if p == "/r/doomed"]
        assert set(doomed) <= {200, 404} and doomed[0] == 200 and doomed[-1] == 404
        first_404 = doomed.index(404)
        assert set(doomed[first_404:]) == {404}
        # The old version's replicas drain and stop once their last request is answered.
        wait_for(lambda: not (pids_before["edited"] & set(d.replica_pids("edited"))), 15,
                 what="the old replicas to stop")
        # `get` shows the new versions.
        assert d.get("edited")["version"] == 2
        assert "doomed" not in [a["name"] for a in d.get()["apis"]]
    finally:
        assert d.stop() == 0


def test_invalid_yaml_and_failing_new_version_keep_the_old_one_serving(project, tmp_path) -> None:
    d = Daemon(project, str(tmp_path / "d")).start()
    try:
        with Load(d.port, ["/r/edited", "/r/meta"]) as load:
            original = open(os.path.join(project, "cortex.yaml")).read()
            with open(os.path.join(project, "cortex.yaml"), "w") as f:
                broken = original.replace("min_replicas: 2", "min_replicas: -2")
                f.write(broken.replace("name: meta", "name: meta\n  bogus: 1"))
            out = reload(d)
            assert out.returncode == 1
            assert "min_replicas" in out.stdout and "bogus" in out.stdout and "nothing was changed" in out.stdout
            with open(os.path.join(project, "cortex.yaml"), "w") as f:
                f.write(original)
            # A predictor that no longer loads: the new version never becomes ready.
            with open(os.path.join(project, "meta.py"), "w") as f:
                f.write("raise ImportError('broken on purpose')\n")
            out = reload(d)
            assert out.returncode == 1, out.stdout
            assert "meta: failed" in out.stdout and "broken on purpose" in out.stdout
        for path in ("/r/edited", "/r/meta"):
            assert set(load.statuses(path)) == {200}, load.statuses(path)
        view = d.get("meta")
        assert view["status"] == "live" and view["version"] == 1
        assert "still serving version 1" in view["last_error"]
        assert Client(d.port).post("/r/meta", {}).json()["tag"] == "one"
    finally:
        assert d.stop() == 0


def test_replica_of_the_old_version_restarting_runs_the_old_files(project, tmp_path) -> None:
    d = Daemon(project, str(tmp_path / "d")).start()
    try:
        with open(os.path.join(project, "meta.py"), "w") as f:
            f.write(textwrap.dedent(ECHO).replace('"v1"', '"edited-on-disk"'))
        pid = d.replica_pids("meta")[0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: d.get("meta")["ready"] == 1 and pid not in d.replica_pids("meta"), 30, what="replacement")
        assert Client(d.port).post("/r/meta", {}).json()["version"] == "v1"  # not the edit: no reload yet
        out = reload(d)
        assert out.returncode == 0, out.stdout + out.stderr
        assert Client(d.port).post("/r/meta", {}).json()["version"] == "edited-on-disk"
    finally:
        assert d.stop() == 0


def test_sighup_reloads_and_force_replaces_an_unchanged_api(project, tmp_path) -> None:
    d = Daemon(project, str(tmp_path / "d")).start()
    try:
        before = set(d.replica_pids("meta"))
        out = reload(d, "--force", "meta")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "meta: replaced (rolling update) (forced)" in out.stdout
        assert "edited: unchanged" in out.stdout
        # The old replica drains and stops after the switch.
        wait_for(lambda: not (before & set(d.replica_pids("meta"))), 30, what="the old replica to stop")
        with open(os.path.join(project, "cortex.yaml"), "a") as f:
            f.write("- kind: api\n  name: via-hup\n  python:\n    predictor: meta.py\n")
        d.signal(signal.SIGHUP)
        d.wait_status("via-hup", "live", timeout=60)
    finally:
        assert d.stop() == 0
