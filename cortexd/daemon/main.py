"""The daemon: one asyncio loop running the proxy, the supervisor and the control socket.

Signal handlers, control requests, timers and replica events only put work on the loop;
the supervisor alone changes replica state (DESIGN.md: one loop, one writer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from cortexd import __version__
from cortexd.config import Api, Config, ConfigError, load_config
from cortexd.daemon import status as st
from cortexd.daemon.api_logs import ApiLogs, log_path, read_tail
from cortexd.daemon.autoscale import AutoscaleSettings
from cortexd.daemon.compute import ComputeManager, Usage
from cortexd.daemon.control import ControlError, start_control_server
from cortexd.daemon.gpus import Nvml
from cortexd.daemon.latency import LatencyStats
from cortexd.daemon.procstats import ProcessSampler
from cortexd.daemon.proxy import Proxy, ProxySettings
from cortexd.daemon.spawner import ProcessSpawner
from cortexd.daemon.supervisor import Event, Supervisor, SupervisorSettings, Version
from cortexd.paths import control_socket

log = logging.getLogger("cortexd")

TICK_S = 1.0


@dataclass
class DaemonSettings:
    config: str
    host: str = "0.0.0.0"
    port: int = 8888
    state_dir: str = ""
    runtime_dir: str = ""
    log_dir: str = ""
    autoscale_period_s: float = 15.0
    downscale_window_s: float = 300.0
    request_timeout_s: float = 60.0
    max_queue: int = 1024
    max_body_bytes: int = 32 * 1024 * 1024
    drain_timeout_s: float = 30.0  # below the unit's TimeoutStopSec
    stop_grace_s: float = 5.0


@dataclass
class ApiRecord:
    """What the daemon knows of an API beyond its replicas."""

    spec: Api
    version: int = 0
    preparing: str | None = None  # "fetching the model", ...
    error: str | None = None  # preparation failed (model download, environment)
    stats: LatencyStats = field(default_factory=LatencyStats)


class Daemon:
    def __init__(self, settings: DaemonSettings, nvml: Nvml) -> None:
        self.settings = settings
        self.config: Config | None = None
        self.records: dict[str, ApiRecord] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.stop_requested = asyncio.Event()
        self.sampler = ProcessSampler()
        self.replica_usage: dict[str, Usage] = {}
        self._version_counter = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        for d in (settings.state_dir, settings.runtime_dir, settings.log_dir):
            os.makedirs(d, exist_ok=True)
        self.logs = ApiLogs(settings.log_dir)
        self.compute = ComputeManager(
            nvml,
            settings=AutoscaleSettings(
                period_s=settings.autoscale_period_s, downscale_window_s=settings.downscale_window_s
            ),
        )
        self.spawner = ProcessSpawner(
            settings.runtime_dir,
            post=self.post,
            output=self._replica_output,
            gpu_env=self.compute.cuda_visible_devices,
        )
        self.proxy = Proxy(
            ProxySettings(
                request_timeout_s=settings.request_timeout_s,
                max_queue=settings.max_queue,
                max_body_bytes=settings.max_body_bytes,
            ),
            directory=self,
            observer=self,
        )
        self.supervisor = Supervisor(
            self.spawner,
            self.proxy,
            clock=time.monotonic,
            settings=SupervisorSettings(stop_grace_s=settings.stop_grace_s),
            placer=self.compute,
            api_log=self.api_log,
            recent_output=self.logs.recent,
        )

    # -- plumbing ------------------------------------------------------------------------

    def post(self, event: Event) -> None:
        self.events.put_nowait(event)

    def api_log(self, api: str, message: str) -> None:
        log.info("%s: %s", api, message)
        self.logs.write(api, "cortexd", message)

    def _replica_output(self, api: str, replica_id: str, line: str) -> None:
        self.logs.write(api, replica_id, line)

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        try:
            config = load_config(self.settings.config)
        except ConfigError as exc:
            print(f"cortexd: {self.settings.config} is not valid:\n{exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"cortexd: cannot read {self.settings.config}: {exc}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        app = self.proxy.build_app()
        try:
            server = await app.create_server(
                host=self.settings.host, port=self.settings.port, return_asyncio_server=True, backlog=1024
            )
        except OSError as exc:
            print(f"cortexd: cannot listen on {self.settings.host}:{self.settings.port}: {exc}", file=sys.stderr)
            return 1
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.start_serving()
        control = await start_control_server(control_socket(self.settings.runtime_dir), self.control)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_task(self.reload([])))
        log.info("cortexd %s listening on http://%s:%d", __version__, self.settings.host, self.settings.port)
        self.config = config
        for api in config.apis:
            self._start_api(api, config)
        runner = self._spawn_task(self._main_loop())
        await self.stop_requested.wait()
        log.info("stopping: no new requests; finishing those in flight")
        await self._shutdown(server, control)
        runner.cancel()
        return 0

    async def _main_loop(self) -> None:
        next_tick = 0.0
        while True:
            now = time.monotonic()
            wake = self.supervisor.next_wakeup()
            timeout = max(0.0, min(next_tick, wake if wake is not None else next_tick) - now)
            try:
                event = await asyncio.wait_for(self.events.get(), timeout)
                self.supervisor.handle(event)
                while not self.events.empty():
                    self.supervisor.handle(self.events.get_nowait())
            except asyncio.TimeoutError:
                pass
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_S
                self._tick()
            self.supervisor.reconcile()

    def _tick(self) -> None:
        """Once a second: read the replicas' CPU and memory, enforce limits, autoscale."""
        usage: dict[str, Usage] = {}
        for api in self.supervisor.apis.values():
            for gen in api.generations():
                for rep in gen.replicas.values():
                    if rep.handle.pid is not None:
                        usage[rep.id] = Usage(*self.sampler.sample(rep.handle.pid))
        for rid in set(self.replica_usage) - set(usage):
            self.logs.forget_replica(rid)
        self.replica_usage = usage
        for event in self.compute.memory_events(self.supervisor, usage):
            self.supervisor.handle(event)
        self.compute.autoscale(self.supervisor, usage, time.monotonic())
        self.compute.refresh_gpus()

    async def _shutdown(self, server: Any, control: asyncio.AbstractServer) -> None:
        self.proxy.accepting = False
        server.close()
        for conn in list(server.connections):
            conn.close_if_idle()
        if not await self.proxy.wait_idle(self.settings.drain_timeout_s):
            log.warning("stopping: %d requests still running after %.0fs", self.proxy.in_flight, self.settings.drain_timeout_s)
        self.supervisor.stop_all()
        self.supervisor.reconcile()
        deadline = time.monotonic() + self.settings.stop_grace_s + 5
        while not self.supervisor.all_stopped() and time.monotonic() < deadline:
            try:
                event = await asyncio.wait_for(self.events.get(), 0.2)
                self.supervisor.handle(event)
            except asyncio.TimeoutError:
                pass
            self.supervisor.reconcile()
        for conn in list(server.connections):
            conn.abort() if hasattr(conn, "abort") else None
        control.close()
        try:
            os.unlink(control_socket(self.settings.runtime_dir))
        except OSError:
            pass
        self.logs.close()
        log.info("stopped")

    # -- APIs ----------------------------------------------------------------------------

    def _start_api(self, api: Api, config: Config) -> None:
        record = self.records[api.name] = ApiRecord(spec=api, preparing="preparing the version")
        self.proxy.set_route(api.name, api.endpoint)
        self._spawn_task(self._prepare_and_add(record, config))

    async def _prepare_and_add(self, record: ApiRecord, config: Config) -> None:
        api = record.spec
        try:
            version = await self._prepare_version(record, api, config)
        except Exception as exc:
            record.preparing = None
            record.error = str(exc)
            self.api_log(api.name, f"cannot start: {exc}")
            return
        record.preparing = None
        record.version = version.number
        self.compute.reset_autoscale(api, time.monotonic())
        self.supervisor.add_api(api, version)
        self.supervisor.reconcile()

    async def _prepare_version(self, record: ApiRecord, api: Api, config: Config) -> Version:
        self._version_counter += 1
        model_path = api.predictor.model
        if model_path is not None:
            record.preparing = "fetching the model"
            from cortexd.models import fetch_model

            cache = os.path.join(self.settings.state_dir, "models")
            model_path = await asyncio.to_thread(
                fetch_model, model_path, config.project_dir, cache, lambda m: self.api_log(api.name, m)
            )
        return Version(
            number=self._version_counter,
            workdir=config.project_dir,
            model_path=model_path,
            project_dir=config.project_dir,
        )

    async def reload(self, force: list[str]) -> dict[str, Any]:
        raise ControlError("reload is not supported yet")

    # -- views (ApiDirectory for the proxy, `get` for the CLI) ---------------------------

    def api_status(self, name: str) -> str:
        record = self.records.get(name)
        if record is None:
            return st.STOPPED
        if name not in self.supervisor.apis:
            if record.error:
                return st.ERROR
            return st.CREATING
        return self.supervisor.status(name)

    def api_view(self, name: str) -> dict[str, Any]:
        record = self.records[name]
        runtime = self.supervisor.apis.get(name)
        replicas: list[dict[str, Any]] = []
        ready = 0
        requested = record.spec.compute.init_replicas
        last_error = record.error
        reason = record.preparing or record.error
        if runtime is not None:
            requested = runtime.desired
            ready = runtime.current.ready_count()
            last_error = runtime.last_error
            reason = self.supervisor.status_reason(name)
            for gen in runtime.generations():
                for rep in gen.replicas.values():
                    u = self.replica_usage.get(rep.id) or Usage(0.0, 0)
                    replicas.append(
                        {
                            "id": rep.id,
                            "pid": rep.handle.pid,
                            "state": rep.state,
                            "version": gen.version.number,
                            "gpus": rep.gpus,
                            "cpu_percent": round(u.cpu_percent, 1),
                            "rss_bytes": u.rss_bytes,
                            "restarts": rep.restarts,
                        }
                    )
        queue = self.proxy.queues.get(name)
        return {
            "name": name,
            "status": self.api_status(name),
            "reason": reason,
            "endpoint": record.spec.endpoint,
            "predictor": record.spec.predictor.kind,
            "version": record.version,
            "requested": requested,
            "ready": ready,
            "last_error": last_error,
            "replicas": replicas,
            "metrics": record.stats.snapshot(),
            "queue": {"in_flight": queue.in_flight if queue else 0, "queued": queue.queued if queue else 0},
            "tracker": None,
        }

    def api_summary(self, name: str) -> dict[str, Any]:
        record = self.records[name]
        runtime = self.supervisor.apis.get(name)
        summary: dict[str, Any] = {
            "api": name,
            "status": self.api_status(name),
            "endpoint": record.spec.endpoint,
            "predictor": record.spec.predictor.kind,
            "usage": f"POST {record.spec.endpoint} with a JSON body (Content-Type: application/json)",
        }
        if runtime is not None and runtime.current.info:
            summary.update(runtime.current.info)
        return summary

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]:
        not_ready = []
        for name, record in self.records.items():
            runtime = self.supervisor.apis.get(name)
            ready = runtime.current.ready_count() if runtime else 0
            need = record.spec.compute.min_replicas
            if ready < need or (runtime is not None and runtime.stopping):
                not_ready.append({"api": name, "status": self.api_status(name), "ready": ready, "min_replicas": need})
        return not not_ready, not_ready

    def metrics_text(self) -> tuple[bytes, str]:
        return b"", "text/plain; version=0.0.4"

    # -- ProxyObserver -------------------------------------------------------------------

    def observe(self, api: str, status: int, latency_s: float, queue_s: float, body: bytes) -> None:
        record = self.records.get(api)
        if record is not None:
            record.stats.observe(latency_s, status)

    # -- control -------------------------------------------------------------------------

    async def control(self, request: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        cmd = request.get("cmd")
        if cmd == "get":
            name = request.get("api")
            if name:
                if name not in self.records:
                    raise ControlError(f"no API named {name!r}; APIs: {', '.join(self.records) or 'none'}")
                return self.api_view(name)
            return {"apis": [self.api_view(n) for n in self.records]}
        if cmd == "predict":
            name = request.get("api", "")
            if name not in self.records:
                raise ControlError(f"no API named {name!r}; APIs: {', '.join(self.records) or 'none'}")
            body = str(request.get("body", "")).encode()
            answer = await self.proxy.predict(name, body, "debug=true" if request.get("debug") else "")
            return {"status": answer.status, "body": answer.body.decode("utf-8", "replace")}
        if cmd == "reload":
            return await self.reload(list(request.get("force") or []))
        if cmd == "logs":
            name = request.get("api", "")
            if name not in self.records:
                raise ControlError(f"no API named {name!r}; APIs: {', '.join(self.records) or 'none'}")
            return self._logs(name, int(request.get("lines", 100)), bool(request.get("follow")))
        if cmd == "gpus":
            return self.compute.gpu_table(self._api_of_replica)
        if cmd == "version":
            return {"version": __version__}
        raise ControlError(f"unknown command {cmd!r}")

    def _api_of_replica(self, replica_id: str) -> str | None:
        for name, api in self.supervisor.apis.items():
            if api.find(replica_id) is not None:
                return name
        return None

    async def _logs(self, api: str, lines: int, follow: bool) -> AsyncIterator[str]:
        path = log_path(self.settings.log_dir, api)
        for line in read_tail(path, lines):
            yield line
        if not follow:
            return
        position = os.path.getsize(path) if os.path.exists(path) else 0
        pending = b""
        while not self.stop_requested.is_set():
            await asyncio.sleep(0.25)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if size < position:  # rotated
                position = 0
            if size == position:
                continue
            with open(path, "rb") as f:
                f.seek(position)
                data = f.read(size - position)
            position = size
            pending += data
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", "replace")


def run_daemon(settings: DaemonSettings) -> int:
    logging.basicConfig(
        level=os.environ.get("CORTEXD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("sanic.root", "sanic.error", "sanic.access", "sanic.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    from cortexd.daemon.gpus import open_nvml

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
        return await Daemon(settings, nvml).run()

    return asyncio.run(main())
