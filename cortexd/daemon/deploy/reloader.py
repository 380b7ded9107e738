"""Taking the daemon from what runs to a cortex.yaml: the reload pipeline.

Two phases:
1. `apply` (under a lock, never waiting on a model, an environment or a replica): check
   --force names, remove the APIs the file no longer names, and start one pipeline per API.
   New APIs are declared to the supervisor at once (`creating`, routed: their requests get
   503 with the reason, not 404).
2. One pipeline per API, independent of the others: fetch its model, fingerprint it, plan its
   action (reload_plan.plan_reload: unchanged, scale, replace or add), and for add/replace
   make a version (the project's snapshot and environment are shared by the pipelines of one
   reload) and hand it to the supervisor, whose answer (live, or why not) completes it.
   Each pipeline has a deadline (`prepare_timeout_s`); a slow model host or a slow init()
   delays its own API only. A newer reload supersedes an older pipeline of the same API.

`apply` returns a ReloadReport: the startup apply does not wait for the pipelines (READY=1
goes out once they are started); `cortexd reload` waits for them (outside the lock, so a
later reload of another API never waits on this one).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cortexd import callconv
from cortexd.config import Api, Config
from cortexd.config.objects import TrafficSplitter
from cortexd.daemon.deploy.blocking import run_blocking
from cortexd.daemon.deploy.project import PrepareError, ProjectPrep
from cortexd.daemon.deploy.reload_plan import Action, PlanError, RunningApi, plan_reload, steering
from cortexd.daemon.deploy.versions import VersionFactory
from cortexd.daemon.fleet.state import Version
from cortexd.daemon.fleet.supervisor import Supervisor
from cortexd.daemon.serving.proxy import Proxy, RouteOptions, SplitRoute

log = logging.getLogger("cortexd.reload")


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ReloadReport:
    ok: bool
    lines: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "lines": list(self.lines)}


@dataclass
class Hooks:
    """What else a deployment touches: the tracker, the autoscaler's memory, logs, systemd."""

    track: Callable[[Api], None] = lambda api: None
    reset_autoscale: Callable[[Api], None] = lambda api: None
    api_log: Callable[[str, str], None] = lambda api, message: None
    extend_timeout: Callable[[], None] = lambda: None  # while pip runs: ask systemd for more time


@dataclass
class _Pipeline:
    spec: Api
    forced: bool
    task: asyncio.Task[Outcome]


@dataclass
class ReloaderSettings:
    prepare_timeout_s: float = 900.0
    reload_timeout_s: float = 600.0
    model_cache_bytes: int = 20 << 30  # downloaded models kept beyond those in use (--model-cache-size)


class Reloader:
    def __init__(self, supervisor: Supervisor, proxy: Proxy, versions: VersionFactory, hooks: Hooks,
                 settings: ReloaderSettings) -> None:
        self.supervisor = supervisor
        self.proxy = proxy
        self.versions = versions
        self.hooks = hooks
        self.settings = settings
        self._lock = asyncio.Lock()
        self._pipelines: dict[str, _Pipeline] = {}
        self._previous: dict[str, Version] = {}  # per API: the version before its current one (its model is kept)
        self._background: set[asyncio.Task[None]] = set()

    async def apply(self, config: Config, force: list[str], wait: bool) -> ReloadReport:
        async with self._lock:
            unknown = sorted(set(force) - {a.name for a in config.apis} - set(self.supervisor.apis))
            if unknown:
                known = ", ".join(sorted({a.name for a in config.apis} | set(self.supervisor.apis))) or "none"
                return ReloadReport(False, (f"--force: no API named {', '.join(map(repr, unknown))} (APIs: {known}); "
                                            "nothing was changed",))
            try:
                env_key = await run_blocking(self.versions.env_key, config.project_dir)
            except OSError as exc:
                return ReloadReport(False, (f"cannot read requirements.txt: {exc}; nothing was changed",))
            project = ProjectPrep(self.versions, config.project_dir, env_key, self.supervisor, self.hooks)
            lines = [self._remove(name) for name in self._removed(config)]
            self.proxy.set_splits(split_route(s) for s in config.splitters)
            pipelines = []
            for api in config.apis:
                pipeline = self._start(api, api.name in force, project)
                if pipeline is None:  # an earlier reload is deploying exactly this: not ours to wait for
                    lines.append(f"{api.name}: unchanged (an earlier reload is still deploying it)")
                else:
                    pipelines.append(pipeline)
        if not wait:
            return ReloadReport(True, tuple(lines))
        outcomes = await asyncio.gather(*(asyncio.shield(p.task) for p in pipelines))
        self._gc()
        for outcome in outcomes:
            lines.extend(outcome.lines)
        return ReloadReport(all(o.ok for o in outcomes), tuple(lines))

    def cancel_all(self) -> None:
        for pipeline in self._pipelines.values():
            pipeline.task.cancel()

    # -- phase 1 -----------------------------------------------------------------------------

    def _removed(self, config: Config) -> list[str]:
        named = {a.name for a in config.apis}
        return [name for name, entry in self.supervisor.apis.items() if name not in named and not entry.stopping]

    def _remove(self, name: str) -> str:
        """New requests get 404 at once; queued and running ones finish; then it stops."""
        old = self._pipelines.pop(name, None)
        if old is not None:
            old.task.cancel()
        endpoint = self.supervisor.apis[name].spec.endpoint
        self.proxy.remove_route(name)
        self.supervisor.remove(name)
        return Action("remove", name, None, endpoint).describe()

    def _start(self, api: Api, forced: bool, project: ProjectPrep) -> _Pipeline | None:
        """A new pipeline for `api`; None when one for the same spec is under way already."""
        old = self._pipelines.get(api.name)
        if old is not None and not old.task.done():
            if old.spec == api and not forced:
                return None
            old.task.cancel()
        if api.name not in self.supervisor.apis:
            self.supervisor.declare(api, "fetching the model" if api.predictor.model else "preparing")
            self.proxy.set_route(api.name, api.endpoint, route_options(api))
        task = asyncio.ensure_future(self._pipeline(api, forced, project))
        pipeline = self._pipelines[api.name] = _Pipeline(api, forced, task)
        task.add_done_callback(functools.partial(self._finished, api.name))
        return pipeline

    def _finished(self, name: str, task: asyncio.Task[Outcome]) -> None:
        pipeline = self._pipelines.get(name)
        if pipeline is not None and pipeline.task is task:
            del self._pipelines[name]
        if not task.cancelled() and task.exception() is None:
            for line in task.result().lines:
                log.info("reload: %s", line)

    # -- phase 2: one API ---------------------------------------------------------------------

    async def _pipeline(self, api: Api, forced: bool, project: ProjectPrep) -> Outcome:
        name = api.name
        try:
            action, version = await asyncio.wait_for(self._prepare(api, forced, project),
                                                     self.settings.prepare_timeout_s)
            if version is None:
                self._in_place(action, api)
                return Outcome(name, True, (action.describe(),))
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            entry = self.supervisor.apis.get(name)
            doing = entry.preparing if entry is not None and entry.preparing else "preparing the version"
            return self._prepare_failed(api, f"not ready to deploy within {self.settings.prepare_timeout_s:g}s "
                                        f"(still {doing})")
        except Exception as exc:  # a failed download, env build or snapshot fails this API alone
            return self._prepare_failed(api, str(exc) if str(exc) else type(exc).__name__)
        return await self._deploy(action, api, version)

    async def _prepare(self, api: Api, forced: bool, project: ProjectPrep) -> tuple[Action, Version | None]:
        """The API's action, and for add/replace the version to deploy."""
        action, model, fingerprint = await self._plan(api, forced, project)
        if action.kind in ("unchanged", "scale"):
            return action, None
        return action, await project.version(api, model, fingerprint)

    async def _plan(self, api: Api, forced: bool, project: ProjectPrep) -> tuple[Action, str | None, str]:
        try:
            model = await run_blocking(self.versions.fetch_model, api, project.project_dir,
                                       lambda m: self.hooks.api_log(api.name, m))
        except Exception as exc:
            raise PrepareError(f"cannot fetch the model: {exc}") from exc
        fingerprint = await run_blocking(self.versions.fingerprint, api, model, project.env_key)
        entry = self.supervisor.apis.get(api.name)
        gen = entry.deploying if entry is not None else None
        running = {}
        if entry is not None and gen is not None:
            running[api.name] = RunningApi(api.name, entry.spec.endpoint, gen.version.fingerprint, entry.spec.compute,
                                           steering(entry.spec))
        try:
            (action,) = plan_reload(running, [api], {api.name: fingerprint}, [api.name] if forced else [])
        except PlanError as exc:
            raise PrepareError(str(exc)) from exc
        return action, model, fingerprint

    def _in_place(self, action: Action, api: Api) -> None:
        if action.moved:
            self.proxy.set_route(api.name, api.endpoint, route_options(api))
        self.supervisor.rescale(api)
        self.hooks.track(api)

    async def _deploy(self, action: Action, api: Api, version: Version) -> Outcome:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[bool, str]] = loop.create_future()

        def settle(ok: bool, message: str) -> None:
            if not done.done():
                done.set_result((ok, message))
            if ok:
                self.hooks.track(api)

        self.proxy.set_route(api.name, api.endpoint, route_options(api))
        if action.kind == "add":
            self.hooks.reset_autoscale(api)
        entry = self.supervisor.apis.get(api.name)
        if entry is not None and entry.current is not None:
            self._previous[api.name] = entry.current.version
        self.supervisor.deploy(api, version, settle)
        head = () if action.kind == "add" else (action.describe(),)
        try:
            ok, message = await asyncio.wait_for(asyncio.shield(done), self.settings.reload_timeout_s)
        except asyncio.TimeoutError:
            ok, message = False, f"not ready after {self.settings.reload_timeout_s:.0f}s; still trying"
        return Outcome(api.name, ok, head + (f"{api.name}: {'ok' if ok else 'failed'}: {message}",))

    def _prepare_failed(self, api: Api, reason: str) -> Outcome:
        self.supervisor.prepare_failed(api.name, reason)
        self.hooks.api_log(api.name, reason)
        return Outcome(api.name, False, (f"{api.name}: failed ({reason})",))

    def _gc(self) -> None:
        """Snapshots and environments no version uses go; the model cache keeps what the
        running versions and the one before each use, and the rest up to its size."""
        in_use = self.supervisor.versions_in_use()
        for name in [n for n in self._previous if n not in self.supervisor.apis]:
            del self._previous[name]
        kept = in_use + list(self._previous.values())

        def collect() -> None:
            self.versions.gc(in_use)
            self.versions.evict_models(kept, self.settings.model_cache_bytes)

        task = asyncio.ensure_future(run_blocking(collect))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def split_route(splitter: TrafficSplitter) -> SplitRoute:
    return SplitRoute(
        name=splitter.name, endpoint=splitter.endpoint,
        apis=tuple((s.api, s.weight) for s in splitter.apis if not s.shadow),
        shadows=tuple(s.api for s in splitter.apis if s.shadow),
    )


def route_options(api: Api) -> RouteOptions:
    """How the proxy handles the API's requests: the client's headers go to predictors whose
    Cortex release passed them; max_replica_concurrency bounds what waits per replica."""
    return RouteOptions(
        forward_headers=api.call in (callconv.CALL_CLASS_KWARGS, callconv.CALL_HANDLER),
        max_concurrency=api.autoscaling.max_replica_concurrency if api.autoscaling is not None else None,
    )
