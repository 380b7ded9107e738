"""The replica process: load one predictor, serve it on a Unix socket, one request at a time.

Started by the daemon as `python -m cortexd.replica --spec FILE --socket PATH --status-fd N
--parent-pid P`. Readiness and load failures travel to the daemon over the status pipe; the
daemon learns of our exit through a pidfd. Sanic runs single-process inside: the daemon is
the supervisor, not Sanic's worker manager.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

from cortexd import protocol
from cortexd.replica.predictors import (
    PayloadError,
    Predictor,
    PredictorLoadError,
    ReplicaContext,
    load_predictor,
)

_PR_SET_PDEATHSIG = 1
DEBUG_TRUNCATE = 2000


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the daemon dies, even by SIGKILL: no orphan replicas."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(protocol.EXIT_ORPHANED)


def _numpy_default(obj: Any) -> Any:
    """json.dumps calls this only for types it does not know, so plain results pay nothing."""
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if tolist is not None:
        return tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"prediction contains a {type(obj).__name__}, which cannot be written as JSON")


def encode_prediction(result: Any) -> bytes:
    return json.dumps(result, default=_numpy_default, separators=(",", ":")).encode()


def _truncate(text: str) -> str:
    return text if len(text) <= DEBUG_TRUNCATE else text[:DEBUG_TRUNCATE] + f"... ({len(text)} chars)"


def _log(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def build_app(predictor: Predictor, api_name: str) -> Any:
    from sanic import Sanic
    from sanic.response import HTTPResponse

    app = Sanic(f"cortexd-replica-{os.getpid()}", configure_logging=False)
    # The daemon holds one keep-alive connection per replica for its whole life.
    app.config.KEEP_ALIVE_TIMEOUT = 365 * 24 * 3600
    app.config.REQUEST_MAX_SIZE = 1 << 40  # the proxy enforces the limit
    app.config.REQUEST_TIMEOUT = 365 * 24 * 3600
    app.config.RESPONSE_TIMEOUT = 365 * 24 * 3600
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    predict = predictor.predict
    json_type = "application/json"

    def error(status: int, message: str) -> HTTPResponse:
        return HTTPResponse(json.dumps({"error": message}), status=status, content_type=json_type)

    @app.post(protocol.PREDICT_PATH)
    async def handle_predict(request: Any) -> HTTPResponse:
        debug = request.query_string.find("debug=true") >= 0
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"body is not valid JSON: {exc}")
        if debug:
            _log(f"debug: sample: {_truncate(request.body.decode('utf-8', 'replace'))}")
        # Called on the loop thread on purpose: a replica handles one request at a time,
        # and a thread hop per request would only add latency.
        try:
            result = predict(payload)
        except PayloadError as exc:
            return error(400, str(exc))
        except Exception as exc:
            _log(f"prediction failed:\n{traceback.format_exc()}")
            return error(500, f"prediction failed: {type(exc).__name__}: {exc}")
        try:
            body = encode_prediction(result)
        except (TypeError, ValueError) as exc:
            _log(f"prediction failed: {exc}")
            return error(500, f"prediction failed: {exc}")
        if debug:
            _log(f"debug: prediction: {_truncate(body.decode())}")
        return HTTPResponse(body, status=200, content_type=json_type)

    @app.get(protocol.INFO_PATH)
    async def handle_info(request: Any) -> HTTPResponse:
        return HTTPResponse(json.dumps(predictor.describe(), default=_numpy_default), content_type=json_type)

    return app


def _send_status(fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:
        pass


def read_context(path: str) -> ReplicaContext:
    with open(path) as f:
        data = json.load(f)
    return ReplicaContext(**data)


async def serve(predictor: Predictor, ctx: ReplicaContext, socket_path: str, status_fd: int) -> None:
    app = build_app(predictor, ctx.api_name)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    # Bound here rather than by Sanic: Sanic binds a temporary name 44 characters longer
    # than the path, which overflows AF_UNIX's 108 bytes in deep runtime directories.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(socket_path)
    os.chmod(socket_path, 0o600)
    sock.listen(64)
    server = await app.create_server(sock=sock, return_asyncio_server=True)
    if server is None:
        raise RuntimeError("sanic did not create a server")
    await server.startup()
    await server.before_start()
    await server.start_serving()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _send_status(status_fd, {"event": protocol.EVENT_READY, "info": predictor.describe(), "pid": os.getpid()})
    await stop.wait()
    # The daemon drains us before SIGTERM, so nothing is in flight here.
    server.close()
    for conn in list(server.connections):
        conn.close_if_idle()
    try:
        os.unlink(socket_path)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cortexd.replica")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    ctx = read_context(args.spec)
    started = time.monotonic()
    try:
        predictor = load_predictor(ctx)
    except BaseException as exc:  # anything the user's code raised, SystemExit included
        reason = str(exc) if isinstance(exc, PredictorLoadError) else f"{type(exc).__name__}: {exc}"
        _log(f"loading the predictor failed: {reason}\n{traceback.format_exc()}")
        _send_status(
            args.status_fd,
            {"event": protocol.EVENT_LOAD_FAILED, "message": reason, "traceback": traceback.format_exc()},
        )
        os._exit(protocol.EXIT_LOAD_FAILED)
    _log(f"predictor loaded in {time.monotonic() - started:.2f}s")
    asyncio.run(serve(predictor, ctx, args.socket, args.status_fd))
