"""A host process's life as ``enclavekit up`` expects it: one ready line on stdout, a clean stop on SIGINT/SIGTERM.

No web framework here: the relay, the inference gateway and the vault bridge use it without loading one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

__all__ = ["announce", "run_until_stopped", "stop_on_signals"]


def announce(message: Mapping[str, Any]) -> None:
    """Print the ready line (one JSON object with ``"ready": true``) that ``enclavekit up`` waits for."""
    sys.stdout.write(json.dumps({"ready": True, **message}) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[asyncio.Event]:
    """Set ``stop`` on SIGINT or SIGTERM while the block runs (on the running loop); the handlers go after."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_until_stopped(
    start: Callable[[], Awaitable[Mapping[str, Any]]], close: Callable[[], Awaitable[None]]
) -> None:
    """A host process that is not one HTTP server (a relay, a gateway, a bridge): ``start()``, print the ready
    line with what it returned, wait for SIGINT/SIGTERM, then ``close()`` (also when the wait is cancelled)."""
    with stop_on_signals(asyncio.Event()) as stop:
        ready = await start()
        try:
            announce(ready)
            await stop.wait()
        finally:
            await close()
