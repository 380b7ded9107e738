"""Making immutable versions: fetched models, fingerprints, project snapshots, environments.

Every step here is blocking disk/network/pip work; the daemon runs them in threads. A
version is what a replica runs: the snapshot is its working directory, so later edits of
the project take effect only at the next reload, even for a replica of the old version
that restarts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection

from cortexd.config import Api
from cortexd.daemon.deploy.envs import EnvBuilder
from cortexd.daemon.deploy.fingerprint import api_fingerprint
from cortexd.daemon.deploy.snapshots import Snapshot, SnapshotStore
from cortexd.daemon.fleet.state import Version
from cortexd.models import ArchiveLimits, evict, fetch_model

REQUIREMENTS = "requirements.txt"

Log = Callable[[str], None]


class VersionFactory:
    def __init__(self, state_dir: str, archive_limits: ArchiveLimits | None = None) -> None:
        self.snapshots = SnapshotStore(os.path.join(state_dir, "snapshots"))
        self.envs = EnvBuilder(os.path.join(state_dir, "envs"))
        self.model_cache = os.path.join(state_dir, "models")
        self.archive_limits = archive_limits or ArchiveLimits()  # serve --max-model-unpacked/-ratio
        self._numbers: dict[str, int] = {}  # per API: versions count 1, 2, 3... for each

    @staticmethod
    def requirements(project_dir: str) -> str | None:
        path = os.path.join(project_dir, REQUIREMENTS)
        return path if os.path.isfile(path) else None

    def fetch_model(self, api: Api, project_dir: str, log: Log) -> str | None:
        if api.predictor.model is None:
            return None
        return fetch_model(api.predictor.model, project_dir, self.model_cache, log, self.archive_limits)

    def env_key(self, project_dir: str) -> str | None:
        req = self.requirements(project_dir)
        return self.envs.key(req) if req else None

    def env_python(self, project_dir: str) -> str | None:
        """The ready environment's python, or None when it must be built (or none is needed)."""
        req = self.requirements(project_dir)
        return self.envs.lookup(req) if req else None

    def build_env(self, project_dir: str, log: Log) -> str | None:
        req = self.requirements(project_dir)
        return self.envs.build(req, log) if req else None

    @staticmethod
    def fingerprint(api: Api, model_path: str | None, env_key: str | None) -> str:
        return api_fingerprint(api, model_path, extra={"env": env_key or "none"})

    def snapshot(self, project_dir: str) -> Snapshot:
        return self.snapshots.take(project_dir)

    def make(
        self, api: Api, snapshot: Snapshot, project_dir: str, model_path: str | None, fingerprint: str,
        python: str | None, env_key: str | None,
    ) -> Version:
        """The version of `api` in `snapshot`: every project path it uses is mapped into the
        snapshot here, once, so a replica never reads the live project."""

        def inside(path: str | None) -> str | None:
            return None if path is None else snapshot.map_path(project_dir, path)

        return Version(
            number=self._next_number(api.name),
            workdir=snapshot.path,
            model_path=inside(model_path),
            fingerprint=fingerprint,
            python=python,
            predictor_path=inside(api.predictor.predictor),
            python_path=inside(api.python_path),
            snapshot_id=snapshot.version_id,
            env_key=env_key,
        )

    def _next_number(self, api: str) -> int:
        self._numbers[api] = self._numbers.get(api, 0) + 1
        return self._numbers[api]

    def evict_models(self, versions_kept: Collection[Version], max_bytes: int) -> list[str]:
        """Keep the model cache within max_bytes (serve --model-cache-size), never removing a
        model of `versions_kept` (those running, and the previous version of each API).
        Blocking: call it from a thread. Returns the removed cache entries."""
        return evict(self.model_cache, [v.model_path for v in versions_kept if v.model_path], max_bytes)

    def gc(self, versions_in_use: Collection[Version]) -> None:
        """Remove snapshots and environments no running replica uses."""
        self.snapshots.gc({v.snapshot_id for v in versions_in_use if v.snapshot_id})
        self.envs.gc({v.env_key for v in versions_in_use if v.env_key})
