"""The `cortexd` command line: serve, and talk to a running daemon over its control socket.

Exit codes: 0 success, 1 the daemon refused or the request failed (an invalid config on
reload, a prediction that was not 200), 2 usage or an invalid file, 3 no daemon running.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from cortexd import __version__, paths
from cortexd.commands import COMMANDS, EXIT_FAILED, EXIT_USAGE, Command
from cortexd.daemon.settings import add_flags

EXIT_NO_DAEMON = 3


class NoDaemon(Exception):
    pass


class Refused(Exception):
    pass


def _control(runtime_dir: str, request: dict[str, Any], timeout: float | None = 600) -> Iterator[dict[str, Any]]:
    path = paths.control_socket(runtime_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NoDaemon(f"no cortexd is running with runtime directory {runtime_dir} ({exc.strerror}); "
                       "start it with `cortexd serve` or `systemctl start cortexd`, or pass --runtime-dir") from exc
    except PermissionError as exc:
        raise NoDaemon(f"cannot open {path}: permission denied (run as root or a member of the cortexd group)") from exc
    with sock, sock.makefile("rb") as f:
        sock.sendall(json.dumps(request).encode() + b"\n")
        for line in f:
            yield json.loads(line)


def call(runtime_dir: str, request: dict[str, Any]) -> Any:
    for message in _control(runtime_dir, request):
        if not message.get("ok", False):
            raise Refused(message.get("error", "request failed"))
        return message["result"]
    raise Refused("the daemon closed the connection without answering")


# -- commands -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from cortexd.daemon.main import run_daemon
    from cortexd.daemon.settings import from_args

    return run_daemon(from_args(args))


REQUIREMENTS = "requirements.txt"


def requirements_lines(problems: list[tuple[int, str]], name: str = REQUIREMENTS) -> list[str]:
    """check_requirements' findings located like config errors: `requirements.txt:LINE: message`."""
    return [f"{name}:{lineno}: {message}" if lineno > 0 else f"{name}: {message}" for lineno, message in problems]


def cmd_validate(args: argparse.Namespace) -> int:
    from cortexd.config import validate_report
    from cortexd.requirements_check import check_requirements

    path = _config_file(args.path)
    if not os.path.exists(path):
        print(f"cortexd: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    report = validate_report(path)
    print(report.headline())  # which Cortex dialect the file was read as
    lines = [str(issue) for issue in report.errors]
    # The project's requirements.txt is installed at serve/reload; a line pip cannot parse
    # would only fail there, after a slow environment build, so it is an error here too.
    requirements = os.path.join(os.path.dirname(path), REQUIREMENTS)  # named as the user named the project
    checked = [path]
    if os.path.isfile(requirements):
        checked.append(requirements)
        lines += requirements_lines(check_requirements(requirements))
    if lines:
        for line in lines:
            print(line)
        print(f"{len(lines)} error{'s' if len(lines) != 1 else ''} in {' and '.join(checked)}", file=sys.stderr)
        return EXIT_USAGE
    for note in report.notes:
        print(note)
    print(f"{' and '.join(checked)}: valid")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from cortexd.config.convert import convert_main

    return convert_main(_config_file(args.path))


def _config_file(path: str) -> str:
    """A project folder means its cortex.yaml."""
    return os.path.join(path, "cortex.yaml") if os.path.isdir(path) else path


def run_command(command: Command, args: argparse.Namespace) -> int:
    """A control command: send its request, render the answer (again and again with --watch)."""
    try:
        request = {"cmd": command.name, **command.request(args)}
    except OSError as exc:
        print(f"cortexd: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if command.streaming:
        timeout = None if getattr(args, "follow", False) else 60
        for message in _control(args.runtime_dir, request, timeout=timeout):
            if "line" in message:
                command.render(args, message["line"])
            elif not message.get("ok", True):
                raise Refused(message.get("error", "request failed"))
        return 0
    while True:
        code = command.render(args, call(args.runtime_dir, request))
        interval = command.repeat(args)
        if interval is None:
            return code
        time.sleep(interval)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"cortexd {__version__}")
    return 0


# -- parsing ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cortexd", description="Serve cortex.yaml APIs on one machine.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_runtime(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--runtime-dir", default=None,
                       help="the daemon's runtime directory (env CORTEXD_RUNTIME_DIR); finds its control socket")
        return p

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    add_flags(serve)
    serve.set_defaults(func=cmd_serve)

    for command in COMMANDS:
        p = with_runtime(sub.add_parser(command.name, help=command.help))
        for arg in command.args:
            p.add_argument(*arg.flags, **arg.options)
        p.set_defaults(func=lambda args, command=command: run_command(command, args))

    validate = sub.add_parser("validate", help="check a cortex.yaml without running it")
    validate.add_argument("path", nargs="?", default=paths.default_config())
    validate.set_defaults(func=cmd_validate)

    convert = sub.add_parser("convert", help="print a project's cortex.yaml in the newest dialect cortexd reads")
    convert.add_argument("path", nargs="?", default=paths.default_config())
    convert.set_defaults(func=cmd_convert)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "runtime_dir") and args.command != "serve" and not args.runtime_dir:
        args.runtime_dir = paths.default_runtime_dir()
    try:
        code = args.func(args)
    except NoDaemon as exc:
        print(f"cortexd: {exc}", file=sys.stderr)
        code = EXIT_NO_DAEMON
    except Refused as exc:
        print(f"cortexd: {exc}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
