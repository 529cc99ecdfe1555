"""The asyncio RPC server: bounded connections and in-flight requests, timeouts against slow peers.

::

    server = RpcServer(router, responder=responder)          # attested; or unsafe_plaintext=True in tests
    bound = await server.start("vsock://any:5000")           # or tcp://127.0.0.1:0, unix:///run/app.sock
    ...
    await server.close()

Each connection runs the handshake (within ``handshake_timeout``), then reads frames; each request runs in its
own task under its deadline. A peer that sends garbage, an oversized length or a tampered record has *its*
connection closed with a specific error code in the log; the server and its other connections carry on. A peer
that trickles bytes is cut off by ``read_timeout`` (per message, not per byte), a silent one by
``idle_timeout``; connections over ``max_connections`` are refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from enclavekit.channel.handshake import Responder
from enclavekit.channel.wire import Alert
from enclavekit.errors import ConfigurationError, Error, Rejected
from enclavekit.rpc.address import Address, UnixAddress, parse_address
from enclavekit.rpc.attested import ChannelStream, Clock, utc_now
from enclavekit.rpc.client import describe_validation_error
from enclavekit.rpc.connection import FramedStream, MessageConnection, MessageStream, serve
from enclavekit.rpc.errors import (
    ConnectionClosed,
    DeadlineExceeded,
    DuplicateRequest,
    FrameUnexpected,
    HandlerFailed,
    IdleTimeout,
    InvalidRequest,
    Overloaded,
    UnknownRoute,
)
from enclavekit.rpc.frame import DEFAULT_MAX_FRAME_SIZE, Cancel, ErrorFrame, Request, Response, decode_frame
from enclavekit.rpc.routes import CallContext, Router

__all__ = ["RpcServer", "ServerLimits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Bounds of a server (times in seconds)."""

    max_connections: int = 256
    max_in_flight: int = 64
    """Requests in flight per connection; more are answered ``rpc_overloaded`` at once."""
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    handshake_timeout: float = 10.0
    read_timeout: float = 10.0
    """A message whose first byte arrived must be complete within this."""
    idle_timeout: float = 300.0
    """A connection with nothing in flight and nothing arriving for this long is closed."""
    default_request_timeout: float = 30.0
    max_request_timeout: float = 300.0
    shutdown_grace: float = 5.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_in_flight < 1:
            raise ConfigurationError("max_connections and max_in_flight must be positive")
        for name in ("handshake_timeout", "read_timeout", "idle_timeout", "default_request_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive")


class RpcServer:
    """Serves a :class:`~enclavekit.rpc.routes.Router` over attested sessions (or, in tests, plaintext)."""

    def __init__(
        self,
        router: Router,
        *,
        responder: Responder | None = None,
        unsafe_plaintext: bool = False,
        limits: ServerLimits | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if (responder is None) != unsafe_plaintext:
            raise ConfigurationError("pass a responder (attested), or unsafe_plaintext=True, not both or neither")
        self.router = router
        self.responder = responder
        self.limits = limits or ServerLimits()
        self.clock = clock
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self._connections: dict[asyncio.Task[object], _Connection | None] = {}
        self._accepting: set[asyncio.Task[None]] = set()
        self._closing = False
        self.connection_errors: Counter[str] = Counter()
        """How many connections were closed for each error code (for metrics and tests)."""

    async def start(self, address: str | Address) -> Address:
        """Listen on ``address``; return the bound address (with the real port when ``:0`` was asked)."""
        address = parse_address(address)
        server, bound = await serve(
            address,
            self._accepted,
            backlog=min(1024, self.limits.max_connections),
            read_timeout=self.limits.read_timeout,
        )
        self._servers.append(server)
        if isinstance(bound, UnixAddress):
            self._unix_paths.append(bound.path)
        logger.info("RPC server listening on %s (%s)", bound, "attested" if self.responder else "PLAINTEXT")
        return bound

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _accepted(self, connection: MessageConnection) -> None:
        task = asyncio.get_running_loop().create_task(self.serve_connection(connection))
        self._accepting.add(task)  # a strong reference until it is in _connections (or refused)
        task.add_done_callback(self._accepting.discard)

    async def serve_connection(self, connection: MessageConnection) -> None:
        """Serve one accepted connection to its end. Never raises, not even when cancelled by :meth:`close`."""
        task = asyncio.current_task()
        try:
            await self._serve_connection(connection, task)
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()
            connection.abort()

    async def _serve_connection(self, connection: MessageConnection, task: asyncio.Task[object] | None) -> None:
        name = connection.peer_name
        if self._closing or task is None or len(self._connections) >= self.limits.max_connections:
            logger.warning("refusing connection %s: %d connections open", name, len(self._connections))
            self.connection_errors[Overloaded.code] += 1
            await self._refuse(connection)
            return
        self._connections[task] = None
        try:
            stream: MessageStream
            if self.responder is not None:
                stream = await ChannelStream.respond(
                    connection, self.responder, timeout=self.limits.handshake_timeout, clock=self.clock
                )
            else:
                stream = FramedStream(connection, max_frame_size=self.limits.max_frame_size)
            session = self._connections[task] = _Connection(self, stream, name)
            await session.run()
        except ConnectionClosed:
            logger.debug("connection %s closed", name)
        except Error as exc:
            self.connection_errors[exc.code] += 1
            logger.info("connection %s closed: %s", name, exc.code)
        except Exception:
            self.connection_errors["unexpected"] += 1
            logger.exception("connection %s failed unexpectedly", name)
        finally:
            self._connections.pop(task, None)
            await connection.close()

    async def _refuse(self, connection: MessageConnection) -> None:
        message = (
            Alert(Overloaded.code).to_bytes()
            if self.responder is not None
            else ErrorFrame.build(0, Overloaded.code, "too many connections").to_bytes()
        )
        with contextlib.suppress(Error):
            connection.write(message)
        await connection.close()

    async def close(self) -> None:
        """Stop listening, let requests in flight finish for ``shutdown_grace`` seconds, then close everything."""
        self._closing = True
        for server in self._servers:
            server.close()
        in_flight = [t for c in self._connections.values() if c is not None for t in c.tasks.values()]
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.limits.shutdown_grace)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                Path(path).unlink()
        self._servers.clear()
        self._unix_paths.clear()

    async def __aenter__(self) -> RpcServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Connection:
    """One session's requests: frames arrive in the connection's callback (this is the stream's sink); each
    request runs in its own task. The connection's task waits in :meth:`run` for its end."""

    __slots__ = ("_ended", "_idle_timer", "_last", "_loop", "name", "server", "stream", "tasks")

    def __init__(self, server: RpcServer, stream: MessageStream, name: str) -> None:
        self.server = server
        self.stream = stream
        self.name = name
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[Error] = self._loop.create_future()
        self._last = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        limits = self.server.limits
        stream = self.stream
        self._idle_timer = self._loop.call_later(limits.idle_timeout, self._check_idle)
        try:
            stream.deliver(self)
            error = await self._ended
            if isinstance(error, Rejected | IdleTimeout):
                # Tell the peer why (best effort: after a refused record the session cannot send any more).
                with contextlib.suppress(Error, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stream.send(ErrorFrame.build(0, error.code, error.message).to_bytes())
            raise error
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            await stream.close()

    def message_received(self, data: bytes) -> None:
        if self._ended.done():
            return
        self._last = self._loop.time()
        frame = decode_frame(data, max_frame_size=self.stream.max_message_size)
        if isinstance(frame, Request):
            self._start(frame)
        elif isinstance(frame, Cancel):
            task = self.tasks.get(frame.id)
            if task is not None:
                task.cancel()
        else:
            raise FrameUnexpected(f"a client sent a {type(frame).__name__.lower()} frame")

    def connection_ended(self, error: Error | None) -> None:
        if not self._ended.done():
            self._ended.set_result(error or ConnectionClosed("the peer closed the connection"))

    def _check_idle(self) -> None:
        """Close a connection with nothing in flight on which nothing arrived for ``idle_timeout``."""
        idle = self.server.limits.idle_timeout
        now = self._loop.time()
        if self.tasks or self.stream.connection.receiving:
            self._idle_timer = self._loop.call_at(now + idle, self._check_idle)
        elif now - self._last >= idle:
            self._idle_timer = None
            self.connection_ended(IdleTimeout(f"nothing arrived for {idle} s"))
        else:
            self._idle_timer = self._loop.call_at(self._last + idle, self._check_idle)

    def _start(self, request: Request) -> None:
        if request.id in self.tasks:
            error: Error = DuplicateRequest(f"request id {request.id} is already in flight")
        elif len(self.tasks) >= self.server.limits.max_in_flight:
            error = Overloaded(f"{len(self.tasks)} requests in flight on this connection")
        else:
            task = self._loop.create_task(self._serve(request))
            self.tasks[request.id] = task
            task.add_done_callback(lambda _: self.tasks.pop(request.id, None))
            return
        logger.info("rpc %s id=%d outcome=%s", request.route, request.id, error.code)
        self.stream.send_nowait(ErrorFrame.build(request.id, error.code, error.message).to_bytes())

    async def _serve(self, request: Request) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "ok"
        try:
            reply = await self._answer(request, started)
        except Error as exc:
            wire = exc.to_json()
            outcome = wire["code"]
            reply = ErrorFrame.build(request.id, wire["code"], wire["message"]).to_bytes()
        except asyncio.CancelledError:
            logger.info("rpc %s id=%d outcome=cancelled %.1f ms", request.route, request.id, _ms(loop, started))
            raise
        except Exception:
            logger.exception("rpc %s id=%d: handler failed", request.route, request.id)
            outcome = HandlerFailed.code
            reply = ErrorFrame.build(request.id, HandlerFailed.code, "the handler failed").to_bytes()
        logger.info("rpc %s id=%d outcome=%s %.1f ms", request.route, request.id, outcome, _ms(loop, started))
        with contextlib.suppress(Error):
            await self.stream.send(reply)

    async def _answer(self, request: Request, started: float) -> bytes:
        limits = self.server.limits
        entry = self.server.router.get(request.route)
        if entry is None:
            raise UnknownRoute(f"no route named {request.route!r}")
        try:
            model = entry.route.request.model_validate_json(request.body)
        except ValidationError as exc:
            raise InvalidRequest(f"{request.route}: {describe_validation_error(exc)}") from None
        timeout = request.timeout_ms / 1000 if request.timeout_ms else limits.default_request_timeout
        deadline = started + min(timeout, limits.max_request_timeout)
        session = getattr(self.stream, "session", None)
        context = CallContext(
            route=request.route,
            request_id=request.id,
            deadline=deadline,
            peer=self.stream.peer,
            session_id=getattr(session, "session_id", None),
            client_key=getattr(session, "client_key", None),
        )
        try:
            async with asyncio.timeout_at(deadline) as scope:
                result = await entry.handler(model, context)
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceeded(f"{request.route} did not complete within its deadline") from None
            raise
        if not isinstance(result, entry.route.response):
            logger.error("rpc %s returned %s, not %s", request.route, type(result).__name__, entry.route.response)
            raise HandlerFailed("the handler returned the wrong type")
        reply = Response(request.id, result.model_dump_json().encode()).to_bytes()
        if len(reply) > self.stream.max_message_size:
            raise HandlerFailed(f"the response of {len(reply)} bytes is over the frame limit")
        return reply


def _ms(loop: asyncio.AbstractEventLoop, started: float) -> float:
    return (loop.time() - started) * 1000
