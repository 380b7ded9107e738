"""The replica process: load one predictor, serve it on a Unix socket, one request at a time.

Started by the daemon as `python -m cortexd.replica --spec-fd N --socket PATH --status-fd N
--parent-pid P` (cortexd/protocol.py: the spec arrives in an inherited memory file).
Readiness and load failures travel to the daemon over the status pipe; the daemon learns of
our exit through a pidfd. Requests arrive over the daemon's persistent
connection and are served by the small HTTP/1.1 server in cortexd/replica/server.py.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cortexd import batchframe, protocol
from cortexd.callconv import CALL_CLASS_KWARGS, CALL_HANDLER
from cortexd.daemon.serving.access import debug_requested
from cortexd.protocol import LoadFailed, Ready, ReplicaSpec, StatusMessage, encode_status, read_spec_fd
from cortexd.replica import batching
from cortexd.replica.bodies import BodyError, PredictionError, encode_prediction, parse_body, render_prediction
from cortexd.replica.calls import error_status
from cortexd.replica.packages import missing_package_hint
from cortexd.replica.payloads import header, payload_of
from cortexd.replica.predictors import PayloadError, Predictor, PredictorLoadError, load_predictor
from cortexd.replica.server import Handler, ReplicaProtocol
from cortexd.v2 import hop as v2_hop
from cortexd.v2.replica import V2Predictor, handle_replica_request

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


def _truncate(text: str) -> str:
    return text if len(text) <= DEBUG_TRUNCATE else text[:DEBUG_TRUNCATE] + f"... ({len(text)} chars)"


def _log(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


def build_handler(predictor: Predictor, batch: batching.BatchHandler | None = None, nan_as_null: bool = False,
                  str_as_text: bool = False, call: str = "module") -> Handler:
    """The replica's requests: POST /predict runs the predictor, POST /v2/infer runs a V2
    inference request (cortexd/v2/hop.py), GET /info describes it.

    With server-side batching (`batch`), POST /predict-batch runs a batch frame and POST
    /predict is a batch of one, so the predictor always sees the batched form; each request
    of a batch is read and answered as below (cortexd/replica/batching.py). A predictor
    that takes query_params or headers (Cortex v0.17+) gets them; a predictor exception answers
    the status its Cortex release answered (calls.error_status). `nan_as_null`, `str_as_text`:
    how predictions go out (ReplicaSpec; bodies.render_prediction)."""
    predict = predictor.predict
    predict_request = getattr(predictor, "predict_request", None) if getattr(predictor, "wants", None) else None
    # Cortex v0.17+ handed predict the body by its Content-Type (cortexd/replica/payloads.py).
    by_content_type = call in (CALL_CLASS_KWARGS, CALL_HANDLER)
    predict_path, info_path = protocol.PREDICT_PATH, protocol.INFO_PATH
    loads = parse_body
    # Open Inference Protocol (cortexd/v2): a Python predictor that takes lists under batching
    # gets a V2 request as a list of one
    v2 = V2Predictor(predictor, batched=batch is not None and batch.lists)
    v2_path = v2_hop.REPLICA_PATH

    def error(status: int, message: str) -> tuple[int, bytes]:
        return status, json.dumps({"error": message}).encode()

    def handle(method: str, path: str, query: str, body: bytes, headers: list[tuple[str, str]] | None = None
               ) -> tuple[int, bytes] | tuple[int, bytes, bytes]:
        if path == predict_path and method == "POST":
            if batch is not None:
                return batch.one(query, body, headers)
            # The daemon passes "debug=true" only when its policy allows it (serving/access.py).
            debug = bool(query) and debug_requested(query)
            try:
                payload = payload_of(body, header(headers, "content-type")) if by_content_type else loads(body)
            except BodyError as exc:
                return error(400, str(exc))
            if debug:
                _log(f"debug: sample: {_truncate(body.decode('utf-8', 'replace'))}")
            try:
                result = predict(payload) if predict_request is None else predict_request(payload, query, headers)
            except PayloadError as exc:
                return error(400, str(exc))
            except BaseException as exc:  # sys.exit() and KeyboardInterrupt too: answer, never die
                _log(f"prediction failed:\n{traceback.format_exc()}")
                hint = missing_package_hint(exc)
                return error(error_status(call, exc),
                             f"prediction failed: {type(exc).__name__}: {exc}" + (f"; {hint}" if hint else ""))
            try:
                answer = render_prediction(result, nan_as_null, str_as_text)
            except PredictionError as exc:
                _log(f"prediction failed: {exc}")
                return error(500, str(exc))
            except BaseException as exc:  # a result too deep to encode raises RecursionError
                _log(f"prediction failed: {type(exc).__name__}: {exc}")
                return error(
                    500, f"prediction failed: the result cannot be encoded as JSON: {type(exc).__name__}: {exc}"
                )
            if debug:
                shown = (answer[1].decode("utf-8", "replace") if len(answer) == 2
                         else f"{type(result).__name__} of {len(answer[1])} bytes")
                _log(f"debug: prediction: {_truncate(shown)}")
            return answer
        if path == batchframe.BATCH_PATH and method == "POST" and batch is not None:
            return batch.frame(body)
        if path == v2_path and method == "POST":
            return handle_replica_request(v2, query, body)
        if path == info_path and method == "GET":
            return 200, encode_prediction(predictor.describe())
        return error(404, f"{method} {path} is not served here")

    return handle


def _send_status(fd: int, message: StatusMessage) -> None:
    try:
        os.write(fd, encode_status(message))
    except OSError:
        pass


async def serve(predictor: Predictor, ctx: ReplicaSpec, socket_path: str, status_fd: int) -> None:
    handler = build_handler(predictor, batching.for_replica(predictor, ctx), ctx.nan_as_null, ctx.str_as_text, ctx.call)
    # threads_per_process > 1: requests run in a pool of that size, one per daemon connection
    executor = ThreadPoolExecutor(ctx.threads, thread_name_prefix="request") if ctx.threads > 1 else None
    want_headers = "headers" in getattr(predictor, "wants", ()) or ctx.call in (CALL_CLASS_KWARGS, CALL_HANDLER)
    connections: set[ReplicaProtocol] = set()
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(socket_path)
    os.chmod(socket_path, 0o600)
    sock.listen(64)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(
        lambda: ReplicaProtocol(handler, connections, executor, want_headers), sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _send_status(status_fd, Ready(predictor.describe(), os.getpid()))
    await stop.wait()
    # The daemon drains us before SIGTERM, so nothing is in flight here.
    server.close()
    for conn in list(connections):
        conn.close_if_idle()
    try:
        os.unlink(socket_path)
    except OSError:
        pass


def run(coro: Any) -> None:
    """asyncio.run on uvloop where it is installed (as in the daemon): a cheaper loop per request."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    if hasattr(uvloop, "run"):
        uvloop.run(coro)
    else:  # uvloop < 0.18
        uvloop.install()
        asyncio.run(coro)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cortexd.replica")
    parser.add_argument("--spec-fd", type=int, required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    ctx = read_spec_fd(args.spec_fd)
    started = time.monotonic()
    try:
        predictor = load_predictor(ctx)
    except BaseException as exc:  # anything the user's code raised, SystemExit included
        reason = str(exc) if isinstance(exc, PredictorLoadError) else f"{type(exc).__name__}: {exc}"
        _log(f"loading the predictor failed: {reason}\n{traceback.format_exc()}")
        _send_status(args.status_fd, LoadFailed(reason, traceback.format_exc()))
        os._exit(protocol.EXIT_LOAD_FAILED)
    _log(f"predictor loaded in {time.monotonic() - started:.2f}s")
    run(serve(predictor, ctx, args.socket, args.status_fd))
