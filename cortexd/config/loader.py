"""Loading cortex.yaml: bounds, the dialect, and the public entry points.

`load_config` returns a Config or raises ConfigError with every problem in the file;
`validate_path` returns the problems (for `cortexd validate`); `validate_report` also says
which dialect the file was read in and which accepted keys have no effect in cortexd.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from cortexd.config import bounds
from cortexd.config.dialects import REALTIME, SEED, V011, V012, Detection, Dialect, detect
from cortexd.config.errors import ConfigError, ConfigIssue, sort_issues
from cortexd.config.objects import Config, TrafficSplitter
from cortexd.config.read_deployment import ApiReader, read_deployment_file
from cortexd.config.read_list import read_list_file
from cortexd.config.rules import build_api
from cortexd.config.rules_old import build_v011, build_v012
from cortexd.config.rules_realtime import build_realtime
from cortexd.config.schema import API_KEYS, key_homes
from cortexd.config.schema_old import V011_API_KEYS, V012_API_KEYS
from cortexd.config.schema_realtime import API_KEYS as REALTIME_API_KEYS
from cortexd.config.yamlsrc import Mark, YamlSource, mark_of, node_kind, syntax_error_mark, syntax_error_message

_SHAPE = "a YAML list with one `kind: deployment` item and any number of `kind: api` items"

READERS: dict[str, ApiReader] = {
    SEED.id: ApiReader(SEED.id, API_KEYS, build_api, key_homes(API_KEYS)),
    V011.id: ApiReader(V011.id, V011_API_KEYS, build_v011, key_homes(V011_API_KEYS)),
    V012.id: ApiReader(V012.id, V012_API_KEYS, build_v012, key_homes(V012_API_KEYS)),
    REALTIME.id: ApiReader(REALTIME.id, REALTIME_API_KEYS, build_realtime, key_homes(REALTIME_API_KEYS)),
}


@dataclass(frozen=True)
class ValidationReport:
    """What `cortexd validate` prints: the dialect, every error, and keys accepted without effect."""

    path: str
    dialect: Dialect | None          # None when the file could not be read or parsed
    evidence: str                    # the key that decided the dialect, e.g. "predictor.type (line 4)"
    errors: list[ConfigIssue]
    notes: list[ConfigIssue] = field(default_factory=list)
    config: Config | None = None

    def headline(self) -> str:
        """'cortex.yaml: Cortex v0.12–v0.13 dialect (predictor.type at line 4)'."""
        name = os.path.basename(self.path) or self.path
        if self.dialect is None:
            return f"{name}: dialect unknown (the file could not be read)"
        why = f" (read from {self.evidence})" if self.evidence else ""
        return f"{name}: {self.dialect.title}{why}"


def load_config(path: str) -> Config:
    """Read and validate cortex.yaml. Raises ConfigError listing every problem."""
    text, issue = _read(path)
    if issue is not None:
        raise ConfigError([issue])
    return load_config_text(text, path)


def load_config_text(text: str, path: str) -> Config:
    """Validate cortex.yaml's text; `path` names it in messages and anchors relative paths."""
    report = _load(text, path)
    if report.errors or report.config is None:
        raise ConfigError(report.errors)
    return report.config


def validate_path(path: str) -> list[ConfigIssue]:
    """Every problem in the file at `path`, sorted by line ([] when it is valid)."""
    return validate_report(path).errors


def validate_report(path: str) -> ValidationReport:
    """The dialect, the problems (sorted by line) and the notes of the file at `path`."""
    text, issue = _read(path)
    if issue is not None:
        return ValidationReport(path, None, "", [issue])
    return _load(text, path)


def validate_text(text: str, path: str) -> ValidationReport:
    """The report of cortex.yaml's text (`path` names it and anchors relative paths)."""
    return _load(text, path)


def _read(path: str) -> tuple[str, ConfigIssue | None]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(bounds.MAX_CONFIG_BYTES + 1)   # never more: an endless file stays bounded
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        return "", ConfigIssue(path, 0, 0, None, "", f"cannot read the file: {exc.strerror or exc}")
    if len(data) > bounds.MAX_CONFIG_BYTES:
        return "", ConfigIssue(path, bounds.oversize_line(data), 1, None, "",
                               bounds.oversize_message(size if size > bounds.MAX_CONFIG_BYTES else None))
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return "", ConfigIssue(path, 0, 0, None, "", f"cannot read the file: {exc}")


def _at(mark: Mark) -> tuple[int, int]:
    return mark.line, mark.column


def _load(text: str, path: str) -> ValidationReport:
    """The report of cortex.yaml's text; its config is None when anything is wrong."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > bounds.MAX_CONFIG_BYTES:
        return ValidationReport(path, None, "", [ConfigIssue(
            path, bounds.oversize_line(data), 1, None, "", bounds.oversize_message(len(data)))])
    project_dir = os.path.dirname(os.path.abspath(path))
    src = YamlSource(text)
    try:
        root = src.compose()
    except bounds.ExpansionError as exc:
        return ValidationReport(path, None, "", [
            ConfigIssue(path, *_at(syntax_error_mark(exc)), None, "", exc.message())])
    except yaml.YAMLError as exc:
        return ValidationReport(path, None, "", [
            ConfigIssue(path, *_at(syntax_error_mark(exc)), None, "", syntax_error_message(exc))])
    if root is None:
        return ValidationReport(path, SEED, "", [
            ConfigIssue(path, 1, 1, None, "", f"the file is empty; expected {_SHAPE}")])
    detection = detect(root, src)
    if not isinstance(root, yaml.SequenceNode):
        return ValidationReport(path, detection.dialect, detection.evidence, [
            ConfigIssue(path, *_at(mark_of(root)), None, "", f"expected {_SHAPE}, got {node_kind(root)}")])
    resources = [item for item in root.value if not _is_deployment(item, src)]
    if len(resources) > bounds.MAX_APIS:
        extra = resources[bounds.MAX_APIS]
        return ValidationReport(path, detection.dialect, detection.evidence, [ConfigIssue(
            path, *_at(mark_of(extra)), None, f"[{root.value.index(extra)}]",
            bounds.too_many_apis_message(len(resources)))])
    return _read_dialect(root, src, path, project_dir, detection)


def _is_deployment(item: yaml.Node, src: YamlSource) -> bool:
    from cortexd.config.read_deployment import lookup, scalar_text

    if not isinstance(item, yaml.MappingNode):
        return False
    kind = lookup(item, "kind", src)
    return kind is not None and scalar_text(kind) == "deployment"


def _read_dialect(
    root: yaml.SequenceNode, src: YamlSource, path: str, project_dir: str, detection: Detection
) -> ValidationReport:
    issues: list[ConfigIssue] = []
    notes: list[ConfigIssue] = []
    dialect = detection.dialect
    reader = READERS[dialect.id]
    splitters: list[TrafficSplitter] = []
    deployment: str | None
    if dialect is REALTIME or (dialect is V012 and not detection.has_deployment):
        drafts, splitters = read_list_file(root, path, project_dir, src, reader, issues, notes,
                                           realtime=dialect is REALTIME)
        deployment = ""
    else:
        deployment, drafts = read_deployment_file(root, path, project_dir, src, reader, issues, notes)
    config = None
    if not issues and deployment is not None:
        apis = tuple(draft.api for draft in drafts if draft.api is not None)
        config = Config(os.path.abspath(path), project_dir, deployment, apis, dialect.id, tuple(splitters))
    return ValidationReport(path, dialect, detection.evidence, sort_issues(issues), sort_issues(notes), config)
