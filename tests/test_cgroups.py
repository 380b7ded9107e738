"""Per-replica cgroup v2 memory limits against a fake cgroup tree in a temporary folder.

The fake tree holds the interface files as regular files, so these tests check what is read
and written, not what a kernel does with them. The last test runs a daemon in a real cgroup
v2 subtree where the machine has one (root, a writable cgroup2 root with the memory
controller) and skips elsewhere (this sandbox binds memory to cgroup v1).
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

import pytest

from cortexd.config import Api, Compute, PredictorSpec
from cortexd.daemon.fleet import cgroups
from cortexd.daemon.fleet.cgroups import (
    Delegation,
    KernelOom,
    ReplicaCgroups,
    check_delegation,
    create_replica_cgroup,
    open_replica_cgroups,
    own_cgroup,
    parse_keyed,
    replica_cgroup_name,
    take_over,
)
from cortexd.daemon.fleet.spawner import ProcessSpawner
from cortexd.daemon.fleet.supervisor import (
    ReplicaExited,
    ReplicaOverMemory,
    ReplicaReady,
    Supervisor,
    Version,
)
from tests.test_supervisor import Clock, FakeRouter, FakeSpawner

PID = 4242
SERVICE = "/system.slice/cortexd.service"


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def fake_tree(tmp_path: Any, own: str = SERVICE, controllers: str = "cpu io memory pids",
              procs: str = f"{PID}\n", subtree: str = "") -> str:
    """A cgroup2 root with the daemon's own cgroup `own` under it."""
    root = str(tmp_path / "cgroup")
    write(os.path.join(root, "cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n")
    write(os.path.join(root, "cgroup.subtree_control"), "cpu io memory pids\n")
    d = os.path.join(root, own.lstrip("/"))
    write(os.path.join(d, "cgroup.controllers"), controllers + "\n")
    write(os.path.join(d, "cgroup.procs"), procs)
    write(os.path.join(d, "cgroup.subtree_control"), subtree)
    return root


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ("0::/system.slice/cortexd.service\n", "/system.slice/cortexd.service"),
    ("12:memory:/x\n1:name=systemd:/x\n0::/user.slice/session-1.scope\n", "/user.slice/session-1.scope"),
    ("0::/\n", "/"),
    ("4:memory:/process_api/abc\n1:cpu:/\n", None),  # cgroup v1 only
    ("0::/gone (deleted)\n", "/gone"),
    ("", None),
])
def test_own_cgroup(text: str, expected: str | None) -> None:
    assert own_cgroup(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
     {"low": 0, "high": 0, "max": 12, "oom": 1, "oom_kill": 1, "oom_group_kill": 0}),
    ("", {}),
    ("garbage\noom_kill x\noom_kill 3\n", {"oom_kill": 3}),
])
def test_parse_keyed(text: str, expected: dict[str, int]) -> None:
    assert parse_keyed(text) == expected


@pytest.mark.parametrize("rid, name", [("iris-3", "replica-iris-3"), ("a b/c", "replica-a_b_c")])
def test_replica_cgroup_name(rid: str, name: str) -> None:
    assert replica_cgroup_name(rid) == name


# ---------------------------------------------------------------- detection


def test_delegated_cgroup_holding_only_the_daemon_is_usable(tmp_path: Any) -> None:
    root = fake_tree(tmp_path)
    found = check_delegation(root, f"0::{SERVICE}\n", PID)
    assert found == Delegation(os.path.join(root, SERVICE.lstrip("/")), found.reason)
    assert "memory.max per replica" in found.reason


@pytest.mark.parametrize("change, proc, reason", [
    ("no-cgroup2", f"0::{SERVICE}\n", "not a cgroup v2 mount"),
    (None, "4:memory:/x\n", "no 0:: line"),
    (None, "0::/\n", "root cgroup"),
    ("no-memory", f"0::{SERVICE}\n", "memory controller is not delegated (controllers: cpu pids)"),
    ("others", f"0::{SERVICE}\n", "also holds other processes (1, 77)"),
    ("read-only", f"0::{SERVICE}\n", "cgroup.subtree_control is not writable (run under systemd with Delegate=yes)"),
    (None, "0::/elsewhere\n", "cgroup.controllers cannot be read"),
])
def test_not_delegated(tmp_path: Any, change: str | None, proc: str, reason: str) -> None:
    root = fake_tree(
        tmp_path,
        controllers="cpu pids" if change == "no-memory" else "cpu io memory pids",
        procs=f"1\n{PID}\n77\n" if change == "others" else f"{PID}\n",
    )
    if change == "no-cgroup2":
        os.unlink(os.path.join(root, "cgroup.controllers"))
    writable = (lambda p: not p.endswith("cgroup.subtree_control")) if change == "read-only" else (lambda p: True)
    found = check_delegation(root, proc, PID, can_write=writable)
    assert found.path is None
    assert reason in found.reason


def test_restart_inside_its_own_leaf_manages_the_parent_again(tmp_path: Any) -> None:
    root = fake_tree(tmp_path, procs="", subtree="memory\n")
    leaf = os.path.join(root, SERVICE.lstrip("/"), "daemon")
    write(os.path.join(leaf, "cgroup.controllers"), "memory\n")
    write(os.path.join(leaf, "cgroup.procs"), f"{PID}\n")
    found = check_delegation(root, f"0::{SERVICE}/daemon\n", PID)
    assert found.path == os.path.join(root, SERVICE.lstrip("/"))


# ---------------------------------------------------------------- writes


def test_take_over_moves_the_daemon_to_a_leaf_then_enables_memory(tmp_path: Any) -> None:
    root = fake_tree(tmp_path)
    own = os.path.join(root, SERVICE.lstrip("/"))
    take_over(own, PID)
    assert read(os.path.join(own, "daemon", "cgroup.procs")) == str(PID)
    assert read(os.path.join(own, "cgroup.subtree_control")) == "+memory"


def test_take_over_leaves_memory_alone_when_already_enabled(tmp_path: Any) -> None:
    root = fake_tree(tmp_path, subtree="memory pids\n")
    own = os.path.join(root, SERVICE.lstrip("/"))
    take_over(own, PID)
    assert read(os.path.join(own, "cgroup.subtree_control")) == "memory pids\n"


@pytest.mark.parametrize("limit, memory_max", [(512 << 20, str(512 << 20)), (None, "max")])
def test_replica_cgroup_gets_memory_max_and_no_swap_where_offered(
    tmp_path: Any, limit: int | None, memory_max: str
) -> None:
    own = str(tmp_path / "own")
    # A kernel with swap accounting and oom.group creates these files with the cgroup.
    write(os.path.join(own, "replica-iris-1", "memory.swap.max"), "max\n")
    write(os.path.join(own, "replica-iris-1", "memory.oom.group"), "0\n")
    cg = create_replica_cgroup(own, "iris-1", limit)
    assert cg == os.path.join(own, "replica-iris-1")
    assert read(os.path.join(cg, "memory.max")) == memory_max
    assert read(os.path.join(cg, "memory.swap.max")) == "0"
    assert read(os.path.join(cg, "memory.oom.group")) == "1"


def test_replica_cgroup_without_swap_accounting_writes_no_swap_file(tmp_path: Any) -> None:
    cg = create_replica_cgroup(str(tmp_path), "iris-2", 1 << 30)
    assert sorted(os.listdir(cg)) == ["memory.max"]


def test_attach_then_finish_without_oom_removes_the_cgroup(tmp_path: Any) -> None:
    groups = ReplicaCgroups(str(tmp_path))
    cg = groups.attach("iris-1", 999, 256 << 20)
    assert read(os.path.join(cg, "cgroup.procs")) == "999"
    write(os.path.join(cg, "memory.events"), "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    assert groups.finish("iris-1") is None
    assert not os.path.exists(cg)
    assert groups.finish("iris-1") is None  # unknown / already finished


def test_finish_reports_a_kernel_oom_kill_with_the_peak(tmp_path: Any) -> None:
    groups = ReplicaCgroups(str(tmp_path))
    cg = groups.attach("iris-1", 999, 256 << 20)
    write(os.path.join(cg, "memory.events"), "low 0\nhigh 0\nmax 40\noom 1\noom_kill 1\n")
    write(os.path.join(cg, "memory.peak"), f"{256 << 20}\n")
    assert groups.finish("iris-1") == KernelOom(kills=1, peak_bytes=256 << 20, limit_bytes=256 << 20)


def test_busy_cgroup_is_removed_on_a_later_call(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = cgroups._rmdir_cgroup
    busy = {"left": 1}

    def rmdir(cg: str) -> None:
        if busy["left"]:
            busy["left"] -= 1
            raise OSError(errno.EBUSY, "Device or resource busy")
        real(cg)

    monkeypatch.setattr(cgroups, "_rmdir_cgroup", rmdir)
    groups = ReplicaCgroups(str(tmp_path))
    first = groups.attach("iris-1", 999, None)
    groups.finish("iris-1")
    assert os.path.isdir(first)
    groups.attach("iris-2", 1000, None)
    assert not os.path.exists(first)


def test_open_sets_up_a_delegated_tree_and_cleans_stale_replica_cgroups(tmp_path: Any) -> None:
    root = fake_tree(tmp_path)
    own = os.path.join(root, SERVICE.lstrip("/"))
    write(os.path.join(own, "replica-old-7", "memory.max"), "1\n")
    proc = str(tmp_path / "proc-self-cgroup")
    write(proc, f"0::{SERVICE}\n")
    opened = open_replica_cgroups(env={}, root=root, proc_self_cgroup=proc, pid=PID)
    assert opened is not None and opened.path == own
    assert read(os.path.join(own, "daemon", "cgroup.procs")) == str(PID)
    assert not os.path.exists(os.path.join(own, "replica-old-7"))


@pytest.mark.parametrize("env, tree", [({"CORTEXD_CGROUPS": "off"}, True), ({}, False)])
def test_open_is_a_no_op_when_disabled_or_not_delegated(tmp_path: Any, env: dict[str, str], tree: bool) -> None:
    root = fake_tree(tmp_path) if tree else str(tmp_path / "v1")
    proc = str(tmp_path / "proc-self-cgroup")
    write(proc, f"0::{SERVICE}\n")
    assert open_replica_cgroups(env=env, root=root, proc_self_cgroup=proc, pid=PID) is None
    if tree:
        assert not os.path.exists(os.path.join(root, SERVICE.lstrip("/"), "daemon"))


def test_open_on_this_machine_never_raises() -> None:
    # Here (cgroup v1/hybrid sandbox, pytest sharing its cgroup) this is None; on a systemd
    # machine with the daemon alone in a delegated cgroup it would set it up.
    result = open_replica_cgroups(env={"CORTEXD_CGROUPS": "off"})
    assert result is None


# ---------------------------------------------------------------- spawner and supervisor


class OomCgroups:
    def __init__(self, oom: KernelOom | None) -> None:
        self.oom = oom
        self.finished: list[str] = []

    def attach(self, replica_id: str, pid: int, limit: int | None) -> str:
        return ""

    def finish(self, replica_id: str) -> KernelOom | None:
        self.finished.append(replica_id)
        return self.oom


@pytest.mark.parametrize("oom, events", [
    (KernelOom(1, 300 << 20, 256 << 20),
     [ReplicaOverMemory("iris-1", 300 << 20, 256 << 20, killed_by_kernel=True), ReplicaExited("iris-1", -9)]),
    (KernelOom(1, None, None), [ReplicaOverMemory("iris-1", 0, 0, killed_by_kernel=True), ReplicaExited("iris-1", -9)]),
    (None, [ReplicaExited("iris-1", -9)]),
])
def test_spawner_reports_a_kernel_oom_kill_before_the_exit(
    tmp_path: Any, oom: KernelOom | None, events: list[Any]
) -> None:
    posted: list[Any] = []
    fake = OomCgroups(oom)
    spawner = ProcessSpawner(str(tmp_path), post=posted.append, output=lambda api, rid, line: None, cgroups=fake)  # type: ignore[arg-type]
    spawner._exited("iris-1", -9)
    assert posted == events and fake.finished == ["iris-1"]


def make_api(mem: int | None) -> Api:
    return Api(
        name="iris", endpoint="/d/iris", python_path="/p",
        predictor=PredictorSpec(kind="python", predictor="/p/p.py", model=None, signature_key=None, config={}),
        tracker=None, compute=Compute(mem_limit=mem), metadata={},
    )


@pytest.mark.parametrize("limit, says", [
    (256 << 20, "killed by the kernel for using 300 MiB of memory, above its limit of 256 MiB (cgroup memory.max)"),
    (0, "killed by the kernel for using 300 MiB of memory, when the machine ran out of memory"),
])
def test_supervisor_shows_a_kernel_oom_kill_as_out_of_memory(limit: int, says: str) -> None:
    spawner, router = FakeSpawner(), FakeRouter()
    sup = Supervisor(spawner, router, Clock())
    sup.deploy(make_api(limit or None), Version(number=1, workdir="/w", model_path=None))
    sup.reconcile()
    rid = spawner.spawned[0].replica_id
    sup.handle(ReplicaReady(rid))
    sup.handle(ReplicaOverMemory(rid, 300 << 20, limit, killed_by_kernel=True))
    sup.handle(ReplicaExited(rid, -9))
    assert sup.status("iris") == "error (out of memory)"
    error = sup.apis["iris"].last_error
    assert error is not None and f"replica {rid} was {says}" in error.message
    sup.reconcile()
    assert len(spawner.spawned) == 2  # replaced at once (first failure: no backoff)


# ---------------------------------------------------------------- a real cgroup, where there is one


def real_cgroup_launcher(tmp_name: str) -> tuple[list[str], str | None] | None:
    """How to start a daemon in a cgroup v2 subtree delegated to it, on this machine.

    With systemd as the service manager: a transient scope with Delegate=yes (the way the unit
    runs it; systemd's rule is that nobody else creates cgroups in its tree). Without systemd
    (a container with its own cgroup namespace): a new child of a writable cgroup2 root that
    hands out the memory controller. None where neither is possible.
    Returns (command prefix, folder to remove afterwards).
    """
    root = cgroups.CGROUP_ROOT
    try:
        with open(os.path.join(root, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
    except OSError:
        return None
    if "memory" not in enabled or os.geteuid() != 0:
        return None
    if os.path.isdir("/run/systemd/system"):
        run = shutil.which("systemd-run")
        return ([run, "--scope", "--quiet", "-p", "Delegate=yes", "--"], None) if run else None
    if not os.access(root, os.W_OK):
        return None
    own = os.path.join(root, tmp_name)
    os.mkdir(own)
    return (["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', own], own)


@pytest.mark.slow
def test_real_cgroup_kernel_oom_kill_shows_out_of_memory(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.daemon_harness import Client, Daemon, wait_for, write_project

    launcher = real_cgroup_launcher(f"cortexd-test-{os.getpid()}")
    if launcher is None:
        pytest.skip("no cgroup v2 subtree with the memory controller can be delegated here "
                    f"({cgroups.CGROUP_ROOT} is cgroup v1/hybrid, read-only, or we are not root)")
    prefix, own = launcher

    class InCgroup(Daemon):
        """The daemon started in a delegated cgroup, as systemd starts the unit."""

        def start(self, wait_live: bool = True, timeout: float = 60.0) -> InCgroup:
            os.makedirs(self.base, exist_ok=True)
            with open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(
                    [*prefix, sys.executable, "-m", "cortexd", "serve",
                     "--config", os.path.join(self.project, "cortex.yaml"),
                     "--host", "127.0.0.1", "--port", str(self.port), "--runtime-dir", self.runtime_dir,
                     "--state-dir", self.state_dir, "--log-dir", self.log_dir],
                    stdout=err, stderr=err, env=self.env, cwd=self.base,
                )
            wait_for(self._listening, timeout=30, what="the daemon to listen")
            return self

    project = write_project(str(tmp_path / "p"), """\
        - kind: deployment
          name: m
        - kind: api
          name: hog
          python:
            predictor: hog.py
          compute:
            mem_limit: 200Mi
        - kind: api
          name: fine
          python:
            predictor: fine.py
    """, {
        "hog.py": """\
            def init(metadata):
                # 1 GiB touched at once: the kernel stops it long before a psutil reading could
                init.ballast = b"x" * (1 << 30)

            def predict(sample, metadata):
                return 0
        """,
        "fine.py": """\
            def predict(sample, metadata):
                return "ok"
        """,
    })
    d = InCgroup(project, str(tmp_path / "d")).start()
    try:
        assert "cgroup v2 memory.max per replica" in d.stderr()
        d.wait_status("fine", "live")
        view = d.wait_status("hog", "error (out of memory)", timeout=60)
        assert "was killed by the kernel" in view["last_error"] and "above its limit of 200 MiB" in view["last_error"]
        assert Client(d.port).post("/m/fine", {}).json() == "ok"
    finally:
        assert d.stop() == 0, d.stderr()
        if own is not None:
            for leftover in sorted((os.path.join(own, n) for n in os.listdir(own)), reverse=True):
                if os.path.isdir(leftover):
                    os.rmdir(leftover)
            os.rmdir(own)
