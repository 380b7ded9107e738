"""check_requirements: every line pip would reject, with its line number (pure, fast)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cortexd.requirements_check import (
    check_requirements,
    check_requirements_text,
    logical_lines,
    referenced_files,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "reference-iris" / "requirements.txt"


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A project folder with the files some lines refer to."""
    (tmp_path / "base.txt").write_text("numpy\n")
    (tmp_path / "constraints.txt").write_text("numpy<3\n")
    (tmp_path / "localpkg").mkdir()
    (tmp_path / "localpkg" / "pyproject.toml").write_text("[project]\nname='localpkg'\n")
    (tmp_path / "notapkg").mkdir()
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "tiny-1.0-py3-none-any.whl").write_bytes(b"")
    return tmp_path


VALID_LINES = [
    "requests",
    "requests==2.31.0",
    "Requests >= 2.8.1, == 2.8.*",
    "requests[security,socks]~=2.31",
    'requests; python_version < "3.8"',
    "pywin32 >=1.0 ; sys_platform == 'win32'",
    "pkg @ https://example.com/pkg-1.0-py3-none-any.whl",
    "https://example.com/pkg-1.0.tar.gz",
    "https://example.com/pkg-1.0.tar.gz; python_version >= '3'",
    "git+https://github.com/org/repo.git@v1.0#egg=repo",
    "-e git+https://github.com/org/repo.git#egg=repo",
    "-e ./localpkg",
    "--editable=localpkg",
    "-e ./localpkg[dev]",
    "./localpkg",
    "./localpkg[extra]",
    "wheels/tiny-1.0-py3-none-any.whl",
    "-r base.txt",
    "-rbase.txt",
    "--requirement=base.txt",
    "-c constraints.txt",
    "-r https://example.com/requirements.txt",
    "-i https://pypi.example.com/simple",
    "--index-url=https://pypi.example.com/simple",
    "--extra-index-url https://pypi.example.com/simple",
    "--extra-index https://pypi.example.com/simple",  # optparse accepts unambiguous prefixes
    "--no-index",
    "-f ./wheels",
    "--find-links=/opt/wheels",
    "--trusted-host pypi.example.com",
    "--pre",
    "--prefer-binary",
    "--only-binary :all:",
    "--no-binary=somepkg",
    "--require-hashes",
    "--use-feature=truststore",
    "requests==2.31.0 --hash=sha256:58cd2187c01e70e6e26505bca751777aa9f2ee0b7f4300988b709f44e013003f",
    "requests==2.31.0 --hash sha256:58cd2187c01e70e6e26505bca751777aa9f2ee0b7f4300988b709f44e013003f",
    "pkg --config-settings=--build-option=--fast",
    "requests==${CORTEXD_TEST_UNSET_VERSION_VAR}",  # may be set where the daemon runs pip
    "# only a comment",
    "   ",
]


@pytest.mark.parametrize("line", VALID_LINES)
def test_lines_pip_accepts_are_not_reported(project: Path, line: str) -> None:
    assert check_requirements_text(line + "\n", str(project), environ={}) == []


INVALID_LINES = [
    ("foo=1", "'=' is not a valid operator"),
    ("foo==", "invalid requirement 'foo=='"),
    ("foo bar", "invalid requirement 'foo bar'"),
    ("requests>=2,<", "invalid requirement"),
    ("numpy; python_version << '3'", "invalid environment marker"),
    ("https://example.com/x.tar.gz; bogus", "invalid environment marker"),
    ("./missing-dir", "does not exist"),
    ("./notapkg", "neither setup.py nor pyproject.toml"),
    ("wheels/absent-1.0-py3-none-any.whl", "does not exist"),
    ("-r missing.txt", "--requirement 'missing.txt': file does not exist"),
    ("-c", "option --constraint requires a value"),
    ("-e ./missing", "folder does not exist"),
    ("-e ./notapkg", "neither setup.py nor pyproject.toml"),
    ("-e https://example.com/pkg.tar.gz", "give a local project folder or a VCS URL"),
    ("--no-deps", "no such option in a requirements file: --no-deps"),
    ("--install-option=--prefix=/x", "no such option"),
    ("-x foo", "no such option in a requirements file: -x"),
    ("--pre=yes", "does not take a value"),
    ("--pre requests", "'requests' follows an option and pip ignores it"),
    ("--hash=md5:abc", "allowed algorithms are sha256"),
    ("pkg --hash=abc", "expected <algorithm>:<hex digest>"),
    ("pkg --unknown", "no such option"),
    ("--trusted-host 'unclosed", "cannot split the options"),
    ("--no", "ambiguous option --no"),
]


@pytest.mark.parametrize(("line", "expected"), INVALID_LINES)
def test_lines_pip_rejects_are_reported_with_the_reason(project: Path, line: str, expected: str) -> None:
    problems = check_requirements_text(line + "\n", str(project), environ={})
    assert len(problems) == 1, problems
    lineno, message = problems[0]
    assert lineno == 1
    assert expected in message


def test_all_errors_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "# pinned for the demo",  # 1
            "numpy==1.26.4",  # 2
            "",  # 3
            "scipy=1.11",  # 4
            "pandas \\",  # 5: continuation joins 5 and 6
            "  >=2.0",  # 6
            "torch>=2 \\",  # 7: continuation joins 7 and 8 into a bad line
            "  =2",  # 8
            "requests  # inline comment",  # 9
            "bad name here",  # 10
        ]
    )
    problems = check_requirements_text(text, str(tmp_path), environ={})
    assert [line for line, _ in problems] == [4, 7, 10]


def test_packaging_caret_becomes_a_column(tmp_path: Path) -> None:
    [(_, message)] = check_requirements_text("foo bar\n", str(tmp_path), environ={})
    assert "(at column 5)" in message
    assert "\n" not in message


def test_env_vars_are_expanded_like_pip(tmp_path: Path) -> None:
    text = "requests${CORTEXD_TEST_SPEC}\n"
    assert check_requirements_text(text, str(tmp_path), environ={"CORTEXD_TEST_SPEC": ">=2.31"}) == []
    [(line, message)] = check_requirements_text(text, str(tmp_path), environ={"CORTEXD_TEST_SPEC": "=2"})
    assert line == 1 and "invalid requirement 'requests=2'" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\nb\n", [(1, "a"), (2, "b")]),
        ("a \\\n  b\nc\n", [(1, "a   b"), (3, "c")]),
        ("# x \\\nb\n", [(2, "b")]),  # a comment never continues
        ("a  # note\n\n   \n", [(1, "a")]),
        ("a#not-a-comment\n", [(1, "a#not-a-comment")]),  # pip needs whitespace before '#'
        ("a \\\n", [(1, "a ")]),
    ],
)
def test_logical_lines_follow_pips_preprocessing(text: str, expected: list[tuple[int, str]]) -> None:
    assert logical_lines(text) == [(n, line.strip()) for n, line in expected]


def test_missing_file_is_line_zero(tmp_path: Path) -> None:
    [(line, message)] = check_requirements(str(tmp_path / "requirements.txt"))
    assert line == 0 and "cannot read" in message


def test_non_utf8_file_is_line_zero(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_bytes(b"caf\xe9\n")
    [(line, message)] = check_requirements(str(path))
    assert line == 0 and "not UTF-8" in message


def test_bom_and_relative_paths_resolve_against_the_files_folder(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = project / "requirements.txt"
    path.write_bytes("\ufeff-r base.txt\n./localpkg\n".encode())
    elsewhere = tmp_path_factory.mktemp("cwd")
    cwd = os.getcwd()
    os.chdir(elsewhere)  # the caller's working directory must not matter
    try:
        assert check_requirements(str(path)) == []
    finally:
        os.chdir(cwd)


def test_the_example_projects_requirements_are_valid() -> None:
    assert check_requirements(str(EXAMPLE)) == []


def test_referenced_files_follow_r_and_c_recursively_and_stop_on_cycles(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "requirements.txt").write_text("-r sub/a.txt\n-c c.txt\n-r missing.txt\nnumpy\n")
    (tmp_path / "sub" / "a.txt").write_text("-r b.txt\n")  # relative to sub/
    (tmp_path / "sub" / "b.txt").write_text("-r ../requirements.txt\nrequests\n")  # a cycle
    (tmp_path / "c.txt").write_text("numpy<3\n")
    found = referenced_files(str(tmp_path / "requirements.txt"))
    assert found == [
        str(tmp_path / "sub" / "a.txt"),
        str(tmp_path / "c.txt"),
        str(tmp_path / "sub" / "b.txt"),
    ]


def test_option_table_matches_the_installed_pip() -> None:
    """Our table of requirement-file options is pip's; fail loudly when pip adds or drops one."""
    req_file = pytest.importorskip("pip._internal.req.req_file")
    from cortexd import requirements_check

    pip_flags: set[str] = set()
    for factory in [*req_file.SUPPORTED_OPTIONS, *req_file.SUPPORTED_OPTIONS_REQ]:
        option = factory()
        pip_flags.update(option._long_opts)
        pip_flags.update(option._short_opts)
    ours = set(requirements_check._LONG_OPTIONS) | set(requirements_check._SHORT_OPTIONS)
    assert ours == pip_flags
