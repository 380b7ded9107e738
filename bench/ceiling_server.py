"""The ceiling: the best a Python HTTP stack does with one process and no proxy.

Sanic in single-process mode (uvloop, as Sanic runs by default), onnxruntime with one
intra-op thread, one sample per request, JSON in and out: parse the posted list (ujson, as
cortexd's replica does), add the batch axis, run, answer `{output_name: value}` (json.dumps)
like cortexd's ONNX APIs do. No validation
beyond what numpy does, no logging, no metrics: nothing between the socket and the model.

    python bench/ceiling_server.py MODEL.onnx --port 8100

With `--replica`, it serves cortexd's own replica (cortexd.replica.main.build_handler with
the ONNX predictor, on cortexd.replica.server's HTTP server) on TCP instead: cortexd minus
the proxy, "straight to a replica".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `cortexd` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_ceiling_app(model_path: str) -> Any:
    import numpy as np
    import onnxruntime as ort
    from sanic import Sanic
    from sanic.response import HTTPResponse

    from bench.limit import body_loads

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    run = session.run
    loads, dumps = body_loads(), json.dumps
    float32 = np.float32

    app = Sanic("ceiling", configure_logging=False)
    app.config.ACCESS_LOG = False
    app.config.KEEP_ALIVE_TIMEOUT = 120

    @app.post("/predict")
    async def predict(request: Any) -> HTTPResponse:
        x = np.asarray(loads(request.body), dtype=float32)[None]
        outputs = run(None, {input_name: x})
        body = dumps({n: v.tolist() for n, v in zip(output_names, outputs, strict=True)}, separators=(",", ":"))
        return HTTPResponse(body, content_type="application/json")

    return app


def serve_replica(model_path: str, host: str, port: int) -> None:
    """cortexd's replica (its request handler and HTTP server, cortexd/replica/) on TCP."""
    import asyncio
    import socket

    from cortexd.protocol import ReplicaSpec
    from cortexd.replica.main import build_handler, run
    from cortexd.replica.predictors import load_predictor
    from cortexd.replica.server import ReplicaProtocol

    ctx = ReplicaSpec(
        api_name="bench", kind="onnx", predictor_path=None, model_path=os.path.abspath(model_path),
        signature_key=None, config={}, python_path=os.getcwd(), gpus=[], cpu=1.0,
    )
    handler = build_handler(load_predictor(ctx))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        connections: set[ReplicaProtocol] = set()
        server = await loop.create_server(lambda: ReplicaProtocol(handler, connections), host, port, backlog=1024)
        for sock in server.sockets:  # as Sanic does: small answers leave at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(f"ready on {host}:{port}", file=sys.stderr, flush=True)
        await server.serve_forever()

    run(serve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--replica", action="store_true", help="serve cortexd's replica app instead")
    args = parser.parse_args(argv)
    if args.replica:
        serve_replica(args.model, args.host, args.port)
        return
    app = build_ceiling_app(args.model)
    print(f"ready on {args.host}:{args.port}", file=sys.stderr, flush=True)
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, debug=False,
            motd=False, verbosity=0)


if __name__ == "__main__":
    main()
