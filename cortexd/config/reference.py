"""docs/cortex-yaml.md, generated from the schema tables: every key of every dialect with its
default and rule. Regenerate with `python -m cortexd.config.reference > docs/cortex-yaml.md`
(tests/test_docs_reference.py fails when the page and the tables disagree)."""
from __future__ import annotations

from cortexd.config import bounds
from cortexd.config.dialects import REALTIME, SEED, V011, V012, Dialect
from cortexd.config.schema import API_KEYS as SEED_API_KEYS
from cortexd.config.schema import DEPLOYMENT_KEYS, TYPE_DOCS, Key, render_reference
from cortexd.config.schema_old import V011_RESOURCES, V012_API_KEYS
from cortexd.config.schema_realtime import REFUSED_KINDS
from cortexd.config.schema_realtime import RESOURCES as REALTIME_RESOURCES


def _cell(text: str) -> str:
    """A table cell's text: pipes escaped, or the table splits there."""
    return text.replace("|", "\\|")


_INTRO = f"""\
# cortex.yaml reference

cortexd reads the `cortex.yaml` of every Cortex release from v0.11 to v0.35, in four
dialects (how each maps onto cortexd, and what differs from Cortex: [migration.md](migration.md)).
`cortexd validate` says which dialect it read a file in, and reports every mistake with its
file, line and column in that dialect's terms.

This page is generated from cortexd's schema tables (`python -m cortexd.config.reference`):
each key shows its type, what it is, its default or that it is required, and its rule.
`new` marks cortexd's own keys; `refused` keys are known but not served (validate says so);
`no effect` keys are accepted and listed by validate as having no effect here.

## Limits

- A cortex.yaml of at most {bounds.MAX_CONFIG_BYTES:,} bytes (1 MiB).
- At most {bounds.MAX_YAML_NODES:,} YAML nodes once aliases (`*name`) are expanded: a small file of
  nested aliases cannot make the daemon build a huge configuration.
- At most {bounds.MAX_APIS:,} APIs (and traffic splitters) in one file.

`validate` reports each with the line where the limit is crossed.

The daemon also runs at most {bounds.DEFAULT_MAX_REPLICAS} replica processes, all APIs together \
(`serve --max-replicas`); replicas beyond it wait as `compute unavailable`.

## Values

| written | means |
|---|---|
| `{_cell(TYPE_DOCS["cpu"])}` | cores: `1`, `0.5`, `"200m"` (milli-cores) |
| `{_cell(TYPE_DOCS["mem"])}` | bytes: `134217728`, `"129e6"`, `"512Mi"`, `"1G"` \
(K M G T P E powers of 1000, Ki Mi Gi ... of 1024) |
| `{TYPE_DOCS["duration"]}` | Go's syntax, as Cortex read it: `60s`, `5m`, `1m30s`, `250ms` |
| `{_cell(TYPE_DOCS["surge"])}` (update_strategy) | \
a number of replicas (`1`) or a share of the desired replicas (`"25%"`) |

`compute.mem` is a request (admission: a replica starts only where that much memory is
free), as in Cortex; a replica may use more. The hard limit is cortexd's `compute.mem_limit`:
a replica above it is stopped and the API shows `error (out of memory)`.
"""

_DIALECTS: list[tuple[Dialect, str, tuple[tuple[Key, ...], ...]]] = [
    (V011, "A deployment and APIs. A Python API names its file in `predictor.path`; ONNX and TensorFlow "
           "APIs give `model` and an optional `request_handler`. Default endpoint `/<deployment>/<api>`; "
           "autoscaling on CPU.", V011_RESOURCES),
    (SEED, "cortexd's first dialect: Cortex's main branch in December 2019 (never released). A deployment "
           "and APIs with exactly one of `python:`, `onnx:`, `tensorflow:`. Default endpoint "
           "`/<deployment>/<api>`; autoscaling on CPU.", (DEPLOYMENT_KEYS, SEED_API_KEYS)),
    (V012, "v0.12: a deployment and `kind: api` items; v0.13: a plain list of APIs without `kind`, default "
           "endpoint `/<api>`. Every API has `predictor: {type, path, ...}` and a predictor class. Autoscaling "
           "on CPU.", (DEPLOYMENT_KEYS, V012_API_KEYS)),
    (REALTIME, "A list of resources: APIs (`kind: RealtimeAPI`, required from v0.19; none before) and "
               "`kind: TrafficSplitter`. Keys that moved between releases are accepted where each release "
               "put them (the `versions` note says which). Default endpoint `/<name>`; autoscaling on in-flight "
               "requests (`autoscaling.target_replica_concurrency`). This is the dialect `cortexd convert` "
               "writes.", REALTIME_RESOURCES),
]


def cortex_yaml_markdown() -> str:
    parts = [_INTRO]
    for dialect, shape, resources in _DIALECTS:
        parts.append(f"## {dialect.title}\n\nReleases {dialect.releases}. {shape}\n")
        parts.append("```yaml\n" + render_reference(resources).rstrip("\n") + "\n```\n")
        if dialect is REALTIME:
            refused = "\n".join(f"- `kind: {kind}`: {why}." for kind, why in REFUSED_KINDS.items())
            parts.append(f"Kinds cortexd refuses, with one line each:\n\n{refused}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(cortex_yaml_markdown(), end="")
