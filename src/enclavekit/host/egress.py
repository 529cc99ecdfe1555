"""The egress proxy: lets an enclave reach an allowlisted set of hosts, with TLS ending inside the enclave.

An enclave has no network of its own. It opens an HTTP ``CONNECT host:port`` tunnel through this proxy on
the host (over vsock on Nitro; TCP or a Unix socket in simulation) and runs TLS through it, so the host
relays only ciphertext and cannot read or alter what the enclave sends to, say, Braze. The proxy allows
only ``CONNECT`` to the listed ``host:port`` pairs, with bounded request heads and timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from enclavekit.host.relay import RelayLimits, RelayStats, close_quietly, splice

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


@dataclass
class EgressProxy:
    """An HTTP CONNECT proxy restricted to ``allowlist`` (pairs of lower-case host and port)."""

    allowlist: frozenset[tuple[str, int]]
    limits: RelayLimits = field(default_factory=RelayLimits)
    head_timeout: float = 10.0
    stats: RelayStats = field(default_factory=RelayStats)
    _server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    async def start_unix(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path, limit=MAX_HEAD)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except (asyncio.LimitOverrunError, ValueError):
            writer.write(_response("431 Request Header Fields Too Large"))
            await close_quietly(writer)
            return
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            await close_quietly(writer)
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            writer.write(_response("400 Bad Request"))
            await close_quietly(writer)
            return
        method, target, _ = parts
        if method != "CONNECT":
            writer.write(_response("405 Method Not Allowed"))
            await close_quietly(writer)
            return
        host, _, port = target.rpartition(":")
        host = host.strip("[]").lower()
        if not port.isdigit() or (host, int(port)) not in self.allowlist:
            logger.warning("egress: refused CONNECT to %s", target)
            self.stats.refused += 1
            writer.write(_response("403 Forbidden"))
            await close_quietly(writer)
            return
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(host, int(port)), self.limits.connect_timeout)
        except (TimeoutError, OSError):
            self.stats.upstream_failures += 1
            writer.write(_response("502 Bad Gateway"))
            await close_quietly(writer)
            return
        self.stats.accepted += 1
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()

        def count_in(chunk: bytes) -> None:
            self.stats.bytes_in += len(chunk)

        def count_out(chunk: bytes) -> None:
            self.stats.bytes_out += len(chunk)

        self.stats.active += 1
        try:
            await splice((reader, writer), upstream, limits=self.limits, on_in=count_in, on_out=count_out)
        finally:
            self.stats.active -= 1
