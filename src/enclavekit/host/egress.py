"""The egress proxy: lets an enclave reach an allowlisted set of hosts, with TLS ending inside the enclave.

An enclave has no network of its own. It opens an HTTP ``CONNECT host:port`` tunnel through this proxy on
the host (over vsock on Nitro; TCP or a Unix socket in simulation) and runs TLS through it, so the host
relays only ciphertext and cannot read or alter what the enclave sends to, say, Braze. The proxy allows
only ``CONNECT`` to the listed ``host:port`` pairs, with a bounded request head and a deadline for it.

Every malformed head is answered (400, 405 or 431) and the connection closed; a head that never ends is cut
off at ``head_timeout``. :func:`parse_connect_head` is the pure parser, fuzzed in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from enclavekit.errors import InfrastructureError
from enclavekit.host.relay import SocketServer, relay_sockets
from enclavekit.rpc.address import Address, TcpAddress, parse_address
from enclavekit.rpc.transport import connect_socket

__all__ = ["BadHead", "EgressProxy", "parse_allowlist", "parse_connect_head"]

logger = logging.getLogger(__name__)

MAX_HEAD = 8 * 1024
_LINGER = 0.5  # seconds to drain a refused request before closing
_LINGER_BYTES = 64 * 1024
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() is true for '¹' and '٣', which int() refuses
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*")


class BadHead(ValueError):
    """A request head the proxy will not serve; ``status`` is the HTTP status line to answer with."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse_connect_head(head: bytes) -> tuple[str, int]:
    """The ``(host, port)`` of a ``CONNECT host:port HTTP/1.x`` head (without its final blank line).

    Strict on purpose (RFC 9112 request line, RFC 9110 authority-form): exactly three fields separated by one
    space, version ``HTTP/1.0`` or ``HTTP/1.1``, a DNS name or bracketed IPv6 literal, a port of ASCII digits
    from 1 to 65535, and header lines of the form ``name: value`` (ignored otherwise). The host is lower-cased
    and unbracketed. Raises :class:`BadHead` (400, 405 or 431), never anything else.
    """
    if len(head) > MAX_HEAD:
        raise BadHead("431 Request Header Fields Too Large", "request head over the limit")
    request_line, *header_lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise BadHead("400 Bad Request", "not an HTTP/1.x request line")
    method, target, _ = parts
    if method != b"CONNECT":
        raise BadHead("405 Method Not Allowed", "only CONNECT is served")
    for line in header_lines:
        if not _HEADER_LINE.fullmatch(line):
            raise BadHead("400 Bad Request", "malformed header line")
    host, colon, port = target.decode("latin-1").rpartition(":")
    if not colon or not _HOST.fullmatch(host) or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise BadHead("400 Bad Request", "CONNECT target is not host:port")
    return host.strip("[]").lower(), int(port)


def parse_allowlist(entries: Iterable[str]) -> frozenset[tuple[str, int]]:
    """``host:port`` entries (``host`` alone means port 443), lower-cased."""
    allowed: set[tuple[str, int]] = set()
    for entry in entries:
        host, _, port = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "443")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"egress allowlist entry {entry!r} is not host[:port]")
        allowed.add((host.lower(), int(port)))
    return frozenset(allowed)


def _response(status: str) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


class _HeadTooLarge(Exception):
    pass


async def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The request head (through the blank line) and whatever arrived after it."""
    loop = asyncio.get_running_loop()
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise _HeadTooLarge
        data = await loop.sock_recv(sock, MAX_HEAD + 1)
        if not data:
            raise ConnectionError("closed before the end of the request head")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise _HeadTooLarge
    return head, rest


@dataclass
class EgressProxy(SocketServer):
    """An HTTP CONNECT proxy restricted to ``allowlist`` (pairs of lower-case host and port)."""

    allowlist: frozenset[tuple[str, int]]
    head_timeout: float = 10.0

    async def start(self, address: Address | str = "tcp://127.0.0.1:0") -> Address:
        """Listen on ``address`` (TCP, Unix or vsock); returns the bound address."""
        return await self.listen(parse_address(address))

    async def _answer_and_close(self, connection: socket.socket, status: str) -> None:
        """Answer, then close gently: closing with unread bytes sends a reset that can destroy the answer before
        the client reads it, so the rest of the request is drained (at most ``_LINGER_BYTES``, ``_LINGER`` s)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, TimeoutError):
            await loop.sock_sendall(connection, _response(status))
            connection.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(_LINGER):
                drained = 0
                while drained < _LINGER_BYTES and (data := await loop.sock_recv(connection, 16 * 1024)):
                    drained += len(data)
        connection.close()

    async def handle(self, connection: socket.socket) -> None:
        try:
            head, rest = await asyncio.wait_for(_read_head(connection), self.head_timeout)
        except _HeadTooLarge:
            await self._answer_and_close(connection, "431 Request Header Fields Too Large")
            return
        except (TimeoutError, ConnectionError, OSError):
            connection.close()
            return
        try:
            host, port = parse_connect_head(head)
        except BadHead as exc:
            logger.info("egress: refused a request head: %s", exc)
            await self._answer_and_close(connection, exc.status)
            return
        if (host, port) not in self.allowlist:
            logger.warning("egress: refused CONNECT to %s:%d", host, port)
            self.stats.refused += 1
            await self._answer_and_close(connection, "403 Forbidden")
            return
        try:
            upstream = await connect_socket(TcpAddress(host, port), timeout=self.limits.connect_timeout)
        except (OSError, InfrastructureError):
            self.stats.upstream_failures += 1
            await self._answer_and_close(connection, "502 Bad Gateway")
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(connection, b"HTTP/1.1 200 Connection Established\r\n\r\n")
            if rest:
                await loop.sock_sendall(upstream, rest)
        except OSError:
            connection.close()
            upstream.close()
            return
        self.stats.accepted += 1
        self.stats.active += 1

        def count_in(n: int) -> None:
            self.stats.bytes_in += n

        def count_out(n: int) -> None:
            self.stats.bytes_out += n

        try:
            await relay_sockets(connection, upstream, limits=self.limits, on_in=count_in, on_out=count_out)
        finally:
            self.stats.active -= 1
