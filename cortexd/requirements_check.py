"""Check a project's requirements.txt the way pip reads it, before anything is installed.

`cortexd validate` (and serve/reload) report every line pip would reject, with its line
number, so a typo fails fast instead of after a slow environment build. The rules follow
pip's requirements-file parser (pip/_internal/req/req_file.py and req/constructors.py):
continuation lines, comments, ${VAR} expansion, the options pip accepts in a requirements
file, URLs and local paths, and PEP 508 specifiers via `packaging.requirements.Requirement`.

Relative paths (-r/-c files, local projects, archives) are resolved against the folder that
holds the requirements file: pip resolves nested -r/-c files that way, and cortexd runs pip
with that folder as its working directory, so local paths resolve there too.
"""

from __future__ import annotations

import os
import re
import shlex
import urllib.parse
from dataclasses import dataclass

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement

# pip's own regular expressions (req_file.py), so comments and variables behave identically.
_COMMENT_RE = re.compile(r"(^|\s+)#.*$")
_ENV_VAR_RE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)\}")
_REMOTE_FILE_RE = re.compile(r"^(http|https|file):", re.IGNORECASE)

_VCS_SCHEMES = frozenset(
    {
        "git", "git+http", "git+https", "git+ssh", "git+git", "git+file",
        "hg+file", "hg+http", "hg+https", "hg+ssh", "hg+static-http",
        "svn", "svn+ssh", "svn+http", "svn+https", "svn+svn", "svn+file",
        "bzr+http", "bzr+https", "bzr+ssh", "bzr+sftp", "bzr+ftp", "bzr+lp", "bzr+file",
    }
)
_URL_SCHEMES = frozenset({"http", "https", "file", "ftp"}) | _VCS_SCHEMES
_ARCHIVE_EXTENSIONS = (
    ".zip", ".whl", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tlz", ".tar.lz", ".tar.lzma",
    ".tar.gz", ".tgz", ".tar",
)
_HASH_ALGORITHMS = ("sha256", "sha384", "sha512")
_PEP440_OPERATORS = ("~=", "==", "!=", "<=", ">=", "<", ">", "===")
_MAX_INCLUDE_DEPTH = 16  # -r chains deeper than this are surely a cycle pip would reject


@dataclass(frozen=True)
class _Option:
    dest: str  # canonical long name, used in messages
    takes_value: bool


# The options pip accepts in a requirements file (SUPPORTED_OPTIONS + SUPPORTED_OPTIONS_REQ).
# tests/test_requirements_check.py compares this table with the installed pip's.
_LONG_OPTIONS: dict[str, _Option] = {
    "--index-url": _Option("--index-url", True),
    "--pypi-url": _Option("--index-url", True),
    "--extra-index-url": _Option("--extra-index-url", True),
    "--no-index": _Option("--no-index", False),
    "--constraint": _Option("--constraint", True),
    "--requirement": _Option("--requirement", True),
    "--editable": _Option("--editable", True),
    "--find-links": _Option("--find-links", True),
    "--no-binary": _Option("--no-binary", True),
    "--only-binary": _Option("--only-binary", True),
    "--prefer-binary": _Option("--prefer-binary", False),
    "--require-hashes": _Option("--require-hashes", False),
    "--no-require-hashes": _Option("--no-require-hashes", False),
    "--pre": _Option("--pre", False),
    "--all-releases": _Option("--all-releases", True),
    "--only-final": _Option("--only-final", True),
    "--trusted-host": _Option("--trusted-host", True),
    "--use-feature": _Option("--use-feature", True),
    "--hash": _Option("--hash", True),
    "--config-settings": _Option("--config-settings", True),
}
_SHORT_OPTIONS: dict[str, _Option] = {
    "-i": _LONG_OPTIONS["--index-url"],
    "-c": _LONG_OPTIONS["--constraint"],
    "-r": _LONG_OPTIONS["--requirement"],
    "-e": _LONG_OPTIONS["--editable"],
    "-f": _LONG_OPTIONS["--find-links"],
    "-C": _LONG_OPTIONS["--config-settings"],
}


@dataclass(frozen=True)
class ParsedLine:
    """One logical line: its requirement part and the options that follow it."""

    lineno: int
    requirement: str  # "" when the line holds options only
    options: tuple[tuple[str, str | None], ...]  # (canonical option, value)
    leftovers: tuple[str, ...]  # words after the options, which pip silently ignores


class _LineError(Exception):
    pass


def logical_lines(text: str) -> list[tuple[int, str]]:
    """pip's preprocessing: join '\\' continuations, drop comments and blank lines.

    Returns (first physical line number, text) pairs; line numbers start at 1.
    """
    joined: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), start=1):
        is_comment = bool(_COMMENT_RE.match(line))
        if not line.endswith("\\") or is_comment:
            if is_comment:
                line = " " + line  # pip does this so the comment is stripped below
            if pending:
                pending.append(line)
                joined.append((first, "".join(pending)))
                pending = []
            else:
                joined.append((number, line))
        else:
            if not pending:
                first = number
            pending.append(line.strip("\\"))
    if pending:
        joined.append((first, "".join(pending)))
    result = []
    for number, line in joined:
        stripped = _COMMENT_RE.sub("", line).strip()
        if stripped:
            result.append((number, stripped))
    return result


def expand_env_vars(line: str, environ: dict[str, str] | os._Environ[str]) -> str:
    """Replace ${NAME} by its value when set and non-empty, as pip does; leave it otherwise."""

    def replace(match: re.Match[str]) -> str:
        value = environ.get(match.group("name"))
        return value if value else match.group(0)

    return _ENV_VAR_RE.sub(replace, line)


def _break_args_options(line: str) -> tuple[str, str]:
    # pip splits on single spaces and starts the options at the first word beginning with '-';
    # the requirement part is not shlex-split because markers contain quotes.
    tokens = line.split(" ")
    for index, token in enumerate(tokens):
        if token.startswith("-"):
            return " ".join(tokens[:index]), " ".join(tokens[index:])
    return line, ""


def _resolve_long(name: str) -> _Option:
    if name in _LONG_OPTIONS:
        return _LONG_OPTIONS[name]
    # optparse, which pip uses, accepts any unambiguous prefix of a long option.
    matches = sorted({opt.dest for long, opt in _LONG_OPTIONS.items() if long.startswith(name)})
    if len(matches) == 1:
        return _LONG_OPTIONS[matches[0]]
    if len(matches) > 1:
        raise _LineError(f"ambiguous option {name} (could be {', '.join(matches)})")
    raise _LineError(f"no such option in a requirements file: {name}")


def parse_line(lineno: int, line: str) -> ParsedLine:
    """Split one logical line into its requirement and options; raises _LineError."""
    requirement, options_text = _break_args_options(line)
    try:
        tokens = shlex.split(options_text)
    except ValueError as exc:
        raise _LineError(f"cannot split the options {options_text!r}: {exc}") from None
    options: list[tuple[str, str | None]] = []
    leftovers: list[str] = []
    index = 0
    while index < len(tokens):  # each pass consumes at least one token
        token = tokens[index]
        index += 1
        value: str | None = None
        if token.startswith("--"):
            name, has_value, inline = token.partition("=")
            option = _resolve_long(name)
            if has_value:
                if not option.takes_value:
                    raise _LineError(f"option {option.dest} does not take a value")
                value = inline
        elif token.startswith("-") and len(token) > 1:
            short = token[:2]
            if short not in _SHORT_OPTIONS:
                raise _LineError(f"no such option in a requirements file: {short}")
            option = _SHORT_OPTIONS[short]
            if len(token) > 2:
                value = token[2:]
        else:
            leftovers.append(token)
            continue
        if option.takes_value and value is None:
            if index >= len(tokens):
                raise _LineError(f"option {option.dest} requires a value")
            value = tokens[index]
            index += 1
        options.append((option.dest, value))
    return ParsedLine(lineno, requirement.strip(), tuple(options), tuple(leftovers))


def _is_url(name: str) -> bool:
    return urllib.parse.urlsplit(name).scheme.lower() in _URL_SCHEMES


def _looks_like_path(name: str) -> bool:
    return "/" in name or (os.altsep is not None and os.altsep in name) or name.startswith(".")


def _is_archive(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_EXTENSIONS)


def _strip_extras(path: str) -> str:
    match = re.match(r"^(.+)(\[[^\]]+\])$", path)
    return match.group(1) if match else path


def _is_installable_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "setup.py")) or os.path.isfile(
        os.path.join(path, "pyproject.toml")
    )


def _first_line(exc: Exception) -> str:
    # packaging's message is "what\n    text\n    ^"; keep one line and turn the caret into a column.
    lines = str(exc).splitlines()
    message = lines[0] if lines else type(exc).__name__
    if len(lines) >= 3 and lines[2].strip() == "^":
        message += f" (at column {len(lines[2]) - 4})"
    return message


def _check_specifier(name: str) -> None:
    try:
        Requirement(name)
    except InvalidRequirement as exc:
        message = f"invalid requirement {name!r}: {_first_line(exc)}"
        if "/" in name:
            message += f"; it looks like a path, but {name!r} does not exist"
        elif "=" in name and not any(op in name for op in _PEP440_OPERATORS):
            message += "; '=' is not a valid operator, did you mean '=='?"
        raise _LineError(message) from None


def _check_requirement(text: str, base_dir: str) -> None:
    """Classify a requirement as pip does (URL, local path, archive, specifier) and check it."""
    separator = "; " if _is_url(text) else ";"
    name, has_marker, marker = text.partition(separator)
    if has_marker and marker.strip():
        try:
            Marker(marker.strip())
        except InvalidMarker as exc:
            raise _LineError(f"invalid environment marker {marker.strip()!r}: {_first_line(exc)}") from None
    name = name.strip()
    if "${" in name:
        return  # a variable unset here may be set where the daemon runs pip
    if _is_url(name):
        return
    path = _strip_extras(os.path.normpath(os.path.join(base_dir, name)))
    if _looks_like_path(name) and os.path.isdir(path):
        if not _is_installable_dir(path):
            raise _LineError(
                f"directory {name!r} is not installable: it has neither setup.py nor pyproject.toml"
            )
        return
    if _is_archive(path):
        if os.path.isfile(path):
            return
        before_at = name.split("@", 1)[0]
        if "@" not in name or _looks_like_path(before_at):
            raise _LineError(f"file {name!r} does not exist (relative to {base_dir})")
    _check_specifier(name)


def _check_editable(value: str, base_dir: str) -> None:
    if "${" in value:
        return
    scheme = urllib.parse.urlsplit(value).scheme.lower()
    if scheme in _VCS_SCHEMES or scheme == "file":
        return
    if scheme:
        raise _LineError(
            f"-e {value!r} is not editable: give a local project folder or a VCS URL "
            "(git+https://..., hg+https://..., svn+https://..., bzr+https://...)"
        )
    path = _strip_extras(os.path.normpath(os.path.join(base_dir, value)))
    if not os.path.isdir(path):
        raise _LineError(f"-e {value!r}: folder does not exist (relative to {base_dir})")
    if not _is_installable_dir(path):
        raise _LineError(f"-e {value!r}: folder has neither setup.py nor pyproject.toml")


def _check_included_file(option: str, value: str, base_dir: str) -> None:
    if "${" in value or _REMOTE_FILE_RE.match(value):
        return
    if not os.path.isfile(os.path.join(base_dir, value)):
        raise _LineError(f"{option} {value!r}: file does not exist (relative to {base_dir})")


def _check_hash(value: str) -> None:
    algorithm, colon, digest = value.partition(":")
    if not colon or not digest:
        raise _LineError(f"--hash {value!r}: expected <algorithm>:<hex digest>, e.g. sha256:ab12...")
    if algorithm not in _HASH_ALGORITHMS:
        raise _LineError(f"--hash {value!r}: allowed algorithms are {', '.join(_HASH_ALGORITHMS)}")


def check_line(parsed: ParsedLine, base_dir: str) -> None:
    """Raise _LineError when pip would reject (or silently drop part of) this line."""
    if parsed.leftovers:
        words = " ".join(parsed.leftovers)
        raise _LineError(
            f"{words!r} follows an option and pip ignores it; put each requirement on its own line"
        )
    for option, value in parsed.options:
        # parse_line guarantees a value for every option that takes one; "" never matches a file.
        if option in ("--requirement", "--constraint"):
            _check_included_file(option, value or "", base_dir)
        elif option == "--editable":
            _check_editable(value or "", base_dir)
        elif option == "--hash":
            _check_hash(value or "")
    if parsed.requirement:
        _check_requirement(parsed.requirement, base_dir)


def check_requirements_text(
    text: str, base_dir: str, environ: dict[str, str] | os._Environ[str] | None = None
) -> list[tuple[int, str]]:
    """Every line pip cannot parse, as (line number, message); [] when the text is fine."""
    env = os.environ if environ is None else environ
    problems: list[tuple[int, str]] = []
    for lineno, line in logical_lines(text):
        try:
            check_line(parse_line(lineno, expand_env_vars(line, env)), base_dir)
        except _LineError as exc:
            problems.append((lineno, str(exc)))
    return problems


def check_requirements(path: str) -> list[tuple[int, str]]:
    """Check a requirements file; line 0 means the file itself could not be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return [(0, f"cannot read {path}: {exc.strerror or exc}")]
    try:
        text = data.decode("utf-8-sig")  # pip strips a UTF-8 byte-order mark too
    except UnicodeDecodeError as exc:
        return [(0, f"{path} is not UTF-8 text: {exc}")]
    return check_requirements_text(text, os.path.dirname(os.path.abspath(path)))


def referenced_files(path: str) -> list[str]:
    """Absolute paths of the local files a requirements file pulls in with -r/-c, recursively.

    Used to key environments by everything pip reads, not only the top file. Missing or
    unreadable files are skipped (pip will report them at install time); cycles stop.
    """
    found: list[str] = []
    seen = {os.path.abspath(path)}
    frontier = [(os.path.abspath(path), 0)]
    while frontier:  # bounded: each file is visited once, depth is capped
        current, depth = frontier.pop(0)
        if depth >= _MAX_INCLUDE_DEPTH:
            continue
        try:
            with open(current, encoding="utf-8-sig", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        for lineno, line in logical_lines(text):
            try:
                parsed = parse_line(lineno, expand_env_vars(line, os.environ))
            except _LineError:
                continue
            for option, value in parsed.options:
                if option not in ("--requirement", "--constraint") or not value:
                    continue
                if _REMOTE_FILE_RE.match(value):
                    continue
                target = os.path.abspath(os.path.join(os.path.dirname(current), value))
                if target not in seen and os.path.isfile(target):
                    seen.add(target)
                    found.append(target)
                    frontier.append((target, depth + 1))
    return found
