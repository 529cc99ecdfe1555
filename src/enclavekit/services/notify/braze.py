"""Delivery to Braze from inside the enclave: ``POST /messages/send`` through the host's CONNECT proxy.

The enclave has no network of its own: every connection to Braze is an HTTP ``CONNECT`` tunnel through the
host's egress proxy (:mod:`enclavekit.host.egress`), and TLS to Braze runs inside the tunnel, so the host
relays only ciphertext. For the local fake Braze over plain HTTP on loopback the base URL is ``http://`` and
the request still goes through the proxy's tunnel (never as a forward-proxy request the host could read).

Each request names up to 50 devices by alias (``alias_label`` ``push_id``, ``alias_name`` the plaintext push
ID) and carries the reference payload ``{topic, encryptedMessageBase64, messageKind}`` (plus ``messageId``, so
a device can drop a repeat) in ``apple_push`` and ``android_push``. The HTTP status is checked: 2xx is
delivered; 429 and 5xx (and timeouts) are retried with exponential backoff, honouring ``Retry-After``; any
other 4xx is a permanent rejection. Every request has an ``Idempotency-Key`` derived from the message and its
recipients, identical when the same delivery is retried by any enclave of the track.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from enclavekit.backoff import exponential_backoff
from enclavekit.rpc import parse_address
from enclavekit.rpc.address import TcpAddress, UnixAddress
from enclavekit.services.notify.wire import BrazeConfig

__all__ = ["BrazeProvider", "HttpResponse", "SendResult", "TunnelHttp", "TunnelRefused", "braze_payload"]

logger = logging.getLogger(__name__)

_MAX_RETRY_AFTER = 5.0
_MAX_HEAD = 16 * 1024
_MAX_BODY = 1024 * 1024


class TunnelRefused(ConnectionError):
    """The egress proxy did not open the tunnel (not allowlisted, upstream down)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class TunnelHttp:
    """A small HTTP/1.1 keep-alive client for one origin; every connection is a CONNECT tunnel through the
    egress proxy (or direct when ``proxy`` is None), with TLS inside the tunnel for ``https``.

    Why not httpx: on the enclave's hot path its connection pool and per-request machinery cost more CPU than
    everything else the enclave does for a batch (measured with cProfile); one origin and one request shape
    need far less. Responses are bounded (16 KiB of head, 1 MiB of body).
    """

    def __init__(
        self,
        base_url: str,
        proxy: str | None,
        *,
        timeout: float,
        max_connections: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("the provider URL must be http(s)://host[:port][/path]")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.base_path = url.path.rstrip("/")
        self.authority = url.netloc
        self.timeout = timeout
        self._proxy = parse_address(proxy) if proxy else None
        if self._proxy is not None and not isinstance(self._proxy, TcpAddress | UnixAddress):
            raise ValueError("the egress proxy must be tcp://HOST:PORT or unix:///PATH here")
        self._ssl = ssl_context or (ssl.create_default_context() if self.tls else None)
        self._idle: list[_Connection] = []
        self._max = max_connections
        self._slots: asyncio.Semaphore | None = None

    async def _open(self) -> _Connection:
        proxy = self._proxy
        if isinstance(proxy, UnixAddress):
            reader, writer = await asyncio.open_unix_connection(str(proxy.path))
        elif isinstance(proxy, TcpAddress):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        raw = writer.get_extra_info("socket")
        if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if proxy is not None:
                target = f"{self.host}:{self.port}"
                writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                parts = head.split(b"\r\n", 1)[0].split(b" ")
                if len(parts) < 2 or parts[1] != b"200":
                    raise TunnelRefused(f"the egress proxy refused CONNECT {target}: {head[:40]!r}")
            if self._ssl is not None:
                await writer.start_tls(self._ssl, server_hostname=self.host)
        except BaseException:
            writer.close()
            raise
        return _Connection(reader, writer)

    async def request(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        async with asyncio.timeout(self.timeout), self._slots:
            for _ in range(2):
                reused = bool(self._idle)
                connection = self._idle.pop() if reused else await self._open()
                try:
                    response = await self._exchange(connection, method, path, body, headers)
                except asyncio.IncompleteReadError as exc:
                    connection.writer.close()
                    if reused and not exc.partial:  # the server had closed this idle connection: nothing was sent
                        continue
                    raise
                except BaseException:
                    connection.writer.close()
                    raise
                if response.headers.get("connection", "").lower() == "close":
                    connection.writer.close()
                else:
                    self._idle.append(connection)
                return response
        raise ConnectionError("the provider closed every connection")  # pragma: no cover

    async def _exchange(
        self, connection: _Connection, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> HttpResponse:
        lines = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self.authority}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        connection.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await connection.writer.drain()
        reader = connection.reader
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError("malformed HTTP status line")
        received: dict[str, str] = {}
        size = len(status_line)
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            size += len(line)
            if size > _MAX_HEAD:
                raise ValueError("HTTP response head too large")
            name, _, value = line.decode("latin-1").partition(":")
            received[name.strip().lower()] = value.strip()
        if received.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while (length := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)) > 0:
                total += length
                if total > _MAX_BODY:
                    raise ValueError("HTTP response body too large")
                chunks.append(await reader.readexactly(length))
                await reader.readexactly(2)
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            content = b"".join(chunks)
        else:
            length = int(received.get("content-length", "0"))
            if length > _MAX_BODY:
                raise ValueError("HTTP response body too large")
            content = await reader.readexactly(length)
        return HttpResponse(int(parts[1]), received, content)

    async def close(self) -> None:
        while self._idle:
            connection = self._idle.pop()
            connection.writer.close()
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()


def braze_payload(aliases: Sequence[str], extra: Mapping[str, str], *, alias_label: str = "push_id") -> dict[str, Any]:
    """The body of ``POST /messages/send`` for these devices."""
    return {
        "user_aliases": [{"alias_name": alias, "alias_label": alias_label} for alias in aliases],
        "messages": {
            "apple_push": {"alert": "New message", "mutable_content": True, "extra": dict(extra)},
            "android_push": {"alert": "New message", "title": "New message", "extra": dict(extra)},
        },
    }


@dataclass(frozen=True, slots=True)
class SendResult:
    status: Literal["delivered", "rejected", "retry"]
    attempts: int
    detail: str | None = None


class BrazeProvider:
    """Sends to Braze with retries. One instance per initialised enclave; the API key stays in it."""

    def __init__(self, config: BrazeConfig, *, http: TunnelHttp | None = None) -> None:
        self.config = config
        self._http = http or TunnelHttp(config.base_url, config.egress_proxy, timeout=config.timeout)
        self._headers = {"Authorization": f"Bearer {config.api_key}", "Content-Type": "application/json"}
        self.requests = 0

    async def close(self) -> None:
        await self._http.close()

    async def send(self, aliases: Sequence[str], extra: Mapping[str, str], *, idempotency_key: str) -> SendResult:
        body = json.dumps(braze_payload(aliases, extra, alias_label=self.config.alias_label)).encode()
        headers = {**self._headers, "Idempotency-Key": idempotency_key}
        detail = "no attempt"
        for attempt in range(1, self.config.max_attempts + 1):
            retry_after: float | None = None
            try:
                self.requests += 1
                answer = await self._http.request("POST", "/messages/send", body, headers)
            except (OSError, EOFError, TimeoutError, ValueError, ssl.SSLError, asyncio.LimitOverrunError) as exc:
                detail = type(exc).__name__
            else:
                if 200 <= answer.status < 300:
                    return SendResult("delivered", attempt)
                detail = f"HTTP {answer.status}"
                if answer.status != 429 and answer.status < 500:
                    return SendResult("rejected", attempt, detail)
                with contextlib.suppress(ValueError):
                    retry_after = min(_MAX_RETRY_AFTER, float(answer.headers.get("retry-after", "")))
            if attempt < self.config.max_attempts:
                delay = exponential_backoff(attempt, base=self.config.backoff, cap=math.inf, jitter=0.5)
                await asyncio.sleep(retry_after if retry_after is not None else delay)
        logger.info("braze: giving up after %d attempts (%s)", self.config.max_attempts, detail)
        return SendResult("retry", self.config.max_attempts, detail)
