"""plan_reload: table tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cortexd.config import Api, Compute, PredictorSpec
from cortexd.daemon.deploy.reload_plan import Action, PlanError, RunningApi, compute_diff, plan_reload

FP = "config=aa predictor=bb model=cc python=dd"
FP_PRED = "config=aa predictor=b2 model=cc python=dd"


def api(name: str, endpoint: str | None = None, **compute: Any) -> Api:
    return Api(
        name=name,
        endpoint=endpoint or f"/dep/{name}",
        python_path="/p",
        predictor=PredictorSpec(kind="python", predictor="/p/predictor.py", model=None, signature_key=None, config={}),
        tracker=None,
        compute=Compute(**compute),
        metadata={},
    )


def running(name: str, endpoint: str | None = None, fingerprint: str = FP, **compute: Any) -> RunningApi:
    return RunningApi(name, endpoint or f"/dep/{name}", fingerprint, Compute(**compute))


def summary(actions: list[Action]) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
    return [(a.kind, a.name, a.moved_from, a.reasons) for a in actions]


CASES: list[tuple[str, list[RunningApi], list[Api], dict[str, str], set[str], list[tuple[Any, ...]]]] = [
    ("nothing changed", [running("a")], [api("a")], {"a": FP}, set(), [("unchanged", "a", None, ())]),
    (
        "predictor edited",
        [running("a")],
        [api("a")],
        {"a": FP_PRED},
        set(),
        [("replace", "a", None, ("predictor changed",))],
    ),
    (
        "opaque fingerprints differ",
        [running("a", fingerprint="x")],
        [api("a")],
        {"a": "y"},
        set(),
        [("replace", "a", None, ("fingerprint changed",))],
    ),
    ("forced", [running("a")], [api("a")], {"a": FP}, {"a"}, [("replace", "a", None, ("forced",))]),
    (
        "max_replicas only -> scale",
        [running("a", max_replicas=4)],
        [api("a", max_replicas=8)],
        {"a": FP},
        set(),
        [("scale", "a", None, ("compute.max_replicas 4 -> 8",))],
    ),
    (
        "min/init/target -> scale",
        [running("a")],
        [api("a", min_replicas=2, init_replicas=2, target_cpu_utilization=50)],
        {"a": FP},
        set(),
        [
            (
                "scale",
                "a",
                None,
                ("compute.min_replicas 1 -> 2", "compute.init_replicas 1 -> 2", "compute.target_cpu_utilization 80 -> 50"),
            )
        ],
    ),
    ("gpu -> replace", [running("a")], [api("a", gpu=1)], {"a": FP}, set(), [("replace", "a", None, ("compute.gpu 0 -> 1",))]),
    ("cpu -> replace", [running("a")], [api("a", cpu=1.0)], {"a": FP}, set(), [("replace", "a", None, ("compute.cpu 0.2 -> 1.0",))]),
    (
        "mem -> replace",
        [running("a")],
        [api("a", mem=1024)],
        {"a": FP},
        set(),
        [("replace", "a", None, ("compute.mem None -> 1024",))],
    ),
    (
        "bounds and gpu -> replace with both reasons",
        [running("a")],
        [api("a", max_replicas=3, gpu=1)],
        {"a": FP},
        set(),
        [("replace", "a", None, ("compute.max_replicas 100 -> 3", "compute.gpu 0 -> 1"))],
    ),
    (
        "endpoint only -> unchanged, moved",
        [running("a", "/old")],
        [api("a", "/new")],
        {"a": FP},
        set(),
        [("unchanged", "a", "/old", ())],
    ),
    (
        "endpoint and bounds -> scale, moved",
        [running("a", "/old")],
        [api("a", "/new", max_replicas=2)],
        {"a": FP},
        set(),
        [("scale", "a", "/old", ("compute.max_replicas 100 -> 2",))],
    ),
    (
        "endpoint and predictor -> replace, moved",
        [running("a", "/old")],
        [api("a", "/new")],
        {"a": FP_PRED},
        set(),
        [("replace", "a", "/old", ("predictor changed",))],
    ),
    ("added", [], [api("a")], {"a": FP}, set(), [("add", "a", None, ())]),
    ("added and forced is still add", [], [api("a")], {"a": FP}, {"a"}, [("add", "a", None, ())]),
    ("removed", [running("a")], [], {}, set(), [("remove", "a", None, ())]),
    ("removed and forced is still remove", [running("a")], [], {}, {"a"}, [("remove", "a", None, ())]),
    (
        "mixed; config order, then removals by name",
        [running("z"), running("b"), running("keep"), running("y")],
        [api("new"), api("keep"), api("b", max_replicas=2)],
        {"new": FP, "keep": FP, "b": FP},
        set(),
        [
            ("add", "new", None, ()),
            ("unchanged", "keep", None, ()),
            ("scale", "b", None, ("compute.max_replicas 100 -> 2",)),
            ("remove", "y", None, ()),
            ("remove", "z", None, ()),
        ],
    ),
    (
        "two APIs swap endpoints",
        [running("a", "/x"), running("b", "/y")],
        [api("a", "/y"), api("b", "/x")],
        {"a": FP, "b": FP},
        set(),
        [("unchanged", "a", "/x", ()), ("unchanged", "b", "/y", ())],
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "fps", "force", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(
    old: list[RunningApi], new: list[Api], fps: dict[str, str], force: set[str], expected: list[tuple[Any, ...]]
) -> None:
    actions = plan_reload({r.name: r for r in old}, new, fps, force)
    assert summary(actions) == expected


def test_actions_carry_new_api_and_endpoints() -> None:
    new_a = api("a", "/new")
    actions = plan_reload({"a": running("a", "/old"), "gone": running("gone", "/g")}, [new_a], {"a": FP}, ())
    assert actions[0].api is new_a and actions[0].endpoint == "/new" and actions[0].moved
    assert actions[1].api is None and actions[1].endpoint == "/g" and not actions[1].moved


def test_unknown_forced_name() -> None:
    with pytest.raises(PlanError, match=r"--force: no API named 'nope' \(APIs: a\)"):
        plan_reload({"a": running("a")}, [api("a")], {"a": FP}, {"nope"})


def test_missing_fingerprint() -> None:
    with pytest.raises(PlanError, match="no fingerprint for a"):
        plan_reload({}, [api("a")], {}, ())


@pytest.mark.parametrize(
    ("action", "text"),
    [
        (Action("unchanged", "a", None, "/a"), "a: unchanged"),
        (Action("replace", "a", None, "/b", "/a", ("predictor changed",)), "a: replaced (rolling update) (predictor changed); route /a -> /b"),
        (Action("scale", "a", None, "/a", None, ("compute.max_replicas 1 -> 2",)), "a: scaled in place (compute.max_replicas 1 -> 2)"),
        (Action("add", "a", None, "/a"), "a: added"),
        (Action("remove", "a", None, "/a"), "a: removed"),
    ],
)
def test_describe(action: Action, text: str) -> None:
    assert action.describe() == text


def test_compute_diff_is_in_field_order() -> None:
    old, new = Compute(), dataclasses.replace(Compute(), mem=5, min_replicas=2)
    assert compute_diff(old, new) == [("min_replicas", 1, 2), ("mem", None, 5)]


def test_autoscaling_or_update_strategy_alone_is_applied_in_place() -> None:
    from cortexd.config.objects import Autoscaling, UpdateStrategy

    new = dataclasses.replace(api("a"), autoscaling=Autoscaling(target_replica_concurrency=4.0),
                              update_strategy=UpdateStrategy("1", "0"))
    actions = plan_reload({"a": running("a")}, [new], {"a": FP})
    assert summary(actions) == [("scale", "a", None, ("autoscaling or update_strategy changed",))]
