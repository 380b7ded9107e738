"""Bounds on what a cortex.yaml may make the daemon build.

A small file of nested YAML aliases ("billion laughs") expands into an exponential number of
nodes when its values are built: a 627-byte file once became a 39 MB spec per replica. So
the composer counts, for every node, how many nodes it stands for once aliases are
expanded, and stops at MAX_YAML_NODES, naming the line; the file itself is read only up to
MAX_CONFIG_BYTES, and one file declares at most MAX_APIS APIs.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024      # a 1,000-API file is about half of this
MAX_YAML_NODES = 100_000            # nodes after aliases are expanded (a 1,000-API file is ~40,000)
MAX_APIS = 1000                     # APIs (and traffic splitters) in one file
DEFAULT_MAX_REPLICAS = 256          # replica processes, all APIs together (`serve --max-replicas`)


class ExpansionError(yaml.YAMLError):
    """The document expands past MAX_YAML_NODES; `problem_mark` is where it crossed."""

    def __init__(self, nodes: int, mark: Any) -> None:
        super().__init__()
        self.nodes = nodes
        self.problem_mark = mark

    def __str__(self) -> str:
        return self.message()

    def message(self) -> str:
        return (
            f"YAML aliases here expand to more than {MAX_YAML_NODES:,} nodes ({self.nodes:,} so far); "
            f"cortexd reads at most {MAX_YAML_NODES:,}: write the values out or move them to a file"
        )


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents expanding to more than `limit` nodes.

    Each composed node's expanded size (itself plus its children's, an alias counting as the
    whole node it names) is kept by identity; the nodes stay alive in the tree, so identities
    are not reused while the loader lives.
    """

    def __init__(self, stream: str, limit: int = MAX_YAML_NODES) -> None:
        super().__init__(stream)
        self._limit = limit
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        node = super().compose_node(parent, index)
        if id(node) in self._sizes:   # an alias of a node composed before: its parent counts it
            return node
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes.get(id(child), 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        if size > self._limit:
            # more than one node: a sequence or a mapping (PyYAML's stubs allow None here)
            assert node is not None
            raise ExpansionError(size, node.start_mark)
        return node


def oversize_line(data: bytes) -> int:
    """The line on which the file crosses MAX_CONFIG_BYTES (1-based)."""
    return data[:MAX_CONFIG_BYTES].count(b"\n") + 1


def oversize_message(size: int | None) -> str:
    got = f"{size:,} bytes" if size is not None else f"more than {MAX_CONFIG_BYTES:,} bytes"
    return f"the file is {got}; cortexd reads a cortex.yaml of at most {MAX_CONFIG_BYTES:,} bytes (1 MiB)"


def too_many_apis_message(count: int) -> str:
    return f"at most {MAX_APIS:,} APIs per cortex.yaml; this file declares {count:,} (this is the {MAX_APIS + 1:,}th)"
