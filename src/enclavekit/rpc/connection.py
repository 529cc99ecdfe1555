"""One connection's messages, delimited as the bytes arrive: the protocol every RPC stream runs on.

A :class:`MessageConnection` is an :class:`asyncio.BufferedProtocol` that splits what arrives into whole
messages with the header rule its stream gives it (:meth:`~MessageConnection.delimit`: the header's size and a
function that parses and limit-checks a header into the body's length, so an oversized length is refused from
the header alone, before the body is read or allocated). Messages are taken in one of two ways:

* ``await connection.receive()``: one at a time (the handshake, and tests);
* ``connection.deliver(sink)``: from then on each whole message is handed to ``sink.message_received`` inside
  the callback that completed it, and the connection's end to ``sink.connection_ended`` — no task and no await
  per message (ADR 0030).

Once a message's first byte arrived, the whole message must arrive within ``read_timeout`` (a trickle does not
extend it). Writes are ``write`` (never blocks) then ``await drain()`` when the caller wants backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from enclavekit.channel.protocols import AttestedPeer
from enclavekit.errors import Error
from enclavekit.rpc.address import Address
from enclavekit.rpc.errors import ConnectionClosed, ConnectionFailed, FrameTruncated, ReadTimeout
from enclavekit.rpc.frame import DEFAULT_MAX_FRAME_SIZE, FRAME_HEADER_SIZE, frame_length
from enclavekit.rpc.transport import bind, connect_socket

__all__ = [
    "BodyLength",
    "FramedStream",
    "MessageConnection",
    "MessageSink",
    "MessageStream",
    "connect",
    "serve",
]

logger = logging.getLogger(__name__)

BodyLength = Callable[[bytes], int]
"""Parses and limit-checks a message header; returns the body's length or raises a Rejected error."""

READ_CHUNK = 32 * 1024
"""Each socket read goes into the connection's one buffer of this size (not a fresh 256 KiB bytes per read)."""
PULL_HIGH_WATER = 64 * 1024
"""Bytes buffered ahead of :meth:`MessageConnection.receive` (beyond the message it waits for) before reading
pauses."""


class MessageSink(Protocol):
    """Where :meth:`MessageConnection.deliver` hands messages. Both run inside the event loop's callback: they
    must not block. An :class:`~enclavekit.errors.Error` raised by ``message_received`` ends the connection."""

    def message_received(self, message: bytes) -> None: ...

    def connection_ended(self, error: Error | None) -> None:
        """The connection ended: ``None`` at a clean end of stream between two messages, else why."""
        ...


def _not_delimited(_: bytes) -> int:
    raise ConnectionClosed("no message delimiter was set on this connection")  # pragma: no cover - a bug


class MessageStream(Protocol):
    """Whole messages over one :class:`MessageConnection`: what the RPC client and server run on.

    :class:`FramedStream` delimits RPC frames on a plain connection; ``enclavekit.rpc.attested.ChannelStream``
    carries each one in a record of an attested session. ``send`` may be called from several tasks at once.
    """

    @property
    def connection(self) -> MessageConnection: ...

    @property
    def max_message_size(self) -> int: ...

    @property
    def peer(self) -> AttestedPeer | None:
        """The peer's verified attestation, when the stream is attested and the peer attested itself."""
        ...

    async def send(self, message: bytes) -> None:
        """Send, then wait while the peer is not reading (backpressure)."""
        ...

    def send_nowait(self, message: bytes) -> None:
        """Send without waiting (inside a callback): the connection's write buffer takes it."""
        ...

    def deliver(self, sink: MessageSink) -> None:
        """Hand every message to ``sink`` as it arrives; its end, always with an error (:class:`ConnectionClosed`
        for a clean one; :class:`ReadTimeout`, or a Rejected error for bytes that are not a message), to
        ``sink.connection_ended``."""
        ...

    async def close(self) -> None: ...


class MessageConnection(asyncio.BufferedProtocol):
    """A connection that splits its bytes into messages; see the module's documentation."""

    def __init__(self, *, read_timeout: float | None = 30.0, pause_reading_while_writes_wait: bool = False) -> None:
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self._pause_with_writes = pause_reading_while_writes_wait
        self._header_size = 0
        self._body_length: BodyLength = _not_delimited
        self._truncated: Callable[[str], Error] = ConnectionClosed
        self._read = memoryview(bytearray(READ_CHUNK))
        self._buffer = bytearray()
        self._needed = 0
        """Length (header included) of the message in ``_buffer`` once its header was parsed, else 0."""
        self._sink: MessageSink | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timer: asyncio.TimerHandle | None = None
        self._eof = False
        """No more bytes will arrive (end of stream or connection lost); buffered messages may remain."""
        self._eof_error: Error | None = None
        self._end: Error | None = None
        self._ended = False
        """Finished for the consumer: the sink was told (or ``receive`` raises) ``_end``."""
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- configuration ------------------------------------------------------------------------------------------

    def delimit(self, header_size: int, body_length: BodyLength, truncated: Callable[[str], Error]) -> None:
        """Split messages with this header rule from now on (``truncated`` names an end inside a message)."""
        self._header_size = header_size
        self._body_length = body_length
        self._truncated = truncated
        self._needed = 0

    @property
    def peer_name(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer) if peer else "local"

    @property
    def receiving(self) -> bool:
        """Whether part of a message has arrived (its first byte, not yet its last)."""
        return bool(self._buffer)

    # --- taking messages ------------------------------------------------------------------------------------------

    async def receive(self) -> bytes | None:
        """The next message; None at a clean end of stream (before a message's first byte).

        Waits as long as nothing arrives (the caller bounds that: the handshake's timeout). Raises
        :class:`ReadTimeout` when a started message did not complete within ``read_timeout``, the delimiter's
        error for a header it refuses, and ``truncated`` when the stream ended inside a message.
        """
        if self._sink is not None:
            raise RuntimeError("this connection delivers its messages to a sink")
        while not self._buffer and not self._eof and not self._ended:
            await self._wait()
        try:
            async with asyncio.timeout(self.read_timeout if self._buffer else None):
                while True:
                    if self._ended:
                        assert self._end is not None
                        raise self._end
                    message = self._split()
                    if message is not None:
                        return message
                    if self._eof:
                        error = self._eof_end()
                        if error is not None:
                            raise error
                        return None
                    await self._wait()
        except TimeoutError:
            raise ReadTimeout(f"a message did not complete within {self.read_timeout} s") from None

    async def _wait(self) -> None:
        self._resume_if_room()
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _split(self) -> bytes | None:
        """The next whole message out of the buffer, or None until more arrives."""
        buffer = self._buffer
        if not self._needed:
            if len(buffer) < self._header_size or not self._header_size:
                return None
            self._needed = self._header_size + self._body_length(bytes(buffer[: self._header_size]))
        if len(buffer) < self._needed:
            return None
        message = bytes(buffer[: self._needed])
        del buffer[: self._needed]
        self._needed = 0
        return message

    def deliver(self, sink: MessageSink) -> None:
        """Hand every message, from those already buffered on, to ``sink`` as it completes."""
        self._sink = sink
        if self._ended:
            self._finish()
            return
        if self._buffer:
            self._consume(memoryview(b""))
        if self._eof:
            self._end_of_stream()
        self._resume_if_room()

    # --- asyncio.BufferedProtocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        if self._ended or self._eof:
            return
        if self._sink is not None:
            self._consume(self._read[:nbytes])
            return
        self._buffer += self._read[:nbytes]
        if len(self._buffer) > max(PULL_HIGH_WATER, self._needed) and not self._reading_paused:
            self._pause_reading()
        self._wake()

    def _consume(self, chunk: memoryview) -> None:
        """Deliver every whole message of the buffer plus ``chunk``; keep the rest (a message's beginning)."""
        sink = self._sink
        assert sink is not None
        header_size = self._header_size
        if self._buffer:
            self._buffer += chunk
            data: memoryview | bytearray = self._buffer
        else:
            data = chunk
        size = len(data)
        position = 0
        completed = False
        try:
            while not self._ended:
                needed = self._needed
                if not needed:
                    if size - position < header_size:
                        break
                    needed = header_size + self._body_length(bytes(data[position : position + header_size]))
                    self._needed = needed
                if size - position < needed:
                    break
                message = bytes(data[position : position + needed])
                position += needed
                self._needed = 0
                completed = True
                sink.message_received(message)
        except Error as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a sink's bug must not leave the connection half-alive
            logger.exception("a message sink failed")
            self._fail(ConnectionClosed(f"the connection's consumer failed ({type(exc).__name__})"))
            return
        if self._ended:
            return
        if position == size:
            if self._buffer:
                self._buffer = bytearray()
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None
            return
        if data is self._buffer:
            del self._buffer[:position]
        else:
            self._buffer = bytearray(data[position:])
        if completed or self._read_timer is None:  # a new message began: its own deadline
            self._arm_read_timer()

    def _arm_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self.read_timeout is not None and self.transport is not None:
            loop = asyncio.get_running_loop()
            self._read_timer = loop.call_later(self.read_timeout, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._read_timer = None
        self._fail(ReadTimeout(f"a message did not complete within {self.read_timeout} s"))

    def eof_received(self) -> bool | None:
        self._received_eof(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._received_eof(None if exc is None else ConnectionClosed(f"the connection broke ({type(exc).__name__})"))
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if not self._lost.done():
            self._lost.set_result(None)

    def _received_eof(self, error: Error | None) -> None:
        if self._eof:
            return
        self._eof = True
        self._eof_error = error
        if self._sink is not None:
            self._end_of_stream()
        else:
            self._wake()

    def _eof_end(self) -> Error | None:
        """Why the stream ended, once its whole messages are taken: None for a clean end between two messages."""
        if self._eof_error is not None:
            return self._eof_error
        if self._buffer:
            return self._truncated(f"the stream ended {len(self._buffer)} byte(s) into a message")
        return None

    def _end_of_stream(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._end = self._eof_end()
        self._finish()

    def _fail(self, error: Error) -> None:
        """End the connection with ``error``: the sink (or the reader) learns it, and reading stops (the owner
        closes the connection, perhaps after telling the peer why)."""
        if self._ended:
            return
        self._pause_reading()
        self._ended = True
        self._end = error
        self._buffer = bytearray()
        self._finish()

    def _finish(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._sink is not None:
            sink, self._sink = self._sink, _EndedSink()
            sink.connection_ended(self._end)
        else:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def _resume_if_room(self) -> None:
        if not self._reading_paused or self._ended or (self._writing_paused and self._pause_with_writes):
            return
        if self._sink is None and len(self._buffer) > max(PULL_HIGH_WATER, self._needed):
            return
        self._reading_paused = False
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    # --- writing --------------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` on the socket (never blocks); :class:`ConnectionClosed` once the connection is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionClosed("the connection is closed")
        transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket's write buffer is over its high-water mark (the peer is not reading)."""
        if not self._writing_paused:
            return
        if self._lost.done():
            raise ConnectionClosed("the connection is closed")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter
        if self._lost.done():
            raise ConnectionClosed("the connection is closed")

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._pause_with_writes:
            self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._resume_if_room()

    # --- closing --------------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close (flushing what was written) and wait, at most a second, for the socket to be gone."""
        if self.transport is None:
            return
        self.transport.close()
        try:
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._lost)
        except TimeoutError:  # the peer does not read what is left to flush: drop it
            self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _EndedSink:
    """What a connection delivers to after its end: nothing arrives any more."""

    def message_received(self, message: bytes) -> None:  # pragma: no cover - unreachable once ended
        pass

    def connection_ended(self, error: Error | None) -> None:  # pragma: no cover - called once
        pass


async def connect(
    address: str | Address, *, timeout: float = 10.0, read_timeout: float | None = 30.0
) -> MessageConnection:
    """Connect to ``address`` (TCP, Unix or vsock); raise :class:`ConnectionFailed` when it cannot."""
    sock = await connect_socket(address, timeout=timeout)
    loop = asyncio.get_running_loop()
    try:
        _, connection = await loop.create_connection(lambda: MessageConnection(read_timeout=read_timeout), sock=sock)
    except OSError as exc:
        sock.close()
        raise ConnectionFailed(f"cannot connect to {address}: {exc}") from exc
    return connection


async def serve(
    address: str | Address,
    on_connection: Callable[[MessageConnection], None],
    *,
    backlog: int = 128,
    read_timeout: float | None = 30.0,
) -> tuple[asyncio.Server, Address]:
    """Listen on ``address``; call ``on_connection`` with each accepted connection (inside ``connection_made``:
    it must not block — start a task). Returns the asyncio server and the bound address (port 0 resolved).

    Accepted connections pause their reading while their writes wait for the peer: a peer that does not read its
    answers gets no more read. Raises :class:`ConnectionFailed` when the address cannot be bound.
    """
    sock, bound = bind(address, backlog)

    def accepted() -> MessageConnection:
        return _Accepted(on_connection, read_timeout=read_timeout)

    server = await asyncio.get_running_loop().create_server(accepted, sock=sock)
    return server, bound


class _Accepted(MessageConnection):
    """An accepted connection: announces itself to the server once connected."""

    def __init__(self, on_connection: Callable[[MessageConnection], None], *, read_timeout: float | None) -> None:
        super().__init__(read_timeout=read_timeout, pause_reading_while_writes_wait=True)
        self._on_connection = on_connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._on_connection(self)


class FramedStream:
    """RPC frames on a plain connection: the frame's own header delimits it. No confidentiality at all."""

    __slots__ = ("_connection", "_max", "_sink")

    def __init__(self, connection: MessageConnection, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._connection = connection
        self._max = max_frame_size
        self._sink: MessageSink | None = None
        connection.delimit(FRAME_HEADER_SIZE, self._frame_length, FrameTruncated)

    def _frame_length(self, header: bytes) -> int:
        return frame_length(header, max_frame_size=self._max)

    @property
    def connection(self) -> MessageConnection:
        return self._connection

    @property
    def max_message_size(self) -> int:
        return self._max

    @property
    def peer(self) -> AttestedPeer | None:
        return None

    async def send(self, message: bytes) -> None:
        self._connection.write(message)
        await self._connection.drain()

    def send_nowait(self, message: bytes) -> None:
        self._connection.write(message)

    def deliver(self, sink: MessageSink) -> None:
        self._sink = sink
        self._connection.deliver(self)

    def message_received(self, message: bytes) -> None:
        assert self._sink is not None
        self._sink.message_received(message)

    def connection_ended(self, error: Error | None) -> None:
        assert self._sink is not None
        self._sink.connection_ended(error or ConnectionClosed("the peer closed the connection"))

    async def close(self) -> None:
        await self._connection.close()
