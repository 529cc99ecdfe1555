"""Sockets: the one place that knows TCP from Unix from vsock.

:func:`connect_socket` and :func:`listening_socket` make a socket of the address's family, which is then handed
to asyncio (``sock=``), so the code above the socket is identical for the three: the RPC layer's
:mod:`enclavekit.rpc.connection`, and :func:`open_connection` / :func:`listen` for plain asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from enclavekit.rpc.address import Address, TcpAddress, UnixAddress, VsockAddress, parse_address
from enclavekit.rpc.errors import ConnectionFailed

__all__ = [
    "bind",
    "bound_address",
    "connect_socket",
    "listen",
    "listening_socket",
    "open_connection",
]

logger = logging.getLogger(__name__)

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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
    sock, bound = bind(address, backlog)
    server = await asyncio.start_server(handler, sock=sock, limit=limit)
    return server, bound


def bind(address: str | Address, backlog: int) -> tuple[socket.socket, Address]:
    """A listening socket on ``address`` and the address it is bound to (port 0 resolved).

    Raises :class:`ConnectionFailed` when the address cannot be bound.
    """
    address = parse_address(address)
    try:
        sock = listening_socket(address, backlog)
    except OSError as exc:
        raise ConnectionFailed(f"cannot listen on {address}: {exc}") from exc
    return sock, bound_address(address, sock)
