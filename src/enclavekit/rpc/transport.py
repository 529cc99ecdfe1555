"""Sockets and message streams: the one place that knows TCP from Unix from vsock.

:func:`open_connection` and :func:`listen` make a socket of the address's family, then hand it to asyncio
(``sock=``), so the code above the socket is identical for the three. A :class:`MessageStream` is what the RPC
layer runs on: whole messages in and out, with read limits and timeouts. :class:`FramedStream` delimits RPC
frames on a plain connection; ``enclavekit.rpc.attested.ChannelStream`` carries each one in a channel record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from enclavekit.channel.protocols import AttestedPeer
from enclavekit.errors import Error
from enclavekit.rpc.address import Address, TcpAddress, UnixAddress, VsockAddress, parse_address
from enclavekit.rpc.errors import (
    ConnectionClosed,
    ConnectionFailed,
    FrameTruncated,
    IdleTimeout,
    ReadTimeout,
)
from enclavekit.rpc.frame import DEFAULT_MAX_FRAME_SIZE, FRAME_HEADER_SIZE, frame_length

__all__ = [
    "FramedStream",
    "MessageStream",
    "bound_address",
    "close_writer",
    "connect_socket",
    "listen",
    "listening_socket",
    "open_connection",
    "read_message",
    "write_all",
]

logger = logging.getLogger(__name__)

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class MessageStream(Protocol):
    """Whole messages over one connection. ``send`` may be called from several tasks at once."""

    @property
    def max_message_size(self) -> int: ...

    @property
    def peer(self) -> AttestedPeer | None:
        """The peer's verified attestation, when the stream is attested and the peer attested itself."""
        ...

    async def send(self, message: bytes) -> None: ...

    async def receive(self, *, idle_timeout: float | None = None) -> bytes:
        """The next message. Raises :class:`ConnectionClosed` when the peer closed cleanly, :class:`IdleTimeout`
        when nothing started arriving within ``idle_timeout``, :class:`ReadTimeout` when a started message did
        not complete within the stream's read timeout, and a Rejected error for bytes that are not a message."""
        ...

    async def close(self) -> None: ...


async def read_message(
    reader: asyncio.StreamReader,
    *,
    header_size: int,
    body_length: Callable[[bytes], int],
    idle_timeout: float | None,
    read_timeout: float | None,
    truncated: Callable[[str], Error],
) -> bytes | None:
    """Read one header-delimited message; None at a clean end of stream (before its first byte).

    ``body_length`` parses (and limit-checks) the header before the body is read, so an oversized length is
    refused without reading or allocating. Once the first byte arrived, the whole message must arrive within
    ``read_timeout``: trickling bytes (slowloris) does not extend it.
    """
    try:
        async with asyncio.timeout(idle_timeout):
            first = await reader.readexactly(1)
    except asyncio.IncompleteReadError:
        return None
    except TimeoutError:
        raise IdleTimeout(f"nothing arrived for {idle_timeout} s") from None
    try:
        async with asyncio.timeout(read_timeout):
            header = first + await reader.readexactly(header_size - 1)
            body = await reader.readexactly(body_length(header))
    except asyncio.IncompleteReadError as exc:
        raise truncated(f"the stream ended {len(exc.partial)} byte(s) short inside a message") from None
    except TimeoutError:
        raise ReadTimeout(f"a message did not complete within {read_timeout} s") from None
    return header + body


async def write_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write and drain; a dead connection becomes :class:`ConnectionClosed`."""
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionError, OSError, RuntimeError) as exc:
        raise ConnectionClosed(f"the connection is closed ({type(exc).__name__})") from exc


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a connection, ignoring the errors a dead peer causes."""
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


class FramedStream:
    """RPC frames on a plain connection: the frame's own header delimits it. No confidentiality at all."""

    __slots__ = ("_lock", "_max", "_read_timeout", "_reader", "_writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        read_timeout: float | None = 30.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._max = max_frame_size
        self._read_timeout = read_timeout
        self._lock = asyncio.Lock()

    @property
    def max_message_size(self) -> int:
        return self._max

    @property
    def peer(self) -> AttestedPeer | None:
        return None

    async def send(self, message: bytes) -> None:
        async with self._lock:
            await write_all(self._writer, message)

    async def receive(self, *, idle_timeout: float | None = None) -> bytes:
        message = await read_message(
            self._reader,
            header_size=FRAME_HEADER_SIZE,
            body_length=lambda header: frame_length(header, max_frame_size=self._max),
            idle_timeout=idle_timeout,
            read_timeout=self._read_timeout,
            truncated=FrameTruncated,
        )
        if message is None:
            raise ConnectionClosed("the peer closed the connection")
        return message

    async def close(self) -> None:
        await close_writer(self._writer)


# --- sockets ---------------------------------------------------------------------------------------------------


async def _targets(address: Address) -> list[tuple[socket.AddressFamily, int, object]]:
    """(family, protocol, socket address) to try, in order."""
    if isinstance(address, UnixAddress):
        return [(socket.AF_UNIX, 0, address.path)]
    if isinstance(address, VsockAddress):
        return [(address.family, 0, (address.cid, address.port))]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectionFailed(f"cannot resolve {address}: {exc}") from exc
    return [(family, proto, sockaddr) for family, _, proto, _, sockaddr in infos]


def _new_socket(family: socket.AddressFamily, proto: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    if family in (socket.AF_INET, socket.AF_INET6):
        # RPC writes small frames and waits for answers: Nagle's algorithm would hold them for delayed ACKs
        # (40 ms). asyncio only disables it on sockets it created itself, so do it here (accepted sockets
        # inherit the listening socket's protocol, and asyncio then disables it on them too).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def connect_socket(address: str | Address, *, timeout: float = 10.0) -> socket.socket:
    """A connected, non-blocking socket to ``address`` (TCP, Unix or vsock); :class:`ConnectionFailed` if not."""
    address = parse_address(address)
    loop = asyncio.get_running_loop()
    last: BaseException | None = None
    for family, proto, target in await _targets(address):
        try:
            sock = _new_socket(family, proto)
        except OSError as exc:
            last = exc
            continue
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, target)  # type: ignore[arg-type]
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc
        else:
            return sock
    reason = "timed out" if isinstance(last, TimeoutError) else str(last)
    raise ConnectionFailed(f"cannot connect to {address}: {reason}") from last


async def open_connection(
    address: str | Address, *, timeout: float = 10.0, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``address`` (TCP, Unix or vsock); raise :class:`ConnectionFailed` when it cannot."""
    sock = await connect_socket(address, timeout=timeout)
    try:
        return await asyncio.open_connection(sock=sock, limit=limit)
    except OSError as exc:
        sock.close()
        raise ConnectionFailed(f"cannot connect to {address}: {exc}") from exc


def bound_address(address: Address, sock: socket.socket) -> Address:
    """The address ``sock`` is bound to (the real port when port 0 was asked)."""
    name = sock.getsockname()
    if isinstance(address, TcpAddress):
        return TcpAddress(name[0], name[1])
    if isinstance(address, VsockAddress):
        return VsockAddress(name[0], name[1])
    return address


def listening_socket(address: Address, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking socket (a stale Unix socket file is replaced)."""
    if isinstance(address, UnixAddress):
        with contextlib.suppress(FileNotFoundError):
            path = Path(address.path)
            if stat.S_ISSOCK(path.stat().st_mode):
                path.unlink()  # a stale socket from an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address.path
    elif isinstance(address, VsockAddress):
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        target = (address.cid, address.port)
    else:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, proto, _, target = infos[0]
        sock = _new_socket(family, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(target)  # type: ignore[arg-type]
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def listen(
    address: str | Address, handler: ConnectionHandler, *, backlog: int = 128, limit: int = 2**16
) -> tuple[asyncio.Server, Address]:
    """Listen on ``address``; returns the asyncio server and the bound address (port 0 resolved).

    Raises :class:`ConnectionFailed` when the address cannot be bound.
    """
    address = parse_address(address)
    try:
        sock = listening_socket(address, backlog)
    except OSError as exc:
        raise ConnectionFailed(f"cannot listen on {address}: {exc}") from exc
    bound = bound_address(address, sock)
    server = await asyncio.start_server(handler, sock=sock, limit=limit)
    return server, bound
