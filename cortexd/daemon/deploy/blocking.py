"""Blocking work (downloads, copies, pip) off the event loop, on daemon threads.

asyncio.to_thread would do, but its threads belong to the loop's default executor, which
asyncio.run joins at exit: a model download trickling a byte every 20 s would hold SIGTERM
hostage until it ends. A daemon thread is abandoned instead; cancelling the awaiting task
returns at once and the thread's result, when it comes, is dropped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_blocking(func: Callable[..., T], *args: object, name: str = "cortexd-blocking") -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def succeed(result: T) -> None:
        if not future.done():  # else the awaiting task was cancelled
            future.set_result(result)

    def fail(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    def work() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            try:
                loop.call_soon_threadsafe(fail, exc)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass
            return
        try:
            loop.call_soon_threadsafe(succeed, result)
        except RuntimeError:
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
