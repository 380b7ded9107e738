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
from cortexd.daemon.observe import status as st
from cortexd.daemon.observe.api_logs import ApiLogs, log_path, read_tail
from cortexd.daemon.fleet.autoscale import AutoscaleSettings
from cortexd.daemon.fleet.cgroups import open_replica_cgroups
from cortexd.daemon.fleet.compute import ComputeManager, Usage
from cortexd.daemon.control import ControlError, start_control_server
from cortexd.daemon.fleet.gpus import Nvml
from cortexd.daemon.observe.latency import LatencyStats
from cortexd.daemon.observe.metrics import ApiMetricsState, GpuMetricsState, Metrics, MetricsState
from cortexd.daemon.fleet.procstats import ProcessSampler
from cortexd.daemon.serving.proxy import Proxy, ProxySettings
from cortexd.daemon.fleet.spawner import ProcessSpawner
from cortexd.daemon.deploy.reload_plan import PlanError, RunningApi, plan_reload
from cortexd.daemon.fleet.supervisor import Event, Supervisor, SupervisorSettings, Version
from cortexd.daemon.systemd import Notifier, status_line
from cortexd.daemon.observe.tracker import PredictionTracker
from cortexd.daemon.deploy.versions import VersionFactory
from cortexd.paths import control_socket

log = logging.getLogger("cortexd")

TICK_S = 1.0
# While a requirements env builds: each EXTEND_TIMEOUT_USEC grants ENV_EXTEND_S more, renewed
# well before it runs out.
ENV_EXTEND_S = 90.0
ENV_EXTEND_EVERY_S = 30.0


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
    reload_timeout_s: float = 600.0  # how long `cortexd reload` waits for new replicas
    stop_grace_s: float = 5.0


@dataclass
class ApiRecord:
    """What the daemon knows of an API beyond its replicas."""

    spec: Api
    version: int = 0
    preparing: str | None = None  # "fetching the model", ...
    error: str | None = None  # preparation failed (model download, environment)
    fingerprint: str | None = None  # of the version serving; None until one is started
    removing: bool = False  # gone from cortex.yaml, draining
    last_reload_error: str | None = None  # a reload that could not prepare the new version
    stats: LatencyStats = field(default_factory=LatencyStats)


class Daemon:
    def __init__(self, settings: DaemonSettings, nvml: Nvml) -> None:
        self.settings = settings
        self.records: dict[str, ApiRecord] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.stop_requested = asyncio.Event()
        self.sampler = ProcessSampler()
        self.replica_usage: dict[str, Usage] = {}
        self._reload_lock = asyncio.Lock()
        self.versions = VersionFactory(settings.state_dir)
        self.notifier = Notifier()
        self.tracker = PredictionTracker(os.path.join(settings.state_dir, "tracker.db"))
        self.metrics = Metrics()
        self.metrics.set_state_provider(self._metrics_state)
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
            cgroups=open_replica_cgroups(),  # memory.max per replica where systemd delegated a cgroup
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
        runner = self._spawn_task(self._main_loop())
        flusher = self._spawn_task(self._flush_loop())
        await self._apply(config, [], wait=False)
        self.notifier.ready(self.status_line())
        await self.stop_requested.wait()
        log.info("stopping: no new requests; finishing those in flight")
        self.notifier.stopping()
        await self._shutdown(server, control)
        runner.cancel()
        flusher.cancel()
        await asyncio.to_thread(self.tracker.close)
        return 0

    async def _main_loop(self) -> None:
        next_tick = 0.0
        next_watchdog = 0.0
        watchdog_s = self.notifier.watchdog_interval()  # None: systemd asked for no pings (or not us)
        while True:
            now = time.monotonic()
            wake = self.supervisor.next_wakeup()
            # The ping is a deadline of its own: waiting only for the next tick let it slip to
            # every other tick, a 2 s gap that reaches WATCHDOG_USEC=2 s and gets us killed.
            due = min(next_tick, next_watchdog) if self.notifier.enabled else next_tick
            timeout = max(0.0, min(due, wake if wake is not None else due) - now)
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
            self._finish_removals()
            if self.notifier.enabled and time.monotonic() >= next_watchdog:
                # Sent from this loop only, so a wedged loop stops the pings and systemd restarts us.
                next_watchdog = time.monotonic() + (watchdog_s or TICK_S)
                if watchdog_s is not None:  # WATCHDOG_PID naming another process: not ours to ping
                    self.notifier.watchdog()
                self.notifier.status(self.status_line())

    async def _extend_timeout_while_building(self) -> None:
        """EXTEND_TIMEOUT_USEC every ENV_EXTEND_EVERY_S until cancelled (the build is bounded by
        EnvBuilder's own timeout). systemd never shortens the unit's timeout because of it."""
        while self.notifier.enabled:
            self.notifier.extend_timeout(ENV_EXTEND_S)
            await asyncio.sleep(ENV_EXTEND_EVERY_S)

    async def _flush_loop(self) -> None:
        """Tracker figures reach SQLite every second, written off the event loop."""
        while True:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self.tracker.flush)

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
            conn.close()  # idle keep-alive clients: everything in flight has finished
        control.close()
        try:
            os.unlink(control_socket(self.settings.runtime_dir))
        except OSError:
            pass
        self.logs.close()
        log.info("stopped")

    # -- APIs ----------------------------------------------------------------------------

    async def reload(self, force: list[str]) -> dict[str, Any]:
        """Re-read cortex.yaml and apply it; an invalid file changes nothing."""
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.settings.config)
            except ConfigError as exc:
                log.error("reload refused, still serving the previous configuration:\n%s", exc)
                return {"ok": False, "lines": [f"{self.settings.config} is not valid; nothing was changed:"]
                        + [str(issue) for issue in exc.errors]}
            except OSError as exc:
                return {"ok": False, "lines": [f"cannot read {self.settings.config}: {exc}; nothing was changed"]}
            self.notifier.reloading("reloading " + self.settings.config)
            try:
                return await self._apply(config, force, wait=True)
            finally:
                self.notifier.ready(self.status_line())

    async def _apply(self, config: Config, force: list[str], wait: bool) -> dict[str, Any]:
        """Take the daemon from what runs to `config`: the reload plan, carried out."""
        project = config.project_dir
        lines: list[str] = []
        failed_names: set[str] = set()
        for api in config.apis:
            if api.name not in self.records:
                self.records[api.name] = ApiRecord(spec=api, preparing="fetching the model" if api.predictor.model else "preparing")
            else:
                self.records[api.name].last_reload_error = None  # this attempt supersedes the last one's failure
        try:
            env_key = await asyncio.to_thread(self.versions.env_key, project)
        except OSError as exc:
            return {"ok": False, "lines": [f"cannot read requirements.txt: {exc}; nothing was changed"]}

        async def fetch(api: Api) -> str | None | Exception:
            try:
                return await asyncio.to_thread(self.versions.fetch_model, api, project, lambda m: self.api_log(api.name, m))
            except Exception as exc:  # a failed download fails this API alone
                return exc

        fetched = dict(zip([a.name for a in config.apis], await asyncio.gather(*(fetch(a) for a in config.apis))))
        models: dict[str, str | None] = {}
        for api in config.apis:
            result = fetched[api.name]
            if isinstance(result, Exception):
                failed_names.add(api.name)
                lines.append(f"{api.name}: failed ({result})")
                self._fail_record(api, f"cannot fetch the model: {result}")
            else:
                models[api.name] = result
        ok_apis = [a for a in config.apis if a.name not in failed_names]
        fingerprints = {
            a.name: await asyncio.to_thread(self.versions.fingerprint, a, models[a.name], env_key) for a in ok_apis
        }
        running = {
            name: RunningApi(name, rec.spec.endpoint, rec.fingerprint, rec.spec.compute)
            for name, rec in self.records.items()
            if rec.fingerprint is not None and not rec.removing
        }
        try:
            actions = plan_reload(running, ok_apis, fingerprints, force)
        except PlanError as exc:
            return {"ok": False, "lines": [str(exc) + "; nothing was changed"]}
        actions = [a for a in actions if not (a.kind == "remove" and a.name in failed_names)]

        snapshot = None
        python: str | None = None
        if any(a.kind in ("add", "replace") for a in actions):
            try:
                snapshot = await asyncio.to_thread(self.versions.snapshot, project)
                python = await asyncio.to_thread(self.versions.env_python, project)
                if python is None and env_key is not None:
                    for a in actions:
                        if a.kind == "add":
                            self.records[a.name].preparing = "installing requirements"
                    # READY=1 (and a reload's answer) waits for this build, and pip can outlast
                    # the unit's TimeoutStartSec: ask systemd for more time while it runs.
                    heartbeat = self._spawn_task(self._extend_timeout_while_building())
                    try:
                        python = await asyncio.to_thread(
                            self.versions.build_env, project, lambda m: log.info("requirements: %s", m)
                        )
                    finally:
                        heartbeat.cancel()
            except Exception as exc:
                reason = f"cannot prepare the new version: {exc}"
                for a in actions:
                    if a.kind == "add":
                        self._fail_record(a.api, reason)  # type: ignore[arg-type]
                    elif a.kind == "replace":
                        self._reload_failed(self.records[a.name], reason)
                # `cortexd reload` (and so `systemctl reload`) must exit 1 when a version failed.
                failed_names.update(a.name for a in actions if a.kind in ("add", "replace"))
                lines += [f"{a.name}: failed ({reason})" for a in actions if a.kind in ("add", "replace")]
                actions = [a for a in actions if a.kind not in ("add", "replace")]

        waits: list[tuple[str, asyncio.Future[tuple[bool, str]]]] = []
        loop = asyncio.get_running_loop()
        for action in actions:
            name = action.name
            record = self.records.get(name)
            if action.kind == "remove":
                self._remove_api(name)
                lines.append(action.describe())
                continue
            api = action.api
            assert api is not None and record is not None
            if action.moved:
                self.proxy.set_route(name, api.endpoint)
            if action.kind == "unchanged":
                if action.moved:
                    record.spec = api
                lines.append(action.describe())
            elif action.kind == "scale":
                record.spec = api
                self._track(api)
                self.supervisor.rescale_api(api)
                lines.append(action.describe())
            elif action.kind == "add":
                assert snapshot is not None
                version = self.versions.make(api, snapshot, project, models[name], fingerprints[name], python, env_key)
                record.spec, record.preparing, record.error = api, None, None
                record.fingerprint, record.version = fingerprints[name], version.number
                self._track(api)
                self.proxy.set_route(name, api.endpoint)
                self.compute.reset_autoscale(api, time.monotonic())
                self.supervisor.add_api(api, version)
                future: asyncio.Future[tuple[bool, str]] = loop.create_future()
                self._spawn_task(self._until_started(name, future))
                waits.append((name, future))
            elif action.kind == "replace":
                assert snapshot is not None
                version = self.versions.make(api, snapshot, project, models[name], fingerprints[name], python, env_key)
                future = loop.create_future()

                def done(ok: bool, message: str, name: str = name, api: Api = api, version: Version = version,
                         future: asyncio.Future[tuple[bool, str]] = future) -> None:
                    record = self.records[name]
                    if ok:
                        record.spec, record.fingerprint, record.version = api, version.fingerprint, version.number
                        self._track(api)
                    if not future.done():
                        future.set_result((ok, message))

                self.supervisor.update_api(api, version, done)
                waits.append((name, future))
                lines.append(action.describe())
        self.supervisor.reconcile()
        if not wait:
            return {"ok": not failed_names, "lines": lines}
        ok = not failed_names
        for name, future in waits:
            try:
                success, message = await asyncio.wait_for(future, self.settings.reload_timeout_s)
            except asyncio.TimeoutError:
                success, message = False, f"not ready after {self.settings.reload_timeout_s:.0f}s; still trying"
            ok = ok and success
            lines.append(f"{name}: {'ok' if success else 'failed'}: {message}")
        self._gc_versions()
        return {"ok": ok, "lines": lines}

    async def _until_started(self, name: str, future: asyncio.Future[tuple[bool, str]]) -> None:
        """Resolve `future` once a new API is live or has failed (for the reload's answer)."""
        deadline = time.monotonic() + self.settings.reload_timeout_s
        while time.monotonic() < deadline and not future.done():
            status = self.api_status(name)
            if status == st.LIVE:
                future.set_result((True, "live"))
            elif status in (st.ERROR, st.ERROR_OOM, st.COMPUTE_UNAVAILABLE):
                reason = self.supervisor.status_reason(name) or status
                future.set_result((False, f"{status}: {reason}"))
            else:
                await asyncio.sleep(0.1)

    def _fail_record(self, api: Api, reason: str) -> None:
        record = self.records[api.name]
        record.preparing = None
        if record.fingerprint is None:  # never ran: the API itself is in error
            record.spec = api
            record.error = reason
            self.proxy.set_route(api.name, api.endpoint)
            self.api_log(api.name, reason)
        else:  # the old version keeps serving
            self._reload_failed(record, reason)

    def _reload_failed(self, record: ApiRecord, reason: str) -> None:
        """A reload could not prepare the new version; `get` shows why as last_error, worded
        like the supervisor's own failed update."""
        record.last_reload_error = f"update failed, still serving version {record.version}: {reason}"
        self.api_log(record.spec.name, record.last_reload_error)

    def _remove_api(self, name: str) -> None:
        """New requests get 404 at once; queued and running ones finish; then it stops."""
        record = self.records[name]
        record.removing = True
        self.proxy.remove_route(name)
        if name in self.supervisor.apis:
            self.supervisor.remove_api(name)
        else:
            self._forget_api(name)

    def _track(self, api: Api) -> None:
        if api.tracker is not None:
            self.tracker.register(api.name, api.tracker)
        elif self.tracker.tracked(api.name):
            self.tracker.forget(api.name)

    def _forget_api(self, name: str) -> None:
        self.tracker.forget(name)
        self.metrics.forget(name)
        self.records.pop(name, None)
        self.proxy.forget(name)
        self.compute.forget_api(name)

    def _finish_removals(self) -> None:
        for name in list(self.supervisor.stopped_apis):
            del self.supervisor.stopped_apis[name]
            record = self.records.get(name)
            if record is not None and record.removing and name not in self.supervisor.apis:
                self._forget_api(name)
                self._gc_versions()

    def _gc_versions(self) -> None:
        in_use = [gen.version for api in self.supervisor.apis.values() for gen in api.generations()]
        self._spawn_task(asyncio.to_thread(self.versions.gc, in_use))

    def status_line(self) -> str:
        return status_line({name: self.api_status(name) for name in self.records})

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
            # A reload that could not even prepare the new version never reached the supervisor.
            last_error = record.last_reload_error or runtime.last_error
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
        in_flight, queued = self.proxy.queue_counts(name)
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
            "queue": {"in_flight": in_flight, "queued": queued},
            "tracker": self.tracker.summary(name),
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
        return self.metrics.render()

    def _metrics_state(self) -> MetricsState:
        apis = []
        for name in list(self.records):
            runtime = self.supervisor.apis.get(name)
            in_flight, queued = self.proxy.queue_counts(name)
            states: dict[str, int] = {}
            restarts = 0
            if runtime is not None:
                for gen in runtime.generations():
                    for rep in gen.replicas.values():
                        states[rep.state] = states.get(rep.state, 0) + 1
                    restarts += sum(slot.restarts for slot in gen.slots.values())
            apis.append(ApiMetricsState(
                name=name,
                in_flight=in_flight,
                queued=queued,
                replicas=states,
                restarts=restarts,
                tracker=self.tracker.summary(name),
            ))
        gpus = [
            GpuMetricsState(index=g.index, uuid=g.uuid, memory_used=g.memory_used, memory_total=g.memory_total,
                            utilization=float(g.utilization or 0), name=g.name)
            for g in self.compute.gpus
        ]
        return MetricsState(apis=apis, gpus=gpus)

    # -- ProxyObserver -------------------------------------------------------------------

    def observe(self, api: str, status: int, latency_s: float, queue_s: float, body: bytes) -> None:
        record = self.records.get(api)
        if record is not None:
            record.stats.observe(latency_s, status)
        self.metrics.request(api, status, latency_s, queue_s)
        if status == 200:
            self.tracker.observe_json_bytes(api, body)  # parses only when the API is tracked

    # -- control -------------------------------------------------------------------------

    async def control(self, request: dict[str, Any]) -> dict[str, Any] | AsyncIterator[str]:
        cmd = request.get("cmd")
        if cmd == "get":
            name = request.get("api")
            if name:
                return self.api_view(self._known_api(name))
            return {"apis": [self.api_view(n) for n in self.records]}
        if cmd == "predict":
            name = self._known_api(request.get("api", ""))
            body = str(request.get("body", "")).encode()
            answer = await self.proxy.predict(name, body, "debug=true" if request.get("debug") else "")
            return {"status": answer.status, "body": answer.body.decode("utf-8", "replace")}
        if cmd == "reload":
            return await self.reload(list(request.get("force") or []))
        if cmd == "logs":
            name = self._known_api(request.get("api", ""))
            return self._logs(name, int(request.get("lines", 100)), bool(request.get("follow")))
        if cmd == "gpus":
            return self.compute.gpu_table(self._api_of_replica)
        if cmd == "version":
            return {"version": __version__}
        raise ControlError(f"unknown command {cmd!r}")

    def _known_api(self, name: str) -> str:
        if name not in self.records:
            raise ControlError(f"no API named {name!r}; APIs: {', '.join(self.records) or 'none'}")
        return name

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
        return await Daemon(settings, nvml).run()

    return asyncio.run(main())
