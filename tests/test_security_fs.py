"""Runtime files only in folders cortexd made and owns (cortexd/safefs.py, cortexd/paths.py).

Pure decisions as tables, then the functions on real folders: umask 000, planted symlinks
and hard links, another user's folder (a second local user, created when running as root).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from cortexd import paths, safefs
from cortexd.safefs import Entry, UnsafePath

ME = os.geteuid()
OTHER = ME + 4242
DIR = stat.S_IFDIR
LNK = stat.S_IFLNK
REG = stat.S_IFREG


# ---------------------------------------------------------------- pure tables


@pytest.mark.parametrize(
    "uid, mode, problem",
    [
        (ME, DIR | 0o750, None),
        (ME, DIR | 0o700, None),
        (ME, DIR | 0o755, None),  # readable, not writable: accepted (then narrowed by ensure_dir)
        (ME, DIR | 0o770, "writable by its group (mode 0770)"),
        (ME, DIR | 0o777, "writable by everyone (mode 0777)"),
        (ME, DIR | 0o1777, "writable by everyone"),  # sticky does not make our own folder private
        (OTHER, DIR | 0o700, "belongs to uid"),
        (ME, REG | 0o600, "is not a folder"),
        (ME, LNK | 0o777, "is a symbolic link"),
    ],
)
def test_own_dir_problem(uid: int, mode: int, problem: str | None) -> None:
    got = safefs.own_dir_problem(Entry("/x/cortexd", uid, mode), ME)
    assert (got is None) if problem is None else (got is not None and problem in got and "/x/cortexd" in got)


@pytest.mark.parametrize(
    "uid, mode, problem",
    [
        (0, DIR | 0o755, None),
        (ME, DIR | 0o755, None),
        (0, DIR | 0o1777, None),  # /tmp
        (0, DIR | 0o775, None),  # Ubuntu's /var/log (root:syslog)
        (0, DIR | 0o777, "writable by everyone and not sticky"),
        (OTHER, DIR | 0o755, "belongs to uid"),
        (OTHER, DIR | 0o1777, "belongs to uid"),
    ],
)
def test_parent_dir_problem(uid: int, mode: int, problem: str | None) -> None:
    got = safefs.parent_dir_problem(Entry("/x", uid, mode), ME)
    assert (got is None) if problem is None else (got is not None and problem in got)


@pytest.mark.parametrize(
    "uid, mode, refused",
    [(0, LNK | 0o777, False), (ME, LNK | 0o777, False), (OTHER, LNK | 0o777, True), (OTHER, DIR | 0o755, False)],
)
def test_link_problem(uid: int, mode: int, refused: bool) -> None:
    got = safefs.link_problem(Entry("/tmp/cortexd", uid, mode), ME)
    assert (got is not None) == refused
    if refused:
        assert got is not None and "symbolic link" in got and "rm /tmp/cortexd" in got


@pytest.mark.parametrize(
    "mode, wanted, result",
    [(0o755, 0o750, 0o750), (0o700, 0o750, 0o700), (0o2775, 0o750, 0o2750), (0o1777, 0o700, 0o700)],
)
def test_tightened_mode(mode: int, wanted: int, result: int) -> None:
    assert safefs.tightened_mode(DIR | mode, wanted) == result


@pytest.mark.parametrize(
    "runtime_dir, under_runtime",
    [("/run/cortexd", True), ("/run/user/1000/cortexd", False), ("/tmp/pytest-of-root/pytest-1/test_x0/run", False)],
)
def test_socket_dir_parent(runtime_dir: str, under_runtime: bool) -> None:
    assert (paths.socket_dir_parent(runtime_dir) == runtime_dir) == under_runtime
    parent = paths.socket_dir_parent(runtime_dir)
    # Room for the longest replica id: a 63-character API name, "-", a counter, ".sock".
    longest = os.path.join(parent, paths.SOCKET_DIR_PREFIX + "x" * 8, "a" * 63 + "-999999.sock")
    assert len(longest.encode()) <= 107


def test_non_root_default_runtime_dir_is_never_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in ("CORTEXD_RUNTIME_DIR", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "STATE_DIRECTORY", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(paths, "_is_root", lambda: False)
    assert paths.default_runtime_dir() == str(tmp_path / ".local" / "state" / "cortexd" / "run")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert paths.default_runtime_dir() == "/run/user/1000/cortexd"


# ---------------------------------------------------------------- folders on disk


def test_a_non_root_users_default_folders_are_made_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """What `cortexd serve` does with no folder options as a user without a login session
    (tests/test_security_daemon.py runs a real daemon as a second user where it can)."""
    for var in ("CORTEXD_RUNTIME_DIR", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "STATE_DIRECTORY",
                "XDG_STATE_HOME", "LOGS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(paths, "_is_root", lambda: False)
    old = os.umask(0o022)
    try:
        dirs = paths.prepare_daemon_dirs(
            paths.default_state_dir(), paths.default_runtime_dir(), paths.default_log_dir()
        )
    finally:
        os.umask(old)
    for folder in (dirs.state, dirs.runtime, dirs.log):
        assert folder.startswith(str(tmp_path)) and mode_of(folder) == 0o750


@pytest.fixture()
def umask000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Any) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_ensure_dir_creates_exact_modes_whatever_the_umask(tmp_path: Any, umask000: None) -> None:
    target = tmp_path / "a" / "b" / "state"
    real = safefs.ensure_dir(str(target), 0o750)
    assert real == str(target)
    assert mode_of(target) == 0o750
    assert mode_of(tmp_path / "a") == safefs.PARENT_MODE and mode_of(tmp_path / "a" / "b") == safefs.PARENT_MODE


def test_ensure_dir_narrows_readable_folder_and_refuses_writable_one(tmp_path: Any) -> None:
    folder = tmp_path / "log"
    folder.mkdir()
    folder.chmod(0o755)
    safefs.ensure_dir(str(folder), 0o750)
    assert mode_of(folder) == 0o750
    folder.chmod(0o777)
    with pytest.raises(UnsafePath, match=rf"{folder} is writable by everyone \(mode 0777\).*chmod go-w {folder}"):
        safefs.ensure_dir(str(folder), 0o750)


def test_ensure_dir_refuses_a_folder_under_a_world_writable_non_sticky_one(tmp_path: Any) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match=r"writable by everyone and not sticky"):
        safefs.ensure_dir(str(shared / "cortexd"), 0o750)


def test_ensure_dir_resolves_own_symlinks(tmp_path: Any) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    (tmp_path / "link").symlink_to(real)
    assert safefs.ensure_dir(str(tmp_path / "link"), 0o750) == str(real)


def test_files_are_never_opened_through_a_symlink_or_a_hard_link(tmp_path: Any, umask000: None) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "api.log").symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"):
        safefs.open_append(str(tmp_path / "api.log"))
    os.link(victim, tmp_path / "hard.log")
    with pytest.raises(UnsafePath, match="2 hard links"):
        safefs.open_append(str(tmp_path / "hard.log"))
    assert victim.read_text() == "precious\n"
    with pytest.raises(FileExistsError):
        safefs.create_new(str(victim))
    with safefs.open_append(str(tmp_path / "own.log")) as f:
        f.write("line\n")
    assert mode_of(tmp_path / "own.log") == 0o640
    (tmp_path / "old.log").write_text("x")
    (tmp_path / "old.log").chmod(0o666)
    safefs.open_append(str(tmp_path / "old.log")).close()
    assert mode_of(tmp_path / "old.log") == 0o640  # a file from an older cortexd is made private too


def test_replica_socket_folder_is_new_private_and_unpredictable(tmp_path: Any, umask000: None) -> None:
    runtime = safefs.ensure_dir(str(tmp_path / "run"), 0o750)
    first = paths.new_replica_socket_dir(runtime)
    second = paths.new_replica_socket_dir(runtime)
    try:
        assert first.path != second.path
        for folder in (first.path, second.path):
            assert mode_of(folder) == 0o700 and os.lstat(folder).st_uid == ME
            assert os.path.dirname(folder) in (runtime, "/tmp")
    finally:
        first.remove()
        second.remove()


def test_only_abandoned_socket_folders_are_removed(tmp_path: Any) -> None:
    """A daemon killed with SIGKILL leaves its folder; the next start removes it, and never
    the folder of a daemon that is running (a child process holds this one's lock)."""
    runtime = safefs.ensure_dir(str(tmp_path / "run"), 0o750)
    code = (
        "import sys, time; from cortexd import paths; d = paths.new_replica_socket_dir(sys.argv[1]); "
        "print(d.path, flush=True); time.sleep(60)"
    )
    holders = [
        subprocess.Popen([sys.executable, "-c", code, runtime], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        folders = [h.stdout.readline().strip() for h in holders]  # type: ignore[union-attr]
        holders[0].kill()
        holders[0].wait()
        mine = paths.new_replica_socket_dir(runtime)
        assert not os.path.exists(folders[0])  # its daemon is gone
        assert os.path.isdir(folders[1])  # its daemon runs
        mine.remove()
    finally:
        for h in holders:
            h.kill()
            h.wait()
        parent = paths.socket_dir_parent(runtime)
        prefix = paths.SOCKET_DIR_PREFIX if parent == runtime else paths.TMP_SOCKET_DIR_PREFIX
        paths.remove_stale_socket_dirs(parent, prefix)
    assert not os.path.exists(folders[1])  # its daemon is gone now too


# ---------------------------------------------------------------- another local user


OTHER_USER = "cortexd-sectest"


def other_user() -> tuple[int, int]:
    """(uid, gid) of a second local user, created when needed; skips when not root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second local user")
    import pwd

    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(OTHER_USER)
    return entry.pw_uid, entry.pw_gid


def sticky_shared(tmp_path: Any) -> Any:
    """A folder like /tmp: everyone may create entries in it, nobody may touch others'."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    os.chmod(tmp_path, 0o755)
    return shared


def test_another_users_folder_is_refused_with_the_fix(tmp_path: Any) -> None:
    uid, gid = other_user()
    shared = sticky_shared(tmp_path)
    planted = shared / "run"
    planted.mkdir(mode=0o700)
    os.chown(planted, uid, gid)
    with pytest.raises(UnsafePath) as info:
        safefs.ensure_dir(str(planted), 0o750)
    message = str(info.value)
    assert str(planted) in message and OTHER_USER in message and f"rm -r {planted}" in message


def test_another_users_symlink_is_refused(tmp_path: Any) -> None:
    uid, gid = other_user()
    shared = sticky_shared(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o750)  # root's: the link would make cortexd write where the attacker chose
    link = shared / "log"
    link.symlink_to(target)
    os.lchown(link, uid, gid)
    with pytest.raises(UnsafePath, match=rf"{link} is a symbolic link made by {OTHER_USER}"):
        safefs.ensure_dir(str(link), 0o750)


def test_another_users_file_in_our_folder_is_not_appended_to(tmp_path: Any) -> None:
    uid, gid = other_user()
    planted = tmp_path / "api.log"
    planted.write_text("")
    os.chown(planted, uid, gid)
    with pytest.raises(UnsafePath, match=f"belongs to {OTHER_USER}"):
        safefs.open_append(str(planted))
