"""Prometheus metrics for `GET /metrics`, named in the style of Triton's `nv_inference_*`.

Two kinds of series:
- per-request counters and histograms, updated by the proxy through `Metrics.request`
  (plain numbers per API, so the hot path is a dict lookup, two bisects and a few increments),
  and per batch for APIs with server-side batching, through `Metrics.batch`;
- gauges read at scrape time from a provider callback the daemon installs
  (`set_state_provider`), so in-flight counts, replica states, GPU readings and tracker
  figures are never copied on the hot path and are always current when scraped.

Everything lives on the Metrics object's own CollectorRegistry, so several daemons in one
test process do not collide.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger("cortexd.metrics")

# Request time seen by the client side of the proxy: from ~1 ms models to slow ones up to the timeout.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Waiting for an idle replica: usually well under a millisecond, seconds under overload.
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Requests per batch (server-side batching): powers of two up to well past any sane max_batch_size.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# A request's wait for its batch: batch_interval is typically 1-100 ms; seconds under overload.
BATCH_WAIT_BUCKETS = QUEUE_BUCKETS


@dataclass(frozen=True)
class ApiMetricsState:
    """Scrape-time readings of one API."""
    name: str
    in_flight: int = 0                      # requests being handled by a replica now
    queued: int = 0                         # requests waiting in the proxy's queue for a replica
    replicas: Mapping[str, int] = field(default_factory=dict)   # replica state -> count (e.g. {"ready": 2})
    restarts: int = 0                       # replicas restarted since the API was deployed (this daemon run)
    tracker: Mapping[str, Any] | None = None   # PredictionTracker.summary(api), or None


@dataclass(frozen=True)
class GpuMetricsState:
    """Scrape-time readings of one GPU (NVML, or the fake GPUs)."""
    index: int
    uuid: str
    memory_used: int                        # bytes
    memory_total: int                       # bytes
    utilization: float                      # percent, 0..100, as NVML reports it
    name: str = ""


@dataclass(frozen=True)
class ReplicaGpuMetricsState:
    """One replica on one GPU: its share of the card, its GPU memory (NVML, by process tree)."""
    api: str
    replica: str
    gpu: int
    gpu_uuid: str
    share: float                            # 1.0 for a whole GPU
    memory_used: int                        # bytes
    memory_limit: int | None = None         # its gpu_mem, bytes


@dataclass(frozen=True)
class MetricsState:
    apis: Sequence[ApiMetricsState] = ()
    gpus: Sequence[GpuMetricsState] = ()
    warnings: int = 0  # things the daemon repaired or worked around that an operator should know
    loop_errors: int = 0  # exceptions the main loop caught and survived
    replica_gpus: Sequence[ReplicaGpuMetricsState] = ()


StateProvider = Callable[[], MetricsState]


class _ApiSeries:
    """Per-request figures of one API: plain ints and floats, turned into families at scrape time."""

    __slots__ = ("codes", "duration_buckets", "duration_sum", "queue_buckets", "queue_sum")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        # Non-cumulative counts; index i counts values <= bounds[i] and > bounds[i-1]; the last is +Inf.
        self.duration_buckets = [0] * (len(REQUEST_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.queue_buckets = [0] * (len(QUEUE_BUCKETS) + 1)
        self.queue_sum = 0.0


class _BatchSeries:
    """Batches of one batching API: the size histogram, the per-request wait and the triggers."""

    __slots__ = ("size_buckets", "size_sum", "wait_buckets", "wait_sum", "triggers")

    def __init__(self) -> None:
        self.size_buckets = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        self.size_sum = 0
        self.wait_buckets = [0] * (len(BATCH_WAIT_BUCKETS) + 1)
        self.wait_sum = 0.0
        self.triggers: dict[str, int] = {}


class Metrics:
    """The daemon's metrics; `request` is called once per answered request on the event loop.

    The per-request series are kept in plain Python numbers rather than prometheus-client's
    Counter/Histogram children: those take a lock per increment (four per request here),
    which measured ~5x slower than this for the one thread that ever writes them. The
    scrape turns them into standard counter/histogram families, so the exposition is the
    same. Call `request` and `forget` from one thread; `render` may run on another.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._series: dict[str, _ApiSeries] = {}
        self._batches: dict[str, _BatchSeries] = {}
        self._provider: StateProvider | None = None
        self.registry.register(_RequestCollector(self))
        self.registry.register(_BatchCollector(self))
        self.registry.register(_StateCollector(self))

    def request(self, api: str, code: int, latency_s: float, queue_s: float) -> None:
        """Count one answered request of `api`: its status, total latency and queue wait (seconds)."""
        series = self._series.get(api)
        if series is None:
            series = self._series[api] = _ApiSeries()
        codes = series.codes
        codes[code] = codes.get(code, 0) + 1
        series.duration_buckets[bisect_left(REQUEST_BUCKETS, latency_s)] += 1
        series.duration_sum += latency_s
        series.queue_buckets[bisect_left(QUEUE_BUCKETS, queue_s)] += 1
        series.queue_sum += queue_s

    def batch(self, api: str, size: int, trigger: str | None, waits_s: Sequence[float]) -> None:
        """Count one batch of `api` sent to a replica: its size, why it went (the batcher's
        trigger: "full", "interval", "freed") and each of its requests' wait, in seconds,
        from entering the queue to the batch being sent."""
        series = self._batches.get(api)
        if series is None:
            series = self._batches[api] = _BatchSeries()
        series.size_buckets[bisect_left(BATCH_SIZE_BUCKETS, size)] += 1
        series.size_sum += size
        buckets = series.wait_buckets
        for wait in waits_s:
            buckets[bisect_left(BATCH_WAIT_BUCKETS, wait)] += 1
        series.wait_sum += sum(waits_s)
        if trigger is not None:
            series.triggers[trigger] = series.triggers.get(trigger, 0) + 1

    def forget(self, api: str) -> None:
        """Drop the series of an API removed from cortex.yaml."""
        self._series.pop(api, None)
        self._batches.pop(api, None)

    def batch_series(self) -> list[tuple[str, _BatchSeries]]:
        return sorted(list(self._batches.items()), key=lambda item: item[0])

    def series(self) -> list[tuple[str, _ApiSeries]]:
        # list(dict.items()) is one C call under the GIL: safe against `request` adding an API.
        return sorted(list(self._series.items()), key=lambda item: item[0])

    def set_state_provider(self, provider: StateProvider | None) -> None:
        """`provider()` is called at each scrape (on the thread that renders) for the gauges."""
        self._provider = provider

    def state(self) -> MetricsState | None:
        provider = self._provider
        if provider is None:
            return None
        try:
            return provider()
        except Exception:  # a broken provider must not break the per-request series
            log.exception("metrics: the state provider failed; scrape has no gauges")
            return None

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, for `GET /metrics`."""
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST


class _RequestCollector(Collector):
    """Requests by code, and the duration histograms, from Metrics' plain counters."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "cortexd_inference_requests", "Requests answered by the proxy, by API and HTTP status code.",
                labels=["api", "code"]),
            HistogramMetricFamily(
                "cortexd_inference_request_duration_seconds",
                "Time from the request reaching the proxy to its answer, by API.", labels=["api"]),
            HistogramMetricFamily(
                "cortexd_inference_queue_duration_seconds",
                "Time a request waited in the proxy's queue for an idle replica, by API.", labels=["api"]),
        )

    def collect(self) -> Iterator[Metric]:
        requests, duration, queue = self._families()
        for api, series in self._metrics.series():
            for code, count in sorted(dict(series.codes).items()):
                requests.add_metric([api, str(code)], count)
            duration.add_metric([api], _cumulative(_REQUEST_LE, list(series.duration_buckets)),
                                series.duration_sum)
            queue.add_metric([api], _cumulative(_QUEUE_LE, list(series.queue_buckets)), series.queue_sum)
        yield requests
        yield duration
        yield queue


# prometheus_client's own bucket bound text (its function has no annotations)
_go_float: Callable[[float], str] = floatToGoString
_REQUEST_LE = [_go_float(b) for b in REQUEST_BUCKETS] + ["+Inf"]
_QUEUE_LE = [_go_float(b) for b in QUEUE_BUCKETS] + ["+Inf"]
_BATCH_SIZE_LE = [_go_float(b) for b in BATCH_SIZE_BUCKETS] + ["+Inf"]
_BATCH_WAIT_LE = [_go_float(b) for b in BATCH_WAIT_BUCKETS] + ["+Inf"]


class _BatchCollector(Collector):
    """Server-side batching: only APIs that sent a batch have these series."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> tuple[HistogramMetricFamily, HistogramMetricFamily, CounterMetricFamily]:
        return (
            HistogramMetricFamily(
                "cortexd_inference_batch_size",
                "Requests per batch sent to a replica, by API (server-side batching).", labels=["api"]),
            HistogramMetricFamily(
                "cortexd_inference_batch_wait_seconds",
                "Time a request of a batching API waited from entering the queue until its batch was sent "
                "(the batch interval, plus waiting for a busy replica), by API.", labels=["api"]),
            CounterMetricFamily(
                "cortexd_inference_batches",
                "Batches sent, by API and why: full (max_batch_size reached), interval (batch_interval "
                "passed since the first waiting request), freed (a replica finished while requests waited).",
                labels=["api", "trigger"]),
        )

    def collect(self) -> Iterator[Metric]:
        size, wait, batches = self._families()
        for api, series in self._metrics.batch_series():
            size.add_metric([api], _cumulative(_BATCH_SIZE_LE, list(series.size_buckets)), series.size_sum)
            wait.add_metric([api], _cumulative(_BATCH_WAIT_LE, list(series.wait_buckets)), series.wait_sum)
            for trigger, count in sorted(dict(series.triggers).items()):
                batches.add_metric([api, trigger], count)
        yield size
        yield wait
        yield batches


def _cumulative(les: list[str], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for le, n in zip(les, counts, strict=True):
        running += n
        out.append((le, running))
    return out


class _StateCollector(Collector):
    """Turns the provider's MetricsState into gauge families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry can refuse clashes; no provider call at registration.
        yield from _StateFamilies().all()

    def collect(self) -> Iterator[Metric]:
        state = self._metrics.state()
        families = _StateFamilies()
        if state is not None:
            families.fill(state)
        yield from families.all()


class _StateFamilies:
    """The scrape-time families, fresh for each scrape."""

    def __init__(self) -> None:
        self.warnings = GaugeMetricFamily(
            "cortexd_warnings", "Warnings the daemon raised since it started (listed by `cortexd get`).")
        self.loop_errors = CounterMetricFamily(
            "cortexd_main_loop_errors", "Errors the daemon's main loop caught and went on after (see its log).")
        self.in_flight = GaugeMetricFamily(
            "cortexd_inference_in_flight_requests", "Requests being handled by a replica, by API.", labels=["api"])
        self.queued = GaugeMetricFamily(
            "cortexd_inference_queued_requests",
            "Requests waiting in the proxy's queue for an idle replica, by API.", labels=["api"])
        self.replicas = GaugeMetricFamily("cortexd_replicas", "Replicas by API and state.", labels=["api", "state"])
        self.restarts = CounterMetricFamily(
            "cortexd_replica_restarts", "Replicas restarted after they died, by API.", labels=["api"])
        self.classes = CounterMetricFamily(
            "cortexd_tracker_class_predictions",
            "Tracked predictions by API and class since the API was first deployed (classification).",
            labels=["api", "class"])
        self.reg_count = CounterMetricFamily(
            "cortexd_tracker_regression_predictions",
            "Tracked predictions since the API was first deployed (regression).", labels=["api"])
        self.reg_value = GaugeMetricFamily(
            "cortexd_tracker_regression_value",
            "Min, max and mean of the tracked values since the API was first deployed (regression).",
            labels=["api", "stat"])
        self.gpu_used = GaugeMetricFamily(
            "cortexd_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu", "gpu_uuid"])
        self.gpu_total = GaugeMetricFamily(
            "cortexd_gpu_memory_total_bytes", "GPU memory in total.", labels=["gpu", "gpu_uuid"])
        self.gpu_util = GaugeMetricFamily(
            "cortexd_gpu_utilization", "GPU utilisation, 0.0 to 1.0 (as Triton's nv_gpu_utilization).",
            labels=["gpu", "gpu_uuid"])
        replica_labels = ["api", "replica", "gpu", "gpu_uuid"]
        self.replica_gpu_used = GaugeMetricFamily(
            "cortexd_replica_gpu_memory_used_bytes", "GPU memory a replica's processes use on one GPU (NVML).",
            labels=replica_labels)
        self.replica_gpu_limit = GaugeMetricFamily(
            "cortexd_replica_gpu_memory_limit_bytes", "A replica's gpu_mem on one GPU (absent without gpu_mem).",
            labels=replica_labels)
        self.replica_gpu_share = GaugeMetricFamily(
            "cortexd_replica_gpu_share", "The share of one GPU a replica holds: 1.0 whole, 0.5 half.",
            labels=replica_labels)

    def all(self) -> list[Metric]:
        return [self.warnings, self.loop_errors, self.in_flight, self.queued, self.replicas, self.restarts,
                self.classes, self.reg_count, self.reg_value, self.gpu_used, self.gpu_total, self.gpu_util,
                self.replica_gpu_used, self.replica_gpu_limit, self.replica_gpu_share]

    def fill(self, state: MetricsState) -> None:
        self.warnings.add_metric([], state.warnings)
        self.loop_errors.add_metric([], state.loop_errors)
        for api in state.apis:
            name = api.name
            self.in_flight.add_metric([name], api.in_flight)
            self.queued.add_metric([name], api.queued)
            for replica_state, count in sorted(api.replicas.items()):
                self.replicas.add_metric([name, replica_state], count)
            self.restarts.add_metric([name], api.restarts)
            if api.tracker:
                self._fill_tracker(name, api.tracker)
        for gpu in state.gpus:
            labels = [str(gpu.index), gpu.uuid]
            self.gpu_used.add_metric(labels, gpu.memory_used)
            self.gpu_total.add_metric(labels, gpu.memory_total)
            self.gpu_util.add_metric(labels, gpu.utilization / 100.0)
        for rep in state.replica_gpus:
            labels = [rep.api, rep.replica, str(rep.gpu), rep.gpu_uuid]
            self.replica_gpu_used.add_metric(labels, rep.memory_used)
            self.replica_gpu_share.add_metric(labels, rep.share)
            if rep.memory_limit:
                self.replica_gpu_limit.add_metric(labels, rep.memory_limit)

    def _fill_tracker(self, name: str, tracker: Mapping[str, Any]) -> None:
        total = tracker.get("total") or {}
        if tracker.get("model_type") == "classification":
            for label, count in (total.get("counts") or {}).items():
                self.classes.add_metric([name, str(label)], count)
        elif tracker.get("model_type") == "regression":
            self.reg_count.add_metric([name], total.get("count", 0))
            for stat in ("min", "max", "mean"):
                value = total.get(stat)
                if value is not None:
                    self.reg_value.add_metric([name, stat], value)
