"""`cortexd convert FILE`: a project's cortex.yaml rewritten in the newest dialect cortexd reads.

The output is the Cortex v0.14-v0.35 dialect (`kind: RealtimeAPI`, `predictor:`, `networking`,
`autoscaling`, `monitoring`), with a comment on every key whose name or meaning changed. It
serves the same answers without touching the project's code: cortexd's `interface` key keeps
the release's way of calling the predictor (and of shaping TensorFlow outputs and error
statuses), `autoscaling.target_cpu_utilization` keeps the CPU rule, and default endpoints of
files with a deployment are written out. Before printing, the output is read back and its
APIs compared with the original's; a difference is a bug, reported instead of the output.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import yaml

from cortexd.config.dialects import DIALECTS, NEWEST, REALTIME, SEED, V011, V012
from cortexd.config.loader import ValidationReport, validate_text
from cortexd.config.objects import Api, Config
from cortexd.config.yamlsrc import YamlSource


@dataclass
class Block:
    """A mapping written key by key, each with an optional comment."""

    entries: list[tuple[str, Any, str | None]]

    def add(self, name: str, value: Any, comment: str | None = None) -> None:
        if value is not None:
            self.entries.append((name, value, comment))


def _scalar(value: Any) -> str:
    text = yaml.safe_dump([value], default_flow_style=True, allow_unicode=True, width=1 << 16).strip()
    return text[1:-1]   # "[x]" -> "x", quoted as YAML needs


def render(block: Block, indent: str, first: str, lines: list[str]) -> None:
    for index, (name, value, comment) in enumerate(block.entries):
        lead = first if index == 0 else indent
        note = f"  # {comment}" if comment else ""
        if isinstance(value, Block):
            lines.append(f"{lead}{name}:{note}")
            render(value, indent + "  ", indent + "  ", lines)
        elif isinstance(value, (dict, list)) and value:
            lines.append(f"{lead}{name}:{note}")
            dumped = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, allow_unicode=True)
            lines.extend(indent + "  " + line for line in dumped.splitlines())
        else:
            lines.append(f"{lead}{name}: {_scalar(value)}{note}")


# ------------------------------------------------------------------------------ mapping


_INTERFACE_NOTE = {
    V011.id: "cortexd: called as in v0.11 (init(model_path, metadata) / predict(sample, metadata), "
             "request handlers); TensorFlow outputs as flat lists; errors answer 406",
    SEED.id: "cortexd: called as in December 2019 (predict(sample, metadata) or the classes); "
             "TensorFlow outputs keep their shapes",
    V012.id: "cortexd: called as in v0.12-v0.13 (predict(self, payload)); errors answer 406",
}
_INTERFACE = {V011.id: "v0.11", SEED.id: "december-2019", V012.id: "v0.12"}


def _compute(raw: dict[str, Any], dialect: str, item: Block, cpu_note: str) -> None:
    compute = Block([])
    compute.add("cpu", raw.get("cpu"))
    compute.add("gpu", raw.get("gpu"))
    mem_note = None
    if dialect == SEED.id and raw.get("mem") is not None and raw.get("mem_limit") is None:
        mem_note = ("a request, as in Cortex: cortexd no longer stops a replica above it; "
                    "add mem_limit for a hard limit")
    compute.add("mem", raw.get("mem"), mem_note)
    compute.add("mem_limit", raw.get("mem_limit"))
    compute.add("gpu_mem", raw.get("gpu_mem"))
    if compute.entries:
        item.add("compute", compute)
    auto = Block([])
    moved = "was compute.{}"
    for key in ("min_replicas", "max_replicas", "init_replicas"):
        auto.add(key, raw.get(key), moved.format(key))
    auto.add("target_cpu_utilization", raw.get("target_cpu_utilization") or 80, cpu_note)
    item.add("autoscaling", auto)
    if raw.get("max_surge") is not None or raw.get("max_unavailable") is not None:
        strategy = Block([])
        strategy.add("max_surge", raw.get("max_surge"), moved.format("max_surge"))
        strategy.add("max_unavailable", raw.get("max_unavailable"), moved.format("max_unavailable"))
        item.add("update_strategy", strategy)


def _models(model: Any, signature: Any, was: str) -> Block | None:
    if model is None:
        return None
    block = Block([])
    block.add("path", model, f"was {was}")
    block.add("signature_key", signature)
    return block


def convert_api(raw: dict[str, Any], dialect: str, deployment: str) -> Block:
    """One API of an older dialect as a v0.14-v0.35 API."""
    item = Block([])
    item.add("name", raw["name"])
    item.add("kind", "RealtimeAPI")
    predictor = Block([])
    if dialect == V012.id:
        section: dict[str, Any] = raw["predictor"]
        kind, file_key = section["type"], "path"
        predictor.add("type", kind)
        predictor.add("path", section.get("path"))
        config, config_note = section.get("config"), None
        model_was = "predictor.model"
    else:
        keys = ("predictor", "tensorflow", "onnx") if dialect == V011.id else ("python", "tensorflow", "onnx")
        key = next(k for k in keys if raw.get(k) is not None)
        section = raw[key]
        kind = "python" if key in ("predictor", "python") else key
        predictor.add("type", kind, f"was the {key} section")
        if dialect == V011.id:
            file_key = "path" if kind == "python" else "request_handler"
            config, config_note = section.get("metadata"), f"was {key}.metadata (handed to the functions as metadata)"
        else:
            file_key = "predictor"
            config = section.get("config") if section.get("config") is not None else raw.get("metadata")
            config_note = "was the API's metadata" if section.get("config") is None and raw.get("metadata") else None
        predictor.add("path", section.get(file_key), None if file_key == "path" else f"was {key}.{file_key}")
        model_was = f"{key}.model"
    predictor.add("interface", _INTERFACE[dialect], _INTERFACE_NOTE[dialect])
    predictor.add("models", _models(section.get("model"), section.get("signature_key"), model_was))
    predictor.add("config", config if config else None, config_note)
    python_path = section.get("python_path") if section.get("python_path") is not None else raw.get("python_path")
    predictor.add("python_path", python_path)
    predictor.add("env", section.get("env") or None)
    predictor.add("server_side_batching", section.get("server_side_batching"))
    predictor.add("v2", section.get("v2"))
    predictor.add("nan_as_null", raw.get("nan_as_null"), "was nan_as_null" if raw.get("nan_as_null") else None)
    item.add("predictor", predictor)
    if raw.get("endpoint") is not None:
        networking = Block([])
        networking.add("endpoint", raw["endpoint"], "was endpoint")
        item.add("networking", networking)
    elif deployment:
        networking = Block([])
        networking.add("endpoint", f"/{deployment}/{raw['name']}",
                       "the default of a file with a deployment (/<deployment>/<api>); without one it is /<api>")
        item.add("networking", networking)
    title = DIALECTS[dialect].title
    cpu_note = (f"cortexd: keeps the CPU autoscaling of the {title}; remove it to autoscale on in-flight "
                "requests (target_replica_concurrency)")
    _compute(raw.get("compute") or {}, dialect, item, cpu_note)
    tracker = raw.get("tracker")
    if tracker:
        monitoring = Block([])
        monitoring.add("model_type", tracker.get("model_type"))
        monitoring.add("key", tracker.get("key"))
        item.add("monitoring", monitoring, "was tracker")
    return item


# ------------------------------------------------------------------------------ the command


@dataclass
class Converted:
    text: str | None                 # the converted file; None when it cannot be converted
    report: ValidationReport         # the original file's
    problems: list[str]              # why there is no text


def _comparable(api: Api) -> tuple[Any, ...]:
    """What must not change for the converted API to serve the same answers."""
    return (api.name, api.endpoint, api.python_path, api.predictor, api.call, api.tracker, api.compute,
            api.batching, api.threads_per_process, api.env, api.autoscaling, api.v2, api.nan_as_null)


def _same(before: Config, after: Config) -> list[str]:
    old = {api.name: _comparable(api) for api in before.apis}
    new = {api.name: _comparable(api) for api in after.apis}
    return [f'api "{name}" would change: {old.get(name)} -> {new.get(name)}'
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def convert_text(text: str, path: str) -> Converted:
    report = validate_text(text, path)
    if report.errors or report.config is None or report.dialect is None:
        return Converted(None, report, ["the file has errors; fix them first (cortexd validate)"])
    if report.dialect is REALTIME:
        header = f"# {NEWEST.title}: already the newest dialect cortexd reads; unchanged.\n"
        return Converted(header + text, report, [])
    src = YamlSource(text)
    root = src.compose()
    assert root is not None
    items: list[Any] = src.value(root)
    config = report.config
    lines = [
        f"# cortex.yaml in the {NEWEST.title}, converted by `cortexd convert` from the {report.dialect.title}.",
        "# Keys whose name or meaning changed carry a comment. `interface` and",
        "# `autoscaling.target_cpu_utilization` are cortexd's keys that keep the old behaviour:",
        "# remove them to use Cortex v0.17+ calling (predict(self, payload, query_params, headers))",
        "# and request-based autoscaling.",
    ]
    for raw in items:
        if not isinstance(raw, dict) or raw.get("kind") == "deployment":
            continue
        lines.append("")
        render(convert_api(raw, report.dialect.id, config.deployment), "  ", "- ", lines)
    output = "\n".join(lines) + "\n"
    after = validate_text(output, path)
    if after.errors or after.config is None:
        return Converted(None, report, ["cortexd could not convert this file (a bug): "
                                        + "; ".join(str(e) for e in after.errors)])
    differences = _same(config, after.config)
    if differences:
        return Converted(None, report, ["cortexd could not convert this file (a bug): " + "; ".join(differences)])
    return Converted(output, report, [])


def convert_main(path: str) -> int:
    """`cortexd convert FILE`: print the converted file; 0, or 2 with the reasons on stderr."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cortexd: {path}: cannot read the file: {exc}", file=sys.stderr)
        return 2
    result = convert_text(text, path)
    if result.text is None:
        for issue in result.report.errors:
            print(str(issue), file=sys.stderr)
        for problem in result.problems:
            print(f"cortexd: {path}: {problem}", file=sys.stderr)
        return 2
    sys.stdout.write(result.text)
    return 0
