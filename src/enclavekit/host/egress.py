"""The egress proxy: lets an enclave reach an allowlisted set of hosts, with TLS ending inside the enclave.

An enclave has no network of its own. It opens an HTTP ``CONNECT host:port`` tunnel through this proxy on
the host (over vsock on Nitro; TCP or a Unix socket in simulation) and runs TLS through it, so the host
relays only ciphertext and cannot read or alter what the enclave sends to, say, Braze. The proxy allows
only ``CONNECT`` to the listed ``host:port`` pairs, with a bounded request head and a deadline for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from enclavekit.errors import InfrastructureError
from enclavekit.host.relay import SocketServer, relay_sockets
from enclavekit.rpc.address import Address, TcpAddress, parse_address
from enclavekit.rpc.transport import connect_socket

__all__ = ["EgressProxy", "parse_allowlist"]

logger = logging.getLogger(__name__)

MAX_HEAD = 8 * 1024


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
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(connection, _response(status))
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
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._answer_and_close(connection, "400 Bad Request")
            return
        method, target, _ = parts
        if method != "CONNECT":
            await self._answer_and_close(connection, "405 Method Not Allowed")
            return
        host, _, port = target.rpartition(":")
        host = host.strip("[]").lower()
        if not port.isdigit() or (host, int(port)) not in self.allowlist:
            logger.warning("egress: refused CONNECT to %s", target)
            self.stats.refused += 1
            await self._answer_and_close(connection, "403 Forbidden")
            return
        try:
            upstream = await connect_socket(TcpAddress(host, int(port)), timeout=self.limits.connect_timeout)
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
