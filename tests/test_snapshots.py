"""SnapshotStore: immutable versions of a project folder."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from cortexd.daemon.deploy import snapshots as snapmod
from cortexd.daemon.deploy.snapshots import (
    CACHEDIR_TAG,
    OBJECTS_DIR,
    Snapshot,
    SnapshotError,
    SnapshotStore,
    is_excluded,
    is_tagged_cache_dir,
    share_file,
)

BIG = 2 * 1024 * 1024


def make_project(root: Path) -> Path:
    root.mkdir()
    (root / "cortex.yaml").write_text("- kind: deployment\n  name: d\n")
    (root / "predictor.py").write_text("def predict(s, m):\n    return 1\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "util.py").write_text("X = 1\n")
    (root / "model.onnx").write_bytes(b"m" * BIG)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".env").write_text("SECRET=1")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"pyc")
    (root / "stale.pyc").write_bytes(b"pyc")
    return root


def listing(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(str(tmp_path / "state" / "snapshots"))


def test_copies_project_without_hidden_and_bytecode(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    snap = store.take(str(proj))
    assert snap.path == os.path.join(store.root, snap.version_id)
    assert listing(snap.path) == ["cortex.yaml", "model.onnx", "pkg", "pkg/util.py", "predictor.py"]
    assert (Path(snap.path) / "predictor.py").read_text() == (proj / "predictor.py").read_text()
    assert (snap.files_copied, snap.files_shared, snap.bytes_shared) == (3, 1, BIG)
    assert store.versions() == [snap.version_id]


def test_large_file_is_hard_linked_on_the_same_filesystem(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    snap = store.take(str(proj))
    src, dst = (proj / "model.onnx").stat(), (Path(snap.path) / "model.onnx").stat()
    if src.st_ino != dst.st_ino:
        pytest.skip("filesystem reflinks (copy-on-write): no hard link expected")
    assert src.st_dev == dst.st_dev
    # small files are private copies
    assert (proj / "predictor.py").stat().st_ino != (Path(snap.path) / "predictor.py").stat().st_ino


def test_snapshot_unaffected_by_later_edits(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    snap = store.take(str(proj))
    (proj / "predictor.py").write_text("def predict(s, m):\n    return 2\n")
    (proj / "pkg" / "util.py").unlink()
    (proj / "new.py").write_text("")
    # replacing the model by rename (the supported way) leaves the snapshot's copy alone
    (proj / "model.new").write_bytes(b"n" * BIG)
    os.replace(proj / "model.new", proj / "model.onnx")
    assert (Path(snap.path) / "predictor.py").read_text().endswith("return 1\n")
    assert (Path(snap.path) / "pkg" / "util.py").exists()
    assert not (Path(snap.path) / "new.py").exists()
    assert (Path(snap.path) / "model.onnx").read_bytes()[:1] == b"m"
    second = store.take(str(proj))
    assert (Path(second.path) / "model.onnx").read_bytes()[:1] == b"n"
    assert second.version_id != snap.version_id


def test_writing_into_a_small_file_of_the_snapshot_leaves_the_original(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    os.chmod(proj / "predictor.py", 0o444)
    snap = store.take(str(proj))
    target = Path(snap.path) / "predictor.py"
    assert os.stat(target).st_mode & stat.S_IWUSR  # the working directory is writable
    target.write_text("edited by a replica")
    assert (proj / "predictor.py").read_text().endswith("return 1\n")


def test_cross_filesystem_fallback_copies_once_per_file_version(
    tmp_path: Path, store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What ProtectSystem= does to /etc vs /var/lib: link() across mounts fails with EXDEV.
    proj = make_project(tmp_path / "proj")
    real_link = os.link

    def link(src: str, dst: str) -> None:
        if str(src).startswith(str(proj)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(snapmod, "_reflink", lambda s, d: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no")))
    a = store.take(str(proj))
    b = store.take(str(proj))
    ino_a = (Path(a.path) / "model.onnx").stat().st_ino
    assert ino_a == (Path(b.path) / "model.onnx").stat().st_ino  # one copy shared by both versions
    assert ino_a != (proj / "model.onnx").stat().st_ino
    assert (Path(a.path) / "model.onnx").read_bytes() == (proj / "model.onnx").read_bytes()
    # our own copy is read-only, so no replica writes into a model other versions share
    assert not os.stat(Path(a.path) / "model.onnx").st_mode & 0o222


def test_share_file_falls_back_to_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"x" * 10)

    def refuse(_s: str, _d: str) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(snapmod, "_reflink", refuse)
    monkeypatch.setattr(os, "link", refuse)
    assert share_file(str(src), str(tmp_path / "b")) == "copy"
    assert (tmp_path / "b").read_bytes() == b"x" * 10


def test_symlinks(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    outside = tmp_path / "data.bin"
    outside.write_bytes(b"d")
    os.symlink("pkg/util.py", proj / "rel_inside")
    os.symlink(str(proj / "predictor.py"), proj / "abs_inside")
    os.symlink("../data.bin", proj / "rel_outside")
    os.symlink("does-not-exist", proj / "dangling")
    os.symlink("pkg", proj / "dir_link")
    snap = store.take(str(proj))
    s = Path(snap.path)
    assert os.readlink(s / "rel_inside") == "pkg/util.py"
    assert os.readlink(s / "abs_inside") == "predictor.py"  # now resolves inside the snapshot
    assert os.readlink(s / "rel_outside") == str(outside)   # absolute: still the same file
    assert os.readlink(s / "dangling") == "does-not-exist"
    assert os.readlink(s / "dir_link") == "pkg"
    assert (s / "rel_inside").read_text() == "X = 1\n"


def test_store_inside_the_project_is_not_copied_into_itself(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    store = SnapshotStore(str(proj / "state" / "snapshots"))
    assert is_tagged_cache_dir(store.root)
    first = store.take(str(proj))
    second = store.take(str(proj))
    # state/ is copied (an empty folder), the tagged store inside it is not
    assert os.listdir(Path(second.path) / "state") == []
    assert first.files_copied == second.files_copied


def test_tagged_cache_folders_are_skipped(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    (proj / "cache").mkdir()
    (proj / "cache" / CACHEDIR_TAG).write_bytes(b"Signature: 8a477f597d28d172789f06886806bc55\n")
    (proj / "cache" / "big.bin").write_bytes(b"x")
    (proj / "fake").mkdir()
    (proj / "fake" / CACHEDIR_TAG).write_bytes(b"not the signature")
    snap = store.take(str(proj))
    assert not (Path(snap.path) / "cache").exists()
    assert (Path(snap.path) / "fake" / CACHEDIR_TAG).exists()


def test_gc_removes_every_version_not_kept(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    old = store.take(str(proj))
    new = store.take(str(proj))
    assert store.gc(keep=[old.version_id, new.version_id]) == []
    assert store.gc(keep=[new.version_id]) == [old.version_id]
    assert not os.path.exists(old.path)
    assert os.path.exists(new.path)
    with pytest.raises(KeyError):
        store.path(old.version_id)
    assert store.gc(keep=[]) == [new.version_id]
    assert store.versions() == []


def test_gc_removes_unused_objects_and_leftovers(
    tmp_path: Path, store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = make_project(tmp_path / "proj")
    monkeypatch.setattr(snapmod, "share_file", lambda s, d: (shutil.copy2(s, d), "copy")[1])
    snap = store.take(str(proj))
    objects = os.path.join(store.root, OBJECTS_DIR)
    assert len(os.listdir(objects)) == 1
    os.mkdir(os.path.join(store.root, ".tmp-crashed"))
    open(os.path.join(objects, ".tmp-crashed"), "w").close()
    store.gc(keep=[snap.version_id])
    assert len(os.listdir(objects)) == 1  # still used by the kept version
    assert not os.path.exists(os.path.join(store.root, ".tmp-crashed"))
    store.gc(keep=[])
    assert os.listdir(objects) == []


def test_gc_removes_read_only_folders(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    snap = store.take(str(proj))
    os.chmod(os.path.join(snap.path, "pkg"), 0o500)  # a replica locked its working dir
    assert store.gc(keep=[]) == [snap.version_id]
    assert not os.path.exists(snap.path)


def test_versions_from_an_earlier_run_are_collectable(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    first = SnapshotStore(str(tmp_path / "snaps"))
    snap = first.take(str(proj))
    second = SnapshotStore(str(tmp_path / "snaps"))
    assert second.versions() == [snap.version_id]
    assert second.gc(keep=[]) == [snap.version_id]


def test_failed_take_leaves_nothing(tmp_path: Path, store: SnapshotStore) -> None:
    proj = make_project(tmp_path / "proj")
    small = SnapshotStore(str(tmp_path / "small"), max_entries=3)
    with pytest.raises(SnapshotError, match="more than 3 files"):
        small.take(str(proj))
    assert small.versions() == []
    assert sorted(os.listdir(small.root)) == [OBJECTS_DIR, CACHEDIR_TAG]
    with pytest.raises(SnapshotError, match="not a folder"):
        store.take(str(tmp_path / "absent"))


def test_unreadable_file_is_a_located_error(
    tmp_path: Path, store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = make_project(tmp_path / "proj")
    real_copy2 = shutil.copy2

    def copy2(src: str, dst: str) -> object:
        if str(src).endswith("predictor.py"):  # what chmod 000 does (the tests may run as root)
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real_copy2(src, dst)

    monkeypatch.setattr(shutil, "copy2", copy2)
    with pytest.raises(SnapshotError, match=r"predictor\.py: cannot copy: Permission denied"):
        store.take(str(proj))
    assert store.versions() == []
    assert sorted(os.listdir(store.root)) == [OBJECTS_DIR, CACHEDIR_TAG]


def test_map_path(tmp_path: Path) -> None:
    snap = Snapshot("v1", "/state/snapshots/v1")
    proj = tmp_path / "proj"
    proj.mkdir()
    assert snap.map_path(str(proj), str(proj / "pred.py")) == "/state/snapshots/v1/pred.py"
    assert snap.map_path(str(proj), str(proj)) == "/state/snapshots/v1"
    assert snap.map_path(str(proj), "/opt/models/m.onnx") == "/opt/models/m.onnx"
    assert snap.map_path(str(proj), str(tmp_path / "projx" / "a.py")) == str(tmp_path / "projx" / "a.py")


@pytest.mark.parametrize(
    ("name", "is_dir", "excluded"),
    [
        (".git", True, True),
        (".env", False, True),
        ("__pycache__", True, True),
        ("m.pyc", False, True),
        ("m.pyo", False, True),
        ("m.py", False, False),
        ("__pycache__", False, False),
        ("model", True, False),
    ],
)
def test_is_excluded(name: str, is_dir: bool, excluded: bool) -> None:
    assert is_excluded(name, is_dir) is excluded
