"""The asyncio RPC client: many calls in flight on one connection, each with an id, a timeout and cancellation.

::

    async with await RpcClient.connect("tcp://127.0.0.1:5000", initiator=Initiator(verifier)) as client:
        reply = await client.call(ECHO, Echo(text="hi"), timeout=5)
        client.peer.measurements        # what the handshake verified

A call that times out raises :class:`DeadlineExceeded` and tells the server to cancel it; a call whose task is
cancelled tells the server too. A server error arrives as the enclavekit error class of its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from enclavekit.channel.handshake import Initiator
from enclavekit.channel.protocols import AttestedPeer
from enclavekit.errors import ConfigurationError, Error
from enclavekit.rpc.address import Address
from enclavekit.rpc.attested import ChannelStream, Clock, utc_now
from enclavekit.rpc.connection import FramedStream, MessageStream, connect
from enclavekit.rpc.errors import (
    ConnectionClosed,
    DeadlineExceeded,
    FrameTooLarge,
    FrameUnexpected,
    InvalidResponse,
    error_from_wire,
)
from enclavekit.rpc.frame import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_TIMEOUT_MS,
    Cancel,
    ErrorFrame,
    Request,
    Response,
    decode_frame,
)
from enclavekit.rpc.routes import Route

__all__ = ["ClientOptions", "RpcClient", "describe_validation_error"]

logger = logging.getLogger(__name__)

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)


def describe_validation_error(error: ValidationError) -> str:
    """A pydantic error as text that names fields and problems but never echoes the input (it may be secret)."""
    details = error.errors(include_input=False, include_url=False, include_context=False)
    parts = [f"{'.'.join(str(p) for p in d['loc']) or '(body)'}: {d['msg']}" for d in details[:5]]
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return "; ".join(parts) + more


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """Timeouts in seconds, and bounds, of one client connection."""

    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    read_timeout: float = 30.0
    default_timeout: float = 30.0
    max_in_flight: int = 64
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE


def _copy(error: Error) -> Error:
    """A fresh instance of ``error`` for each waiting caller (one exception object must not be raised twice)."""
    try:
        duplicate = copy.copy(error)
    except TypeError:  # an error class whose constructor takes more than its message
        return error
    duplicate.__cause__ = error
    return duplicate


class RpcClient:
    """Calls typed routes over one :class:`~enclavekit.rpc.connection.MessageStream`. Create it in a running loop.

    Answers are matched to their calls in the connection's callback as they arrive (the stream delivers them
    here): no read-loop task, no await between the socket and the caller's future.
    """

    def __init__(self, stream: MessageStream, *, default_timeout: float = 30.0, max_in_flight: int = 64) -> None:
        if default_timeout <= 0 or max_in_flight < 1:
            raise ConfigurationError("default_timeout and max_in_flight must be positive")
        self._stream = stream
        self.default_timeout = default_timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[int, asyncio.Future[Response | ErrorFrame]] = {}
        self._next_id = 1
        self._error: Error | None = None
        self._closing: asyncio.Task[None] | None = None
        stream.deliver(self)

    @classmethod
    async def connect(
        cls,
        address: str | Address,
        *,
        initiator: Initiator | None = None,
        unsafe_plaintext: bool = False,
        options: ClientOptions | None = None,
        clock: Clock = utc_now,
    ) -> RpcClient:
        """Connect, run the attested handshake with ``initiator``, and return a client.

        Without an initiator the connection carries plaintext frames: allowed only with
        ``unsafe_plaintext=True`` (tests, or a link that never leaves the TEE).
        """
        if (initiator is None) != unsafe_plaintext:
            raise ConfigurationError("pass an initiator (attested), or unsafe_plaintext=True, not both or neither")
        options = options or ClientOptions()
        connection = await connect(address, timeout=options.connect_timeout, read_timeout=options.read_timeout)
        stream: MessageStream
        if initiator is not None:
            stream = await ChannelStream.initiate(connection, initiator, timeout=options.handshake_timeout, clock=clock)
        else:
            stream = FramedStream(connection, max_frame_size=options.max_frame_size)
        return cls(stream, default_timeout=options.default_timeout, max_in_flight=options.max_in_flight)

    @property
    def peer(self) -> AttestedPeer | None:
        """The server's verified attestation (None on a plaintext connection)."""
        return self._stream.peer

    @property
    def stream(self) -> MessageStream:
        return self._stream

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def error(self) -> Error | None:
        """Why the connection closed (``connection_closed`` for a clean close), or None while it is open."""
        return self._error

    async def call(self, route: Route[Req, Resp], request: Req, *, timeout: float | None = None) -> Resp:
        """Call ``route``; return its validated response or raise the server's error (or a local one)."""
        if not isinstance(request, route.request):
            raise TypeError(f"route {route.name!r} takes {route.request.__name__}, not {type(request).__name__}")
        if self._error is not None:
            raise ConnectionClosed(f"the connection is closed ({self._error.code})") from self._error
        timeout = self.default_timeout if timeout is None else timeout
        if not 0 < timeout <= MAX_TIMEOUT_MS / 1000:
            raise ValueError("timeout must be positive and under 49 days")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        request_id = self._next_id
        self._next_id += 1
        body = request.model_dump_json().encode()
        future: asyncio.Future[Response | ErrorFrame] = loop.create_future()
        sent = False
        try:
            async with asyncio.timeout_at(deadline):
                async with self._slots:
                    remaining_ms = max(1, math.ceil((deadline - loop.time()) * 1000))
                    frame = Request(request_id, route.name, remaining_ms, body).to_bytes()
                    if len(frame) > self._stream.max_message_size:
                        raise FrameTooLarge(f"request of {len(frame)} bytes is over {self._stream.max_message_size}")
                    self._pending[request_id] = future
                    sent = True
                    await self._stream.send(frame)
                    reply = await future
        except TimeoutError:
            if sent:
                self._cancel_remote(request_id)
            raise DeadlineExceeded(f"{route.name} did not complete within {timeout} s") from None
        except asyncio.CancelledError:
            if sent:
                self._cancel_remote(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)
        if isinstance(reply, ErrorFrame):
            raise error_from_wire(reply.code, reply.message)
        try:
            return route.response.model_validate_json(reply.body)
        except ValidationError as exc:
            raise InvalidResponse(f"{route.name}: {describe_validation_error(exc)}") from None

    def _cancel_remote(self, request_id: int) -> None:
        if self._error is None:
            with contextlib.suppress(Error):
                self._stream.send_nowait(Cancel(request_id).to_bytes())

    def message_received(self, data: bytes) -> None:
        """An answer arrived (in the connection's callback): resolve its call's future."""
        frame = decode_frame(data, max_frame_size=self._stream.max_message_size)
        if isinstance(frame, ErrorFrame) and frame.id == 0:
            raise error_from_wire(frame.code, frame.message)  # the server says why it ends the connection
        if not isinstance(frame, Response | ErrorFrame):
            raise FrameUnexpected(f"the server sent a {type(frame).__name__.lower()} frame")
        future = self._pending.get(frame.id)
        if future is not None and not future.done():
            future.set_result(frame)

    def connection_ended(self, error: Error | None) -> None:
        error = error or ConnectionClosed("the connection closed")
        if not isinstance(error, ConnectionClosed):
            logger.info("RPC connection closed: %s", error.code)
        self._fail(error)
        self._close_stream()

    def _fail(self, error: Error) -> None:
        if self._error is None:
            self._error = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_copy(error))

    def _close_stream(self) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._stream.close())
        return self._closing

    async def close(self) -> None:
        """Close the connection (the attested stream sends its close record first). Pending calls fail."""
        self._fail(ConnectionClosed("the client closed the connection"))
        await asyncio.shield(self._close_stream())

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
