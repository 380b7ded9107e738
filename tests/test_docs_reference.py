"""docs/cortex-yaml.md is generated from the schema tables: it must match them."""
from __future__ import annotations

import os

from cortexd.config.reference import cortex_yaml_markdown
from cortexd.config.schema import Key
from cortexd.config.schema_old import V011_API_KEYS, V012_API_KEYS
from cortexd.config.schema_realtime import API_KEYS, SPLITTER_KEYS
from tests.daemon_harness import REPO

PAGE = os.path.join(REPO, "docs", "cortex-yaml.md")


def test_the_page_is_the_generated_reference() -> None:
    with open(PAGE, encoding="utf-8") as handle:
        assert handle.read() == cortex_yaml_markdown(), (
            "docs/cortex-yaml.md is stale: python -m cortexd.config.reference > docs/cortex-yaml.md")


def test_every_key_of_every_dialect_is_on_the_page() -> None:
    text = cortex_yaml_markdown()

    def names(keys: tuple[Key, ...]) -> list[str]:
        return [n for key in keys for n in [key.name, *names(key.keys)]]

    for table in (V011_API_KEYS, V012_API_KEYS, API_KEYS, SPLITTER_KEYS):
        for name in names(table):
            assert f"{name}:" in text, name
