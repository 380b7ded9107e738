"""Files with a deployment: `kind: deployment` + `kind: api` items (v0.11, the seed, v0.12).

The three dialects share the file's shape and its rules (one deployment, unique names and
endpoints, default endpoints /<deployment>/<api>); they differ in their API keys, which the
dialect's `ApiReader` brings.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from cortexd.config.checks import reserved_prefix
from cortexd.config.errors import ConfigIssue
from cortexd.config.rules import ApiDraft
from cortexd.config.schema import DEPLOYMENT_KEYS, Key
from cortexd.config.walk import Scope, Section, read_section
from cortexd.config.yamlsrc import STR_TAG, Mark, YamlSource, mark_of, node_kind

RESOURCE_KINDS: tuple[str, ...] = ("deployment", "api")
_KINDS = ", ".join(RESOURCE_KINDS)


@dataclass(frozen=True)
class ApiReader:
    """How one dialect reads an API item: its keys, its rules, where its keys belong."""

    dialect: str
    api_keys: tuple[Key, ...]
    # (the API's section, the deployment's name or None when it has none, scope) -> draft
    build: Callable[[Section, str | None, Scope], ApiDraft]
    homes: dict[str, list[str]]


def scalar_text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) and node.tag == STR_TAG else None


def lookup(item: yaml.MappingNode, name: str, src: YamlSource) -> yaml.Node | None:
    try:
        pairs = src.pairs(item)
    except yaml.YAMLError:
        return None   # a broken merge; read_section reports it
    for key_node, value_node in pairs:
        if scalar_text(key_node) == name:
            found: yaml.Node = value_node
            return found
    return None


def at(mark: Mark) -> tuple[int, int]:
    return mark.line, mark.column


def api_label(item: yaml.MappingNode, src: YamlSource) -> str | None:
    name_node = lookup(item, "name", src)
    name = scalar_text(name_node) if name_node is not None else None
    return name or None


def _item_kind(item: yaml.Node, index: int, file: str, src: YamlSource, issues: list[ConfigIssue]) -> str | None:
    """The `kind` of a list item, reporting items that are not resources."""
    if not isinstance(item, yaml.MappingNode):
        issues.append(ConfigIssue(file, *at(mark_of(item)), None, f"[{index}]",
                                  f"expected a mapping with kind: {_KINDS}, got {node_kind(item)}"))
        return None
    kind_node = lookup(item, "kind", src)
    if kind_node is None:
        issues.append(ConfigIssue(file, *at(mark_of(item)), None, f"[{index}].kind",
                                  f"required: the resource kind (one of: {_KINDS})"))
        return None
    kind = scalar_text(kind_node)
    if kind not in RESOURCE_KINDS:
        if not isinstance(kind_node, yaml.ScalarNode):
            got = node_kind(kind_node)
        else:
            got = f'"{kind_node.value}"' if kind_node.value else "null"
        issues.append(ConfigIssue(file, *at(mark_of(kind_node)), None, f"[{index}].kind",
                                  f"must be one of: {_KINDS} (got {got})"))
        return None
    return kind


def _read_deployment(
    items: list[tuple[int, yaml.MappingNode]], root: yaml.Node, file: str, project_dir: str,
    src: YamlSource, issues: list[ConfigIssue], notes: list[ConfigIssue],
) -> tuple[str | None, Mark | None]:
    """The deployment's name (None when missing or invalid) and where it is written."""
    if not items:
        issues.append(ConfigIssue(file, *at(mark_of(root)), None, "",
                                  "no deployment: add an item `- kind: deployment` with a `name`"))
        return None, None
    first = items[0][1]
    for index, extra in items[1:]:
        issues.append(ConfigIssue(
            file, *at(mark_of(extra)), None, f"[{index}]",
            f"only one `kind: deployment` is allowed (the first is at line {mark_of(first).line})",
        ))
    scope = Scope(file, project_dir, None, "deployment.", issues, notes=notes)
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
            file, *at(mark), None, "deployment.name",
            f'the default endpoints /{deployment}/<api> would lie under the reserved path {reserved}; '
            "rename the deployment or give each API an endpoint",
        ))


def check_unique(
    drafts: list[tuple[ApiDraft, bool]], file: str, issues: list[ConfigIssue], what: str = "API"
) -> set[int]:
    """Report duplicate names and endpoints; the indexes of drafts that collide.

    The bool of each draft says its endpoint is the default one (then the error points at the
    name and says to set an endpoint)."""
    colliding: set[int] = set()
    names: dict[str, ApiDraft] = {}
    endpoints: dict[str, ApiDraft] = {}
    for index, (draft, default_endpoint) in enumerate(drafts):
        if draft.name is not None:
            first = names.setdefault(draft.name, draft)
            if first is not draft:
                issues.append(ConfigIssue(file, *at(draft.name_mark), draft.name, "name",
                                          f"duplicate {what} name (first at line {first.name_mark.line})"))
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
                file, *at(draft.endpoint_mark), draft.name, "endpoint" if not default_endpoint else "name",
                f'endpoint "{draft.endpoint}" is already used by api "{first.name}" (line {first.endpoint_mark.line})'
                + ("" if not default_endpoint else "; set an endpoint"),
            ))
            colliding.add(index)
    return colliding


def read_deployment_file(
    root: yaml.SequenceNode, file: str, project_dir: str, src: YamlSource, reader: ApiReader,
    issues: list[ConfigIssue], notes: list[ConfigIssue],
) -> tuple[str | None, list[ApiDraft]]:
    """(deployment name, drafts of the APIs without collisions) of a file with a deployment."""
    deployments: list[tuple[int, yaml.MappingNode]] = []
    api_items: list[tuple[int, yaml.MappingNode]] = []
    for index, item in enumerate(root.value):
        kind = _item_kind(item, index, file, src, issues)
        if kind == "deployment":
            deployments.append((index, item))
        elif kind == "api":
            api_items.append((index, item))
    deployment, deployment_mark = _read_deployment(deployments, root, file, project_dir, src, issues, notes)

    drafts: list[tuple[ApiDraft, bool]] = []
    for index, item in api_items:
        label = api_label(item, src)
        scope = Scope(file, project_dir, label, "" if label else f"[{index}].", issues, reader.homes, notes)
        before = len(issues)
        section = read_section(item, reader.api_keys, mark_of(item), "", scope, src)
        if section is None:
            continue
        draft = reader.build(section, deployment, scope)
        if len(issues) > before:
            draft = dataclasses.replace(draft, api=None)
        drafts.append((draft, "endpoint" not in section.entries))
    any_default = any(default for draft, default in drafts if draft.endpoint is not None)
    _check_reserved_deployment(deployment, deployment_mark, any_default, file, issues)
    colliding = check_unique(drafts, file, issues)
    return deployment, [draft for i, (draft, _) in enumerate(drafts) if i not in colliding]
