"""The V2 GRPCInferenceService (grpc.aio) over a V2Backend, on the daemon's event loop.

ServerLive, ServerReady, ModelReady, ServerMetadata and ModelMetadata are answered from the
backend at once. ModelInfer becomes the same replica request a REST binary request does
(cortexd/v2/grpc_convert.py): the daemon queues it like any other, and slices the replica's
binary answer into raw_output_contents. Errors are gRPC status codes with the message the
REST endpoint would put in {"error": ...}:

    400 INVALID_ARGUMENT   404 NOT_FOUND    413 RESOURCE_EXHAUSTED   415 INVALID_ARGUMENT
    500 INTERNAL           503 UNAVAILABLE  504 DEADLINE_EXCEEDED

`serve(backend, host, port)` starts the server (off by default; `cortexd serve --grpc-port`),
plaintext, or TLS with `credentials` (the daemon's --tls-cert/--tls-key, as on its HTTP port).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from cortexd.v2 import metadata
from cortexd.v2.backend import ModelEntry, V2Backend
from cortexd.v2.datatypes import TensorError
from cortexd.v2.grpc_convert import fill_response, request_body
from cortexd.v2.hop import ReplicaCall, replica_target, split_answer
from cortexd.v2.pb import inference_pb2 as pb
from cortexd.v2.pb import inference_pb2_grpc as pb_grpc

# grpcio-tools generates this without annotations (cortexd/v2/pb/): its signature, typed here.
_add_servicer: Callable[[pb_grpc.GRPCInferenceServiceServicer, grpc.aio.Server], None] = (
    pb_grpc.add_GRPCInferenceServiceServicer_to_server
)

STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # as the REST body limit's default


def status_code(http_status: int) -> grpc.StatusCode:
    return STATUS_CODES.get(http_status, grpc.StatusCode.UNKNOWN)


def error_message(payload: bytes) -> str:
    """The message of a JSON error answer ({"error": ...}), or the answer itself."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")[:2000]
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, str):
        return error
    return payload.decode("utf-8", "replace")[:2000]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, backend: V2Backend) -> None:
        self.backend = backend

    async def _model(self, name: str, version: str, context: Any) -> ModelEntry:
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request names no model")
        entry = self.backend.model(name)
        if entry is None:
            names = ", ".join(sorted(self.backend.models())[:20]) or "none"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; the models served are: {names}")
        assert entry is not None  # abort raises
        if version and version != entry.version:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} has no version {version!r}; the version served is {entry.version!r}",
            )
        return entry

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.backend.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.backend.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        entry = await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=entry.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        doc = metadata.server_metadata()
        return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"], extensions=doc["extensions"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        entry = await self._model(request.name, request.version, context)
        doc = metadata.model_metadata(entry)
        response = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"])
        for side, target in (("inputs", response.inputs), ("outputs", response.outputs)):
            for t in doc[side]:
                target.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        entry = await self._model(request.model_name, request.model_version, context)
        try:
            body, header_length = request_body(request)
        except TensorError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        target = replica_target(ReplicaCall(entry.name, entry.version, header_length))
        status, _headers, payload = await self.backend.infer(entry.name, target, body)
        if status != 200:
            await context.abort(status_code(status), error_message(payload))
        header, binary = split_answer(payload)
        try:
            return fill_response(pb.ModelInferResponse(), header, binary)
        except (ValueError, KeyError, TypeError, TensorError) as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"the replica's answer cannot be read: {exc}")


async def serve(
    backend: V2Backend, host: str, port: int, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    interceptors: Sequence[Any] = (), credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on host:port (0: a free port); (server, the port bound), over
    TLS with `credentials` (grpc.ssl_server_credentials), else plaintext.
    Stop it with `await server.stop(grace_seconds)`. Raises RuntimeError when the port
    cannot be bound."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second daemon on the same port must fail, not share it
        ]
    )
    _add_servicer(InferenceServicer(backend), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # gRPC says "failed to bind" for a certificate it cannot use, too: say both.
    hint = " (or cannot use the TLS certificate and key)" if credentials is not None else ""
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC: cannot listen on {address}{hint}: {exc}") from None
    if bound == 0:
        raise RuntimeError(f"gRPC: cannot listen on {address}{hint}")
    await server.start()
    return server, bound
