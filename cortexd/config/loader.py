"""Loading cortex.yaml: the whole-file rules, and the public entry points.

`load_config` returns a Config or raises ConfigError with every problem in the file;
`validate_path` returns the problems (for `cortexd validate`).
"""
from __future__ import annotations

import dataclasses
import os

import yaml

from cortexd.config.checks import reserved_prefix
from cortexd.config.errors import ConfigError, ConfigIssue
from cortexd.config.objects import Api, Config
from cortexd.config.rules import ApiDraft, build_api
from cortexd.config.schema import API_KEYS, DEPLOYMENT_KEYS, RESOURCE_KINDS
from cortexd.config.walk import Scope, read_section
from cortexd.config.yamlsrc import (
    STR_TAG,
    Mark,
    YamlSource,
    mark_of,
    node_kind,
    syntax_error_mark,
    syntax_error_message,
)

_KINDS = ", ".join(RESOURCE_KINDS)
_SHAPE = "a YAML list with one `kind: deployment` item and any number of `kind: api` items"


def load_config(path: str) -> Config:
    """Read and validate cortex.yaml. Raises ConfigError listing every problem."""
    text, issue = _read(path)
    if issue is not None:
        raise ConfigError([issue])
    return load_config_text(text, path)


def load_config_text(text: str, path: str) -> Config:
    """Validate cortex.yaml's text; `path` names it in messages and anchors relative paths."""
    config, issues = _load(text, path)
    if issues or config is None:
        raise ConfigError(issues)
    return config


def validate_path(path: str) -> list[ConfigIssue]:
    """Every problem in the file at `path`, sorted by line ([] when it is valid)."""
    text, issue = _read(path)
    if issue is not None:
        return [issue]
    return ConfigError(_load(text, path)[1]).errors


def _read(path: str) -> tuple[str, ConfigIssue | None]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return "", ConfigIssue(path, 0, 0, None, "", f"cannot read the file: {reason}")


def _scalar_text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) and node.tag == STR_TAG else None


def _lookup(item: yaml.MappingNode, name: str, src: YamlSource) -> yaml.Node | None:
    try:
        pairs = src.pairs(item)
    except yaml.YAMLError:
        return None   # a broken merge; read_section reports it
    for key_node, value_node in pairs:
        if _scalar_text(key_node) == name:
            found: yaml.Node = value_node
            return found
    return None


def _item_kind(item: yaml.Node, index: int, file: str, src: YamlSource, issues: list[ConfigIssue]) -> str | None:
    """The `kind` of a list item, reporting items that are not resources."""
    if not isinstance(item, yaml.MappingNode):
        issues.append(ConfigIssue(file, *_at(mark_of(item)), None, f"[{index}]",
                                  f"expected a mapping with kind: {_KINDS}, got {node_kind(item)}"))
        return None
    kind_node = _lookup(item, "kind", src)
    if kind_node is None:
        issues.append(ConfigIssue(file, *_at(mark_of(item)), None, f"[{index}].kind",
                                  f"required: the resource kind (one of: {_KINDS})"))
        return None
    kind = _scalar_text(kind_node)
    if kind not in RESOURCE_KINDS:
        if not isinstance(kind_node, yaml.ScalarNode):
            got = node_kind(kind_node)
        else:
            got = f'"{kind_node.value}"' if kind_node.value else "null"
        issues.append(ConfigIssue(file, *_at(mark_of(kind_node)), None, f"[{index}].kind",
                                  f"must be one of: {_KINDS} (got {got})"))
        return None
    return kind


def _at(mark: Mark) -> tuple[int, int]:
    return mark.line, mark.column


def _api_label(item: yaml.MappingNode, src: YamlSource) -> str | None:
    name_node = _lookup(item, "name", src)
    name = _scalar_text(name_node) if name_node is not None else None
    return name or None


def _read_deployment(
    items: list[tuple[int, yaml.MappingNode]], root: yaml.Node, file: str, project_dir: str,
    src: YamlSource, issues: list[ConfigIssue],
) -> tuple[str | None, Mark | None]:
    """The deployment's name (None when missing or invalid) and where it is written."""
    if not items:
        issues.append(ConfigIssue(file, *_at(mark_of(root)), None, "",
                                  "no deployment: add an item `- kind: deployment` with a `name`"))
        return None, None
    first = items[0][1]
    for index, extra in items[1:]:
        issues.append(ConfigIssue(
            file, *_at(mark_of(extra)), None, f"[{index}]",
            f"only one `kind: deployment` is allowed (the first is at line {mark_of(first).line})",
        ))
    scope = Scope(file, project_dir, None, "deployment.", issues)
    section = read_section(first, DEPLOYMENT_KEYS, mark_of(first), "", scope, src)
    if section is None:
        return None, None
    return section.get("name"), section.key_mark("name")


def _check_reserved_deployment(
    deployment: str | None, mark: Mark | None, apis_default: bool, file: str, issues: list[ConfigIssue]
) -> None:
    """Default endpoints live under /<deployment>: a deployment named like a reserved path takes them there."""
    if deployment is None or mark is None or not apis_default:
        return
    reserved = reserved_prefix("/" + deployment)
    if reserved is not None:
        issues.append(ConfigIssue(
            file, *_at(mark), None, "deployment.name",
            f'the default endpoints /{deployment}/<api> would lie under the reserved path {reserved}; '
            "rename the deployment or give each API an endpoint",
        ))


def _check_unique(drafts: list[tuple[ApiDraft, bool]], file: str, issues: list[ConfigIssue]) -> set[int]:
    """Report duplicate API names and endpoints; the indexes of drafts that collide."""
    colliding: set[int] = set()
    names: dict[str, ApiDraft] = {}
    endpoints: dict[str, ApiDraft] = {}
    for index, (draft, default_endpoint) in enumerate(drafts):
        if draft.name is not None:
            first = names.setdefault(draft.name, draft)
            if first is not draft:
                issues.append(ConfigIssue(file, *_at(draft.name_mark), draft.name, "name",
                                          f"duplicate API name (first at line {first.name_mark.line})"))
                colliding.add(index)
                continue   # its default endpoint repeats the first's: one error is enough
        if draft.endpoint is None:
            continue
        if default_endpoint and reserved_prefix(draft.endpoint) is not None:
            colliding.add(index)   # reported once, at the deployment's name
            continue
        first = endpoints.setdefault(draft.endpoint, draft)
        if first is not draft:
            issues.append(ConfigIssue(
                file, *_at(draft.endpoint_mark), draft.name, "endpoint" if not default_endpoint else "name",
                f'endpoint "{draft.endpoint}" is already used by api "{first.name}" (line {first.endpoint_mark.line})'
                + ("" if not default_endpoint else "; set an endpoint"),
            ))
            colliding.add(index)
    return colliding


def _load(text: str, path: str) -> tuple[Config | None, list[ConfigIssue]]:
    """The Config (None when anything is wrong) and every problem found."""
    issues: list[ConfigIssue] = []
    project_dir = os.path.dirname(os.path.abspath(path))
    src = YamlSource(text)
    try:
        root = src.compose()
    except yaml.YAMLError as exc:
        return None, [ConfigIssue(path, *_at(syntax_error_mark(exc)), None, "", syntax_error_message(exc))]
    if root is None:
        return None, [ConfigIssue(path, 1, 1, None, "", f"the file is empty; expected {_SHAPE}")]
    if not isinstance(root, yaml.SequenceNode):
        return None, [ConfigIssue(path, *_at(mark_of(root)), None, "", f"expected {_SHAPE}, got {node_kind(root)}")]

    deployments: list[tuple[int, yaml.MappingNode]] = []
    api_items: list[tuple[int, yaml.MappingNode]] = []
    for index, item in enumerate(root.value):
        kind = _item_kind(item, index, path, src, issues)
        if kind == "deployment":
            deployments.append((index, item))
        elif kind == "api":
            api_items.append((index, item))
    deployment, deployment_mark = _read_deployment(deployments, root, path, project_dir, src, issues)

    drafts: list[tuple[ApiDraft, bool]] = []
    for index, item in api_items:
        label = _api_label(item, src)
        scope = Scope(path, project_dir, label, "" if label else f"[{index}].", issues)
        before = len(issues)
        section = read_section(item, API_KEYS, mark_of(item), "", scope, src)
        if section is None:
            continue
        draft = build_api(section, deployment, scope)
        if len(issues) > before:
            draft = dataclasses.replace(draft, api=None)
        drafts.append((draft, "endpoint" not in section.entries))
    any_default = any(default for draft, default in drafts if draft.endpoint is not None)
    _check_reserved_deployment(deployment, deployment_mark, any_default, path, issues)
    colliding = _check_unique(drafts, path, issues)

    apis: list[Api] = [draft.api for i, (draft, _) in enumerate(drafts) if draft.api is not None and i not in colliding]
    if issues or deployment is None:
        return None, issues
    return Config(os.path.abspath(path), project_dir, deployment, tuple(apis)), issues
