"""One reload's project: its snapshot and environment, made once and shared by every API
pipeline of that reload that needs a new version (and by none that does not)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from cortexd.config import Api
from cortexd.daemon.deploy.blocking import run_blocking
from cortexd.daemon.deploy.snapshots import Snapshot
from cortexd.daemon.deploy.versions import VersionFactory
from cortexd.daemon.fleet.state import Version

if TYPE_CHECKING:
    from cortexd.daemon.deploy.reloader import Hooks
    from cortexd.daemon.fleet.supervisor import Supervisor

log = logging.getLogger("cortexd.reload")

# While a requirements environment builds, systemd is asked for more time this often.
EXTEND_EVERY_S = 30.0


class PrepareError(Exception):
    """A step of making a version failed; the message is worded for the user."""


class ProjectPrep:
    def __init__(self, versions: VersionFactory, project_dir: str, env_key: str | None, supervisor: Supervisor,
                 hooks: Hooks) -> None:
        self.versions = versions
        self.project_dir = project_dir
        self.env_key = env_key
        self._supervisor = supervisor
        self._hooks = hooks
        self._task: asyncio.Task[tuple[Snapshot, str | None]] | None = None

    async def version(self, api: Api, model: str | None, fingerprint: str) -> Version:
        if self._task is None:
            self._task = asyncio.ensure_future(self._prepare())
        if not self._task.done() and self.env_key is not None:
            self._supervisor.preparing(api.name, "installing requirements")
        # Shielded: one pipeline cancelled (superseded, removed) leaves the others' work running.
        snapshot, python = await asyncio.shield(self._task)
        return self.versions.make(api, snapshot, self.project_dir, model, fingerprint, python, self.env_key)

    async def _prepare(self) -> tuple[Snapshot, str | None]:
        try:
            snapshot = await run_blocking(self.versions.snapshot, self.project_dir)
            python = await run_blocking(self.versions.env_python, self.project_dir)
            if python is None and self.env_key is not None:
                heartbeat = asyncio.ensure_future(self._extend_while_building())
                try:
                    python = await run_blocking(self.versions.build_env, self.project_dir, _requirements_log)
                finally:
                    heartbeat.cancel()
        except Exception as exc:
            raise PrepareError(f"cannot prepare the new version: {exc}") from exc
        return snapshot, python

    async def _extend_while_building(self) -> None:
        while True:
            self._hooks.extend_timeout()
            await asyncio.sleep(EXTEND_EVERY_S)


def _requirements_log(message: Any) -> None:
    log.info("requirements: %s", message)
