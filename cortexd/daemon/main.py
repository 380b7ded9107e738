"""The daemon's composition root: builds the parts, wires them, handles signals, starts and stops.

    HTTP app (serving/app.py) -> Proxy (routes, queues) -> replicas over Unix sockets
    Reloader (deploy/) -> Supervisor (fleet/: the one owner of API and replica state)
    EventPump (pump.py): events from the spawner and the proxy -> Supervisor; readings; watchdog
    Handlers (handlers.py): control socket commands and the app's views, from snapshots

docs/architecture.md walks through a request and a reload.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from cortexd import __version__
from cortexd.config import Api, Config, ConfigError, load_config
from cortexd.daemon.control import ControlSocketBusy, bind_handlers, start_control_server
from cortexd.daemon.control import in_use as control_in_use
from cortexd.daemon.deploy.blocking import run_blocking
from cortexd.daemon.deploy.reloader import Hooks, Reloader, ReloaderSettings, ReloadReport
from cortexd.daemon.deploy.versions import VersionFactory
from cortexd.daemon.fleet.autoscale import AutoscaleSettings
from cortexd.daemon.fleet.cgroups import open_replica_cgroups
from cortexd.daemon.fleet.compute import ComputeManager, GpuReadings
from cortexd.daemon.fleet.events import Event, ReplicaExited, ReplicaOverGpuMemory
from cortexd.daemon.fleet.gpus import Nvml
from cortexd.daemon.fleet.procstats import ProcessSampler
from cortexd.daemon.fleet.spawner import ProcessSpawner
from cortexd.daemon.fleet.supervisor import Supervisor, SupervisorSettings
from cortexd.daemon.handlers import Handlers, Sources
from cortexd.daemon.observe import views
from cortexd.daemon.observe.api_logs import ApiLogs
from cortexd.daemon.observe.batch_stats import BatchStats
from cortexd.daemon.observe.latency import LatencyStats
from cortexd.daemon.observe.metrics import Metrics
from cortexd.daemon.observe.tracker import open_tracker
from cortexd.daemon.pump import STALL_S, EventPump
from cortexd.daemon.serving.access import Access, AccessConfigError, AccessSettings, tls_context
from cortexd.daemon.serving.app import ConnectionLimits, build_app, guarded_protocol
from cortexd.daemon.serving.proxy import Proxy, ProxySettings
from cortexd.daemon.serving.v2_backend import ApiKeyInterceptor, DaemonV2Backend, grpc_credentials
from cortexd.daemon.settings import DaemonSettings
from cortexd.daemon.systemd import Notifier
from cortexd.models import ArchiveLimits
from cortexd.paths import control_socket, prepare_daemon_dirs
from cortexd.safefs import UnsafePath
from cortexd.v2 import grpc_service
from cortexd.v2 import hop as v2_hop

log = logging.getLogger("cortexd")

ENV_EXTEND_S = 90.0  # each EXTEND_TIMEOUT_USEC while a requirements environment builds


@dataclass(frozen=True)
class Readings:
    usage: dict[str, views.Usage]
    gpus: GpuReadings | None  # None: no NVML


class Daemon:
    def __init__(self, settings: DaemonSettings, nvml: Nvml) -> None:
        # Before anything is created in them: refused (UnsafePath) unless they are ours alone.
        dirs = prepare_daemon_dirs(settings.state_dir, settings.runtime_dir, settings.log_dir)
        settings = dataclasses.replace(settings, state_dir=dirs.state, runtime_dir=dirs.runtime, log_dir=dirs.log)
        self.settings = settings
        self.access = Access(AccessSettings.from_options(  # reads --api-keys: AccessConfigError if it cannot
            settings.api_keys or None, settings.api_keys_metrics, settings.debug_from, settings.cors_origins))
        self.tls = tls_context(settings.tls_cert or None, settings.tls_key or None)
        self.grpc_tls = grpc_credentials(settings.tls_cert or None, settings.tls_key or None)  # the same files
        archive_limits = ArchiveLimits(max_unpacked_bytes=settings.max_model_unpacked,
                                       max_ratio=settings.max_model_unpack_ratio)
        self.stop_requested = asyncio.Event()
        self.notifier = Notifier()
        self.logs = ApiLogs(settings.log_dir)
        self.tracker = open_tracker(os.path.join(settings.state_dir, "tracker.db"))
        self.metrics = Metrics()
        self.stats: dict[str, LatencyStats] = {}
        self.batches: dict[str, BatchStats] = {}  # server-side batching, the last minutes
        self.usage: dict[str, views.Usage] = {}
        self.sampler = ProcessSampler()
        self.compute = ComputeManager(nvml, settings=AutoscaleSettings(
            period_s=settings.autoscale_period_s, downscale_window_s=settings.downscale_window_s),
            max_replicas=settings.max_replicas)
        self.spawner = ProcessSpawner(
            settings.runtime_dir, post=self.post, output=self._replica_output,
            gpu_env=self.compute.cuda_visible_devices,
            extra_env=archive_limits.env(),  # replicas unpack local zips within the same limits
            cgroups=open_replica_cgroups(),  # memory.max per replica where systemd delegated a cgroup
        )
        self.proxy = Proxy(
            ProxySettings(request_timeout_s=settings.request_timeout_s, max_queue=settings.max_queue,
                          max_body_bytes=settings.max_body_bytes),
            status_of=lambda api: self.supervisor.status(api), report=self.post, observer=self,
        )
        self.supervisor = Supervisor(
            self.spawner, self.proxy, clock=time.monotonic,
            settings=SupervisorSettings(stop_grace_s=settings.stop_grace_s), placer=self.compute,
            api_log=self.api_log, recent_output=self.logs.recent, on_stopped=self._forget_api,
        )
        self.pump = EventPump(self.supervisor, self.notifier, self.status_line, self._read, self._readings_taken,
                              self._exited)
        self.versions = VersionFactory(settings.state_dir, archive_limits)
        self.reloader = Reloader(
            self.supervisor, self.proxy, self.versions,
            Hooks(track=self._track, reset_autoscale=self._reset_autoscale, api_log=self.api_log,
                  extend_timeout=lambda: self.notifier.extend_timeout(ENV_EXTEND_S)),
            ReloaderSettings(prepare_timeout_s=settings.prepare_timeout_s, reload_timeout_s=settings.reload_timeout_s,
                             model_cache_bytes=settings.model_cache_size),
        )
        self.handlers = Handlers(Sources(
            supervisor=self.supervisor, proxy=self.proxy, compute=self.compute, tracker=self.tracker,
            metrics=self.metrics, stats=self.stats, batches=self.batches, usage=lambda: self.usage,
            loop_age=self.pump.loop_age,
            loop_errors=lambda: self.pump.errors, warnings=lambda: list(self.tracker.warnings),
            reload=self.reload, log_dir=settings.log_dir, stopping=self.stop_requested,
            frameworks=self._frameworks,
        ), stall_s=STALL_S)
        self._framework_probe: asyncio.Future[list[str]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- plumbing ------------------------------------------------------------------------------

    def post(self, event: Event) -> None:
        self.pump.post(event)

    def api_log(self, api: str, message: str) -> None:
        log.info("%s: %s", api, message)
        self.logs.write(api, "cortexd", message)

    def _replica_output(self, api: str, replica_id: str, line: str) -> None:
        self.logs.write(api, replica_id, line)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _frameworks(self) -> list[str]:
        """What each installed ML framework says of the GPU: probed once, in child processes
        (importing TensorFlow takes seconds and must never happen in the daemon)."""
        if self._framework_probe is None:
            from cortexd import gpu_probe

            async def probe() -> list[str]:
                return [gpu_probe.describe(r) for r in await run_blocking(gpu_probe.probe_frameworks)]

            self._framework_probe = asyncio.ensure_future(probe())
        return await asyncio.shield(self._framework_probe)

    def status_line(self) -> str:
        return views.status_line(self.supervisor.snapshot())

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> int:
        if control_in_use(control_socket(self.settings.runtime_dir)):
            print(f"cortexd: another cortexd is running with runtime folder {self.settings.runtime_dir}; stop it or "
                  "give this one another --runtime-dir", file=sys.stderr)
            return 1
        try:
            config = load_config(self.settings.config)
        except ConfigError as exc:
            print(f"cortexd: {self.settings.config} is not valid:\n{exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"cortexd: cannot read {self.settings.config}: {exc}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        limits = ConnectionLimits(max_connections(self.settings.max_connections), self.settings.header_timeout_s,
                                  self.settings.request_timeout_s)
        v2 = DaemonV2Backend(self.supervisor, self.proxy, lambda: self.handlers.readiness()[0])
        app = build_app(self.proxy, self.handlers, self.access, limits, v2)
        try:
            server = await app.create_server(
                host=self.settings.host, port=self.settings.port, return_asyncio_server=True, backlog=1024,
                protocol=guarded_protocol(limits), ssl=self.tls,
            )
        except OSError as exc:
            print(f"cortexd: cannot listen on {self.settings.host}:{self.settings.port}: {exc}", file=sys.stderr)
            return 1
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.start_serving()
        grpc_server = None
        if self.settings.grpc_port:
            try:
                grpc_server, _ = await grpc_service.serve(
                    v2, self.settings.host, self.settings.grpc_port, self.settings.max_body_bytes,
                    interceptors=[ApiKeyInterceptor(self.access)], credentials=self.grpc_tls)
            except RuntimeError as exc:
                print(f"cortexd: {exc}", file=sys.stderr)
                server.close()
                return 1
            log.info("Open Inference Protocol over gRPC%s on %s:%d", " with TLS" if self.grpc_tls else "",
                     self.settings.host, self.settings.grpc_port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        log.info("cortexd %s listening on %s://%s:%d (at most %d client connections)", __version__,
                 "https" if self.tls else "http", self.settings.host, self.settings.port, limits.max_connections)
        runner = self._spawn(self.pump.run())
        flusher = self._spawn(self._flush_loop())
        # Quick: declares the APIs and starts one pipeline each; none is waited for. Done before
        # the control socket opens, so `cortexd get` never sees a daemon without its APIs.
        await self.reloader.apply(config, [], wait=False)
        try:
            control = await start_control_server(
                control_socket(self.settings.runtime_dir), bind_handlers(self.handlers)
            )
        except ControlSocketBusy as exc:
            print(f"cortexd: {exc}", file=sys.stderr)
            server.close()
            return 1
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload([])))
        self.notifier.ready(self.status_line())
        await self.stop_requested.wait()
        log.info("stopping: no new requests; finishing those in flight")
        self.notifier.stopping()
        self.reloader.cancel_all()
        grpc_stopped = grpc_server.stop(self.settings.drain_timeout_s) if grpc_server is not None else None
        await self._shutdown(server, control)
        if grpc_stopped is not None:
            await grpc_stopped
        runner.cancel()
        flusher.cancel()
        await run_blocking(self.tracker.close)
        return 0

    async def reload(self, force: list[str]) -> ReloadReport:
        """Re-read cortex.yaml and apply it; an invalid file changes nothing."""
        try:
            config: Config = await run_blocking(load_config, self.settings.config)
        except ConfigError as exc:
            log.error("reload refused, still serving the previous configuration:\n%s", exc)
            return ReloadReport(False, (f"{self.settings.config} is not valid; nothing was changed:",)
                                + tuple(str(issue) for issue in exc.errors))
        except OSError as exc:
            return ReloadReport(False, (f"cannot read {self.settings.config}: {exc}; nothing was changed",))
        self.notifier.reloading("reloading " + self.settings.config)
        try:
            report = await self.reloader.apply(config, force, wait=True)
            problem = self.access.reload()  # --api-keys is re-read at every reload
            if problem:
                report = ReloadReport(False, report.lines + (problem,))
            return report
        finally:
            self.notifier.ready(self.status_line())

    async def _flush_loop(self) -> None:
        """Tracker figures reach SQLite every second, written off the event loop."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await run_blocking(self.tracker.flush)
            except Exception:
                log.exception("writing tracker figures failed; trying again in 1s")

    async def _shutdown(self, server: Any, control: asyncio.AbstractServer) -> None:
        self.proxy.accepting = False
        server.close()
        for conn in list(server.connections):
            conn.close_if_idle()
        if not await self.proxy.wait_idle(self.settings.drain_timeout_s):
            log.warning("stopping: %d requests still running after %.0fs", self.proxy.in_flight,
                        self.settings.drain_timeout_s)
        self.supervisor.stop_all()
        self.supervisor.reconcile()
        deadline = time.monotonic() + self.settings.stop_grace_s + 5
        while not self.supervisor.all_stopped() and time.monotonic() < deadline:
            try:
                item = await asyncio.wait_for(self.pump.queue.get(), 0.2)
                self.pump.run_item(item)
            except asyncio.TimeoutError:
                pass
            self.supervisor.reconcile()
        for conn in list(server.connections):
            conn.close()  # idle keep-alive clients: everything in flight has finished
        control.close()
        try:
            os.unlink(control_socket(self.settings.runtime_dir))
        except OSError:
            pass
        self.logs.close()
        log.info("stopped")

    # -- readings (pump) -----------------------------------------------------------------------

    def _read(self, pids: dict[str, int]) -> Readings:
        """On a worker thread: CPU and memory of every replica's tree, and the GPUs."""
        usage = {rid: views.Usage(*self.sampler.sample(pid)) for rid, pid in pids.items()}
        trees = {rid: self.sampler.pids(pid) for rid, pid in pids.items()}
        return Readings(usage, self.compute.read_gpus(trees))

    def _readings_taken(self, readings: Readings) -> None:
        self.usage = readings.usage
        if readings.gpus is not None:
            self.compute.apply_gpu_readings(readings.gpus)
            for over in self.compute.gpu_memory_over():
                self.supervisor.handle(ReplicaOverGpuMemory(over.replica_id, over.reason()))
        fleet = self.supervisor.snapshot()
        for event in self.compute.memory_events(fleet, readings.usage):
            self.supervisor.handle(event)
        for name, desired in self.compute.autoscale(fleet, readings.usage, time.monotonic(), self._in_flight).items():
            self.supervisor.set_desired(name, desired)

    def _in_flight(self, api: str) -> float:
        """Requests not yet answered: at replicas or waiting for one (what Cortex counted)."""
        at_replicas, queued = self.proxy.queue_counts(api)
        return float(at_replicas + queued)

    def _exited(self, event: ReplicaExited) -> None:
        if event.pid is not None:
            self.sampler.forget(event.pid)
        self.logs.forget_replica(event.replica_id)
        self.usage.pop(event.replica_id, None)

    # -- API bookkeeping (reloader hooks, supervisor's on_stopped) --------------------------------

    def _track(self, api: Api) -> None:
        if api.tracker is not None:
            self.tracker.register(api.name, api.tracker)
        elif self.tracker.tracked(api.name):
            self.tracker.forget(api.name)

    def _reset_autoscale(self, api: Api) -> None:
        self.compute.reset_autoscale(api, time.monotonic())

    def _forget_api(self, name: str, removed: bool) -> None:
        if removed:  # at shutdown the figures stay on disk for the next start
            self.tracker.forget(name)
        self.metrics.forget(name)
        self.stats.pop(name, None)
        self.batches.pop(name, None)
        self.proxy.forget(name)
        self.compute.forget_api(name)

    # -- ProxyObserver -------------------------------------------------------------------------

    def observe_batch(self, api: str, size: int, trigger: str | None, waits_s: list[float]) -> None:
        batches = self.batches.get(api)
        if batches is None:
            batches = self.batches[api] = BatchStats()
        batches.record(size, time.monotonic(), trigger, sum(waits_s))
        self.metrics.batch(api, size, trigger, waits_s)

    def observe(self, api: str, status: int, latency_s: float, queue_s: float, body: bytes, v2: bool = False) -> None:
        stats = self.stats.get(api)
        if stats is None:
            stats = self.stats[api] = LatencyStats()
        stats.observe(latency_s, status)
        self.metrics.request(api, status, latency_s, queue_s)
        if status == 200 and self.tracker.tracked(api):
            if v2:  # a V2 answer: its outputs by name (cortexd/v2/hop.py reads them without numpy)
                prediction = v2_hop.tracker_prediction(body)
                if prediction is not None:
                    self.tracker.observe(api, prediction)
            else:
                self.tracker.observe_json_bytes(api, body)


def max_connections(configured: int) -> int:
    """The cap on client connections: as configured, else from the open-file limit (room left
    for replicas' sockets and pipes, logs, the database and the control socket)."""
    if configured > 0:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(10_000, (soft - 256) // 2))


def raise_file_limit() -> None:
    """RLIMIT_NOFILE up to its hard limit: each client and replica connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)


def run_daemon(settings: DaemonSettings) -> int:
    logging.basicConfig(
        level=os.environ.get("CORTEXD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("sanic.root", "sanic.error", "sanic.access", "sanic.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    raise_file_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    from cortexd.daemon.fleet.gpus import open_nvml

    try:
        nvml = open_nvml(os.environ)
    except ValueError as exc:
        print(f"cortexd: {exc}", file=sys.stderr)
        return 2
    if nvml.available():
        log.info("GPUs: %s", ", ".join(f"{g.index}: {g.name} ({g.uuid})" for g in nvml.gpus()))
    else:
        log.info("no GPU: %s", nvml.unavailable_reason())

    async def main() -> int:
        try:
            daemon = Daemon(settings, nvml)
        except (UnsafePath, AccessConfigError, ValueError) as exc:
            print(f"cortexd: {exc}", file=sys.stderr)
            return 2
        return await daemon.run()

    return asyncio.run(main())
