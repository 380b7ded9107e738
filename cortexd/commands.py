"""The control commands, declared once: name, arguments, the daemon's handler, and how the
command line renders the answer.

`cortexd/cli.py` builds its sub-commands from COMMANDS; the daemon's control server
(daemon/control.py) serves exactly these names, each by the handler method named here
(daemon/handlers.py), and checks at start that every one exists. A new command is one row.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cortexd import tables

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)  # argparse keyword arguments


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: str  # the daemon's method (daemon/handlers.py) that answers it
    args: tuple[Arg, ...] = ()
    # The request sent to the daemon, from the parsed arguments (None: read the file first).
    request: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    # Prints the answer and returns the exit code.
    render: Callable[[argparse.Namespace, Any], int] = lambda args, result: EXIT_OK
    streaming: bool = False  # answered by lines until the client hangs up
    repeat: Callable[[argparse.Namespace], float | None] = lambda args: None  # seconds between repeats (--watch)


def _render_get(args: argparse.Namespace, result: Any) -> int:
    if args.json:
        text = json.dumps(result, indent=2)
    elif args.api and result.get("kind") == "TrafficSplitter":
        text = tables.format_splitter(result)
    elif args.api:
        text = tables.format_api(result)
    else:
        text = tables.format_apis(result["apis"])
        for splitter in result.get("traffic_splitters") or ():
            text += "\n\n" + tables.format_splitter(splitter)
        text += "".join(f"\nwarning: {w}" for w in result.get("warnings") or ())
    if args.watch:
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
        sys.stdout.flush()
    else:
        print(text)
    return EXIT_OK


def _render_predict(args: argparse.Namespace, result: Any) -> int:
    out = sys.stdout if result["status"] == 200 else sys.stderr
    if "body_base64" in result:  # not text: the raw bytes, as the HTTP endpoint sends them
        out.buffer.write(base64.b64decode(result["body_base64"]))
        out.flush()
        return EXIT_OK if result["status"] == 200 else EXIT_FAILED
    if not str(result.get("content_type", "application/json")).startswith("application/json"):
        print(result["body"], file=out)
        return EXIT_OK if result["status"] == 200 else EXIT_FAILED
    try:
        print(json.dumps(json.loads(result["body"]), indent=2), file=out)
    except ValueError:
        print(result["body"], file=out)
    return EXIT_OK if result["status"] == 200 else EXIT_FAILED


def _predict_request(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.file, "rb") as f:
        body = f.read().decode("utf-8")
    return {"api": args.api, "body": body, "debug": args.debug}


def _render_reload(args: argparse.Namespace, result: Any) -> int:
    for line in result.get("lines", []):
        print(line)
    return EXIT_OK if result.get("ok", True) else EXIT_FAILED


def _render_gpus(args: argparse.Namespace, result: Any) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    if result.get("reason"):
        print(result["reason"])
    print(tables.format_gpus(result["gpus"], result.get("frameworks") or []))
    return EXIT_OK


def _render_line(args: argparse.Namespace, line: Any) -> int:
    print(line, flush=True)
    return EXIT_OK


_JSON = Arg(("--json",), {"action": "store_true", "help": "the answer as JSON, for scripts"})

COMMANDS: tuple[Command, ...] = (
    Command(
        "get", "show APIs, or one API in detail", "get",
        args=(Arg(("api",), {"nargs": "?"}), _JSON, Arg(("--watch",), {"action": "store_true"}),
              Arg(("--interval",), {"type": float, "default": 2.0, "help": argparse.SUPPRESS})),
        request=lambda args: {"api": args.api},
        render=_render_get,
        repeat=lambda args: args.interval if args.watch else None,
    ),
    Command(
        "logs", "print an API's log", "logs",
        args=(Arg(("api",)), Arg(("--follow", "-f"), {"action": "store_true"}),
              Arg(("--lines", "-n"), {"type": int, "default": 100})),
        request=lambda args: {"api": args.api, "follow": args.follow, "lines": args.lines},
        render=_render_line,
        streaming=True,
    ),
    Command(
        "predict", "send a JSON file to an API", "predict",
        args=(Arg(("api",)), Arg(("file",)), Arg(("--debug",), {"action": "store_true"})),
        request=_predict_request,
        render=_render_predict,
    ),
    Command(
        "reload", "re-read cortex.yaml and apply the changes", "reload",
        args=(Arg(("--force",), {"nargs": "+", "metavar": "API", "help": "replace these APIs even if unchanged"}),),
        request=lambda args: {"force": args.force or []},
        render=_render_reload,
    ),
    Command("gpus", "GPUs and the replicas holding them", "gpus", args=(_JSON,), render=_render_gpus),
)

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
