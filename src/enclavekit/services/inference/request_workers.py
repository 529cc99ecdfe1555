"""Request workers: threads that run engine calls for an event loop, with the shortest hand-off back to it.

``loop.run_in_executor`` with a ``ThreadPoolExecutor`` hands a result back through two futures: the worker
completes a ``concurrent.futures.Future`` (its lock, condition and callbacks), whose callback schedules a copy
into the asyncio future on the loop. After an engine call has evicted the CPU caches, that path cost ~190 µs per
request on this machine's 2 vCPUs even with both threads on one CPU. Here a worker resolves the asyncio future
itself with one ``call_soon_threadsafe``; nothing else crosses the threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["RequestWorkers"]

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class RequestWorkers:
    """``count`` daemon threads taking calls in arrival order; :meth:`run` awaits one call's result."""

    def __init__(self, count: int, *, name: str) -> None:
        if count < 1:
            raise ValueError(f"request workers: {count} is not a worker count")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(count)]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` for a worker; the future resolves on the calling loop. Cancelling the future does
        not stop a call that has started (its result is dropped), and skips one that has not."""
        if self._closed:
            raise RuntimeError("request workers are closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def close(self) -> None:
        """Stop taking calls; each worker ends after the call it is running (calls still queued are skipped)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            if future.cancelled():  # read across threads: at worst a cancelled call runs and is dropped
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine, which raises it
                _resolve(loop, future, _set_exception, exc)
            else:
                _resolve(loop, future, _set_result, result)


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], how: Callable[..., None], value: Any
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits this call any more
        loop.call_soon_threadsafe(how, future, value)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
