"""Waiting for a condition instead of sleeping for a fixed time and hoping it holds.

A test that sleeps and then asserts is slow when the machine is idle and flaky when it is busy. These helpers
poll a predicate until it holds (returning at once when it does) and fail with a message when it never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["streams_drained", "wait_for", "wait_for_async"]


def wait_for(predicate: Callable[[], object], timeout: float, *, interval: float = 0.05, what: str = "") -> None:
    """Return as soon as ``predicate()`` is true; raise :class:`AssertionError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], object | Awaitable[object]], timeout: float, *, interval: float = 0.01, what: str = ""
) -> None:
    """:func:`wait_for` inside an event loop: the loop keeps running while it waits; ``predicate`` may be async."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)


def streams_drained(nats_url: str, *streams: str) -> bool:
    """True when every one of these JetStream work-queue streams is empty: each message was acknowledged, so
    none can be delivered again (the condition to wait for before asserting that nothing arrived twice)."""
    import nats

    async def count() -> int:
        connection = await nats.connect(nats_url)
        try:
            js = connection.jetstream()
            return sum([(await js.stream_info(name)).state.messages for name in streams])
        finally:
            await connection.close()

    return asyncio.run(count()) == 0
