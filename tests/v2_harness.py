"""What the V2 tests stand on: a stand-in for the daemon's side of the seam.

`LoopbackBackend` implements cortexd.v2.backend.V2Backend as the daemon's does, without its
queue (cortexd/daemon/serving/v2_backend.py): `infer`
sends the replica request over the real hop (cortexd/daemon/serving/upstream.py) to a
replica on a Unix socket, which is either the real replica handler in this process
(`serve_in_process`) or a real replica process (`start_replica_process`). `FrontEnds` runs
the REST router (behind aiohttp) and the gRPC service on loopback ports, on an event loop
in a background thread, so tritonclient's blocking clients can drive them from the test.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from cortexd import protocol
from cortexd.daemon.serving.upstream import UpstreamConnection
from cortexd.protocol import Ready, ReplicaSpec
from cortexd.v2 import rest
from cortexd.v2.backend import ModelEntry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = TypeVar("T")


class LoopbackBackend:
    """V2Backend over replicas reached through the real upstream connection."""

    def __init__(self) -> None:
        self.entries: dict[str, ModelEntry] = {}
        self.conns: dict[str, UpstreamConnection] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.calls: list[tuple[str, str, int]] = []  # (model, target, body length)
        self.is_live = True

    def add(self, entry: ModelEntry, socket_path: str) -> None:
        self.entries[entry.name] = entry
        self.conns[entry.name] = UpstreamConnection(socket_path)

    def live(self) -> bool:
        return self.is_live

    def ready(self) -> bool:
        return all(e.ready for e in self.entries.values())

    def models(self) -> list[str]:
        return list(self.entries)

    def model(self, name: str) -> ModelEntry | None:
        return self.entries.get(name)

    async def infer(self, model: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((model, target, len(body)))
        entry = self.entries[model]
        if not entry.ready:  # what the daemon's queue answers with no ready replica
            return 503, {"Retry-After": "5"}, b'{"error": "no replica is ready (API %s is creating)"}' % model.encode()
        # a replica takes one request at a time (the daemon's queue sees to it)
        lock = self.locks.setdefault(model, asyncio.Lock())
        async with lock:
            status, payload = await self.conns[model].request(target, body)
        return status, {}, payload


class LoopThread:
    """An event loop in a daemon thread; `call` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        try:  # the daemon runs on uvloop where it is installed; grpc.aio must work there too
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def serve_in_process(loop: LoopThread, predictor: Any, socket_path: str) -> Any:
    """The real replica handler (cortexd/replica/main.py) on a Unix socket, in `loop`."""
    from cortexd.replica.main import build_handler
    from cortexd.replica.server import ReplicaProtocol

    handler = build_handler(predictor)
    connections: set[Any] = set()

    async def start() -> Any:
        return await asyncio.get_running_loop().create_unix_server(
            lambda: ReplicaProtocol(handler, connections), socket_path)

    return loop.call(start())


class FrontEnds:
    """The REST router behind aiohttp and the gRPC service, on loopback ports."""

    def __init__(self, backend: Any, loop: LoopThread) -> None:
        self.backend = backend
        self.loop = loop
        self.http_port = 0
        self.grpc_port = 0
        self._runner: Any = None
        self._grpc: Any = None

    def start(self) -> FrontEnds:
        self.loop.call(self._start())
        return self

    async def _start(self) -> None:
        from aiohttp import web

        from cortexd.v2 import grpc_service

        backend = self.backend

        async def handler(request: Any) -> Any:
            body = await request.read()
            status, headers, out = await rest.handle(
                request.method, request.path, request.headers, body, backend, request.query_string)
            return web.Response(status=status, headers=headers, body=out)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._grpc, self.grpc_port = await grpc_service.serve(backend, "127.0.0.1", 0)

    def stop(self) -> None:
        async def stop() -> None:
            if self._grpc is not None:
                await self._grpc.stop(0)
            if self._runner is not None:
                await self._runner.cleanup()

        self.loop.call(stop())

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start_replica_process(
    spec: ReplicaSpec, socket_path: str, timeout: float = 60.0
) -> tuple[subprocess.Popen[bytes], Ready]:
    """A real replica process (python -m cortexd.replica), as the daemon's spawner starts
    one: the spec in an inherited memfd, readiness on a status pipe. Returns once it is ready."""
    spec_fd = protocol.spec_fd(spec)
    status_r, status_w = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "cortexd.replica", "--spec-fd", str(spec_fd), "--socket", socket_path,
           "--status-fd", str(status_w), "--parent-pid", str(os.getpid())]
    log_path = socket_path + ".log"  # a file, not a pipe: a replica that logs much never blocks on it
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, pass_fds=(spec_fd, status_w), env=env, stderr=log)
    os.close(spec_fd)
    os.close(status_w)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the replica was not ready within {timeout:.0f}s")
            ready, _, _ = select.select([status_r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(status_r, 65536)
                if not chunk:
                    with open(log_path, "rb") as f:
                        err = f.read().decode("utf-8", "replace")
                    raise RuntimeError(f"the replica exited before it was ready:\n{err[-3000:]}")
                buf += chunk
    finally:
        os.close(status_r)
    message = protocol.decode_status(buf.split(b"\n")[0])
    if not isinstance(message, Ready):
        proc.kill()
        raise RuntimeError(f"the replica failed to load: {message}")
    return proc, message


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
