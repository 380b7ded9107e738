"""Reading one mapping of cortex.yaml against its rows of the schema.

Per key: known (else did-you-mean), written once, of the right type, in range, and passing
its named check. Problems are collected, never raised, so a file's errors come out together.
Values of keys that failed are left out (and listed in `invalid`) so that rules over
several keys do not pile a second error onto the same mistake.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from cortexd.config import quantities
from cortexd.config.checks import CHECKS
from cortexd.config.errors import ConfigIssue
from cortexd.config.schema import ALIASES, Key, key_homes, keys_by_name
from cortexd.config.yamlsrc import (
    STR_TAG,
    Mark,
    YamlSource,
    is_null,
    mark_of,
    node_kind,
    syntax_error_mark,
    syntax_error_message,
)


@dataclass
class Entry:
    value: Any      # the checked value (for a section: a Section; for a checked path: the resolved path)
    mark: Mark      # where the key is written (errors about the value point here)


@dataclass
class Section:
    where: Mark                                              # where the mapping's owner is written
    entries: dict[str, Entry] = field(default_factory=dict)  # keys with a valid, non-null value
    given: dict[str, Mark] = field(default_factory=dict)     # every known key written (null included)
    invalid: set[str] = field(default_factory=set)           # known keys whose value was rejected

    def get(self, name: str, default: Any = None) -> Any:
        entry = self.entries.get(name)
        return default if entry is None else entry.value

    def has_value(self, name: str) -> bool:
        """The key is written with a non-null value (valid or not)."""
        return name in self.entries or name in self.invalid

    def key_mark(self, name: str) -> Mark:
        """Where a key is written; the section's own place when it is not."""
        return self.given.get(name, self.where)


@dataclass
class Scope:
    """Who issues are about: the file, the API (when named) and a key-path prefix."""

    file: str
    project_dir: str
    api: str | None
    prefix: str                    # "" or e.g. "[2]." for an API without a usable name
    issues: list[ConfigIssue]
    # where each key name belongs in this dialect's API ("it belongs at ..."); None: the seed's
    homes: dict[str, list[str]] | None = None
    # accepted keys that cortexd gives no effect: validate lists them, they never fail a load
    notes: list[ConfigIssue] | None = None

    def add(self, mark: Mark, key_path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, mark.line, mark.column, self.api, self._path(key_path), message))

    def note(self, mark: Mark, key_path: str, message: str) -> None:
        if self.notes is not None:
            self.notes.append(ConfigIssue(self.file, mark.line, mark.column, self.api, self._path(key_path), message))

    def _path(self, key_path: str) -> str:
        return self.prefix + key_path if key_path else self.prefix.rstrip(".")


_HOMES = key_homes()


def describe(value: Any) -> str:
    """A value as messages show it: its YAML type in words and the value."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f'a string ("{value}")'
    if value is None:
        return "null"
    return f"{type(value).__name__} ({value})"


def expected(key: Key) -> str:
    """What a key accepts, in words."""
    if key.type == "str":
        return "a string"
    if key.type == "int":
        return "an integer"
    if key.type == "float":
        return "a number"
    if key.type == "bool":
        return "true or false"
    if key.type == "duration":
        return quantities.DURATION_ACCEPTED
    if key.type == "surge":
        return quantities.SURGE_ACCEPTED
    if key.type == "strmap":
        return "a mapping of string keys to string values"
    if key.type == "any":
        return "nothing (the key is refused)"
    if key.type == "list":
        return "a list of mappings with keys: " + ", ".join(k.name for k in key.keys)
    if key.type == "cpu":
        return quantities.CPU_ACCEPTED
    if key.type == "gpu":
        return quantities.GPU_ACCEPTED
    if key.type == "mem":
        return quantities.MEM_ACCEPTED
    if key.type == "map":
        return "a mapping of string keys to values"
    return "a mapping with keys: " + ", ".join(k.name for k in key.keys)


def unknown_key_message(
    name: str, accepted: tuple[Key, ...], section_path: str, homes: dict[str, list[str]] | None = None
) -> str:
    """'unknown key; did you mean "x"? (accepted: ...)', pointing to where a misplaced key belongs."""
    homes = _HOMES if homes is None else homes
    names = [key.name for key in accepted]
    hint = ""
    alias = ALIASES.get(name)
    if alias in names:
        hint = f'; did you mean "{alias}"?'
    else:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            hint = f'; did you mean "{close[0]}"?'
        else:
            places = [home for home in homes.get(ALIASES.get(name, name), []) if home != section_path + name]
            if places:
                hint = "; it belongs at " + " or ".join(places)
    return f"unknown key{hint} (accepted: {', '.join(names)})"


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _range_problem(key: Key, value: float, shown: str | None = None) -> str | None:
    low, high = key.minimum, key.maximum
    got = _show(value) if shown is None else shown
    below = low is not None and (value <= low if key.min_exclusive else value < low)
    above = high is not None and (value >= high if key.max_exclusive else value > high)
    if not (below or above):
        return None
    if low is not None and high is not None:
        if not key.min_exclusive and not key.max_exclusive:
            return f"must be between {_show(low)} and {_show(high)} (got {got})"
        low_text = f"{'>' if key.min_exclusive else '>='} {_show(low)}"
        high_text = f"{'<' if key.max_exclusive else '<='} {_show(high)}"
        return f"must be {low_text} and {high_text} (got {got})"
    if below:
        assert low is not None
        return f"must be {'>' if key.min_exclusive else '>='} {_show(low)} (got {got})"
    assert high is not None
    return f"must be {'<' if key.max_exclusive else '<='} {_show(high)} (got {got})"


def _string_problem(key: Key, value: str) -> str | None:
    if value == "":
        return "must not be empty"
    if key.choices and value not in key.choices:
        close = difflib.get_close_matches(value, key.choices, n=1, cutoff=0.6)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        return f'must be one of: {", ".join(key.choices)} (got "{value}"){hint}'
    if key.pattern is not None and re.fullmatch(key.pattern, value) is None:
        return f'must be {key.pattern_doc} (got "{value}")'
    if key.max_length is not None and len(value) > key.max_length:
        return f"must be at most {key.max_length} characters (got {len(value)})"
    return None


def _scalar(key: Key, node: yaml.Node, src: YamlSource) -> tuple[Any, str | None]:
    """(value, problem) for a key of a scalar type."""
    if not isinstance(node, yaml.ScalarNode):
        return None, f"expected {expected(key)}, got {node_kind(node)}"
    value = src.value(node)
    if key.type == "str":
        if not isinstance(value, str) or node.tag != STR_TAG:
            # YAML reads 2020, yes, 1.0 or null as non-strings; quoting is the fix the user needs.
            return None, f'expected a string, got {describe(value)}; quote it if you meant text: "{node.value}"'
        return value, _string_problem(key, value)
    if key.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"expected an integer, got {describe(value)}"
        return value, _range_problem(key, value)
    if key.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return None, f"expected a number, got {describe(value)}"
        return float(value), _range_problem(key, float(value))
    if key.type == "bool":
        if not isinstance(value, bool):
            return None, f"expected true or false, got {describe(value)}"
        return value, None
    if key.type == "duration":
        try:
            seconds = quantities.parse_duration(value)
        except ValueError as exc:
            return None, str(exc)
        return seconds, _range_problem(key, seconds, shown=str(value))
    if key.type == "surge":
        try:
            return quantities.parse_surge(value), None
        except ValueError as exc:
            return None, str(exc)
    parse = {"cpu": quantities.parse_cpu, "gpu": quantities.parse_gpu}.get(key.type, quantities.parse_mem)
    try:
        return parse(value), None
    except ValueError as exc:
        return None, str(exc)


def _mapping(node: yaml.Node, src: YamlSource) -> tuple[Any, str | None]:
    """(dict, problem) for a free-form mapping (config, metadata)."""
    if not isinstance(node, yaml.MappingNode):
        return None, f"expected a mapping of string keys to values, got {node_kind(node)}"
    value = src.value(node)
    bad = [key for key in value if not isinstance(key, str)]
    if bad:
        return None, f"keys must be strings (got {describe(bad[0])})"
    return value, None


def _string_map(node: yaml.Node, src: YamlSource) -> tuple[Any, str | None]:
    """(dict, problem) for a mapping of strings to strings (env)."""
    if not isinstance(node, yaml.MappingNode):
        return None, f"expected a mapping of string keys to string values, got {node_kind(node)}"
    value = src.value(node)
    for key, item in value.items():
        if not isinstance(key, str):
            return None, f"keys must be strings (got {describe(key)})"
        if not isinstance(item, str):
            return None, f'the value of {key} must be a string, got {describe(item)}; quote it: {key}: "{item}"'
    return value, None


def _read_list(
    node: yaml.Node, key: Key, key_mark: Mark, path: str, scope: Scope, src: YamlSource
) -> tuple[Any, str | None]:
    """(list of Sections, problem) for a list of mappings; items report their own problems."""
    if not isinstance(node, yaml.SequenceNode):
        return None, f"expected {expected(key)}, got {node_kind(node)}"
    items: list[Section] = []
    failed = False
    for index, item in enumerate(node.value):
        section = read_section(item, key.keys, mark_of(item), f"{path}{key.name}[{index}].", scope, src)
        if section is None:
            failed = True
        else:
            items.append(section)
    if failed:
        return None, None
    return items, None


def read_section(
    node: yaml.Node, keys: tuple[Key, ...], owner: Mark, path: str, scope: Scope, src: YamlSource
) -> Section | None:
    """Check one mapping against its keys. `path` is its dotted key path ("" or "compute.")."""
    if not isinstance(node, yaml.MappingNode):
        scope.add(owner, path.rstrip("."), f"expected a mapping with keys: {', '.join(k.name for k in keys)}, "
                  f"got {node_kind(node)}")
        return None
    section = Section(owner)
    known = keys_by_name(keys)
    try:
        pairs = src.pairs(node)
    except yaml.YAMLError as exc:
        scope.add(syntax_error_mark(exc), path.rstrip("."), syntax_error_message(exc))
        return None
    for key_node, value_node in pairs:
        key_mark = mark_of(key_node)
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR_TAG:
            got = node_kind(key_node)
            if isinstance(key_node, yaml.ScalarNode):
                try:
                    got = describe(src.value(key_node))
                except yaml.YAMLError:   # an unknown !tag
                    got = f"{key_node.tag} {key_node.value}"
            scope.add(key_mark, path.rstrip("."), f"keys must be strings (got {got})")
            continue
        name = key_node.value
        key = known.get(name)
        if key is None:
            scope.add(key_mark, path + name, unknown_key_message(name, keys, path, scope.homes))
            continue
        if name in section.given:
            scope.add(key_mark, path + name, f"given twice (first at line {section.given[name].line})")
            continue
        section.given[name] = key_mark
        if is_null(value_node):
            # null means "use the default"; a required key is reported missing below.
            continue
        if key.refused is not None:
            scope.add(key_mark, path + name, key.refused)
            section.invalid.add(name)
            continue
        if key.refused_list is not None and isinstance(value_node, yaml.SequenceNode):
            scope.add(key_mark, path + name, key.refused_list)
            section.invalid.add(name)
            continue
        try:
            value, problem = _read_value(key, value_node, key_mark, path, scope, src)
        except yaml.YAMLError as exc:   # e.g. an unknown !tag
            value, problem = None, syntax_error_message(exc)
        if problem is not None:
            scope.add(key_mark, path + name, problem)
            section.invalid.add(name)
        elif value is not None:
            section.entries[name] = Entry(value, key_mark)
            if key.note is not None:
                scope.note(key_mark, path + name, f"accepted without effect: {key.note}")
        else:
            section.invalid.add(name)   # a sub-section that reported its own problems
    for key in keys:
        if key.required and key.name not in section.entries and key.name not in section.invalid:
            place = section.given.get(key.name, owner)
            what = "required" if key.name not in section.given else "required, got null"
            scope.add(place, path + key.name, f"{what}: {key.help} ({_accepts(key)})")
    return section


def _accepts(key: Key) -> str:
    if key.choices:
        return "one of: " + ", ".join(key.choices)
    if key.pattern_doc:
        return key.pattern_doc
    return expected(key)


def _read_value(
    key: Key, node: yaml.Node, key_mark: Mark, path: str, scope: Scope, src: YamlSource
) -> tuple[Any, str | None]:
    if key.type == "section":
        return read_section(node, key.keys, key_mark, path + key.name + ".", scope, src), None
    if key.type == "map":
        return _mapping(node, src)
    if key.type == "strmap":
        return _string_map(node, src)
    if key.type == "list":
        return _read_list(node, key, key_mark, path, scope, src)
    if key.type == "any":   # a key noted as without effect: any value is accepted as it is
        return src.value(node), None
    value, problem = _scalar(key, node, src)
    if problem is None and key.check is not None:
        value, problem = CHECKS[key.check](value, scope.project_dir)
    return value, problem
