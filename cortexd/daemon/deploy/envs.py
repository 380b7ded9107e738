"""Per-project Python environments built from requirements.txt, layered over cortexd's own.

Layout under `envs_dir` (one folder per daemon, e.g. <state-dir>/envs):

    <key>             symlink -> builds/<key>-<random>; exists only for a complete env
    builds/<key>-*    the venvs themselves; one without a published link is unfinished or stale
    locks/<key>.lock  flock taken while building <key>, so concurrent builders wait, not clash

An env is built in its final folder under builds/ (a venv's scripts record absolute paths,
so a venv cannot be renamed once pip has run), its marker file is written last, and only then
is it published by atomically renaming a symlink into place. `lookup` therefore never sees a
half-built env, and a crash mid-build leaves only an unpublished folder that `gc` removes.

Layering: the new venv does not use --system-site-packages. That flag exposes the *base*
interpreter's site-packages, not the packages of the venv cortexd runs in (sanic, numpy, ...),
and it exposes base packages the daemon itself does not see. Instead a .pth file in the new
env calls site.addsitedir() on exactly the site directories of the interpreter cortexd runs
in (processing their own .pth files, e.g. editable installs), plus the folder cortexd is
imported from when it is not installed. The env's own site-packages comes first on sys.path,
so a pinned version in requirements.txt wins over the daemon's copy.

pip: the venv is created --without-pip (0.1 s instead of ~7 s for ensurepip) and pip is the
one layered in from the daemon's environment, run as `<env python> -m pip` so it installs into
the new env. Only when no pip is importable there does the build fall back to ensurepip.
pip's own configuration (PIP_* variables, pip.conf, its index and proxy) applies untouched;
`find_links` only adds wheelhouses.

Modes: envs_dir, builds/ and locks/ are 0750 and each env is built under umask 027, whatever
the daemon's umask: an env is code replicas import, so only the daemon's user may change it
(cortexd/safefs.py checks the folders; lock files are opened without following symlinks).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import cortexd
from cortexd import __version__ as CORTEXD_VERSION
from cortexd import safefs
from cortexd.requirements_check import referenced_files

MARKER = "cortexd-env.json"
LAYER_PTH = "cortexd-layer.pth"
KEY_HEX_CHARS = 32  # 128 bits of sha256: collision-free in practice, keeps shebang paths short
TAIL_LINES = 15
DEFAULT_TIMEOUT_S = 1800.0
_BUILDS = "builds"
_LOCKS = "locks"
_PUBLISH_PREFIX = ".publish-"
BUILD_UMASK = 0o027  # what venv and pip create: the daemon's user writes, its group reads

Log = Callable[[str], None]


class EnvBuildError(Exception):
    """The environment could not be built; str() ends with the last lines pip printed."""

    def __init__(self, message: str, key: str, tail: Sequence[str], returncode: int | None) -> None:
        super().__init__(message)
        self.key = key
        self.tail = list(tail)
        self.returncode = returncode


@dataclass(frozen=True)
class Interpreter:
    """What an env depends on from the interpreter it is layered over."""

    executable: str
    version: str  # sys.version: includes the build, so a rebuilt Python gets new envs
    site_dirs: tuple[str, ...]  # site.getsitepackages() of that interpreter


# ---------------------------------------------------------------- pure helpers


def env_key(contents: Sequence[bytes], interpreter: Interpreter, cortexd_version: str) -> str:
    """The cache key: everything pip reads from the project plus what the env is layered on."""
    digest = hashlib.sha256()
    digest.update(b"cortexd-env-v1\0")
    for part in (interpreter.executable, interpreter.version, cortexd_version, *interpreter.site_dirs):
        digest.update(part.encode() + b"\0")
    for content in contents:
        # Length-prefixed so that moving a line between two files changes the key.
        digest.update(len(content).to_bytes(8, "big"))
        digest.update(content)
    return digest.hexdigest()[:KEY_HEX_CHARS]


def layer_pth_lines(site_dirs: Sequence[str], cortexd_root: str | None) -> list[str]:
    """Lines of the .pth that makes the daemon's packages importable in a new env.

    A plain path line only appends to sys.path; `import site; site.addsitedir(...)` also runs
    that directory's own .pth files (editable installs, namespace packages), as the daemon's
    interpreter does at its start.
    """
    lines = []
    if cortexd_root is not None:
        lines.append(cortexd_root)
    lines.extend(f"import site; site.addsitedir({directory!r})" for directory in site_dirs)
    return lines


def cortexd_source_root(package_file: str, site_dirs: Sequence[str]) -> str | None:
    """The folder to add for `import cortexd` when cortexd runs from a checkout, else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(package_file)))
    real_sites = {os.path.realpath(d) for d in site_dirs}
    return None if os.path.realpath(root) in real_sites else root


def pip_install_command(python: str, requirements_path: str, find_links: Sequence[str]) -> list[str]:
    """pip install with no prompts and line-oriented output; index settings left to pip.conf."""
    command = [python, "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
    command += [f"--find-links={location}" for location in find_links]
    return command + ["-r", requirements_path]


def failure_message(what: str, returncode: int | None, tail: Sequence[str]) -> str:
    status = "timed out" if returncode is None else f"exit code {returncode}"
    lines = "\n".join(f"  {line}" for line in tail) or "  (no output)"
    return f"{what} failed ({status}); last output:\n{lines}"


# ---------------------------------------------------------------- file system helpers


@contextlib.contextmanager
def _flock(path: str, blocking: bool) -> Iterator[bool]:
    """Yield True while holding an exclusive flock on path (False: busy, only if not blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, safefs.FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                yield False
                return
            raise
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_durably(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)  # a crashed write's leftover, in a folder of ours
    with os.fdopen(safefs.create_new(tmp, 0o644), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _probe_interpreter(python: str) -> Interpreter:
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return Interpreter(sys.executable, sys.version, tuple(site.getsitepackages()))
    code = "import json, site, sys; print(json.dumps([sys.version, site.getsitepackages()]))"
    output = subprocess.run(
        [python, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    version, site_dirs = json.loads(output)
    return Interpreter(os.path.abspath(python), version, tuple(site_dirs))


# ---------------------------------------------------------------- the builder


class EnvBuilder:
    """Builds, finds and collects requirements environments under one folder.

    Thread-safe and multi-process-safe: builds of one key are serialised by a file lock;
    builds of different keys run in parallel.
    """

    def __init__(
        self,
        envs_dir: str,
        base_python: str = sys.executable,
        *,
        find_links: Sequence[str] = (),
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.envs_dir = os.path.abspath(envs_dir)
        self.find_links = tuple(find_links)
        self.timeout_s = timeout_s
        # Probing a foreign interpreter is one subprocess here, so lookup() never runs one.
        self.interpreter = _probe_interpreter(base_python)

    # ---- keys and lookups (cheap: reads and stats only)

    def key(self, requirements_path: str) -> str:
        """sha256 of the file (and the -r/-c files it includes), the Python and cortexd version."""
        paths = [os.path.abspath(requirements_path), *referenced_files(requirements_path)]
        contents = []
        for path in paths:
            with open(path, "rb") as handle:
                contents.append(handle.read())
        return env_key(contents, self.interpreter, CORTEXD_VERSION)

    def python_path(self, key: str) -> str:
        """Where the env of key has (or will have) its python executable."""
        return os.path.join(self.envs_dir, key, "bin", "python")

    def is_ready(self, key: str) -> bool:
        env = os.path.join(self.envs_dir, key)
        return os.path.isfile(os.path.join(env, MARKER)) and os.path.isfile(self.python_path(key))

    def lookup(self, requirements_path: str) -> str | None:
        """The python executable of the ready env for this file, else None. No subprocess."""
        key = self.key(requirements_path)
        return self.python_path(key) if self.is_ready(key) else None

    def ready_keys(self) -> list[str]:
        if not os.path.isdir(self.envs_dir):
            return []
        return sorted(name for name in os.listdir(self.envs_dir) if self._is_key_name(name) and self.is_ready(name))

    # ---- building

    def build(self, requirements_path: str, log: Log, timeout_s: float | None = None) -> str:
        """Build (or find) the env for requirements_path; returns its python. Blocking.

        Raises EnvBuildError with pip's last lines when the install fails or times out.
        """
        requirements_path = os.path.abspath(requirements_path)
        try:
            key = self.key(requirements_path)
        except OSError as exc:
            raise EnvBuildError(f"cannot read {requirements_path}: {exc.strerror or exc}", "", [], None) from exc
        if self.is_ready(key):
            return self.python_path(key)
        for folder in (self.envs_dir, os.path.join(self.envs_dir, _BUILDS), os.path.join(self.envs_dir, _LOCKS)):
            safefs.ensure_dir(folder, safefs.DIR_MODE)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        with _flock(self._lock_path(key), blocking=True):
            if self.is_ready(key):  # another thread or process built it while we waited
                log(f"environment {key} was built meanwhile; using it")
                return self.python_path(key)
            self._remove_unpublished_builds(key)  # we hold the lock, so these are dead leftovers
            build_dir = tempfile.mkdtemp(prefix=f"{key}-", dir=os.path.join(self.envs_dir, _BUILDS))
            os.chmod(build_dir, safefs.DIR_MODE)  # mkdtemp makes it 0700; the daemon's group may read
            try:
                started = time.monotonic()
                self._build_into(build_dir, key, requirements_path, log, deadline)
                self._write_marker(build_dir, key, requirements_path, time.monotonic() - started)
                self._publish(key, build_dir)
            except BaseException:
                shutil.rmtree(build_dir, ignore_errors=True)
                raise
            log(f"environment {key} ready in {time.monotonic() - started:.1f} s")
        return self.python_path(key)

    def _build_into(self, build_dir: str, key: str, requirements_path: str, log: Log, deadline: float) -> None:
        python = os.path.join(build_dir, "bin", "python")
        log(f"creating environment {key} over {self.interpreter.executable}")
        self._run_step(
            "creating the virtual environment",
            [self.interpreter.executable, "-m", "venv", "--without-pip", build_dir],
            key, log, deadline, cwd=None,
        )
        # Ask the new interpreter: Debian and upstream Pythons lay out venvs differently.
        purelib = self._query(python, "import sysconfig; print(sysconfig.get_path('purelib'))", key).strip()
        root = cortexd_source_root(cortexd.__file__, self.interpreter.site_dirs)
        lines = layer_pth_lines(self.interpreter.site_dirs, root)
        _write_file_durably(os.path.join(purelib, LAYER_PTH), ("\n".join(lines) + "\n").encode())
        self._query(python, "import cortexd", key)  # the layering works, or fail now with why
        if not self._can_import(python, "pip"):
            log("no pip in cortexd's environment; bootstrapping one with ensurepip")
            self._run_step("ensurepip", [python, "-m", "ensurepip", "--default-pip"], key, log, deadline, cwd=None)
        log(f"installing requirements from {requirements_path}")
        self._run_step(
            f"pip install -r {requirements_path}",
            pip_install_command(python, requirements_path, self.find_links),
            key, log, deadline,
            # pip resolves relative local paths (./pkg, -e .) against its working directory.
            cwd=os.path.dirname(requirements_path),
        )

    @staticmethod
    def _can_import(python: str, module: str) -> bool:
        command = [python, "-c", f"import {module}"]
        return subprocess.run(command, capture_output=True, timeout=60, cwd="/", check=False).returncode == 0

    @staticmethod
    def _query(python: str, code: str, key: str) -> str:
        """Run a short snippet in the new env (from / so the daemon's cwd cannot leak in)."""
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, cwd="/", check=False)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-TAIL_LINES:]
            message = failure_message(f"python -c {code!r}", result.returncode, tail)
            raise EnvBuildError(message, key, tail, result.returncode)
        return result.stdout

    def _run_step(
        self, what: str, command: list[str], key: str, log: Log, deadline: float, cwd: str | None
    ) -> None:
        """Run command, stream its output lines to log, raise EnvBuildError on failure."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EnvBuildError(failure_message(what, None, []), key, [], None)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as pip prints them
        env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        # Own process group: on timeout the build backends pip spawned die with it, and the
        # output pipe they hold closes, so the read loop below ends.
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, start_new_session=True,
            umask=BUILD_UMASK,
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(remaining, kill)
        timer.daemon = True
        timer.start()
        try:
            assert process.stdout is not None
            for raw in process.stdout:  # ends when the process closes its output
                line = raw.rstrip()
                if line:
                    tail.append(line)
                    log(line)
            returncode = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                kill()
                process.wait()
        if timed_out.is_set():
            raise EnvBuildError(failure_message(what, None, tail), key, tail, None)
        if returncode != 0:
            raise EnvBuildError(failure_message(what, returncode, tail), key, tail, returncode)

    def _write_marker(self, build_dir: str, key: str, requirements_path: str, seconds: float) -> None:
        with open(requirements_path, "rb") as handle:
            requirements_sha = hashlib.sha256(handle.read()).hexdigest()
        info = {
            "key": key,
            "requirements": requirements_path,
            "requirements_sha256": requirements_sha,
            "python": self.interpreter.executable,
            "python_version": self.interpreter.version,
            "cortexd_version": CORTEXD_VERSION,
            "built_at": time.time(),
            "build_seconds": round(seconds, 3),
        }
        # Written last: an env without it is never handed out.
        _write_file_durably(os.path.join(build_dir, MARKER), json.dumps(info, indent=2).encode())

    def _publish(self, key: str, build_dir: str) -> None:
        link = os.path.join(self.envs_dir, key)
        tmp = os.path.join(self.envs_dir, f"{_PUBLISH_PREFIX}{key}-{os.path.basename(build_dir)}")
        # Relative target: the link stays valid if envs_dir is reached through another path.
        os.symlink(os.path.join(_BUILDS, os.path.basename(build_dir)), tmp)
        os.replace(tmp, link)  # atomic: readers see no env or the complete one
        _fsync_dir(self.envs_dir)

    # ---- garbage collection

    def gc(self, keep_keys: Iterable[str]) -> list[str]:
        """Remove every env whose key is not kept, plus leftovers of crashed builds.

        Keep the keys of every version still running (old replicas during a reload) too.
        Envs being built right now are skipped. Returns the removed keys.
        """
        keep = set(keep_keys)
        removed: list[str] = []
        if not os.path.isdir(self.envs_dir):
            return removed
        for name in sorted(os.listdir(self.envs_dir)):
            path = os.path.join(self.envs_dir, name)
            if name.startswith(_PUBLISH_PREFIX):
                key = name[len(_PUBLISH_PREFIX):].split("-", 1)[0]
                with _flock(self._lock_path(key), blocking=False) as held:
                    if held and os.path.islink(path):
                        os.unlink(path)
                continue
            if not self._is_key_name(name) or name in keep or not os.path.islink(path):
                continue
            with _flock(self._lock_path(name), blocking=False) as held:
                if not held:
                    continue  # being rebuilt right now
                target = os.path.realpath(path)
                os.unlink(path)  # unpublish first: lookups stop finding it before files vanish
                shutil.rmtree(target, ignore_errors=True)
                removed.append(name)
        builds = os.path.join(self.envs_dir, _BUILDS)
        published = {
            os.path.realpath(os.path.join(self.envs_dir, name))
            for name in os.listdir(self.envs_dir)
            if self._is_key_name(name) and os.path.islink(os.path.join(self.envs_dir, name))
        }
        for name in sorted(os.listdir(builds)) if os.path.isdir(builds) else []:
            path = os.path.join(builds, name)
            if os.path.realpath(path) in published:
                continue
            with _flock(self._lock_path(name.split("-", 1)[0]), blocking=False) as held:
                if held:
                    shutil.rmtree(path, ignore_errors=True)
        return removed

    # ---- internals

    def _lock_path(self, key: str) -> str:
        safefs.ensure_dir(os.path.join(self.envs_dir, _LOCKS), safefs.DIR_MODE)
        return os.path.join(self.envs_dir, _LOCKS, f"{key}.lock")

    def _remove_unpublished_builds(self, key: str) -> None:
        builds = os.path.join(self.envs_dir, _BUILDS)
        current = os.path.realpath(os.path.join(self.envs_dir, key))
        for name in os.listdir(builds):
            path = os.path.join(builds, name)
            if name.startswith(f"{key}-") and os.path.realpath(path) != current:
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _is_key_name(name: str) -> bool:
        return len(name) == KEY_HEX_CHARS and all(c in "0123456789abcdef" for c in name)
