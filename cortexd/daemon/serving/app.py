"""The HTTP app on the host port (Sanic): health, readiness, metrics, and every API endpoint.

The connection protocol is Sanic's, with two guards a server facing careless or hostile
clients needs and Sanic's own timeouts do not give (they restart on every byte):
- a cap on open client connections: over it, a new connection gets 503 and is closed, the
  ones already open are untouched;
- absolute deadlines: a client has `header_timeout_s` from its request's first byte to send
  the whole header block, and `request_timeout_s` more for the body.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sanic.http.constants import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from cortexd.daemon.serving.access import (
    ENDPOINT,
    METRICS,
    READYZ,
    Access,
    endpoint_kind,
    forwarded_query,
    route_kind,
)
from cortexd.daemon.serving.answers import head_too_large
from cortexd.daemon.serving.proxy import Answer, Proxy, forwarded_headers
from cortexd.v2 import rest as v2_rest
from cortexd.v2.backend import V2Backend

log = logging.getLogger("cortexd.app")

JSON = "application/json"

_OVERLOADED_BODY = b'{"error": "too many open connections; try again"}'
OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_OVERLOADED_BODY)).encode() + b"\r\n\r\n" + _OVERLOADED_BODY
)


class Views(Protocol):
    """What the app shows that is not a prediction (renderings of the supervisor's snapshot)."""

    def liveness(self) -> tuple[bool, dict[str, Any]]: ...

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]: ...

    def metrics_text(self) -> tuple[bytes, str]: ...

    def api_summary(self, api: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    request_timeout_s: float


def guarded_protocol(limits: ConnectionLimits) -> type[HttpProtocol]:
    class GuardedHttpProtocol(HttpProtocol):
        _rejected = False

        def connection_made(self, transport: Any) -> None:
            if len(self.connections) >= limits.max_connections:
                self._rejected = True
                transport.write(OVERLOADED)
                transport.close()
                return
            super().connection_made(transport)  # type: ignore[no-untyped-call]  # Sanic's has no annotations

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._rejected:
                super().connection_lost(exc)  # type: ignore[no-untyped-call]  # Sanic's has no annotations

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return
            # Sanic restarts its timeout clock on every byte; from the first byte of a request
            # until its handler runs, keep the clock where the request began (absolute).
            http = getattr(self, "_http", None)
            frozen = http is not None and http.stage in (Stage.REQUEST, Stage.HANDLER)
            began = self._time
            super().data_received(data)
            if frozen:
                self._time = began

    return GuardedHttpProtocol


def build_app(proxy: Proxy, views: Views, access: Access, limits: ConnectionLimits, v2: V2Backend,
              name: str = "cortexd") -> Any:
    from sanic import Sanic
    from sanic.compat import Header
    from sanic.exceptions import SanicException
    from sanic.response import HTTPResponse

    app = Sanic(name, configure_logging=False)
    app.config.REQUEST_MAX_SIZE = proxy.settings.max_body_bytes
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.KEEP_ALIVE_TIMEOUT = 75
    # With the clock held at the request's first byte (GuardedHttpProtocol): the header block
    # must be complete within header_timeout_s, the body within request_timeout_s after it.
    # Sanic annotates its timeouts int, but they are seconds compared with the loop's float
    # clock, so a fraction of a second (--header-timeout 0.5) works.
    response_timeout = limits.header_timeout_s + limits.request_timeout_s + 5
    app.config.REQUEST_TIMEOUT = limits.header_timeout_s  # type: ignore[assignment]  # float seconds, see above
    app.config.RESPONSE_TIMEOUT = response_timeout  # type: ignore[assignment]  # float seconds, see above

    def respond(answer: Answer, cors: dict[str, str]) -> HTTPResponse:
        headers = dict(cors)
        if answer.headers:
            headers.update(answer.headers)
        body = answer.body
        if type(body) is bytes:  # JSON: the hot path
            return HTTPResponse(body, status=answer.status, headers=headers, content_type=JSON)
        # A prediction that is not JSON (bytes, text, a Response): the replica's content type
        # and headers (serving/answers.py); ours (CORS, Retry-After) come first.
        return HTTPResponse(
            bytes(body), status=answer.status, content_type=getattr(body, "content_type", JSON),
            headers=Header(list(headers.items()) + list(getattr(body, "headers", ()))),
        )

    def json_response(status: int, obj: Any, headers: dict[str, str] | None = None,
                      cors: dict[str, str] | None = None) -> HTTPResponse:
        return respond(Answer(status, json.dumps(obj).encode(), headers), cors or {})

    def refused(kind: str, request: Any) -> HTTPResponse | None:
        refusal = access.check(kind, request.method, request.headers)
        if refusal is None:
            return None
        return HTTPResponse(refusal.body, status=refusal.status, headers=refusal.headers, content_type=JSON)

    def handler_started(request: Any) -> None:
        # The body has arrived: from here the handler's own deadlines apply (the proxy's
        # request timeout), so restart Sanic's clock for the response timeout.
        protocol = request.transport.get_protocol() if request.transport is not None else None
        if protocol is not None and hasattr(protocol, "_time"):
            protocol._time = time.monotonic()

    # No CORS headers on the daemon's own paths: browsers have no business there.
    @app.get("/healthz")
    async def healthz(request: Any) -> HTTPResponse:
        ok, body = views.liveness()
        return json_response(200 if ok else 503, body)

    @app.get("/readyz")
    async def readyz(request: Any) -> HTTPResponse:
        denied = refused(READYZ, request)
        if denied is not None:
            return denied
        ok, not_ready = views.readiness()
        return json_response(200 if ok else 503, {"ready": ok, "not_ready": not_ready})

    @app.get("/metrics")
    async def metrics(request: Any) -> HTTPResponse:
        denied = refused(METRICS, request)
        if denied is not None:
            return denied
        body, ctype = views.metrics_text()
        return HTTPResponse(body, status=200, content_type=ctype)

    async def endpoint(request: Any, path: str = "") -> HTTPResponse:
        route = request.path.rstrip("/") or "/"
        method = request.method
        headers = request.headers
        if method == "OPTIONS":  # a CORS preflight: no key, requested headers echoed
            return HTTPResponse(b"", status=204, headers=access.cors(ENDPOINT, headers, preflight=True))
        # Before routing: without a key, no list of endpoints. The V2 health checks need none.
        denied = refused(endpoint_kind(request.path), request)
        if denied is not None:
            return denied
        cors = access.cors(ENDPOINT, headers)
        if v2_rest.is_v2_path(request.path):  # the Open Inference Protocol (docs/v2.md)
            return await open_inference(request, cors)
        api = proxy.route(route)
        if api is None:
            return json_response(404, {"error": f"no API is served at {route}"}, cors=cors)
        if method == "POST":
            if not proxy.accepting:
                return json_response(503, {"error": "cortexd is shutting down"},
                                     {"Retry-After": "5", "Connection": "close"}, cors)
            handler_started(request)
            debug = access.debug(request.query_string, request.ip)
            query, headers = debug.upstream_query, b""
            if proxy.forwards_headers(api):  # a predictor that may take query_params and headers
                query = forwarded_query(request.query_string, debug)
                headers = forwarded_headers(request.headers.items())
            if route in proxy.splits:
                proxy.shadow(route, request.body, query, headers)
            answer = await proxy.predict(api, request.body, query, headers)
            if debug.header is not None:
                answer.headers = {**(answer.headers or {}), debug.header[0]: debug.header[1]}
            return respond(answer, cors)
        if method == "GET":
            return json_response(200, views.api_summary(api), cors=cors)
        return json_response(405, {"error": f"{method} is not allowed; POST a JSON body to {route}"}, cors=cors)

    async def open_inference(request: Any, cors: dict[str, str]) -> HTTPResponse:
        if request.method == "POST" and not proxy.accepting:
            return json_response(
                503, {"error": "cortexd is shutting down"}, {"Retry-After": "5", "Connection": "close"}, cors
            )
        handler_started(request)
        debug = access.debug(request.query_string, request.ip)
        status, headers, body = await v2_rest.handle(request.method, request.path, request.headers, request.body, v2,
                                                     debug.upstream_query)
        headers = {**cors, **headers}
        if debug.header is not None:
            headers[debug.header[0]] = debug.header[1]
        content_type = headers.pop("Content-Type", headers.pop("content-type", JSON))
        return HTTPResponse(body, status=status, headers=headers, content_type=content_type)

    methods = ["GET", "POST", "OPTIONS", "PUT", "PATCH", "DELETE"]
    app.add_route(endpoint, "/", methods=methods, name="root")
    app.add_route(endpoint, "/<path:path>", methods=methods, name="endpoint")

    @app.exception(SanicException)
    async def sanic_error(request: Any, exc: SanicException) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) or 500
        message = str(exc) or getattr(exc, "message", "") or "error"
        if status == 413 and "header" in message.lower():
            # Sanic says 413 for a head over its limit: 414 when the URL alone is, else 431.
            stream = getattr(request, "stream", None)
            status, message = head_too_large(getattr(stream, "recv_buffer", None),
                                             request.app.config.REQUEST_MAX_HEADER_SIZE)
        elif status == 413:
            message = f"request body is larger than the limit ({proxy.settings.max_body_bytes} bytes)"
        return json_response(status, {"error": message}, cors=access.cors(route_kind(request.path), request.headers))

    return app
