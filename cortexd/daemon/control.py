"""The control socket: the command line's only way into the daemon (a Unix socket, never TCP).

One JSON request per connection, answered by JSON lines: `{"ok": true, "result": ...}` or
`{"ok": false, "error": "..."}`; a streaming answer (logs --follow) sends `{"line": ...}`
objects until the client hangs up. The commands and their handlers are declared once in
cortexd/commands.py. The socket is mode 0660, group `cortexd` where it exists.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cortexd.commands import BY_NAME

log = logging.getLogger("cortexd.control")

Result = dict[str, Any] | AsyncIterator[str]
Handler = Callable[[dict[str, Any]], Awaitable[Result]]

MAX_REQUEST = 64 * 1024 * 1024  # `cortexd predict` sends its sample through here


class ControlError(Exception):
    """A request the daemon refuses; the message goes to the user as is."""


def bind_handlers(target: object) -> dict[str, Handler]:
    """Every declared command's handler on `target`; a missing one is a bug, found at start."""
    handlers: dict[str, Handler] = {}
    for name, command in BY_NAME.items():
        method = getattr(target, command.handler, None)
        if method is None:
            raise TypeError(f"{type(target).__name__} has no handler {command.handler!r} for command {name!r}")
        handlers[name] = method
    return handlers


class ControlSocketBusy(Exception):
    """Another daemon answers on this control socket."""


def in_use(path: str) -> bool:
    """A daemon answers on this control socket."""
    return os.path.lexists(path) and _answers(path)


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


async def start_control_server(path: str, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    if os.path.lexists(path):
        # A socket left by a daemon that died is replaced; one a running daemon answers on is
        # not taken over (two daemons on one runtime folder would fight over replicas' names).
        if _answers(path):
            raise ControlSocketBusy(f"{path}: another cortexd is running with this runtime folder; stop it or "
                                    "give this one another --runtime-dir")
        os.unlink(path)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line)
            handler = handlers.get(str(request.get("cmd")))
            if handler is None:
                raise ControlError(f"unknown command {request.get('cmd')!r}")
            result = await handler(request)
            if isinstance(result, dict):
                writer.write(json.dumps({"ok": True, "result": result}).encode() + b"\n")
            else:
                async for item in result:
                    writer.write(json.dumps({"line": item}).encode() + b"\n")
                    await writer.drain()
        except ControlError as exc:
            writer.write(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # a bug here must not take the daemon down
            log.exception("control request failed")
            writer.write(json.dumps({"ok": False, "error": f"internal error: {exc}"}).encode() + b"\n")
        finally:
            try:
                await writer.drain()
                writer.close()
            except (ConnectionError, RuntimeError):
                pass

    server = await asyncio.start_unix_server(serve, path=path, limit=MAX_REQUEST)
    os.chmod(path, 0o660)
    try:
        os.chown(path, -1, grp.getgrnam("cortexd").gr_gid)
    except (KeyError, PermissionError):
        pass  # no cortexd group here (development, tests): the owner alone can use it
    return server
