"""Starting replica processes and watching them from the event loop, without threads.

Each replica is `python -m cortexd.replica` in a new session (so its whole process group
can be signalled), with its GPUs in CUDA_VISIBLE_DEVICES before any CUDA library loads.
The loop watches three descriptors per replica: a pidfd (exit), the status pipe (ready /
load failed) and its merged stdout+stderr (lines for the API's log).

Where the daemon owns a delegated cgroup v2 subtree (daemon/fleet/cgroups.py), each replica is
moved into its own cgroup with memory.max right after it starts, and a replica whose cgroup
recorded an OOM kill when it exited is reported as over memory before its exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Callable

from cortexd import callconv, paths, protocol, safefs
from cortexd.daemon.fleet.cgroups import ReplicaCgroups
from cortexd.daemon.fleet.events import Event, ReplicaExited, ReplicaLoadFailed, ReplicaOverMemory, ReplicaReady
from cortexd.daemon.fleet.lifecycle import SpawnRequest
from cortexd.daemon.systemd import child_env

log = logging.getLogger("cortexd.spawner")

MAX_LINE = 64 * 1024


class ProcessHandle:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the replica leads its own process group
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def _gpu_list(gpus: list[int]) -> str:
    """CUDA_VISIBLE_DEVICES for the GPUs a replica got: "0,2"."""
    return ",".join(str(g) for g in gpus)


class ProcessSpawner:
    def __init__(
        self,
        runtime_dir: str,
        post: Callable[[Event], None],
        output: Callable[[str, str, str], None],
        gpu_env: Callable[[list[int]], str] = _gpu_list,
        extra_env: dict[str, str] | None = None,
        cgroups: ReplicaCgroups | None = None,
    ) -> None:
        # A new private folder at every start (cortexd/paths.py), removed when the spawner goes.
        socket_dir = replica_socket_dir(runtime_dir)
        self.dir = socket_dir.path
        self._remove_dir = weakref.finalize(self, socket_dir.remove)
        self._post = post
        self._output = output  # (api, replica_id, line)
        self._gpu_env = gpu_env
        self._extra_env = extra_env or {}
        self._cgroups = cgroups  # None: no delegated cgroup, psutil limits only
        self.handles: dict[str, ProcessHandle] = {}

    def socket_path(self, replica_id: str) -> str:
        return os.path.join(self.dir, f"{replica_id}.sock")

    def spawn(self, request: SpawnRequest) -> ProcessHandle:
        loop = asyncio.get_running_loop()
        rid = request.replica_id
        api = request.api
        version = request.version
        spec = replica_spec(request)
        env = child_env(os.environ)  # only the daemon speaks to systemd
        env.update(self._extra_env)
        env["CUDA_VISIBLE_DEVICES"] = self._gpu_env(request.gpus)
        env["PYTHONUNBUFFERED"] = "1"
        env["CORTEXD_API"] = api.name
        env["CORTEXD_REPLICA_ID"] = rid
        status_r, status_w = os.pipe()
        out_r, out_w = os.pipe()
        spec_r = protocol.spec_fd(spec)
        python = version.python or sys.executable
        try:
            proc = subprocess.Popen(
                [
                    python, "-m", "cortexd.replica",
                    "--spec-fd", str(spec_r),
                    "--socket", self.socket_path(rid),
                    "--status-fd", str(status_w),
                    "--parent-pid", str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w, spec_r),
                cwd=version.workdir,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(status_w)
            os.close(out_w)
            os.close(spec_r)
        handle = ProcessHandle(proc)
        self.handles[rid] = handle
        if self._cgroups is not None:
            # Before the replica has loaded anything big: what it allocates from here on is
            # charged to (and limited by) its own cgroup.
            try:
                self._cgroups.attach(rid, proc.pid, api.compute.mem_limit)
            except OSError as exc:
                log.warning("%s: replica %s runs without its own cgroup (%s); psutil limits only", api.name, rid, exc)
        watcher = _Watcher(self, api.name, rid, proc, status_r, out_r, loop)
        watcher.start()
        return handle

    def _exited(self, rid: str, code: int, pid: int | None = None) -> None:
        self.handles.pop(rid, None)
        try:
            os.unlink(self.socket_path(rid))
        except OSError:
            pass
        oom = self._cgroups.finish(rid) if self._cgroups is not None else None
        if oom is not None:
            # Posted first, so the supervisor knows the exit was the kernel enforcing memory.max.
            limit = oom.limit_bytes or 0
            self._post(ReplicaOverMemory(rid, oom.peak_bytes or limit, limit, killed_by_kernel=True))
        self._post(ReplicaExited(rid, code, pid))


def replica_spec(request: SpawnRequest) -> protocol.ReplicaSpec:
    """What the replica of `request` runs: the API's spec, with the project paths of its version."""
    api, version = request.api, request.version
    return protocol.ReplicaSpec(
        api_name=api.name,
        kind=api.predictor.kind,
        predictor_path=version.predictor_path or api.predictor.predictor,
        model_path=version.model_path,
        signature_key=api.predictor.signature_key,
        config=api.predictor.config,
        python_path=version.python_path or api.python_path,
        # CUDA_VISIBLE_DEVICES renumbers the chosen GPUs from 0 inside the replica.
        gpus=list(range(len(request.gpus))),
        cpu=api.compute.cpu,
        gpu_share=(min(1.0, api.compute.gpu) if request.gpus else 0.0),
        max_batch_size=api.batching.max_batch_size if api.batching is not None else 0,
        gpu_mem=api.compute.gpu_mem if request.gpus else None,
        call=api.call,
        threads=api.threads_per_process,
        env=dict(api.env),
        # Cortex v0.17+ sent a str prediction as text/plain; earlier releases as a JSON string.
        str_as_text=api.call in (callconv.CALL_CLASS_KWARGS, callconv.CALL_HANDLER),
        nan_as_null=api.nan_as_null,
    )


def replica_socket_dir(runtime_dir: str) -> paths.SocketDir:
    """Make this start's replica socket folder: checked runtime folder, then a new 0700
    folder with an unpredictable name inside it (or in /tmp when the runtime folder's path
    is too long for socket names). Never a predictable, reusable path."""
    runtime_dir = safefs.ensure_dir(runtime_dir, safefs.DIR_MODE, group=paths.RUNTIME_GROUP)
    return paths.new_replica_socket_dir(runtime_dir)


class _Watcher:
    """Reads one replica's pipes and pidfd on the loop; posts events to the supervisor."""

    def __init__(
        self,
        spawner: ProcessSpawner,
        api: str,
        rid: str,
        proc: subprocess.Popen[bytes],
        status_fd: int,
        out_fd: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.spawner = spawner
        self.api = api
        self.rid = rid
        self.proc = proc
        self.status_fd = status_fd
        self.out_fd = out_fd
        self.loop = loop
        self.status_buf = b""
        self.out_buf = b""
        self.pidfd = os.pidfd_open(proc.pid)

    def start(self) -> None:
        for fd in (self.status_fd, self.out_fd):
            os.set_blocking(fd, False)
        self.loop.add_reader(self.status_fd, self._on_status)
        self.loop.add_reader(self.out_fd, self._on_output)
        self.loop.add_reader(self.pidfd, self._on_exit)

    def _read(self, fd: int) -> bytes | None:
        """Bytes available now; b"" when none are; None at end of file."""
        try:
            return os.read(fd, 65536) or None
        except BlockingIOError:
            return b""
        except OSError:
            return None

    def _on_status(self) -> None:
        data = self._read(self.status_fd)
        if data is None:  # the replica closed its end; the pidfd reports the exit
            self.loop.remove_reader(self.status_fd)
            return
        self.status_buf += data
        while b"\n" in self.status_buf:
            line, self.status_buf = self.status_buf.split(b"\n", 1)
            msg = protocol.decode_status(line)
            if isinstance(msg, protocol.Ready):
                self.spawner._post(ReplicaReady(self.rid, msg.info))
            elif isinstance(msg, protocol.LoadFailed):
                self.spawner._post(ReplicaLoadFailed(self.rid, msg.message))

    def _on_output(self, final: bool = False) -> None:
        data = self._read(self.out_fd)
        while data:
            self.out_buf += data
            if not final:
                break
            data = self._read(self.out_fd)  # at exit: take everything that is left
        if data is None:
            self.loop.remove_reader(self.out_fd)
        lines = self.out_buf.split(b"\n")
        self.out_buf = lines.pop()
        if len(self.out_buf) > MAX_LINE or (final and self.out_buf):
            lines.append(self.out_buf)
            self.out_buf = b""
        for raw in lines:
            self.spawner._output(self.api, self.rid, raw.decode("utf-8", "replace"))

    def _on_exit(self) -> None:
        code = self.proc.wait()
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self._on_status()
        self._on_output(final=True)
        for fd in (self.status_fd, self.out_fd):
            self.loop.remove_reader(fd)
            os.close(fd)
        self.spawner._exited(self.rid, code, self.proc.pid)
