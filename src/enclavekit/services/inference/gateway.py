"""The inference gateway: the untrusted host's front door to the inference enclave (through its relay).

It forwards the attested session's bytes both ways and reads only the 6-byte cleartext headers of the channel's
messages (type and length — never a key, never plaintext). A client's ``DATA`` record on a connection with
nothing outstanding starts a request; the enclave's next ``DATA`` record answers it. On that it enforces, each
configurable (:class:`~enclavekit.services.inference.protections.ProtectionSettings`): a token bucket on
requests, a bound on requests in flight over all connections, and a circuit breaker on the enclave link (an
unreachable upstream, a connection the enclave side drops with a request outstanding, or a request unanswered
within ``response_timeout`` counts as a failure). The host cannot answer inside the encrypted session, so a
request that waits longer than ``max_wait`` for a token or a slot, or meets an open breaker, has its connection
closed (the client sees the connection drop and may retry). Metrics: :class:`GatewayMetrics` (Prometheus
text at ``/metrics`` of the ``--metrics-port``, served by the host kit's runner).

Clients that pipeline several calls on one connection are counted as one request in flight per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from enclavekit.channel.wire import HEADER_SIZE, MAX_HANDSHAKE_SIZE, MAX_RECORD_LIMIT, MessageType
from enclavekit.rpc.transport import connect_socket
from enclavekit.services.inference.protections import CircuitBreaker, ProtectionSettings, TokenBucket

__all__ = ["Gateway", "GatewayMetrics"]

logger = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">BBI")
_LIMIT: Final = MAX_RECORD_LIMIT + 64
_COPY: Final = 256 * 1024


@dataclass(slots=True)
class GatewayMetrics:
    connections: int = 0
    active: int = 0
    requests: int = 0
    answered: int = 0
    in_flight: int = 0
    rate_limited: int = 0
    over_capacity: int = 0
    breaker_rejected: int = 0
    link_failures: int = 0
    malformed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latency_seconds_sum: float = 0.0

    def prometheus(self, breaker_state: str, breaker_opened: int) -> str:
        lines = []
        for name in (
            "connections",
            "requests",
            "answered",
            "rate_limited",
            "over_capacity",
            "breaker_rejected",
            "link_failures",
            "malformed",
            "bytes_in",
            "bytes_out",
        ):
            lines.append(f"enclavekit_inference_gateway_{name}_total {getattr(self, name)}")
        lines.append(f"enclavekit_inference_gateway_active_connections {self.active}")
        lines.append(f"enclavekit_inference_gateway_in_flight {self.in_flight}")
        lines.append(f"enclavekit_inference_gateway_latency_seconds_sum {self.latency_seconds_sum:.6f}")
        lines.append(f"enclavekit_inference_gateway_breaker_open {1 if breaker_state != 'closed' else 0}")
        lines.append(f"enclavekit_inference_gateway_breaker_opened_total {breaker_opened}")
        return "\n".join(lines) + "\n"


class _Refused(Exception):
    pass


@dataclass
class Gateway:
    """Forward connections to ``upstream`` (the relay) under the protections of ``settings``."""

    upstream: str
    settings: ProtectionSettings = field(default_factory=ProtectionSettings)
    clock: Callable[[], float] = time.monotonic
    tap: Callable[[str, bytes], None] | None = None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    bucket: TokenBucket = field(init=False)
    breaker: CircuitBreaker = field(init=False)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _slot_freed: asyncio.Condition | None = None
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.settings.rate, self.settings.burst)
        self.breaker = CircuitBreaker.from_settings(self.settings)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._slot_freed = asyncio.Condition()
        server = await asyncio.start_server(self._handle, host, port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def start_metrics(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """``GET /metrics`` in the Prometheus text format, served by the host kit's runner (no body accepted)."""
        from enclavekit.hostkit.body_limit import BodyLimit
        from enclavekit.hostkit.server import running

        server = await self._exits.enter_async_context(
            running(BodyLimit(self._metrics_app, limit=0), host=host, port=port, lifespan="off")
        )
        return server.host, server.port

    async def _metrics_app(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        ok = scope["method"] in ("GET", "HEAD") and scope["path"] == "/metrics"
        body = (
            self.metrics.prometheus(self.breaker.state, self.breaker.times_opened) if ok else "not found\n"
        ).encode()
        headers = [(b"content-type", b"text/plain; version=0.0.4"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200 if ok else 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        await self._exits.aclose()

    # --- one connection ---------------------------------------------------------------------------------------

    async def _admit(self) -> None:
        """Wait for a token and a slot (at most ``max_wait``), or raise :class:`_Refused`."""
        deadline = self.clock() + self.settings.max_wait
        while not self.bucket.take(self.clock()):
            wait = self.bucket.wait_time(self.clock())
            if self.clock() + wait > deadline:
                self.metrics.rate_limited += 1
                raise _Refused("rate limited")
            await asyncio.sleep(wait)
        assert self._slot_freed is not None
        async with self._slot_freed:
            while self.metrics.in_flight >= self.settings.max_in_flight:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    self.metrics.over_capacity += 1
                    raise _Refused("too many requests in flight")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), remaining)
            if not self.breaker.allow(self.clock()):
                self.metrics.breaker_rejected += 1
                raise _Refused("circuit open")
            self.metrics.in_flight += 1
            self.metrics.requests += 1

    async def _release(self, *, ok: bool | None, started: float) -> None:
        """``ok`` None: the client went away first — neither a success nor the enclave link's failure (a client
        that hangs up must not be able to open the breaker for everyone)."""
        if ok is not None:
            self.breaker.record(self.clock(), ok=ok)
        elif self.breaker.state == "half_open":
            self.breaker.trial_running = False
        if ok:
            self.metrics.answered += 1
            self.metrics.latency_seconds_sum += self.clock() - started
        elif ok is False:
            self.metrics.link_failures += 1
        assert self._slot_freed is not None
        async with self._slot_freed:
            self.metrics.in_flight -= 1
            self._slot_freed.notify()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.metrics.connections += 1
        self.metrics.active += 1
        if self.breaker.is_open(self.clock()):
            self.metrics.breaker_rejected += 1
            writer.close()
            self.metrics.active -= 1
            return
        try:
            sock = await connect_socket(self.upstream, timeout=5.0)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except Exception as error:
            logger.warning("gateway: the enclave link is down (%s)", error)
            self.breaker.record(self.clock(), ok=False)
            self.metrics.link_failures += 1
            self.metrics.active -= 1
            writer.close()
            return
        pending: list[float] = []  # start time of the request outstanding on this connection, if any
        answered = asyncio.Event()

        async def client_to_enclave() -> None:
            while True:
                header, body = await _read_message(reader)
                if header is None:
                    return
                if header[1] == MessageType.DATA and not pending:
                    await self._admit()
                    pending.append(self.clock())
                    answered.clear()
                self.metrics.bytes_in += len(body) + HEADER_SIZE
                if self.tap is not None:
                    self.tap("in", body)
                up_writer.write(_HEADER.pack(*header) + body)
                await up_writer.drain()

        async def enclave_to_client() -> None:
            while True:
                header, body = await _read_message(up_reader)
                if header is None:
                    return
                self.metrics.bytes_out += len(body) + HEADER_SIZE
                if self.tap is not None:
                    self.tap("out", body)
                writer.write(_HEADER.pack(*header) + body)
                await writer.drain()
                if header[1] == MessageType.DATA and pending:
                    await self._release(ok=True, started=pending.pop())
                    answered.set()

        async def watchdog() -> None:
            while True:
                if pending:
                    started = pending[0]
                    remaining = started + self.settings.response_timeout - self.clock()
                    if remaining <= 0:
                        raise _Refused("the enclave did not answer in time")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(answered.wait(), remaining)
                else:
                    await asyncio.sleep(min(1.0, self.settings.response_timeout))

        tasks = [asyncio.create_task(c()) for c in (client_to_enclave, enclave_to_client, watchdog)]
        client_left = False
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            client_left = tasks[0] in done and not isinstance(tasks[0].exception(), _Refused)
            for task in done:
                failure = task.exception()
                if isinstance(failure, _Refused):
                    logger.info("gateway: closing a connection: %s", failure)
                elif isinstance(failure, _Malformed):
                    self.metrics.malformed += 1
                elif failure is not None and not isinstance(failure, ConnectionError | asyncio.IncompleteReadError):
                    logger.warning("gateway: connection failed: %r", failure)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if pending:  # the request never got its answer: the link failed it, unless the client left first
                await self._release(ok=None if client_left else False, started=pending.pop())
            for w in (writer, up_writer):
                w.close()
            self.metrics.active -= 1


class _Malformed(Exception):
    pass


async def _read_message(reader: asyncio.StreamReader) -> tuple[tuple[int, int, int] | None, bytes]:
    try:
        raw = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise _Malformed("a header was cut") from exc
        return None, b""
    version, kind, length = _HEADER.unpack(raw)
    limit = _LIMIT if kind >= MessageType.DATA else MAX_HANDSHAKE_SIZE
    if length > limit:
        raise _Malformed(f"a message of {length} bytes")
    body = await reader.readexactly(length)
    return (version, kind, length), body
