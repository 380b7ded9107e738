"""The reverse proxy on the host port: routes endpoints to their API's queue and replicas.

Request bodies pass through as bytes: the replica parses the JSON (and answers 400 when it
is not JSON), so the proxy never decodes a payload unless the API is tracked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from cortexd import protocol
from cortexd.daemon.serving.dispatch import (
    ApiQueue,
    DeadlineExceeded,
    Job,
    NoReplicas,
    PredictionTimeout,
    QueueFull,
    ReplicaFailed,
    ReplicaLink,
    Unreachable,
)
from cortexd.daemon.serving.answers import head_too_large
from cortexd.daemon.serving.upstream import UpstreamConnection

log = logging.getLogger("cortexd.proxy")

JSON = "application/json"
CORS = {"Access-Control-Allow-Origin": "*"}


@dataclass
class ProxySettings:
    request_timeout_s: float = 60.0
    max_queue: int = 1024
    max_body_bytes: int = 32 * 1024 * 1024
    retry_after_s: int = 5


class ProxyObserver(Protocol):
    """Told about every answered prediction request (stats, metrics, tracker)."""

    def observe(self, api: str, status: int, latency_s: float, queue_s: float, body: bytes) -> None: ...


class ApiDirectory(Protocol):
    """What the proxy asks the daemon about APIs (status, summary, readiness)."""

    def api_status(self, api: str) -> str: ...

    def api_summary(self, api: str) -> dict[str, Any]: ...

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]: ...

    def metrics_text(self) -> tuple[bytes, str]: ...


@dataclass
class Answer:
    status: int
    body: bytes  # plain bytes: JSON; an answers.TypedPayload: its own content type and headers
    headers: dict[str, str] | None = None


def _error(status: int, message: str, **extra: Any) -> Answer:
    return Answer(status, json.dumps({"error": message, **extra}).encode())


class Proxy:
    """Holds the routes and queues; implements the supervisor's Router protocol."""

    def __init__(self, settings: ProxySettings, directory: ApiDirectory, observer: ProxyObserver | None = None) -> None:
        self.settings = settings
        self.directory = directory
        self.observer = observer
        self.queues: dict[str, ApiQueue] = {}
        self.routes: dict[str, str] = {}  # endpoint -> api name
        self.accepting = True
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- routes (daemon) -----------------------------------------------------------------

    def set_route(self, api: str, endpoint: str) -> None:
        """Add an API's route, or move it atomically to a new endpoint."""
        for ep, name in list(self.routes.items()):
            if name == api and ep != endpoint:
                del self.routes[ep]
        self.routes[endpoint] = api
        if api not in self.queues:
            self.queues[api] = ApiQueue(api, self.settings.max_queue)

    def remove_route(self, api: str) -> None:
        """New requests to the API get 404; its queue stays until `forget`, so the requests
        it holds are still answered while its replicas drain."""
        for ep, name in list(self.routes.items()):
            if name == api:
                del self.routes[ep]

    def forget(self, api: str) -> None:
        self.remove_route(api)
        q = self.queues.pop(api, None)
        if q is not None:
            q.set_hold_when_empty(False)

    def queue_counts(self, api: str) -> tuple[int, int]:
        """(in flight at replicas, waiting in the queue) for an API."""
        q = self.queues.get(api)
        return (q.in_flight, q.queued) if q is not None else (0, 0)

    # -- Router protocol (supervisor) ----------------------------------------------------

    def replica_ready(self, api: str, replica_id: str, socket_path: str, version: int) -> None:
        q = self.queues.get(api)
        if q is None:
            q = self.queues[api] = ApiQueue(api, self.settings.max_queue)
        q.add(ReplicaLink(replica_id, UpstreamConnection(socket_path), version))

    def drain(self, api: str, replica_id: str, on_drained: Callable[[], None]) -> None:
        q = self.queues.get(api)
        if q is None:
            on_drained()
        else:
            q.drain(replica_id, on_drained)

    def replica_gone(self, api: str, replica_id: str) -> None:
        q = self.queues.get(api)
        if q is not None:
            q.remove(replica_id)

    def set_hold_when_empty(self, api: str, hold: bool) -> None:
        q = self.queues.get(api)
        if q is not None:
            q.set_hold_when_empty(hold)

    # -- the hot path --------------------------------------------------------------------

    async def predict(self, api: str, body: bytes, query: str) -> Answer:
        """Queue, dispatch to a replica, answer; also used by `cortexd predict`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.in_flight += 1
        self._idle.clear()
        queue_s = 0.0
        try:
            answer, queue_s = await self._dispatch(api, body, query, started)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        if self.observer is not None:
            self.observer.observe(api, answer.status, loop.time() - started, queue_s, answer.body)
        return answer

    async def _dispatch(self, api: str, body: bytes, query: str, started: float) -> tuple[Answer, float]:
        q = self.queues.get(api)
        if q is None:
            return self._unavailable(api, "the API has no replicas"), 0.0
        target = protocol.PREDICT_PATH + ("?" + query if query else "")
        try:
            job = q.submit(target, body, started + self.settings.request_timeout_s)
        except NoReplicas:
            return self._unavailable(api, "no replica is ready"), 0.0
        except QueueFull:
            return self._unavailable(api, f"all replicas are busy and the queue is full ({q.max_queue})"), 0.0
        try:
            status, payload = await job.future
        except asyncio.CancelledError:
            # The client left: a queued request leaves the queue; one a replica holds runs to
            # its end, and the replica is released when it answers.
            q.abandon(job)
            raise
        except (NoReplicas, DeadlineExceeded, PredictionTimeout, ReplicaFailed, Unreachable) as exc:
            return self._failure(api, q, job, exc, started)
        dispatched = job.dispatched_at
        return Answer(status, payload), (dispatched - started if dispatched is not None else 0.0)

    def _failure(self, api: str, q: ApiQueue, job: Job, exc: Exception, started: float) -> tuple[Answer, float]:
        loop = asyncio.get_running_loop()
        queue_s = (job.dispatched_at if job.dispatched_at is not None else loop.time()) - started
        timeout = self.settings.request_timeout_s
        if isinstance(exc, NoReplicas):
            return self._unavailable(api, "no replica is ready"), queue_s
        if isinstance(exc, DeadlineExceeded):
            return _error(504, f"waited longer than the request timeout ({timeout:g}s) for a replica"), queue_s
        if isinstance(exc, PredictionTimeout):
            return _error(504, f"the prediction ran longer than the request timeout ({timeout:g}s)"), queue_s
        if isinstance(exc, ReplicaFailed):
            log.warning("%s: a replica failed during a request: %s", api, exc)
            return self._unavailable(api, "the replica exited while handling the request"), queue_s
        log.warning("%s: no replica could be reached: %s", api, exc)
        return self._unavailable(api, "no replica could be reached"), queue_s

    def _unavailable(self, api: str, reason: str) -> Answer:
        status = self.directory.api_status(api)
        return Answer(
            503,
            json.dumps({"error": f"{reason} (API {api} is {status})", "status": status}).encode(),
            {"Retry-After": str(self.settings.retry_after_s)},
        )

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- the Sanic app -------------------------------------------------------------------

    def build_app(self, name: str = "cortexd") -> Any:
        from sanic import Sanic
        from sanic.compat import Header
        from sanic.exceptions import SanicException
        from sanic.response import HTTPResponse

        app = Sanic(name, configure_logging=False)
        app.config.REQUEST_MAX_SIZE = self.settings.max_body_bytes
        app.config.ACCESS_LOG = False
        app.config.NOISY_EXCEPTIONS = False
        app.config.FALLBACK_ERROR_FORMAT = "json"
        app.config.KEEP_ALIVE_TIMEOUT = 75
        app.config.REQUEST_TIMEOUT = 60
        app.config.RESPONSE_TIMEOUT = self.settings.request_timeout_s + 30
        proxy = self
        cors = CORS

        def respond(answer: Answer) -> HTTPResponse:
            headers = dict(cors)
            if answer.headers:
                headers.update(answer.headers)
            body = answer.body
            if type(body) is bytes:  # JSON: the hot path
                return HTTPResponse(body, status=answer.status, headers=headers, content_type=JSON)
            # A prediction that is not JSON (bytes, text, a Response): the replica's content
            # type and headers (serving/answers.py); ours (CORS, Retry-After) come first.
            return HTTPResponse(
                bytes(body), status=answer.status, content_type=getattr(body, "content_type", JSON),
                headers=Header(list(headers.items()) + list(getattr(body, "headers", ()))),
            )

        def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> HTTPResponse:
            return respond(Answer(status, json.dumps(obj).encode(), headers))

        @app.get("/healthz")
        async def healthz(request: Any) -> HTTPResponse:
            return json_response(200, {"status": "ok"})

        @app.get("/readyz")
        async def readyz(request: Any) -> HTTPResponse:
            ok, not_ready = proxy.directory.readiness()
            return json_response(200 if ok else 503, {"ready": ok, "not_ready": not_ready})

        @app.get("/metrics")
        async def metrics(request: Any) -> HTTPResponse:
            body, ctype = proxy.directory.metrics_text()
            return HTTPResponse(body, status=200, headers=dict(cors), content_type=ctype)

        async def endpoint(request: Any, path: str = "") -> HTTPResponse:
            route = request.path.rstrip("/") or "/"
            api = proxy.routes.get(route)
            if api is None:
                return json_response(404, {"error": f"no API is served at {route}"})
            method = request.method
            if method == "POST":
                if not proxy.accepting:
                    return json_response(503, {"error": "cortexd is shutting down"}, {"Retry-After": "5", "Connection": "close"})
                return respond(await proxy.predict(api, request.body, request.query_string))
            if method == "GET":
                return json_response(200, proxy.directory.api_summary(api))
            if method == "OPTIONS":
                return HTTPResponse(
                    b"", status=204,
                    headers={**cors, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                             "Access-Control-Allow-Headers": "Content-Type"},
                )
            return json_response(405, {"error": f"{method} is not allowed; POST a JSON body to {route}"})

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
                status, message = head_too_large(getattr(stream, "recv_buffer", None), request.app.config.REQUEST_MAX_HEADER_SIZE)
            elif status == 413:
                message = f"request body is larger than the limit ({self.settings.max_body_bytes} bytes)"
            return json_response(status, {"error": message})

        return app
