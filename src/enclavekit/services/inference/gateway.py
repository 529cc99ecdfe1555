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
import collections
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from enclavekit.channel.wire import HEADER_SIZE, MAX_HANDSHAKE_SIZE, MAX_RECORD_LIMIT, MessageType
from enclavekit.rpc.transport import connect_socket
from enclavekit.services.inference.protections import CircuitBreaker, ProtectionSettings, TokenBucket

__all__ = ["Gateway", "GatewayMetrics"]

logger = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">BBI")
_LIMIT: Final = MAX_RECORD_LIMIT + 64
_READ_SIZE: Final = 64 * 1024


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


class _Malformed(Exception):
    pass


@dataclass
class Gateway:
    """Forward connections to ``upstream`` (the enclave's socket, or a relay) under the protections of ``settings``."""

    upstream: str
    settings: ProtectionSettings = field(default_factory=ProtectionSettings)
    clock: Callable[[], float] = time.monotonic
    tap: Callable[[str, bytes], None] | None = None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    bucket: TokenBucket = field(init=False)
    breaker: CircuitBreaker = field(init=False)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _slot_waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    _links: set[_Link] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _read_buffer: memoryview = field(default_factory=lambda: memoryview(bytearray(_READ_SIZE)))
    """Where every socket of the gateway reads into: one at a time, each read copied out at once (``_Side``)."""
    _exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.settings.rate, self.settings.burst)
        self.breaker = CircuitBreaker.from_settings(self.settings)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Link(self).client, host, port)
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
        for link in list(self._links):
            link.close(ok=None)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._exits.aclose()

    # --- one connection ---------------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit_at_once(self) -> bool:
        """Admit a request without waiting when a slot and a token are free (the common case): True; False when it
        must wait (:meth:`_admit`; nothing was taken); :class:`_Refused` when the breaker refuses it."""
        if self.metrics.in_flight >= self.settings.max_in_flight or self._slot_waiters:
            return False
        now = self.clock()
        if not self.bucket.take(now):
            return False
        if not self.breaker.allow(now):
            self.metrics.breaker_rejected += 1
            raise _Refused("circuit open")
        self.metrics.in_flight += 1
        self.metrics.requests += 1
        return True

    async def _admit(self) -> None:
        """Wait for a token and a slot (at most ``max_wait``), or raise :class:`_Refused`."""
        deadline = self.clock() + self.settings.max_wait
        while not self.bucket.take(self.clock()):
            wait = self.bucket.wait_time(self.clock())
            if self.clock() + wait > deadline:
                self.metrics.rate_limited += 1
                raise _Refused("rate limited")
            await asyncio.sleep(wait)
        while self.metrics.in_flight >= self.settings.max_in_flight:
            remaining = deadline - self.clock()
            if remaining <= 0:
                self.metrics.over_capacity += 1
                raise _Refused("too many requests in flight")
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, remaining)
            finally:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
        if not self.breaker.allow(self.clock()):
            self.metrics.breaker_rejected += 1
            raise _Refused("circuit open")
        self.metrics.in_flight += 1
        self.metrics.requests += 1

    def _release(self, *, ok: bool | None, started: float) -> None:
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
        self.metrics.in_flight -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


class _Side(asyncio.BufferedProtocol):
    """One socket of a link (the client's or the enclave's): hands what happens on it to the link.

    Reads go (``recv_into``) to the gateway's one read buffer, not to a fresh 256 KiB bytes object per read (which
    cost more than the rest of the forwarding); the link copies what arrived out of it before the next read."""

    __slots__ = ("_read", "link", "transport")

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self._read = link.read_buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.link.connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        self.link.received(self, self._read[:nbytes])

    def eof_received(self) -> bool:
        self.link.ended(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.ended(self)

    def pause_writing(self) -> None:
        self.link.backpressure(self, paused=True)

    def resume_writing(self) -> None:
        self.link.backpressure(self, paused=False)


class _Link:
    """One client connection and its own connection to the enclave.

    Forwarding runs in the sockets' callbacks: each whole message that arrives is checked (its 6-byte header),
    counted and written on to the other side at once — no task per direction, no await per message. Only a
    request that must wait for a token or a slot goes through a task (:meth:`Gateway._admit`), with the client's
    reading paused meanwhile; the answer deadline is a timer, not a watchdog task.
    """

    __slots__ = (
        "_admitting",
        "_blocked",
        "_closed",
        "_from_client",
        "_from_enclave",
        "_gateway",
        "_held",
        "_started",
        "_timer",
        "client",
        "enclave",
        "read_buffer",
    )

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.read_buffer = gateway._read_buffer
        self.client = _Side(self)
        self.enclave = _Side(self)
        self._from_client = bytearray()
        self._from_enclave = bytearray()
        self._started: float | None = None
        """When the request outstanding on this connection was admitted (None: none is)."""
        self._timer: asyncio.TimerHandle | None = None
        self._admitting = False
        self._blocked = True
        """Whether the client's reading is paused for the link's own reasons (connecting, admitting)."""
        self._held = False
        """Whether the client's reading is paused because the enclave's socket does not take more yet."""
        self._closed = False

    # --- events ------------------------------------------------------------------------------------------------

    def connected(self, side: _Side) -> None:
        if side is self.enclave:
            return
        gateway = self._gateway
        gateway.metrics.connections += 1
        gateway.metrics.active += 1
        gateway._links.add(self)
        assert self.client.transport is not None
        if gateway.breaker.is_open(gateway.clock()):
            gateway.metrics.breaker_rejected += 1
            self.close(ok=None)
            return
        self.client.transport.pause_reading()  # until the enclave link is up
        gateway._spawn(self._connect())

    async def _connect(self) -> None:
        gateway = self._gateway
        try:
            sock = await connect_socket(gateway.upstream, timeout=5.0)
            await asyncio.get_running_loop().create_connection(lambda: self.enclave, sock=sock)
        except Exception as error:
            logger.warning("gateway: the enclave link is down (%s)", error)
            gateway.breaker.record(gateway.clock(), ok=False)
            gateway.metrics.link_failures += 1
            self.close(ok=None)
            return
        if self._closed:  # the client left meanwhile
            assert self.enclave.transport is not None
            self.enclave.transport.close()
            return
        self._unblock()

    def received(self, side: _Side, data: bytes | memoryview) -> None:
        if self._closed:
            return
        try:
            if side is self.client:
                self._from_client += data
                self._forward_requests()
            else:
                self._from_enclave += data
                self._forward_answers()
        except _Malformed as error:
            self._gateway.metrics.malformed += 1
            logger.info("gateway: closing a connection: %s", error)
            self.close(ok=None if side is self.client else False)
        except _Refused as error:
            logger.info("gateway: closing a connection: %s", error)
            self.close(ok=False)

    def ended(self, side: _Side) -> None:
        """A side closed or failed: the request outstanding, if any, is the link's failure unless the client left."""
        self.close(ok=None if side is self.client else False)

    def backpressure(self, side: _Side, *, paused: bool) -> None:
        """The other side reads only while this side's socket takes what is written to it."""
        other = self.enclave if side is self.client else self.client
        if other is self.client:
            self._held = paused
        if other.transport is None or other.transport.is_closing():
            return
        if paused:
            other.transport.pause_reading()
        elif other is self.enclave or not self._blocked:
            other.transport.resume_reading()

    # --- forwarding --------------------------------------------------------------------------------------------

    def _forward_requests(self) -> None:
        gateway = self._gateway
        buffer = self._from_client
        enclave = self.enclave.transport
        assert enclave is not None
        while not self._closed and not self._admitting:
            message = _next_message(buffer, admit=self._started is None)
            if message is None:
                return
            if message is _NEEDS_ADMISSION:
                if not gateway._admit_at_once():
                    self._wait_for_admission()
                    return
                self._start()
                continue
            assert isinstance(message, bytes)
            gateway.metrics.bytes_in += len(message)
            _pass(gateway, "in", message, enclave)

    def _forward_answers(self) -> None:
        gateway = self._gateway
        buffer = self._from_enclave
        client = self.client.transport
        assert client is not None
        while not self._closed:
            message = _next_message(buffer, admit=False)
            if message is None:
                return
            assert isinstance(message, bytes)
            gateway.metrics.bytes_out += len(message)
            _pass(gateway, "out", message, client)
            if message[1] == MessageType.DATA and self._started is not None:
                started, self._started = self._started, None
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                gateway._release(ok=True, started=started)

    def _start(self) -> None:
        self._started = self._gateway.clock()
        self._timer = asyncio.get_running_loop().call_later(self._gateway.settings.response_timeout, self._late)

    def _late(self) -> None:
        self._timer = None
        logger.info("gateway: closing a connection: the enclave did not answer in time")
        self.close(ok=False)

    def _wait_for_admission(self) -> None:
        self._admitting = True
        self._block()
        self._gateway._spawn(self._admit())

    async def _admit(self) -> None:
        try:
            await self._gateway._admit()
        except _Refused as error:
            logger.info("gateway: closing a connection: %s", error)
            self._admitting = False
            self.close(ok=False)
            return
        except BaseException:
            self._admitting = False
            self.close(ok=None)
            raise
        self._admitting = False
        if self._closed:  # the client left while it waited: give the slot back
            self._gateway._release(ok=None, started=self._gateway.clock())
            return
        self._start()
        self.received(self.client, b"")
        self._unblock()

    def _block(self) -> None:
        self._blocked = True
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.pause_reading()

    def _unblock(self) -> None:
        self._blocked = False
        if self._closed or self._held or self.client.transport is None or self.client.transport.is_closing():
            return
        self.client.transport.resume_reading()

    def close(self, *, ok: bool | None) -> None:
        """Close both sides once; a request outstanding is released as ``ok`` (see :meth:`Gateway._release`)."""
        if self._closed:
            return
        self._closed = True
        gateway = self._gateway
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._started is not None:
            started, self._started = self._started, None
            gateway._release(ok=ok, started=started)
        for side in (self.client, self.enclave):
            if side.transport is not None:
                side.transport.close()
        gateway._links.discard(self)
        gateway.metrics.active -= 1


def _pass(gateway: Gateway, direction: str, message: bytes, to: asyncio.Transport) -> None:
    """Show ``message``'s body to the gateway's tap (tests: what the host sees), then write it on."""
    if gateway.tap is not None:
        gateway.tap(direction, message[HEADER_SIZE:])
    to.write(message)


_NEEDS_ADMISSION: Final = object()
"""What :func:`_next_message` returns for a whole DATA message that starts a request: admit it, then ask again."""


def _next_message(buffer: bytearray, *, admit: bool) -> bytes | object | None:
    """The next whole message off the front of ``buffer`` (header included), None until it has all arrived.

    A length over the limit of its type is :class:`_Malformed` from the header alone. With ``admit``, a whole DATA
    message (a client's request on a connection with none outstanding) is left in place and
    :data:`_NEEDS_ADMISSION` returned instead.
    """
    if len(buffer) < HEADER_SIZE:
        return None
    _, kind, length = _HEADER.unpack_from(buffer)
    limit = _LIMIT if kind >= MessageType.DATA else MAX_HANDSHAKE_SIZE
    if length > limit:
        raise _Malformed(f"a message of {length} bytes")
    end = HEADER_SIZE + length
    if len(buffer) < end:
        return None
    if admit and kind == MessageType.DATA:
        return _NEEDS_ADMISSION
    message = bytes(buffer[:end])
    del buffer[:end]
    return message
