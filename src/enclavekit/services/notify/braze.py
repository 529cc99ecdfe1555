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
import logging
import random
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpcore
import httpx

from enclavekit.rpc import parse_address
from enclavekit.rpc.address import TcpAddress, UnixAddress
from enclavekit.services.notify.wire import BrazeConfig

__all__ = ["BrazeProvider", "SendResult", "braze_payload", "tunnel_transport"]

logger = logging.getLogger(__name__)

_MAX_RETRY_AFTER = 5.0
_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_MAX_HEAD = 8 * 1024


class _TunnelBackend(httpcore.AsyncNetworkBackend):
    """Every TCP connection is a CONNECT tunnel through ``proxy`` (TCP or Unix socket)."""

    def __init__(self, proxy: str) -> None:
        self._proxy = parse_address(proxy)
        if not isinstance(self._proxy, TcpAddress | UnixAddress):
            raise ValueError("the egress proxy must be tcp://HOST:PORT or unix:///PATH here")
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        proxy = self._proxy
        if isinstance(proxy, UnixAddress):
            stream = await self._inner.connect_unix_socket(str(proxy.path), timeout=timeout)
        else:
            assert isinstance(proxy, TcpAddress)
            stream = await self._inner.connect_tcp(proxy.host, proxy.port, timeout=timeout, socket_options=_NODELAY)
        try:
            target = f"{host}:{port}"
            await stream.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode(), timeout=timeout)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.read(_MAX_HEAD, timeout=timeout)
                if not chunk or len(head) > _MAX_HEAD:
                    raise httpcore.ConnectError("the egress proxy closed the tunnel request")
                head += chunk
            status = head.split(b"\r\n", 1)[0].split(b" ")
            if len(status) < 2 or status[1] != b"200":
                raise httpcore.ConnectError(f"the egress proxy refused CONNECT {target}: {head[:64]!r}")
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - httpx never asks for it here
        return await self._inner.connect_unix_socket(path, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def tunnel_transport(proxy: str | None, *, max_connections: int = 32) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go through the CONNECT proxy (or directly when None).

    ``TCP_NODELAY`` matters: h11 writes a request's head and body separately, and with Nagle's algorithm the
    body waits for the peer's delayed ACK (40 ms on Linux) on every request.
    """
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections), socket_options=_NODELAY)
    if proxy is not None:
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            network_backend=_TunnelBackend(proxy),
        )
    return transport


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

    def __init__(self, config: BrazeConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            transport=transport or tunnel_transport(config.egress_proxy),
            timeout=httpx.Timeout(config.timeout),
            headers={"Authorization": f"Bearer {config.api_key}"},
        )
        self.requests = 0

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, aliases: Sequence[str], extra: Mapping[str, str], *, idempotency_key: str) -> SendResult:
        body = braze_payload(aliases, extra, alias_label=self.config.alias_label)
        detail = "no attempt"
        for attempt in range(1, self.config.max_attempts + 1):
            retry_after: float | None = None
            try:
                self.requests += 1
                answer = await self._client.post(
                    "/messages/send", json=body, headers={"Idempotency-Key": idempotency_key}
                )
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}"
            else:
                if 200 <= answer.status_code < 300:
                    return SendResult("delivered", attempt)
                detail = f"HTTP {answer.status_code}"
                if answer.status_code != 429 and answer.status_code < 500:
                    return SendResult("rejected", attempt, detail)
                with contextlib.suppress(ValueError):
                    retry_after = min(_MAX_RETRY_AFTER, float(answer.headers.get("Retry-After", "")))
            if attempt < self.config.max_attempts:
                delay = self.config.backoff * 2 ** (attempt - 1)
                delay = retry_after if retry_after is not None else delay * (0.5 + random.random())  # noqa: S311
                await asyncio.sleep(delay)
        logger.info("braze: giving up after %d attempts (%s)", self.config.max_attempts, detail)
        return SendResult("retry", self.config.max_attempts, detail)
