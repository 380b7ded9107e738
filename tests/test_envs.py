"""EnvBuilder: requirements environments layered over cortexd's own.

The fast tests use no pip. The `slow` ones run real venvs and real pip against the package
index that pip's configuration names (PyPI, a mirror, or a wheelhouse).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cortexd
from cortexd.daemon.deploy import envs
from cortexd.daemon.deploy.envs import (
    KEY_HEX_CHARS,
    MARKER,
    EnvBuilder,
    EnvBuildError,
    Interpreter,
    cortexd_source_root,
    env_key,
    failure_message,
    layer_pth_lines,
    pip_install_command,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "reference-iris"
# Small, pure-Python, no dependencies, and not something cortexd or its tests depend on.
PACKAGE = "tabulate"
MISSING_PACKAGE = "cortexd-test-no-such-package-7f3a9c"

INTERP = Interpreter("/usr/bin/python3", "3.11.7 (main)", ("/venv/lib/python3.11/site-packages",))


def collect() -> tuple[list[str], envs.Log]:
    lines: list[str] = []
    return lines, lines.append


def env_python_run(python: str, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run code in an env the way a replica would: no PYTHONPATH, cwd outside the repo."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# ---------------------------------------------------------------- pure helpers


def test_env_key_is_short_hex_and_stable() -> None:
    key = env_key([b"numpy\n"], INTERP, "0.1.0")
    assert len(key) == KEY_HEX_CHARS and int(key, 16) >= 0
    assert env_key([b"numpy\n"], INTERP, "0.1.0") == key


@pytest.mark.parametrize(
    ("contents", "interpreter", "version"),
    [
        ([b"numpy\n# changed\n"], INTERP, "0.1.0"),  # the file's content
        ([b"numpy\n"], Interpreter(INTERP.executable, "3.11.8 (main)", INTERP.site_dirs), "0.1.0"),  # python
        ([b"numpy\n"], INTERP, "0.2.0"),  # cortexd
        ([b"numpy\n"], Interpreter("/opt/other/python3", INTERP.version, INTERP.site_dirs), "0.1.0"),
        ([b"numpy\n"], Interpreter(INTERP.executable, INTERP.version, ("/other/site",)), "0.1.0"),
        ([b"numpy\n", b""], INTERP, "0.1.0"),  # an included file
        ([b"num", b"py\n"], INTERP, "0.1.0"),  # the same bytes split differently
    ],
)
def test_env_key_changes_with_everything_the_env_depends_on(
    contents: list[bytes], interpreter: Interpreter, version: str
) -> None:
    assert env_key(contents, interpreter, version) != env_key([b"numpy\n"], INTERP, "0.1.0")


@pytest.mark.parametrize(
    ("site_dirs", "root", "expected"),
    [
        (["/v/site"], None, ["import site; site.addsitedir('/v/site')"]),
        (
            ["/v/a", "/v/b"],
            "/src",
            ["/src", "import site; site.addsitedir('/v/a')", "import site; site.addsitedir('/v/b')"],
        ),
        (["/it's"], None, ["import site; site.addsitedir(\"/it's\")"]),  # quoting survives odd paths
    ],
)
def test_layer_pth_lines(site_dirs: list[str], root: str | None, expected: list[str]) -> None:
    assert layer_pth_lines(site_dirs, root) == expected


@pytest.mark.parametrize(
    ("package_file", "site_dirs", "expected"),
    [
        ("/venv/site/cortexd/__init__.py", ["/venv/site"], None),  # installed: site dir covers it
        ("/src/repo/cortexd/__init__.py", ["/venv/site"], "/src/repo"),  # a checkout
    ],
)
def test_cortexd_source_root(package_file: str, site_dirs: list[str], expected: str | None) -> None:
    assert cortexd_source_root(package_file, site_dirs) == expected


def test_pip_command_leaves_index_settings_to_pip() -> None:
    command = pip_install_command("/e/bin/python", "/p/requirements.txt", ["/opt/wheels"])
    assert command[:4] == ["/e/bin/python", "-m", "pip", "install"]
    assert command[-2:] == ["-r", "/p/requirements.txt"]
    assert "--find-links=/opt/wheels" in command and "--no-input" in command
    assert not any(arg.startswith(("--index-url", "-i", "--no-index", "--extra-index-url")) for arg in command)


def test_failure_message_holds_the_tail() -> None:
    message = failure_message("pip install -r r.txt", 1, ["ERROR: one", "ERROR: two"])
    assert message == "pip install -r r.txt failed (exit code 1); last output:\n  ERROR: one\n  ERROR: two"
    assert "timed out" in failure_message("x", None, [])


# ---------------------------------------------------------------- keys, lookups, gc without pip


@pytest.fixture()
def builder(tmp_path: Path) -> EnvBuilder:
    return EnvBuilder(str(tmp_path / "envs"))


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_key_covers_included_files(builder: EnvBuilder, tmp_path: Path) -> None:
    top = write(tmp_path / "p" / "requirements.txt", "-r base.txt\n")
    write(tmp_path / "p" / "base.txt", "numpy\n")
    before = builder.key(top)
    write(tmp_path / "p" / "base.txt", "numpy<3\n")
    assert builder.key(top) != before


def fake_env(builder: EnvBuilder, key: str, publish: bool, marker: bool = True) -> Path:
    """An env folder as a build leaves it, without running pip."""
    build = Path(builder.envs_dir) / "builds" / f"{key}-fake{int(publish)}{int(marker)}"
    (build / "bin").mkdir(parents=True)
    os.symlink(sys.executable, build / "bin" / "python")
    if marker:
        (build / MARKER).write_text("{}")
    if publish:
        os.symlink(os.path.join("builds", build.name), Path(builder.envs_dir) / key)
    return build


def test_lookup_misses_until_an_env_is_published(builder: EnvBuilder, tmp_path: Path) -> None:
    req = write(tmp_path / "requirements.txt", "numpy\n")
    assert builder.lookup(req) is None  # nothing built yet, and envs_dir does not even exist
    key = builder.key(req)
    fake_env(builder, key, publish=False)  # complete, but never published (a crash before rename)
    assert builder.lookup(req) is None
    os.symlink(os.path.join("builds", f"{key}-fake01"), Path(builder.envs_dir) / key)
    assert builder.lookup(req) == os.path.join(builder.envs_dir, key, "bin", "python")


def test_lookup_ignores_a_published_env_without_marker(builder: EnvBuilder, tmp_path: Path) -> None:
    req = write(tmp_path / "requirements.txt", "numpy\n")
    fake_env(builder, builder.key(req), publish=True, marker=False)
    assert builder.lookup(req) is None


def test_gc_removes_unkept_envs_and_leftovers_but_not_builds_in_progress(builder: EnvBuilder) -> None:
    keep, drop, crashed, building = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
    fake_env(builder, keep, publish=True)
    dropped = fake_env(builder, drop, publish=True)
    leftover = fake_env(builder, crashed, publish=False, marker=False)
    in_progress = fake_env(builder, building, publish=False, marker=False)
    stale_link = Path(builder.envs_dir) / f".publish-{crashed}-{leftover.name}"
    os.symlink(os.path.join("builds", leftover.name), stale_link)
    with envs._flock(builder._lock_path(building), blocking=True):
        removed = builder.gc([keep])
    assert removed == [drop]
    assert builder.is_ready(keep) and not builder.is_ready(drop)
    assert not dropped.exists() and not leftover.exists() and not os.path.lexists(stale_link)
    assert in_progress.exists()  # its lock was held: someone is building it
    assert builder.ready_keys() == [keep]


def test_gc_on_a_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    assert EnvBuilder(str(tmp_path / "nothing")).gc([]) == []


def test_build_of_a_missing_file_is_an_env_build_error(builder: EnvBuilder, tmp_path: Path) -> None:
    with pytest.raises(EnvBuildError, match="cannot read"):
        builder.build(str(tmp_path / "requirements.txt"), lambda line: None)


# ---------------------------------------------------------------- real venvs, real pip


@pytest.mark.slow
def test_build_installs_into_a_layered_env_and_a_restart_reuses_it(tmp_path: Path) -> None:
    assert importlib.util.find_spec(PACKAGE) is None, f"{PACKAGE} must not be in cortexd's venv for this test"
    req = write(tmp_path / "project" / "requirements.txt", f"{PACKAGE}\n")
    envs_dir = str(tmp_path / "envs")
    builder = EnvBuilder(envs_dir)
    key = builder.key(req)
    stale = fake_env(builder, key, publish=False)  # a crashed earlier build of the same key

    lines, log = collect()
    started = time.monotonic()
    python = builder.build(req, log)
    first_build_s = time.monotonic() - started

    assert python == builder.lookup(req) == os.path.join(envs_dir, key, "bin", "python")
    assert not stale.exists()
    assert any(f"Successfully installed {PACKAGE}" in line for line in lines), lines
    # The package lives in the new env; cortexd and its dependencies come from the daemon's.
    probe = env_python_run(
        python,
        f"import json, sys, {PACKAGE}, sanic, numpy, cortexd; "
        f"print(json.dumps([{PACKAGE}.__file__, cortexd.__file__, sanic.__file__, sys.prefix]))",
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    package_file, cortexd_file, sanic_file, prefix = json.loads(probe.stdout)
    assert prefix == os.path.join(envs_dir, key)
    assert os.path.realpath(package_file).startswith(os.path.realpath(os.path.join(envs_dir, "builds")))
    assert os.path.realpath(cortexd_file) == os.path.realpath(cortexd.__file__)
    assert importlib.util.find_spec("sanic").origin == sanic_file  # type: ignore[union-attr]

    # A restart: a new builder over the same folder finds the env without running anything.
    marker = os.path.join(envs_dir, key, MARKER)
    marker_mtime = os.stat(marker).st_mtime_ns
    restarted = EnvBuilder(envs_dir)
    started = time.monotonic()
    assert restarted.lookup(req) == python
    lookup_s = time.monotonic() - started

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a cached env must not run {args!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", no_subprocess)
        patch.setattr(subprocess, "run", no_subprocess)
        relog, log2 = collect()
        started = time.monotonic()
        assert restarted.build(req, log2) == python
        cached_build_s = time.monotonic() - started
    # Reused, not rebuilt: no process run (patched above), nothing logged, the marker untouched.
    # How fast that is gets printed, not asserted: timings belong in bench/, not in tests.
    assert relog == [] and os.stat(marker).st_mtime_ns == marker_mtime
    print(f"\nfirst build {first_build_s:.2f} s; cached lookup {lookup_s * 1000:.2f} ms; "
          f"cached build() {cached_build_s * 1000:.2f} ms")


@pytest.mark.slow
def test_a_changed_file_gets_a_new_env_and_the_old_one_stays(tmp_path: Path) -> None:
    req = write(tmp_path / "requirements.txt", f"{PACKAGE}\n")
    builder = EnvBuilder(str(tmp_path / "envs"))
    old_python = builder.build(req, lambda line: None)
    old_key = builder.key(req)
    write(tmp_path / "requirements.txt", f"{PACKAGE}\n# pinned later\n")
    assert builder.lookup(req) is None
    lines, log = collect()
    new_python = builder.build(req, log)
    assert new_python != old_python and builder.key(req) != old_key
    assert any("installing requirements" in line for line in lines)
    assert builder.is_ready(old_key)  # a running old version keeps its env until gc
    assert builder.gc([builder.key(req)]) == [old_key]
    assert not os.path.exists(old_python) and os.path.exists(new_python)


@pytest.mark.slow
def test_a_package_that_does_not_exist_fails_with_pips_message_and_leaves_nothing(tmp_path: Path) -> None:
    req = write(tmp_path / "requirements.txt", f"{MISSING_PACKAGE}==1.0\n")
    builder = EnvBuilder(str(tmp_path / "envs"))
    lines, log = collect()
    with pytest.raises(EnvBuildError) as caught:
        builder.build(req, log)
    message = str(caught.value)
    assert "failed (exit code 1)" in message
    assert f"No matching distribution found for {MISSING_PACKAGE}" in message
    assert caught.value.returncode == 1 and len(caught.value.tail) <= envs.TAIL_LINES
    assert caught.value.key == builder.key(req)
    assert lines, "pip's output was streamed to the log"
    assert builder.lookup(req) is None
    assert os.listdir(tmp_path / "envs" / "builds") == []  # the half-built env is gone
    assert builder.ready_keys() == []


@pytest.mark.slow
def test_a_build_that_runs_too_long_is_killed(tmp_path: Path) -> None:
    req = write(tmp_path / "requirements.txt", f"{PACKAGE}\n")
    builder = EnvBuilder(str(tmp_path / "envs"))
    with pytest.raises(EnvBuildError, match="timed out"):
        builder.build(req, lambda line: None, timeout_s=0.05)
    assert builder.lookup(req) is None and os.listdir(tmp_path / "envs" / "builds") == []


@pytest.mark.slow
def test_concurrent_builds_of_one_key_install_once(tmp_path: Path) -> None:
    req = write(tmp_path / "requirements.txt", f"{PACKAGE}\n")
    envs_dir = str(tmp_path / "envs")
    logs: list[list[str]] = [[], []]
    results: list[str | BaseException | None] = [None, None]

    def run(index: int) -> None:
        try:  # separate builders, as two daemons sharing a state folder would have
            results[index] = EnvBuilder(envs_dir).build(req, logs[index].append)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results[0] == results[1] and isinstance(results[0], str), results
    installs = [log for log in logs if any("Successfully installed" in line for line in log)]
    assert len(installs) == 1, logs
    assert len(os.listdir(os.path.join(envs_dir, "builds"))) == 1


@pytest.mark.slow
def test_requirements_already_in_cortexd_env_are_not_reinstalled(tmp_path: Path) -> None:
    req = write(tmp_path / "requirements.txt", "PyYAML\nnumpy\n")
    builder = EnvBuilder(str(tmp_path / "envs"))
    lines, log = collect()
    python = builder.build(req, log)
    assert any("Requirement already satisfied: PyYAML" in line for line in lines), lines
    assert not any("Successfully installed" in line for line in lines)
    site_packages = Path(builder.envs_dir) / builder.key(req) / "lib"
    assert not list(site_packages.glob("python*/site-packages/yaml"))
    assert env_python_run(python, "import yaml, numpy", cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_the_reference_example_serves_from_its_env(tmp_path: Path) -> None:
    """examples/reference-iris: its requirements build, and its predictor answers inside that env."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("model.pkl", "__pycache__"))
    python = EnvBuilder(str(tmp_path / "envs")).build(str(project / "requirements.txt"), lambda line: None)
    code = (
        "import json, sys, yaml\n"
        "sys.path.insert(0, '.')\n"  # the API's python_path: the project folder
        "api = [d for d in yaml.safe_load(open('cortex.yaml')) if d['kind'] == 'api'][0]\n"
        "from predictor import PythonPredictor\n"
        "p = PythonPredictor(api['python']['config'])\n"
        "print(json.dumps([p.predict(json.load(open('sample.json'))),\n"
        "                  p.predict({'sepal_length': '6.7', 'sepal_width': 3.0, "
        "'petal_length': 5.2, 'petal_width': 2.3})]))\n"
        "try:\n"
        "    p.predict({'sepal_length': 1})\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    run = env_python_run(python, code, cwd=project)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert json.loads(out[-2]) == ["setosa", "virginica"]
    assert "invalid payload" in out[-1] and "sepal_width" in out[-1]
    assert (project / "model.pkl").is_file()  # trained at init because the pickle was missing
