"""The ingress relay: the untrusted host forwards bytes to an enclave without understanding them.

Everything that crosses it is ciphertext of an attested session, so the relay needs no keys and parses
nothing. It still must not be the weak point for availability: it bounds concurrent connections, applies
backpressure (at most one chunk per direction is in flight), and closes connections that stay idle or whose
upstream cannot be reached in time.

On Linux the bytes move with ``splice(2)`` through a pipe, socket to socket, never copied into Python; with
a tap (capture for audits and tests), or where splice is not available, they are copied through userspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from enclavekit.errors import InfrastructureError
from enclavekit.rpc.address import Address, TcpAddress, parse_address
from enclavekit.rpc.transport import bound_address, connect_socket, listening_socket

__all__ = ["Relay", "RelayLimits", "RelayStats", "SocketServer", "Tap", "relay_sockets", "size_send_buffers"]

logger = logging.getLogger(__name__)

Tap = Callable[[str, bytes], None]
"""Sees every chunk forwarded, with its direction (``"in"``: client to enclave, ``"out"``: back)."""

_SPLICE = hasattr(os, "splice")
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True, slots=True)
class RelayLimits:
    max_connections: int = 1024
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    chunk_size: int = 256 * 1024
    """Bytes in flight per direction and connection at most (the pipe's size with splice)."""
    unix_send_buffer: int = 1024 * 1024
    """``SO_SNDBUF`` for the Unix sockets of a relayed pair (0: the kernel's default).

    A Unix stream socket lets a writer run only ``SO_SNDBUF`` bytes ahead of its reader, 208 KiB by default,
    which is less than one chunk in flight: the relay then sleeps and wakes for every few pages, and that
    costs more than moving the bytes (``benchmarks/relay.py`` measured 0.25 CPU-seconds per GiB at the
    default against 0.105 at 1 MiB). TCP sizes its own buffers and is left alone. The kernel caps the value
    at ``net.core.wmem_max``; the relay warns once when it does.
    """


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


async def _ready(sock: socket.socket, *, write: bool) -> None:
    """Wait until ``sock`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    add(fd, wake)
    try:
        await future
    finally:
        remove(fd)


class _SpliceUnsupported(Exception):
    pass


async def _pump_splice(
    src: socket.socket, dst: socket.socket, chunk: int, count: Callable[[int], None], activity: _Activity
) -> None:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, chunk)
        first = True
        while True:
            try:  # try first: waiting costs two epoll_ctl calls, and data is usually there already
                moved = os.splice(src.fileno(), write_end, chunk, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await _ready(src, write=False)
                continue
            except OSError as exc:
                if first and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise _SpliceUnsupported from exc
                return
            first = False
            if moved == 0:
                break
            activity.touch()
            count(moved)
            while moved:
                try:
                    moved -= os.splice(read_end, dst.fileno(), moved, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await _ready(dst, write=True)
                except OSError:
                    return
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    finally:
        os.close(read_end)
        os.close(write_end)


async def _pump_copy(
    src: socket.socket,
    dst: socket.socket,
    chunk: int,
    count: Callable[[int], None],
    activity: _Activity,
    tap: Callable[[bytes], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.sock_recv(src, chunk):
            activity.touch()
            count(len(data))
            if tap is not None:
                tap(data)
            await loop.sock_sendall(dst, data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        return


async def _pump(
    src: socket.socket,
    dst: socket.socket,
    chunk: int,
    count: Callable[[int], None],
    activity: _Activity,
    tap: Callable[[bytes], None] | None,
) -> None:
    if tap is None and _SPLICE:
        try:
            await _pump_splice(src, dst, chunk, count, activity)
            return
        except _SpliceUnsupported:  # e.g. a socket family without splice support
            pass
    await _pump_copy(src, dst, chunk, count, activity, tap)


_warned_wmem_max = False


def size_send_buffers(sockets: tuple[socket.socket, ...], size: int) -> None:
    """Give the Unix sockets among ``sockets`` a send buffer of ``size`` bytes (see ``RelayLimits``)."""
    global _warned_wmem_max
    if size <= 0:
        return
    for sock in sockets:
        if sock.family != socket.AF_UNIX:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2  # Linux reports twice the size
        except OSError as exc:
            logger.debug("relay: could not size a Unix socket's send buffer (%s)", exc)
            continue
        if granted < size and not _warned_wmem_max:
            _warned_wmem_max = True
            logger.warning(
                "relay: the kernel caps Unix socket send buffers at %d bytes (asked %d): raise "
                "net.core.wmem_max for full throughput",
                granted,
                size,
            )


async def relay_sockets(
    client: socket.socket,
    upstream: socket.socket,
    *,
    limits: RelayLimits,
    on_in: Callable[[int], None] = lambda n: None,
    on_out: Callable[[int], None] = lambda n: None,
    tap: Tap | None = None,
) -> bool:
    """Relay both ways until both sides finish or the pair is idle too long; True if closed for idleness.

    Both sockets must be non-blocking; both are closed on return.
    """
    size_send_buffers((client, upstream), limits.unix_send_buffer)
    activity = _Activity()
    tap_in = None if tap is None else (lambda data: tap("in", data))
    tap_out = None if tap is None else (lambda data: tap("out", data))
    tasks = {
        asyncio.create_task(_pump(client, upstream, limits.chunk_size, on_in, activity, tap_in)),
        asyncio.create_task(_pump(upstream, client, limits.chunk_size, on_out, activity, tap_out)),
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
        upstream.close()
        client.close()
    return idle


@dataclass(kw_only=True)
class SocketServer:
    """Accepts connections on a raw listening socket and hands each to :meth:`handle`, within ``limits``."""

    limits: RelayLimits = field(default_factory=RelayLimits)
    stats: RelayStats = field(default_factory=RelayStats)
    _listener: socket.socket | None = None
    _accepting: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def listen(self, address: Address) -> Address:
        """Start accepting on ``address``; returns the bound address (the real port when 0 was asked)."""
        self._listener = listening_socket(address, min(1024, self.limits.max_connections))
        self._accepting = asyncio.create_task(self._accept_forever(self._listener))
        return bound_address(address, self._listener)

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def handle(self, connection: socket.socket) -> None:
        raise NotImplementedError

    async def _accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                logger.warning("%s: accept failed (%s)", type(self).__name__, exc)
                await asyncio.sleep(0.1)
                continue
            connection.setblocking(False)
            if len(self._tasks) >= self.limits.max_connections:
                self.stats.refused += 1
                connection.close()
                continue
            task = asyncio.create_task(self.handle(connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@dataclass
class Relay(SocketServer):
    """Listens on a TCP address and relays each connection to a new connection to ``upstream``."""

    upstream: Address | str
    tap: Tap | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Start listening; returns the bound address (``port=0`` picks a free port)."""
        self.upstream = parse_address(self.upstream)
        bound = await self.listen(TcpAddress(host, port))
        assert isinstance(bound, TcpAddress)
        return bound.host, bound.port

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def handle(self, connection: socket.socket) -> None:
        self.stats.accepted += 1
        self.stats.active += 1
        try:
            try:
                upstream = await connect_socket(self.upstream, timeout=self.limits.connect_timeout)
            except (OSError, InfrastructureError) as exc:
                self.stats.upstream_failures += 1
                logger.warning("relay: upstream unreachable (%s)", exc)
                connection.close()
                return

            def on_in(n: int) -> None:
                self.stats.bytes_in += n

            def on_out(n: int) -> None:
                self.stats.bytes_out += n

            idle = await relay_sockets(
                connection, upstream, limits=self.limits, on_in=on_in, on_out=on_out, tap=self.tap
            )
            if idle:
                self.stats.idle_closed += 1
        finally:
            self.stats.active -= 1
