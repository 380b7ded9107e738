"""api_fingerprint: what changes it and what does not."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from cortexd.config import Api, Compute, PredictorSpec, Tracker
from cortexd.daemon.deploy import fingerprint as fpmod
from cortexd.daemon.deploy.fingerprint import api_fingerprint, changed_parts, python_files_digest, tree_digest


def make_project(root: Path) -> Path:
    (root / "predictor.py").write_text("def predict(sample, metadata):\n    return 1\n")
    (root / "lib").mkdir()
    (root / "lib" / "helpers.py").write_text("X = 1\n")
    (root / "model.onnx").write_bytes(b"\x08\x01model")
    return root


def make_api(root: Path, **changes: Any) -> Api:
    api = Api(
        name="iris",
        endpoint="/dep/iris",
        python_path=str(root),
        predictor=PredictorSpec(
            kind="python",
            predictor=str(root / "predictor.py"),
            model=None,
            signature_key=None,
            config={"k": 1},
        ),
        tracker=Tracker(model_type="classification"),
        compute=Compute(),
        metadata={"k": 1},
    )
    return dataclasses.replace(api, **changes)


def fp(api: Api, model: str | None = None) -> str:
    return api_fingerprint(api, model)


def test_stable_and_well_formed(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    a = fp(make_api(root))
    assert a == fp(make_api(root))
    assert [p.split("=")[0] for p in a.split(" ")] == ["config", "predictor", "model", "python"]


@pytest.mark.parametrize(
    "change",
    [
        {"name": "other"},
        {"endpoint": "/elsewhere"},
        {"compute": Compute(min_replicas=3, max_replicas=9, gpu=1, cpu=2.0, mem=1 << 30)},
    ],
)
def test_name_endpoint_compute_do_not_count(tmp_path: Path, change: dict[str, Any]) -> None:
    root = make_project(tmp_path)
    assert fp(make_api(root, **change)) == fp(make_api(root))


@pytest.mark.parametrize(
    "change",
    [
        {"metadata": {"k": 2}},
        {"tracker": None},
        {"tracker": Tracker(model_type="regression")},
        {"python_path": "/elsewhere"},
    ],
)
def test_config_changes_count(tmp_path: Path, change: dict[str, Any]) -> None:
    root = make_project(tmp_path)
    old, new = fp(make_api(root)), fp(make_api(root, **change))
    assert "config" in changed_parts(old, new)


def test_predictor_spec_changes_count(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    api = make_api(root)
    spec = dataclasses.replace(api.predictor, config={"k": 2})
    assert changed_parts(fp(api), fp(dataclasses.replace(api, predictor=spec))) == ["config"]


def test_predictor_file_edit(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    api = make_api(root)
    before = fp(api)
    (root / "predictor.py").write_text("def predict(sample, metadata):\n    return 2\n")
    # predictor.py is also a .py file under python_path
    assert changed_parts(before, fp(api)) == ["predictor", "python"]


def test_python_file_under_python_path(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    api = make_api(root)
    before = fp(api)
    (root / "lib" / "helpers.py").write_text("X = 2\n")
    assert changed_parts(before, fp(api)) == ["python"]
    (root / "lib" / "new_module.py").write_text("")
    assert changed_parts(before, fp(api)) == ["python"]


@pytest.mark.parametrize(
    "rel",
    [
        "notes.txt",
        ".hidden/mod.py",
        "lib/__pycache__/helpers.cpython-311.py",
        "venv/lib/python3.11/site-packages/pkg/mod.py",
        "deps/site-packages/x.py",
        "x.egg-info/y.py",
    ],
)
def test_ignored_files_under_python_path(tmp_path: Path, rel: str) -> None:
    root = make_project(tmp_path)
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    api = make_api(root)
    before = fp(api)
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("changed = True\n")
    assert fp(api) == before


def test_model_file_content(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    api = make_api(root)
    model = str(root / "model.onnx")
    before = fp(api, model)
    assert fp(api, model) == before
    (root / "model.onnx").write_bytes(b"\x08\x02model")
    assert changed_parts(before, fp(api, model)) == ["model"]


def test_model_folder_walk(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    saved = root / "saved_model"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"pb")
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    api = make_api(root)
    before = fp(api, str(saved))
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weightz")
    after_edit = fp(api, str(saved))
    assert changed_parts(before, after_edit) == ["model"]
    # a renamed file changes it too, even with the same content
    os.rename(saved / "saved_model.pb", saved / "saved_model2.pb")
    assert changed_parts(after_edit, fp(api, str(saved))) == ["model"]


def test_no_local_model_differs_from_a_model(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    api = make_api(root)
    assert changed_parts(fp(api, None), fp(api, str(root / "model.onnx"))) == ["model"]


def test_big_file_uses_identity_not_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fpmod, "FULL_HASH_MAX_BYTES", 8)
    big = tmp_path / "big.bin"
    big.write_bytes(b"0123456789abcdef")
    st = big.stat()
    before = tree_digest(str(big))
    # same size, same mtime, same inode: by design not noticed (documented; --force covers it)
    big.write_bytes(b"fedcba9876543210")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert tree_digest(str(big)) == before
    # a new mtime is noticed
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = tree_digest(str(big))
    assert touched != before
    # replacing the file (new inode), as mv/rsync do, is noticed
    tmp = tmp_path / "big.new"
    tmp.write_bytes(b"fedcba9876543210")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    os.replace(tmp, big)
    assert tree_digest(str(big)) != touched


def test_hard_link_does_not_change_big_file_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # snapshots hard-link big files, which changes their ctime and link count only
    monkeypatch.setattr(fpmod, "FULL_HASH_MAX_BYTES", 8)
    big = tmp_path / "big.bin"
    big.write_bytes(b"0123456789abcdef")
    before = tree_digest(str(big))
    os.link(big, tmp_path / "link.bin")
    assert tree_digest(str(big)) == before


def test_missing_predictor_file_is_a_change_not_an_error(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    api = make_api(root)
    before = fp(api)
    (root / "predictor.py").unlink()
    assert "predictor" in changed_parts(before, fp(api))


def test_python_walk_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fpmod, "MAX_PY_FILES", 3)
    for i in range(5):
        (tmp_path / f"m{i}.py").write_text("")
    first = python_files_digest(str(tmp_path))
    # a file past the bound does not count, and the result is still deterministic
    (tmp_path / "m4.py").write_text("changed")
    assert python_files_digest(str(tmp_path)) == first
    (tmp_path / "m0.py").write_text("changed")
    assert python_files_digest(str(tmp_path)) != first


def test_symlinked_folder_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.py").write_text("1")
    os.symlink(tmp_path / "outside", tmp_path / "proj" / "link")
    os.symlink(tmp_path / "proj", tmp_path / "proj" / "loop")
    before = python_files_digest(str(tmp_path / "proj"))
    (tmp_path / "outside" / "x.py").write_text("2")
    assert python_files_digest(str(tmp_path / "proj")) == before


def test_extra_parts(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    api = make_api(root)
    a = api_fingerprint(api, None, extra={"env": "requirements-hash-1"})
    b = api_fingerprint(api, None, extra={"env": "requirements-hash-2"})
    assert changed_parts(a, b) == ["env"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("a=1 b=2", "a=1 b=2", []),
        ("a=1 b=2", "a=1 b=3", ["b"]),
        ("a=1", "a=1 env=2", ["env"]),
        ("opaque", "other", ["fingerprint"]),
        ("", "a=1", ["fingerprint"]),
    ],
)
def test_changed_parts(old: str, new: str, expected: list[str]) -> None:
    assert changed_parts(old, new) == expected


def test_snapshot_store_inside_python_path_does_not_count(tmp_path: Path) -> None:
    from cortexd.daemon.deploy.snapshots import SnapshotStore

    root = make_project(tmp_path)
    api = make_api(root)
    store = SnapshotStore(str(root / "state" / "snapshots"))
    before = fp(api)
    store.take(str(root))  # copies predictor.py and lib/helpers.py under python_path
    assert fp(api) == before
