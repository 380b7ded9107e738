"""The daemon's V2 side without the daemon: the V2 REST router on Sanic and the gRPC service,
over a backend that sends each request to one real replica process over the real hop
(cortexd's upstream connection), one request at a time, as the daemon's queue does.

No queue, metrics or tracker: beside `--target cortexd`, it shows what those cost on the V2
path (bench/v2.py --target front).

    python bench/v2_front.py MODEL.onnx --port 8200 --grpc-port 8201
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import subprocess
import sys
import tempfile
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

API = "mlp"


def start_replica(model_path: str, socket_path: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`python -m cortexd.replica` as the daemon's spawner starts it; returns once it is ready."""
    from cortexd import protocol

    spec = protocol.ReplicaSpec(api_name=API, kind="onnx", predictor_path=None, model_path=os.path.abspath(model_path),
                                signature_key=None, config={}, python_path=os.getcwd(), gpus=[], cpu=0.5)
    spec_fd = protocol.spec_fd(spec)
    status_r, status_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortexd.replica", "--spec-fd", str(spec_fd), "--socket", socket_path,
         "--status-fd", str(status_w), "--parent-pid", str(os.getpid())],
        pass_fds=(spec_fd, status_w))
    os.close(spec_fd)
    os.close(status_w)
    ready, _, _ = select.select([status_r], [], [], 120)
    line = os.read(status_r, 1 << 16) if ready else b""
    os.close(status_r)
    message = protocol.decode_status(line.split(b"\n")[0])
    if not isinstance(message, protocol.Ready):
        proc.kill()
        raise SystemExit(f"the replica did not start: {message}")
    return proc, message.info


class OneReplica:
    """V2Backend over one replica."""

    def __init__(self, socket_path: str, info: dict[str, Any]) -> None:
        from cortexd.daemon.serving.upstream import UpstreamConnection
        from cortexd.v2.backend import ModelEntry

        self.entry = ModelEntry(API, "1", True, "onnx", info)
        self.conn = UpstreamConnection(socket_path)
        self.lock: asyncio.Lock | None = None

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def models(self) -> list[str]:
        return [API]

    def model(self, name: str) -> Any:
        return self.entry if name == API else None

    async def infer(self, model: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            status, payload = await self.conn.request(target, body)
        return status, {}, payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    args = parser.parse_args(argv)

    from sanic import Sanic
    from sanic.response import HTTPResponse

    from cortexd.v2 import grpc_service, rest

    folder = tempfile.mkdtemp(prefix="cx-front-")
    proc, info = start_replica(args.model, os.path.join(folder, "r.sock"))
    backend = OneReplica(os.path.join(folder, "r.sock"), info)
    app = Sanic("v2front", configure_logging=False)
    app.config.ACCESS_LOG = False
    app.config.KEEP_ALIVE_TIMEOUT = 120
    servers: list[Any] = []

    async def v2(request: Any, path: str = "") -> HTTPResponse:
        status, headers, body = await rest.handle(request.method, request.path, request.headers, request.body,
                                                  backend, request.query_string)
        content_type = headers.pop("Content-Type", "application/json")
        return HTTPResponse(body, status=status, headers=headers, content_type=content_type)

    app.add_route(v2, "/v2", methods=["GET", "POST"], name="v2root")
    app.add_route(v2, "/v2/<path:path>", methods=["GET", "POST"], name="v2")

    @app.before_server_start
    async def start_grpc(app: Any) -> None:
        server, _ = await grpc_service.serve(backend, "127.0.0.1", args.grpc_port)
        servers.append(server)

    try:
        print(f"ready on 127.0.0.1:{args.port} (gRPC {args.grpc_port})", file=sys.stderr, flush=True)
        app.run(host="127.0.0.1", port=args.port, single_process=True, access_log=False, debug=False,
                motd=False, verbosity=0)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
