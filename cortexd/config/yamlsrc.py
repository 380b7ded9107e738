"""YAML loading that keeps where every key and value was written.

We validate the composed node tree (yaml.compose) rather than plain Python values, so every
error can name line and column; values are built from nodes with PyYAML's SafeConstructor,
so YAML's own typing (ints, bools, nulls, merges, anchors) stays exactly PyYAML's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from cortexd.config.bounds import BoundedLoader

NULL_TAG = "tag:yaml.org,2002:null"
STR_TAG = "tag:yaml.org,2002:str"
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Mark:
    line: int      # 1-based
    column: int    # 1-based


def mark_of(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def syntax_error_mark(exc: yaml.YAMLError) -> Mark:
    """Where a YAML error happened; the start of the file when PyYAML does not say."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return Mark(1, 1)
    return Mark(mark.line + 1, mark.column + 1)


def syntax_error_message(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if problem is None:
        return f"invalid YAML: {exc}"
    if not context:
        return f"invalid YAML: {problem}"
    # PyYAML's own order: what it was doing (and since where), then what went wrong.
    where = f" (line {context_mark.line + 1})" if context_mark is not None else ""
    message = f"invalid YAML: {context}{where}, {problem}"
    return message


class YamlSource:
    """One YAML document, composed once; values are built on demand from its nodes."""

    def __init__(self, text: str) -> None:
        self._loader = BoundedLoader(text)
        self._pairs: dict[int, list[tuple[yaml.Node, yaml.Node]]] = {}

    def compose(self) -> yaml.Node | None:
        """The document's root node (None for an empty file). Raises yaml.YAMLError."""
        try:
            return self._loader.get_single_node()
        finally:
            self._loader.dispose()

    def value(self, node: yaml.Node) -> Any:
        """The Python value of a node, as yaml.safe_load would give it. Raises yaml.YAMLError."""
        return self._loader.construct_object(node, deep=True)

    def pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        """A mapping's (key, value) nodes with `<<` merges applied as yaml.safe_load does:
        keys written in the mapping win over merged ones, so only they can be "given twice".
        Raises yaml.YAMLError for a merge of something that is not a mapping.
        """
        cached = self._pairs.get(id(node))
        if cached is not None:
            return cached
        explicit = [(key, value) for key, value in node.value if key.tag != MERGE_TAG]
        if len(explicit) == len(node.value):
            pairs = explicit
        else:
            # flatten_mapping puts the merged pairs first; among them the last occurrence wins.
            self._loader.flatten_mapping(node)
            written = {key.value for key, _ in explicit if isinstance(key, yaml.ScalarNode)}
            merged: list[tuple[yaml.Node, yaml.Node]] = []
            seen: set[str] = set()
            for key, value in reversed(node.value[: len(node.value) - len(explicit)]):
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and (name in written or name in seen):
                    continue
                if name is not None:
                    seen.add(name)
                merged.append((key, value))
            pairs = list(reversed(merged)) + explicit
        self._pairs[id(node)] = pairs
        return pairs


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG


def node_kind(node: yaml.Node) -> str:
    """What a non-scalar node is, in words (for "expected ..., got ..." messages)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a scalar"
