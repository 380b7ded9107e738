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
from typing import Any, Iterator

from cortexd import __version__, paths

EXIT_FAILED = 1
EXIT_USAGE = 2
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
    from cortexd.daemon.main import DaemonSettings, run_daemon
    from cortexd.config import parse_mem

    settings = DaemonSettings(
        config=os.path.abspath(args.config),
        host=args.host,
        port=args.port,
        state_dir=os.path.abspath(args.state_dir or paths.default_state_dir()),
        runtime_dir=os.path.abspath(args.runtime_dir or paths.default_runtime_dir()),
        log_dir=os.path.abspath(args.log_dir or paths.default_log_dir()),
        autoscale_period_s=args.autoscale_period,
        downscale_window_s=args.downscale_window,
        request_timeout_s=args.request_timeout,
        max_queue=args.max_queue,
        max_body_bytes=parse_mem(args.max_body),
        drain_timeout_s=args.drain_timeout,
    )
    return run_daemon(settings)


REQUIREMENTS = "requirements.txt"


def requirements_lines(problems: list[tuple[int, str]], name: str = REQUIREMENTS) -> list[str]:
    """check_requirements' findings located like config errors: `requirements.txt:LINE: message`."""
    return [f"{name}:{lineno}: {message}" if lineno > 0 else f"{name}: {message}" for lineno, message in problems]


def cmd_validate(args: argparse.Namespace) -> int:
    from cortexd.config import validate_path
    from cortexd.requirements_check import check_requirements

    path = args.path
    if os.path.isdir(path):
        path = os.path.join(path, "cortex.yaml")
    if not os.path.exists(path):
        print(f"cortexd: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    lines = [str(issue) for issue in validate_path(path)]
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
    print(f"{' and '.join(checked)}: valid")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    while True:
        result = call(args.runtime_dir, {"cmd": "get", "api": args.api})
        if args.json:
            text = json.dumps(result, indent=2)
        elif args.api:
            from cortexd import tables

            text = tables.format_api(result)
        else:
            from cortexd import tables

            text = tables.format_apis(result["apis"])
        if not args.watch:
            print(text)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
        sys.stdout.flush()
        time.sleep(args.interval)


def cmd_logs(args: argparse.Namespace) -> int:
    request = {"cmd": "logs", "api": args.api, "follow": args.follow, "lines": args.lines}
    for message in _control(args.runtime_dir, request, timeout=None if args.follow else 60):
        if "line" in message:
            print(message["line"], flush=True)
        elif not message.get("ok", True):
            raise Refused(message.get("error", "request failed"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as f:
            body = f.read().decode("utf-8")
    except OSError as exc:
        print(f"cortexd: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    result = call(args.runtime_dir, {"cmd": "predict", "api": args.api, "body": body, "debug": args.debug})
    out = sys.stdout if result["status"] == 200 else sys.stderr
    try:
        print(json.dumps(json.loads(result["body"]), indent=2), file=out)
    except ValueError:
        print(result["body"], file=out)
    return 0 if result["status"] == 200 else EXIT_FAILED


def cmd_reload(args: argparse.Namespace) -> int:
    result = call(args.runtime_dir, {"cmd": "reload", "force": args.force or []})
    for line in result.get("lines", []):
        print(line)
    return 0 if result.get("ok", True) else EXIT_FAILED


def cmd_gpus(args: argparse.Namespace) -> int:
    from cortexd import tables

    result = call(args.runtime_dir, {"cmd": "gpus"})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if result.get("reason"):
            print(result["reason"])
        print(tables.format_gpus(result["gpus"]))
    return 0


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

    serve = with_runtime(sub.add_parser("serve", help="run the daemon in the foreground"))
    serve.add_argument("--config", default=paths.default_config())
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8888)
    serve.add_argument("--state-dir", default=None)
    serve.add_argument("--log-dir", default=None)
    serve.add_argument("--autoscale-period", type=float, default=15.0, help="seconds between autoscaling decisions")
    serve.add_argument("--downscale-window", type=float, default=300.0, help="seconds of stabilisation before scaling down")
    serve.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request may wait and run")
    serve.add_argument("--max-queue", type=int, default=1024, help="requests waiting per API before 503")
    serve.add_argument("--max-body", default="32Mi", help="largest request body (413 above it)")
    serve.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish requests on stop")
    serve.set_defaults(func=cmd_serve)

    reload = with_runtime(sub.add_parser("reload", help="re-read cortex.yaml and apply the changes"))
    reload.add_argument("--force", nargs="+", metavar="API", help="replace these APIs even if unchanged")
    reload.set_defaults(func=cmd_reload)

    get = with_runtime(sub.add_parser("get", help="show APIs, or one API in detail"))
    get.add_argument("api", nargs="?")
    get.add_argument("--json", action="store_true")
    get.add_argument("--watch", action="store_true")
    get.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    get.set_defaults(func=cmd_get)

    logs = with_runtime(sub.add_parser("logs", help="print an API's log"))
    logs.add_argument("api")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.add_argument("--lines", "-n", type=int, default=100)
    logs.set_defaults(func=cmd_logs)

    predict = with_runtime(sub.add_parser("predict", help="send a JSON file to an API"))
    predict.add_argument("api")
    predict.add_argument("file")
    predict.add_argument("--debug", action="store_true")
    predict.set_defaults(func=cmd_predict)

    validate = sub.add_parser("validate", help="check a cortex.yaml without running it")
    validate.add_argument("path", nargs="?", default=paths.default_config())
    validate.set_defaults(func=cmd_validate)

    gpus = with_runtime(sub.add_parser("gpus", help="GPUs and the replicas holding them"))
    gpus.add_argument("--json", action="store_true")
    gpus.set_defaults(func=cmd_gpus)

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
