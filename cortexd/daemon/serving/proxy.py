"""Routes and queues: endpoint -> API -> its queue of requests -> a replica (the hot path).

Request bodies pass through as bytes: the replica parses the JSON (and answers 400 when it
is not JSON), so the proxy never decodes a payload unless the API is tracked. The Proxy is
the supervisor's Router (replicas in and out of queues) and reports what it sees of replicas
back as events (lost connections, overdue answers). The HTTP app is serving/app.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cortexd import protocol
from cortexd.config import Batching
from cortexd.daemon.fleet.events import Event
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
from cortexd.daemon.serving.upstream import UpstreamConnection

log = logging.getLogger("cortexd.proxy")


@dataclass
class ProxySettings:
    request_timeout_s: float = 60.0
    max_queue: int = 1024
    max_body_bytes: int = 32 * 1024 * 1024
    retry_after_s: int = 5


class ProxyObserver(Protocol):
    """Told about every answered prediction request (stats, metrics, tracker)."""

    def observe(self, api: str, status: int, latency_s: float, queue_s: float, body: bytes, v2: bool = False) -> None:
        ...

    def observe_batch(self, api: str, size: int, trigger: str | None, waits_s: list[float]) -> None: ...


@dataclass(frozen=True)
class RouteOptions:
    """How the proxy treats one API's requests (from its cortex.yaml)."""

    forward_headers: bool = False  # its predictor may take the client's headers (Cortex v0.17+)
    max_concurrency: int | None = None  # per ready replica; beyond it 503 (autoscaling.max_replica_concurrency)


# Hop-by-hop headers and those the hop sets itself never reach a replica.
_NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "expect",
})


def forwarded_headers(items: Iterable[tuple[str, str]]) -> bytes:
    """The client's header lines for a replica whose predictor takes headers."""
    return b"".join(
        f"{name}: {value}\r\n".encode("latin-1", "replace")
        for name, value in items
        if name.lower() not in _NOT_FORWARDED and "\r" not in value and "\n" not in value
    )


@dataclass(frozen=True)
class SplitRoute:
    """A TrafficSplitter's endpoint: each request goes to one API chosen by weight; shadows get
    a copy whose answer is dropped."""

    name: str
    endpoint: str
    apis: tuple[tuple[str, int], ...]  # (API, weight): the weights sum to 100
    shadows: tuple[str, ...] = ()

    def choose(self, draw: Callable[[], float] = random.random) -> str:
        point = draw() * sum(weight for _, weight in self.apis)
        for api, weight in self.apis:
            if point < weight:
                return api
            point -= weight
        return self.apis[-1][0]


@dataclass
class Answer:
    status: int
    body: bytes  # plain bytes: JSON; an answers.TypedPayload: its own content type and headers
    headers: dict[str, str] | None = None


def error_answer(code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Answer:
    return Answer(code, json.dumps({"error": message, **extra}).encode(), headers)


class Proxy:
    """Holds the routes and queues; implements the supervisor's Router protocol."""

    def __init__(
        self,
        settings: ProxySettings,
        status_of: Callable[[str], str],
        report: Callable[[Event], None],
        observer: ProxyObserver | None = None,
    ) -> None:
        self.settings = settings
        self.status_of = status_of  # an API's status, for 503 messages
        self.report = report  # replica observations, to the supervisor through the event pump
        self.observer = observer
        self.queues: dict[str, ApiQueue] = {}
        self.routes: dict[str, str] = {}  # endpoint -> api name
        self.options: dict[str, RouteOptions] = {}  # api name -> how its requests are handled
        self.splits: dict[str, SplitRoute] = {}  # endpoint -> TrafficSplitter
        self._shadows: set[asyncio.Task[Any]] = set()
        self.accepting = True
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- routes (the reloader) ----------------------------------------------------------

    def set_route(self, api: str, endpoint: str, options: RouteOptions | None = None) -> None:
        """Add an API's route, or move it atomically to a new endpoint."""
        for ep, name in list(self.routes.items()):
            if name == api and ep != endpoint:
                del self.routes[ep]
        self.routes[endpoint] = api
        q = self._queue(api)
        if options is not None:
            self.options[api] = options
            q.max_concurrency = options.max_concurrency

    def remove_route(self, api: str) -> None:
        """New requests to the API get 404; its queue stays until `forget`, so the requests
        it holds are still answered while its replicas drain."""
        for ep, name in list(self.routes.items()):
            if name == api:
                del self.routes[ep]

    def set_splits(self, splits: Iterable[SplitRoute]) -> None:
        """Every TrafficSplitter of the configuration, swapped in at once."""
        self.splits = {s.endpoint: s for s in splits}

    def route(self, path: str) -> str | None:
        """The API a request to `path` goes to: an API's endpoint, or one a splitter chose."""
        api = self.routes.get(path)
        if api is not None:
            return api
        split = self.splits.get(path)
        return split.choose() if split is not None else None

    def shadow(self, path: str, body: bytes, query: str, headers: bytes) -> None:
        """A splitter's shadow APIs get a copy of the request; nobody waits for their answers."""
        split = self.splits.get(path)
        if split is None:
            return
        for api in split.shadows:
            task = asyncio.ensure_future(self.predict(api, body, query, headers))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    def forwards_headers(self, api: str) -> bool:
        options = self.options.get(api)
        return options is not None and options.forward_headers

    def forget(self, api: str) -> None:
        self.remove_route(api)
        self.options.pop(api, None)
        q = self.queues.pop(api, None)
        if q is not None:
            q.set_hold_when_empty(False)

    def queue_counts(self, api: str) -> tuple[int, int]:
        """(in flight at replicas, waiting in the queue) for an API."""
        q = self.queues.get(api)
        return (q.in_flight, q.queued) if q is not None else (0, 0)

    def _queue(self, api: str) -> ApiQueue:
        q = self.queues.get(api)
        if q is None:
            q = self.queues[api] = ApiQueue(api, self.settings.max_queue, self.report)
            observer = self.observer
            if observer is not None:
                def on_batch(jobs: list[Job], trigger: str | None, now: float) -> None:
                    observer.observe_batch(api, len(jobs), trigger, [now - job.arrived for job in jobs])

                q.on_batch = on_batch
        return q

    # -- Router protocol (the supervisor) -----------------------------------------------

    def replica_ready(self, api: str, replica_id: str, socket_path: str, generation: int, slots: int = 1,
                      batching: Batching | None = None) -> None:
        conns = [UpstreamConnection(socket_path) for _ in range(max(1, slots))]
        self._queue(api).add(ReplicaLink(replica_id, conns, generation, batching))

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
        self._queue(api).set_hold_when_empty(hold)

    # -- the hot path --------------------------------------------------------------------

    async def predict(self, api: str, body: bytes, query: str, headers: bytes = b"", target: str | None = None
                      ) -> Answer:
        """Queue, dispatch to a replica, answer; also used by `cortexd predict`. `target`: a
        replica path other than /predict (a V2 inference request, cortexd/v2/hop.py)."""
        # perf_counter: the loop's clock has millisecond resolution under uvloop, too coarse
        # for sub-millisecond predictions.
        started = time.perf_counter()
        self.in_flight += 1
        self._idle.clear()
        queue_s = 0.0
        try:
            answer, queue_s = await self._dispatch(api, body, query, headers, target)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        if self.observer is not None:
            self.observer.observe(api, answer.status, time.perf_counter() - started, queue_s, answer.body,
                                  target is not None)
        return answer

    async def _dispatch(self, api: str, body: bytes, query: str, headers: bytes, target: str | None
                        ) -> tuple[Answer, float]:
        q = self.queues.get(api)
        if q is None:
            return self.unavailable(api, "the API has no replicas"), 0.0
        if target is None:
            target = protocol.PREDICT_PATH + ("?" + query if query else "")
        loop_started = asyncio.get_running_loop().time()
        try:
            job = q.submit(target, body, loop_started + self.settings.request_timeout_s, headers)
        except NoReplicas:
            return self.unavailable(api, "no replica is ready"), 0.0
        except QueueFull as exc:
            why = str(exc) or f"all replicas are busy and the queue is full ({q.max_queue})"
            return self.unavailable(api, why), 0.0
        try:
            status, payload = await job.future
        except asyncio.CancelledError:
            # The client left: a queued request leaves the queue; one a replica holds runs to
            # its end, and the replica is released when it answers.
            q.abandon(job)
            raise
        except (NoReplicas, DeadlineExceeded, PredictionTimeout, ReplicaFailed, Unreachable) as exc:
            return self._failure(api, job, exc)
        return Answer(status, payload), _queue_time(job)

    def _failure(self, api: str, job: Job, exc: Exception) -> tuple[Answer, float]:
        queue_s = _queue_time(job)
        timeout = self.settings.request_timeout_s
        if isinstance(exc, NoReplicas):
            return self.unavailable(api, "no replica is ready"), queue_s
        if isinstance(exc, DeadlineExceeded):
            return error_answer(504, f"waited longer than the request timeout ({timeout:g}s) for a replica"), queue_s
        if isinstance(exc, PredictionTimeout):
            return error_answer(
                504, f"the prediction ran longer than the request timeout ({timeout:g}s); the replica is being replaced"
            ), queue_s
        if isinstance(exc, ReplicaFailed):
            log.warning("%s: a request failed on two replicas: %s", api, exc)
            return self.unavailable(api, "the replica exited while handling the request (tried twice)"), queue_s
        log.warning("%s: no replica could be reached: %s", api, exc)
        return self.unavailable(api, "no replica could be reached"), queue_s

    def unavailable(self, api: str, reason: str) -> Answer:
        status = self.status_of(api)
        return error_answer(503, f"{reason} (API {api} is {status})", {"Retry-After": str(self.settings.retry_after_s)},
                            status=status)

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def _queue_time(job: Job) -> float:
    end = job.dispatched_at if job.dispatched_at is not None else time.perf_counter()
    return max(0.0, end - job.created)
