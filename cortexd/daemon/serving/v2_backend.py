"""The daemon's side of the Open Inference Protocol (cortexd/v2): every API is a V2 model.

The V2 front ends (the REST router on the host port, the gRPC service on --grpc-port) ask
this backend; inference requests go through the API's own queue (batching, deadlines,
retries, metrics, tracker, `cortexd get`), as `POST /v2/infer` to its replica.

The gRPC port's access rules live here too, as the HTTP port's do in access.py: its TLS
credentials (the same --tls-cert/--tls-key files) and the API-key interceptor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from cortexd.daemon.fleet.supervisor import Supervisor
from cortexd.daemon.serving.access import TLS_PAIR, Access, AccessConfigError, presented_key
from cortexd.daemon.serving.proxy import Proxy
from cortexd.v2.backend import ModelEntry

MAX_PEM_BYTES = 1 << 20  # a certificate chain or a key is a few KiB; more is not one


class DaemonV2Backend:
    def __init__(self, supervisor: Supervisor, proxy: Proxy, ready: Callable[[], bool]) -> None:
        self._supervisor = supervisor
        self._proxy = proxy
        self._ready = ready

    def live(self) -> bool:
        return self._proxy.accepting

    def ready(self) -> bool:
        return self._proxy.accepting and self._ready()

    def models(self) -> list[str]:
        return [name for name, snap in self._supervisor.snapshot().items() if not snap.stopping]

    def model(self, name: str) -> ModelEntry | None:
        snap = self._supervisor.snapshot().get(name)
        if snap is None or snap.stopping:
            return None
        return ModelEntry(name, str(snap.version), snap.ready > 0, snap.spec.predictor.kind, dict(snap.info),
                          snap.spec.v2)

    async def infer(self, model: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if not self._proxy.accepting:
            return 503, {"Retry-After": "5"}, b'{"error": "cortexd is shutting down"}'
        answer = await self._proxy.predict(model, body, "", target=target)
        return answer.status, dict(answer.headers or {}), bytes(answer.body)


# The health calls, open as /healthz and /v2/health/{live,ready} are: probes carry no key.
OPEN_CALLS = frozenset(("/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"))


def grpc_needs_key(method: str, keys_on: bool) -> bool:
    """Whether a gRPC call (its full method name) must carry an API key."""
    return keys_on and method not in OPEN_CALLS


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """With --api-keys, gRPC calls need the key too: metadata `authorization: Bearer KEY` or
    `x-api-key: KEY`, as the HTTP port's headers. ServerLive and ServerReady stay open."""

    def __init__(self, access: Access) -> None:
        self._access = access

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if not grpc_needs_key(details.method, bool(self._access.keys)):
            return await continuation(details)
        metadata = {k.lower(): v for k, v in (details.invocation_metadata or ())}
        if self._access.keys.matches(presented_key(metadata)):
            return await continuation(details)

        async def refuse(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or invalid API key: send authorization: Bearer <key> or x-api-key: <key>")

        return grpc.unary_unary_rpc_method_handler(refuse)


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise AccessConfigError(f"--tls-cert/--tls-key: {path}: no such file") from None
    except OSError as exc:
        raise AccessConfigError(f"--tls-cert/--tls-key: {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise AccessConfigError(f"--tls-cert/--tls-key: {path}: not a PEM file")
    return data


def grpc_credentials(cert: str | None, key: str | None) -> grpc.ServerCredentials | None:
    """`serve --tls-cert FILE --tls-key FILE` on the gRPC port: TLS with the HTTP port's
    certificate and key, or None (neither given): plaintext. Raises AccessConfigError naming
    the file. The daemon calls access.tls_context first, which checks that the key matches
    the certificate; gRPC itself would only say it cannot bind the port."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise AccessConfigError(TLS_PAIR)
    return grpc.ssl_server_credentials([(_read_pem(key), _read_pem(cert))])
