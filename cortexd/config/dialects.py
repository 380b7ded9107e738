"""Which Cortex release a cortex.yaml was written for, decided from its shape.

Cortex changed the file's shape four times between v0.11 and v0.35; each shape is a
dialect here, read with its own key tables and reported in its own terms:

- v0.11: `kind: deployment` + `kind: api`, `predictor: {path}` / `onnx:` / `tensorflow:` with
  `request_handler` and `metadata` inside the section;
- seed: `kind: deployment` + `kind: api`, `python:` / `onnx:` / `tensorflow:` sections with
  `predictor` and `config` (Cortex's main branch in December 2019, cortexd's first dialect);
- v0.12: `predictor: {type, path, ...}`, with a deployment (v0.12) or as a bare list (v0.13);
- realtime: a list of resources with `autoscaling`, `networking`, `kind: RealtimeAPI` ...
  (v0.14-v0.35).

Detection only looks at key names (never values that may be wrong): every item votes for
the dialect its distinctive keys belong to; the most votes win, ties go to the older
reading within a file with a deployment and to the newer one without. A file with no
distinctive key at all is read as the seed dialect when it has a deployment or `kind: api`
items, else as v0.12-v0.13 (a bare list of `predictor: {type, path}` APIs reads the same in
v0.13 and v0.14-v0.17, and v0.13 is where that shape began; its CPU autoscaling is kept).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import yaml

from cortexd.config.yamlsrc import STR_TAG, Mark, YamlSource, mark_of


@dataclass(frozen=True)
class Dialect:
    id: str          # stable identifier (Config.dialect, Api.dialect)
    title: str       # as `validate` names it
    releases: str    # the Cortex releases that wrote files this way


V011 = Dialect("v0.11", "Cortex v0.11 dialect", "v0.11.0-v0.11.1")
SEED = Dialect("seed", "Cortex December 2019 dialect (python/onnx/tensorflow sections)", "master, December 2019")
V012 = Dialect("v0.12", "Cortex v0.12\u2013v0.13 dialect", "v0.12.0-v0.13.1")
REALTIME = Dialect("realtime", "Cortex v0.14\u2013v0.35 dialect", "v0.14.0-v0.35.0")

DIALECTS: dict[str, Dialect] = {d.id: d for d in (V011, SEED, V012, REALTIME)}
NEWEST = REALTIME   # what `cortexd convert` writes

# Keys whose presence says which dialect an item was written in (by where they appear).
_REALTIME_ITEM_KEYS = frozenset({
    "autoscaling", "update_strategy", "networking", "monitoring", "handler", "pod", "apis",
})
_REALTIME_PREDICTOR_KEYS = frozenset({
    "model_path", "models", "processes_per_replica", "threads_per_process", "server_side_batching",
    "multi_model_reloading", "image", "tensorflow_serving_image", "log_level", "shm_size", "dependencies",
    "protobuf_path", "interface",
})
_V012_PREDICTOR_KEYS = frozenset({"type", "config", "env", "signature_key"})
_V011_PREDICTOR_KEYS = frozenset({"metadata"})
_V011_SECTION_KEYS = frozenset({"request_handler", "metadata"})
_SEED_SECTION_KEYS = frozenset({"predictor", "config"})
_OLD_COMPUTE_KEYS = frozenset({"min_replicas", "max_replicas", "init_replicas", "target_cpu_utilization",
                               "max_surge", "max_unavailable"})
_REALTIME_COMPUTE_KEYS = frozenset({"inf", "node_groups"})
_REALTIME_KINDS = frozenset({"RealtimeAPI", "SyncAPI", "TrafficSplitter", "BatchAPI", "TaskAPI", "AsyncAPI"})


@dataclass(frozen=True)
class Detection:
    dialect: Dialect
    evidence: str        # what decided it, for `validate`: 'predictor.type (line 5)'
    has_deployment: bool


def _keys(node: yaml.Node, src: YamlSource) -> dict[str, yaml.Node]:
    """A mapping's string keys and value nodes (merges applied); {} for anything else."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    try:
        pairs = src.pairs(node)
    except yaml.YAMLError:
        return {}
    return {k.value: v for k, v in pairs if isinstance(k, yaml.ScalarNode) and k.tag == STR_TAG}


def _kind(item: dict[str, yaml.Node]) -> str | None:
    node = item.get("kind")
    if isinstance(node, yaml.ScalarNode) and node.tag == STR_TAG:
        return str(node.value)
    return None


def _vote(item: dict[str, yaml.Node], src: YamlSource, has_deployment: bool) -> tuple[Dialect, str, Mark] | None:
    """The dialect one item's keys point to, the key that says so and where; None when neutral."""

    def found(dialect: Dialect, path: str, node: yaml.Node) -> tuple[Dialect, str, Mark]:
        return dialect, path, mark_of(node)

    kind = _kind(item)
    if kind in _REALTIME_KINDS or (kind is not None and kind not in ("api", "deployment") and not has_deployment):
        # a kind of v0.19+ (or a misspelling of one: only those releases had kinds beyond api)
        return found(REALTIME, f"kind: {kind}", item["kind"])
    for name in sorted(_REALTIME_ITEM_KEYS & item.keys()):
        return found(REALTIME, name, item[name])
    if "python" in item:
        return found(SEED, "python", item["python"])
    for name in ("python_path", "metadata"):   # API-level in the seed only
        if name in item:
            return found(SEED, name, item[name])
    for section in ("onnx", "tensorflow"):
        inner = _keys(item.get(section, yaml.ScalarNode(STR_TAG, "")), src)
        for name in sorted(_V011_SECTION_KEYS & inner.keys()):
            return found(V011, f"{section}.{name}", inner[name])
        for name in sorted(_SEED_SECTION_KEYS & inner.keys()):
            return found(SEED, f"{section}.{name}", inner[name])
    predictor = _keys(item.get("predictor", yaml.ScalarNode(STR_TAG, "")), src)
    for name in sorted(_REALTIME_PREDICTOR_KEYS & predictor.keys()):
        return found(REALTIME, f"predictor.{name}", predictor[name])
    for name in sorted(_V012_PREDICTOR_KEYS & predictor.keys()):
        return found(V012, f"predictor.{name}", predictor[name])
    for name in sorted(_V011_PREDICTOR_KEYS & predictor.keys()):
        return found(V011, f"predictor.{name}", predictor[name])
    if "path" in predictor:   # a predictor section without type: v0.11 (which always had a deployment)
        return found(V011 if has_deployment else V012, "predictor.path", predictor["path"])
    compute = _keys(item.get("compute", yaml.ScalarNode(STR_TAG, "")), src)
    for name in sorted(_REALTIME_COMPUTE_KEYS & compute.keys()):
        return found(REALTIME, f"compute.{name}", compute[name])
    if not has_deployment:
        for name in sorted(_OLD_COMPUTE_KEYS & compute.keys()):
            return found(V012, f"compute.{name}", compute[name])
    return None


def detect(root: yaml.Node, src: YamlSource) -> Detection:
    """The dialect of a composed cortex.yaml (any shape: a non-list reads as the seed dialect)."""
    if not isinstance(root, yaml.SequenceNode):
        return Detection(SEED, "", False)
    items = [_keys(node, src) for node in root.value]
    has_deployment = any(_kind(item) == "deployment" for item in items)
    votes: Counter[str] = Counter()
    first: dict[str, tuple[str, Mark]] = {}
    for item in items:
        if _kind(item) == "deployment":
            continue
        vote = _vote(item, src, has_deployment)
        if vote is None:
            continue
        dialect, path, mark = vote
        if has_deployment and dialect is REALTIME:
            continue   # a deployment file is never v0.14+: those keys will be reported as unknown
        votes[dialect.id] += 1
        first.setdefault(dialect.id, (path, mark))
    if votes:
        # ties: older reading with a deployment (seed before v0.12 before v0.11), newer without
        order = ("seed", "v0.12", "v0.11") if has_deployment else ("realtime", "v0.12", "seed")
        best = max(order, key=lambda d: (votes[d], -order.index(d)))
        path, mark = first[best]
        return Detection(DIALECTS[best], f"{path} (line {mark.line})", has_deployment)
    if has_deployment or any(_kind(item) == "api" for item in items):
        return Detection(SEED, "", has_deployment)
    return Detection(V012, "", has_deployment)
