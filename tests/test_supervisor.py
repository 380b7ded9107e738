"""The supervisor driven through its events with a fake spawner, a fake router and a fake clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from cortexd import protocol
from cortexd.config import Api, Compute, PredictorSpec
from cortexd.daemon.fleet.supervisor import (
    LOAD_FAILURES_FOR_ERROR,
    ReplicaExited,
    ReplicaLoadFailed,
    ReplicaOverMemory,
    ReplicaReady,
    SpawnRequest,
    Supervisor,
    SupervisorSettings,
    Version,
    backoff_delay,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeHandle:
    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.signals: list[str] = []

    def terminate(self) -> None:
        self.signals.append("TERM")

    def kill(self) -> None:
        self.signals.append("KILL")


class FakeSpawner:
    def __init__(self) -> None:
        self.spawned: list[SpawnRequest] = []
        self.handles: dict[str, FakeHandle] = {}

    def spawn(self, request: SpawnRequest) -> FakeHandle:
        self.spawned.append(request)
        h = self.handles[request.replica_id] = FakeHandle(1000 + len(self.spawned))
        return h

    def socket_path(self, replica_id: str) -> str:
        return f"/run/{replica_id}.sock"


class FakeRouter:
    def __init__(self) -> None:
        self.ready: dict[str, list[str]] = {}
        self.draining: dict[str, Callable[[], None]] = {}
        self.gone: list[str] = []
        self.hold: dict[str, bool] = {}

    def replica_ready(self, api: str, replica_id: str, socket_path: str, generation: int, slots: int = 1,
                      batching: object = None) -> None:
        self.ready.setdefault(api, []).append(replica_id)

    def drain(self, api: str, replica_id: str, on_drained: Callable[[], None]) -> None:
        self.ready[api].remove(replica_id)
        self.draining[replica_id] = on_drained

    def replica_gone(self, api: str, replica_id: str) -> None:
        self.gone.append(replica_id)
        if replica_id in self.ready.get(api, []):
            self.ready[api].remove(replica_id)

    def set_hold_when_empty(self, api: str, hold: bool) -> None:
        self.hold[api] = hold


def make_api(name: str = "iris", **compute: int) -> Api:
    return Api(
        name=name,
        endpoint=f"/d/{name}",
        python_path="/p",
        predictor=PredictorSpec(kind="python", predictor="/p/predictor.py", model=None, signature_key=None, config={}),
        tracker=None,
        compute=Compute(**compute),
        metadata={},
    )


def version(n: int = 1) -> Version:
    return Version(number=n, workdir=f"/snap/{n}", model_path=None)


@pytest.fixture
def world() -> tuple[Supervisor, FakeSpawner, FakeRouter, Clock]:
    spawner, router, clock = FakeSpawner(), FakeRouter(), Clock()
    sup = Supervisor(spawner, router, clock, SupervisorSettings(stop_grace_s=5.0))
    return sup, spawner, router, clock


def last_error(sup: Supervisor, name: str = "iris") -> str:
    error = sup.apis[name].last_error
    return error.message if error is not None else ""


def ids(spawner: FakeSpawner) -> list[str]:
    return [r.replica_id for r in spawner.spawned]


def test_spawns_init_replicas_and_routes_them_once_ready(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(min_replicas=1, init_replicas=2, max_replicas=3), version())
    sup.reconcile()
    assert len(spawner.spawned) == 2
    assert sup.status("iris") == "creating"
    sup.handle(ReplicaReady(ids(spawner)[0]))
    assert router.ready["iris"] == [ids(spawner)[0]]
    assert sup.status("iris") == "live"  # min_replicas ready
    sup.reconcile()
    assert len(spawner.spawned) == 2  # nothing more to start


def test_crash_after_serving_is_replaced_at_once_then_with_backoff(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(), version())
    sup.reconcile()
    first = ids(spawner)[0]
    sup.handle(ReplicaReady(first))
    sup.handle(ReplicaExited(first, -9))
    assert router.gone == [first]
    assert router.hold["iris"] is True  # queued requests wait for the replacement
    sup.reconcile()
    assert len(spawner.spawned) == 2  # replaced at once
    second = ids(spawner)[1]
    sup.handle(ReplicaExited(second, 1))  # dies again before it was ready
    sup.reconcile()
    assert len(spawner.spawned) == 2  # backing off now
    delay = backoff_delay(2, sup.settings)
    assert delay > 0 and sup.next_wakeup() == clock.now + delay
    clock.now += delay
    sup.reconcile()
    assert len(spawner.spawned) == 3
    view = sup.apis["iris"].current.replicas[ids(spawner)[2]]
    assert view.restarts == 2
    assert "exited with code 1" in last_error(sup)


def test_backoff_grows_and_is_capped() -> None:
    s = SupervisorSettings(backoff_base_s=1.0, backoff_max_s=60.0)
    assert [backoff_delay(n, s) for n in range(1, 9)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]


def test_repeated_load_failures_put_the_api_in_error_and_keep_retrying(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(), version())
    for _ in range(LOAD_FAILURES_FOR_ERROR):
        sup.reconcile()
        rid = ids(spawner)[-1]
        assert sup.status("iris") == "creating"  # not yet in error: it may still load
        sup.handle(ReplicaLoadFailed(rid, "predictor.py: init(metadata) raised OSError: no weights"))
        sup.handle(ReplicaExited(rid, protocol.EXIT_LOAD_FAILED))
        clock.now += 120
    assert sup.status("iris") == "error"
    assert last_error(sup) == "predictor.py: init(metadata) raised OSError: no weights"
    sup.reconcile()
    assert len(spawner.spawned) == LOAD_FAILURES_FOR_ERROR + 1  # still trying, with backoff
    sup.handle(ReplicaReady(ids(spawner)[-1]))
    assert sup.status("iris") == "live"


def test_one_api_in_error_does_not_affect_another(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api("bad"), version())
    sup.deploy(make_api("good"), version())
    sup.reconcile()
    by_api = {r.api.name: r.replica_id for r in spawner.spawned}
    sup.handle(ReplicaReady(by_api["good"]))
    for _ in range(LOAD_FAILURES_FOR_ERROR):
        rid = [r.replica_id for r in spawner.spawned if r.api.name == "bad"][-1]
        sup.handle(ReplicaLoadFailed(rid, "boom"))
        sup.handle(ReplicaExited(rid, protocol.EXIT_LOAD_FAILED))
        clock.now += 120
        sup.reconcile()
    assert sup.status("bad") == "error"
    assert sup.status("good") == "live"
    assert router.ready["good"] == [by_api["good"]]


def test_scale_down_drains_before_stopping(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(min_replicas=1, init_replicas=2, max_replicas=2), version())
    sup.reconcile()
    for rid in ids(spawner):
        sup.handle(ReplicaReady(rid))
    sup.set_desired("iris", 1)
    sup.reconcile()
    second = ids(spawner)[1]
    assert second in router.draining
    assert spawner.handles[second].signals == []  # still finishing its request
    router.draining[second]()  # the proxy says it is idle now
    assert spawner.handles[second].signals == ["TERM"]
    sup.handle(ReplicaExited(second, 0))
    assert sup.apis["iris"].current.slots[0].restarts == 0
    assert len(spawner.spawned) == 2  # an expected exit is not replaced


def test_stop_grace_then_kill(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(), version())
    sup.reconcile()
    rid = ids(spawner)[0]
    sup.handle(ReplicaReady(rid))
    sup.stop_all()
    sup.reconcile()
    router.draining[rid]()
    assert spawner.handles[rid].signals == ["TERM"]
    clock.now += 4.9
    sup.reconcile()
    assert spawner.handles[rid].signals == ["TERM"]
    clock.now += 0.2
    sup.reconcile()
    assert spawner.handles[rid].signals == ["TERM", "KILL"]
    assert sup.status("iris") == "stopping"
    sup.handle(ReplicaExited(rid, -9))
    assert sup.all_stopped()


def test_rolling_update_switches_only_when_the_new_version_is_ready(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(min_replicas=2, init_replicas=2, max_replicas=2), version(1))
    sup.reconcile()
    old = ids(spawner)
    for rid in old:
        sup.handle(ReplicaReady(rid))
    done: list[tuple[bool, str]] = []
    sup.deploy(make_api(min_replicas=2, init_replicas=2, max_replicas=2), version(2),
               lambda ok, m: done.append((ok, m)))
    sup.reconcile()
    new = ids(spawner)[2:]
    assert len(new) == 2 and all(r.version.number == 2 for r in spawner.spawned[2:])
    assert sup.status("iris") == "updating"
    sup.handle(ReplicaReady(new[0]))
    assert router.ready["iris"] == old  # not yet: the new version is half ready
    sup.handle(ReplicaReady(new[1]))
    assert router.ready["iris"] == new  # switched atomically
    assert set(router.draining) == set(old)
    assert done == [(True, "now serving version 2")]
    assert sup.status("iris") == "live"


def test_failed_update_keeps_the_old_version_serving(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(), version(1))
    sup.reconcile()
    old = ids(spawner)[0]
    sup.handle(ReplicaReady(old))
    done: list[tuple[bool, str]] = []
    sup.deploy(make_api(), version(2), lambda ok, m: done.append((ok, m)))
    for _ in range(LOAD_FAILURES_FOR_ERROR):
        sup.reconcile()
        rid = ids(spawner)[-1]
        sup.handle(ReplicaLoadFailed(rid, "SyntaxError in predictor.py"))
        sup.handle(ReplicaExited(rid, protocol.EXIT_LOAD_FAILED))
        clock.now += 120
    sup.reconcile()
    assert done and done[0][0] is False and "SyntaxError" in done[0][1]
    assert router.ready["iris"] == [old]
    assert sup.status("iris") == "live"
    assert "still serving version 1" in last_error(sup)


def test_over_memory_kills_and_reports_out_of_memory(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(), version())
    sup.reconcile()
    rid = ids(spawner)[0]
    sup.handle(ReplicaReady(rid))
    sup.handle(ReplicaOverMemory(rid, rss_bytes=600 << 20, limit_bytes=512 << 20))
    assert spawner.handles[rid].signals == ["KILL"]
    sup.handle(ReplicaExited(rid, -9))
    assert sup.status("iris") == "error (out of memory)"
    assert "600 MiB" in last_error(sup)
    sup.reconcile()
    replacement = ids(spawner)[-1]
    assert replacement != rid
    sup.handle(ReplicaReady(replacement))
    assert sup.status("iris") == "live"
    assert "600 MiB" in last_error(sup)  # the reason stays after recovery


def test_placement_refusal_shows_compute_unavailable(world) -> None:
    sup, spawner, router, clock = world

    class NoGpus:
        def place(self, replica_id, api, preferred):
            return None, "needs 1 GPU per replica; 0 of 0 in use"

        def release(self, replica_id):
            pass

    sup.placer = NoGpus()
    sup.deploy(make_api(gpu=1), version())
    sup.reconcile()
    assert spawner.spawned == []
    assert sup.status("iris") == "compute unavailable"
    assert sup.status_reason("iris") == "needs 1 GPU per replica; 0 of 0 in use"


def test_api_removed_drains_and_disappears(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(), version())
    sup.reconcile()
    rid = ids(spawner)[0]
    sup.handle(ReplicaReady(rid))
    sup.remove("iris")
    sup.reconcile()
    assert sup.status("iris") == "stopping"
    router.draining[rid]()
    sup.handle(ReplicaExited(rid, 0))
    assert "iris" not in sup.apis


def test_rescale_applies_bounds_in_place(world) -> None:
    sup, spawner, router, clock = world
    sup.deploy(make_api(min_replicas=1, init_replicas=1, max_replicas=5), version())
    sup.reconcile()
    sup.rescale(make_api(min_replicas=3, init_replicas=3, max_replicas=5))
    sup.reconcile()
    assert len(spawner.spawned) == 3
    assert all(r.version.number == 1 for r in spawner.spawned)


def test_spawn_request_carries_the_version() -> None:
    req = SpawnRequest("iris-1", make_api(), version(7), [0])
    assert dataclasses.replace(req, gpus=[1]).version.number == 7


def test_update_strategy_surge_0_stops_the_old_replica_before_its_replacement_starts(world) -> None:
    from cortexd.config.objects import UpdateStrategy

    sup, spawner, router, clock = world

    class OneGpu:  # room for one replica at a time
        held: set[str] = set()

        def place(self, replica_id, api, preferred):
            if self.held:
                return None, "needs 1 GPU per replica; 1 of 1 in use"
            self.held.add(replica_id)
            return [0], None

        def release(self, replica_id):
            self.held.discard(replica_id)

    sup.placer = OneGpu()
    spec = dataclasses.replace(make_api(gpu=1), update_strategy=UpdateStrategy("0", "1"))
    sup.deploy(spec, version(1))
    sup.reconcile()
    old = ids(spawner)[0]
    sup.handle(ReplicaReady(old))
    sup.deploy(spec, version(2))
    sup.reconcile()
    assert old in router.draining and len(spawner.spawned) == 1  # the old one goes first
    router.draining[old]()
    sup.handle(ReplicaExited(old, 0))
    sup.reconcile()
    new = ids(spawner)[1]
    assert spawner.spawned[1].version.number == 2 and sup.status("iris") == "updating"
    sup.handle(ReplicaReady(new))
    assert router.ready["iris"] == [new] and sup.status("iris") == "live"
    sup.reconcile()
    assert len(spawner.spawned) == 2  # the drained slot is not refilled with the old version


def test_update_strategy_surge_1_rolls_one_replica_at_a_time_and_serves_both(world) -> None:
    from cortexd.config.objects import UpdateStrategy

    sup, spawner, router, clock = world
    spec = dataclasses.replace(make_api(min_replicas=2, init_replicas=2, max_replicas=2),
                               update_strategy=UpdateStrategy("1", "0"))
    sup.deploy(spec, version(1))
    sup.reconcile()
    old = ids(spawner)
    for rid in old:
        sup.handle(ReplicaReady(rid))
    sup.deploy(spec, version(2))
    sup.reconcile()
    assert len(spawner.spawned) == 3 and not router.draining  # one surge replica, nothing drained yet
    first = ids(spawner)[2]
    sup.handle(ReplicaReady(first))
    assert first in router.ready["iris"]  # it serves beside the old ones
    sup.reconcile()
    assert len(router.draining) == 1 and len(spawner.spawned) == 4  # one old drains, the next new starts
    sup.handle(ReplicaReady(ids(spawner)[3]))
    sup.reconcile()
    assert set(router.draining) == set(old) and sup.status("iris") == "live"
    assert sorted(router.ready["iris"]) == sorted(ids(spawner)[2:])
