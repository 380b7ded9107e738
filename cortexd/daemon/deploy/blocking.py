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

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            try:
                loop.call_soon_threadsafe(settle, None, exc)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass
            return
        try:
            loop.call_soon_threadsafe(settle, result, None)
        except RuntimeError:
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
