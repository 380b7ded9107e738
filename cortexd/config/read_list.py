"""Files that are a plain list of resources: Cortex v0.13 and later (no deployment).

Each item is an API, read by the dialect's `ApiReader`, or in the v0.14-v0.35 dialect also a
TrafficSplitter; kinds Cortex had but cortexd does not serve (BatchAPI, TaskAPI, AsyncAPI)
are refused with one line each. Default endpoints are /<name>. Names and endpoints are
unique across APIs and splitters.
"""
from __future__ import annotations

import dataclasses

import yaml

from cortexd.config.errors import ConfigIssue
from cortexd.config.objects import TrafficSplitter
from cortexd.config.read_deployment import ApiReader, api_label, at, check_unique, lookup, scalar_text
from cortexd.config.rules import ApiDraft
from cortexd.config.rules_realtime import SplitterDraft, build_splitter, check_targets
from cortexd.config.schema_realtime import REFUSED_KINDS, SPLITTER_KEYS, SPLITTER_KIND
from cortexd.config.walk import Scope, read_section
from cortexd.config.yamlsrc import YamlSource, mark_of, node_kind


def read_list_file(
    root: yaml.SequenceNode, file: str, project_dir: str, src: YamlSource, reader: ApiReader,
    issues: list[ConfigIssue], notes: list[ConfigIssue], realtime: bool,
) -> tuple[list[ApiDraft], list[TrafficSplitter]]:
    """(API drafts without collisions, traffic splitters) of a list-of-resources file.

    `realtime`: the v0.14-v0.35 dialect, where items may be splitters or refused kinds."""
    drafts: list[tuple[ApiDraft, bool]] = []
    splitters: dict[int, SplitterDraft] = {}   # index in drafts -> its splitter
    for index, item in enumerate(root.value):
        if not isinstance(item, yaml.MappingNode):
            issues.append(ConfigIssue(file, *at(mark_of(item)), None, f"[{index}]",
                                      f"expected a mapping (an API), got {node_kind(item)}"))
            continue
        label = api_label(item, src)
        scope = Scope(file, project_dir, label, "" if label else f"[{index}].", issues, reader.homes, notes)
        kind_node = lookup(item, "kind", src)
        kind = scalar_text(kind_node) if kind_node is not None else None
        before = len(issues)
        if realtime and kind in REFUSED_KINDS and kind_node is not None:
            scope.add(mark_of(kind_node), "kind", REFUSED_KINDS[kind])
            continue
        if realtime and kind == SPLITTER_KIND:
            section = read_section(item, SPLITTER_KEYS, mark_of(item), "", scope, src)
            if section is None:
                continue
            draft, splitter = build_splitter(section, scope)
            if len(issues) > before:
                splitter = dataclasses.replace(splitter, splitter=None)
            splitters[len(drafts)] = splitter
            drafts.append((draft, "networking" not in section.entries))
            continue
        section = read_section(item, reader.api_keys, mark_of(item), "", scope, src)
        if section is None:
            continue
        draft = reader.build(section, "", scope)
        if len(issues) > before:
            draft = dataclasses.replace(draft, api=None)
        drafts.append((draft, "endpoint" not in section.entries and "networking" not in section.entries))
    colliding = check_unique(drafts, file, issues)
    api_names = {d.name for i, (d, _) in enumerate(drafts) if i not in splitters and d.name}
    splitter_names = {d.name for i, (d, _) in enumerate(drafts) if i in splitters and d.name}
    order = sorted(splitters)
    bad = check_targets([splitters[i] for i in order], api_names, splitter_names, file, issues)
    kept_splitters = [
        splitters[i].splitter for n, i in enumerate(order)
        if n not in bad and i not in colliding and splitters[i].splitter is not None
    ]
    kept_apis = [d for i, (d, _) in enumerate(drafts) if i not in colliding and i not in splitters]
    return kept_apis, [s for s in kept_splitters if s is not None]
