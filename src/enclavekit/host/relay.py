"""The ingress relay: the untrusted host forwards bytes to an enclave without understanding them.

Everything that crosses it is ciphertext of an attested session, so the relay needs no keys and parses
nothing. It still must not be the weak point for availability: it bounds concurrent connections, applies
backpressure (it never buffers more than one read per direction), and closes connections that stay idle
or whose upstream cannot be reached in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Connector", "Relay", "RelayLimits", "RelayStats", "Tap", "close_quietly", "pipe", "splice"]

logger = logging.getLogger(__name__)

Connector = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a new connection to the upstream (an enclave over vsock, TCP or a Unix socket)."""

Tap = Callable[[str, bytes], None]
"""Sees every chunk forwarded, with its direction (``"in"``: client to enclave, ``"out"``: back)."""


@dataclass(frozen=True, slots=True)
class RelayLimits:
    max_connections: int = 1024
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    chunk_size: int = 64 * 1024


@dataclass(slots=True)
class RelayStats:
    active: int = 0
    accepted: int = 0
    refused: int = 0
    upstream_failures: int = 0
    idle_closed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class _Activity:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chunk_size: int,
    on_chunk: Callable[[bytes], None] | None = None,
) -> None:
    """Copy ``reader`` to ``writer`` until EOF, one chunk in flight (``drain`` applies backpressure)."""
    try:
        while chunk := await reader.read(chunk_size):
            if on_chunk is not None:
                on_chunk(chunk)
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    limits: RelayLimits,
    on_in: Callable[[bytes], None],
    on_out: Callable[[bytes], None],
) -> bool:
    """Relay both ways until both sides finish or the pair is idle too long; True if closed for idleness."""
    activity = _Activity()

    def _in(chunk: bytes) -> None:
        activity.touch()
        on_in(chunk)

    def _out(chunk: bytes) -> None:
        activity.touch()
        on_out(chunk)

    tasks = {
        asyncio.create_task(pipe(client[0], upstream[1], chunk_size=limits.chunk_size, on_chunk=_in)),
        asyncio.create_task(pipe(upstream[0], client[1], chunk_size=limits.chunk_size, on_chunk=_out)),
    }
    idle = False
    try:
        pending = tasks
        while pending:
            remaining = limits.idle_timeout - (time.monotonic() - activity.last)
            if remaining <= 0:
                idle = True
                break
            _, pending = await asyncio.wait(pending, timeout=remaining)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_quietly(upstream[1])
        await close_quietly(client[1])
    return idle


@dataclass
class Relay:
    """Listens on a TCP address and splices each connection to a new upstream connection."""

    upstream: Connector
    limits: RelayLimits = field(default_factory=RelayLimits)
    tap: Tap | None = None
    stats: RelayStats = field(default_factory=RelayStats)
    _server: asyncio.Server | None = None
    _slots: asyncio.Semaphore | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start listening; returns the bound address (``port=0`` picks a free port)."""
        self._slots = asyncio.Semaphore(self.limits.max_connections)
        self._server = await asyncio.start_server(self._accept, host, port)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._slots is not None
        if self._slots.locked():
            self.stats.refused += 1
            await close_quietly(writer)
            return
        self._tasks.add(task)
        async with self._slots:
            self.stats.accepted += 1
            self.stats.active += 1
            try:
                await self._relay(reader, writer)
            finally:
                self.stats.active -= 1
                self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.wait_for(self.upstream(), self.limits.connect_timeout)
        except (TimeoutError, OSError) as exc:
            self.stats.upstream_failures += 1
            logger.warning("relay: upstream unreachable (%s)", type(exc).__name__)
            await close_quietly(writer)
            return
        tap = self.tap

        def on_in(chunk: bytes) -> None:
            self.stats.bytes_in += len(chunk)
            if tap is not None:
                tap("in", chunk)

        def on_out(chunk: bytes) -> None:
            self.stats.bytes_out += len(chunk)
            if tap is not None:
                tap("out", chunk)

        if await splice((reader, writer), upstream, limits=self.limits, on_in=on_in, on_out=on_out):
            self.stats.idle_closed += 1
