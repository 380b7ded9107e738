"""The user's docs (README.md, docs/*.md, units/cortexd.env) kept true mechanically.

Each test reads what the code declares (the `serve` settings, the control commands, the
statuses, the unit's command line) and checks that the docs name every piece of it; the
links between the docs must lead somewhere; and nothing may send a reader to a file they
do not have. Fast: no daemon, no network.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortexd.cli import build_parser
from cortexd.commands import COMMANDS
from cortexd.daemon.observe.status import STATUS_ORDER
from cortexd.daemon.settings import flag_fields

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README = REPO / "README.md"
CLI_PAGE = DOCS / "cli.md"
STATUS_PAGE = DOCS / "statuses.md"
UNIT = REPO / "units" / "cortexd.service"
UNIT_ENV = REPO / "units" / "cortexd.env"

# Commands that do not talk to a daemon, so they are not in COMMANDS.
LOCAL_COMMANDS = ("serve", "validate", "convert", "version")
# Documents users never get; nothing they read may point there (by file name, or as "SPEC section 3").
NOT_IN_THE_REPO = re.compile(r"\b(?:SPEC\.md|DESIGN\.md|SPEC sections?\b|SPEC:)")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def mentions_flag(text: str, flag: str) -> bool:
    """`--max-body` is there as a word of its own (not as the start of `--max-body-size`)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def serve_flags() -> list[str]:
    return [str(f.metadata["flag"]) for f in flag_fields()]


# -- the command line ---------------------------------------------------------------------


def test_every_serve_flag_is_on_the_cli_page() -> None:
    text = read(CLI_PAGE)
    missing = [flag for flag in serve_flags() if not mentions_flag(text, flag)]
    assert not missing, f"docs/cli.md does not document these `cortexd serve` flags: {missing}"


def test_every_command_is_on_the_cli_page() -> None:
    text = read(CLI_PAGE)
    parser_commands: set[str] = set()
    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        parser_commands |= set(getattr(action, "choices", None) or ())
    names = {c.name for c in COMMANDS} | set(LOCAL_COMMANDS) | parser_commands
    assert {c.name for c in COMMANDS} <= parser_commands, "the CLI lost a control command"
    missing = sorted(n for n in names if re.search(rf"`cortexd {re.escape(n)}\b", text) is None)
    assert not missing, f"docs/cli.md has no `cortexd NAME` section or line for: {missing}"


def test_every_status_is_on_the_statuses_page() -> None:
    text = read(STATUS_PAGE)
    missing = [s for s in STATUS_ORDER if f"`{s}`" not in text]
    assert not missing, f"docs/statuses.md does not explain these statuses: {missing}"


# -- units/cortexd.env -----------------------------------------------------------------------


def flags_the_unit_sets() -> set[str]:
    """The flags on the unit's ExecStart= line (not $CORTEXD_OPTS): no point setting them again."""
    for line in read(UNIT).splitlines():
        if line.startswith("ExecStart="):
            return {word for word in shlex.split(line.partition("=")[2]) if word.startswith("--")}
    raise AssertionError(f"{UNIT} has no ExecStart= line")


def test_the_environment_file_shows_every_serve_flag_the_unit_leaves_open() -> None:
    set_by_unit = flags_the_unit_sets()
    assert "--config" in set_by_unit  # the parse found the real line
    text = read(UNIT_ENV)
    missing = [f for f in serve_flags() if f not in set_by_unit and not mentions_flag(text, f)]
    assert not missing, f"units/cortexd.env does not show these `cortexd serve` flags: {missing}"


def test_the_environment_file_is_only_comments_and_assignments() -> None:
    """systemd reads it as VAR=value lines; anything else would be an error at start."""
    for n, line in enumerate(read(UNIT_ENV).splitlines(), 1):
        assert not line.strip() or line.startswith("#") or re.match(r"[A-Z_][A-Z0-9_]*=", line), (
            f"units/cortexd.env:{n}: not a comment or VAR=value: {line!r}")


# -- links --------------------------------------------------------------------------------


def without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code blanked (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def links(text: str) -> Iterator[str]:
    for match in LINK.finditer(without_code(text)):
        yield match.group(1)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    text = re.sub(r"^```.*?^```", "", read(path), flags=re.DOTALL | re.MULTILINE)
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(read(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif not str(dest).startswith(str(REPO)):
            broken.append(f"{target} (outside the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_files_and_headings(page: Path) -> None:
    assert not broken_links(page), f"{page.relative_to(REPO)}: broken links: {broken_links(page)}"


def test_the_link_checker_sees_links() -> None:
    """Guards the checks above against a regex that matches nothing."""
    assert list(links("see [cli](cli.md#the-command-line) and `[not](a-link)`")) == ["cli.md#the-command-line"]
    assert slug("`cortexd serve`") == "cortexd-serve"
    assert slug("The Open Inference Protocol (V2)") == "the-open-inference-protocol-v2"
    assert "docs/README.md" in list(links(read(README)))


# Paths into the repository that the docs name in text or code (`cortexd/daemon/pump.py`,
# `examples/reference-iris/`), not only as links; absolute paths (/etc/cortexd/...) are not.
REPO_PATH = re.compile(r"(?<![\w/.~$-])((?:cortexd|docs|examples|scripts|bench|units|packaging|tests)/[\w./-]*)")


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_repository_paths_the_docs_name_exist(page: Path) -> None:
    named = {m.group(1).rstrip("/.") for m in REPO_PATH.finditer(read(page))}
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, f"{page.relative_to(REPO)} names files that are not in the repository: {missing}"


def test_the_path_finder_sees_paths() -> None:
    found = [m.group(1) for m in REPO_PATH.finditer("`cortexd/cli.py`, /etc/cortexd/x, .cortexd/state, docs/v2.md.")]
    assert found == ["cortexd/cli.py", "docs/v2.md."]


# -- nothing outside the repository --------------------------------------------------------


def text_files() -> Iterator[Path]:
    """What users and contributors read: the docs, the package's source, the tests, the benchmarks."""
    yield from pages()
    for top in ("cortexd", "tests", "bench", "scripts", "packaging", "units"):
        for root, dirs, files in os.walk(REPO / top):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "results", "fixtures")]
            for name in files:
                if name.endswith((".py", ".md", ".sh", ".service", ".env")) or "." not in name:
                    yield Path(root) / name


def test_nothing_users_read_points_to_files_they_do_not_have() -> None:
    found = []
    for path in text_files():
        if path == Path(__file__).resolve():
            continue  # names them to find them
        text = path.read_bytes().decode("utf-8", "replace")
        found += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in NOT_IN_THE_REPO.finditer(text)]
    assert not found, f"these files cite documents that are not in the repository: {found}"


# Words that look like repository paths and are not: run output (git-ignored), a ratio, the
# package's installed example (/etc/cortexd/examples/iris, packaging/README.md).
NOT_PATHS = ("bench/results", "cortexd/ceiling", "examples/iris")


def exists_in_repo(named: str) -> bool:
    """A file or folder, or a module's attribute (`tests/v2_harness.LoopbackBackend`)."""
    if (REPO / named).exists() or named.startswith(NOT_PATHS):
        return True
    module, _, attribute = named.rpartition(".")
    return bool(module) and attribute.isidentifier() and (REPO / f"{module}.py").exists()


def test_repository_paths_the_code_names_exist() -> None:
    """A docstring or comment that sends the reader to a docs page or a module must lead somewhere."""
    found = []
    for path in text_files():
        if path.suffix == ".md" and path.parent in (REPO, DOCS) or path == Path(__file__).resolve():
            continue  # the pages have their own test above; this file names examples of bad paths
        text = path.read_bytes().decode("utf-8", "replace")
        named = {m.group(1).rstrip("/.") for m in REPO_PATH.finditer(text)}
        found += [f"{path.relative_to(REPO)}: {p}" for p in sorted(named) if not exists_in_repo(p)]
    assert not found, f"these files name repository paths that do not exist: {found}"


# -- the front door -------------------------------------------------------------------------


def test_the_readme_starts_with_the_two_commands() -> None:
    head = "\n".join(read(README).splitlines()[:10])
    assert "make run" in head and "make test" in head, "README.md's first lines must give `make run` and `make test`"
