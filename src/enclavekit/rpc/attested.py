"""The attested channel over a message connection: run the handshake, then one record per message.

This is the only I/O glue of :mod:`enclavekit.channel`. The CPU-heavy handshake steps (making the attestation
document, verifying the peer's) run in a worker thread so one handshake does not stall the other connections.
The handshake takes its messages one at a time (:meth:`MessageConnection.receive`); the session's records are
opened as they arrive, in the connection's callback, when the RPC layer has it deliver them (ADR 0030).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from enclavekit.channel.errors import HandshakeAborted, HandshakeMalformed, HandshakeTimeout, RecordTruncated
from enclavekit.channel.handshake import Initiator, Responder
from enclavekit.channel.protocols import AttestedPeer
from enclavekit.channel.record import Session
from enclavekit.channel.wire import HEADER_SIZE, MAX_HANDSHAKE_SIZE, Alert, MessageType, parse_header
from enclavekit.errors import Error
from enclavekit.rpc.connection import MessageConnection, MessageSink
from enclavekit.rpc.errors import ConnectionClosed

__all__ = ["ChannelStream", "Clock", "utc_now"]

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ChannelStream:
    """A :class:`~enclavekit.rpc.connection.MessageStream` whose messages are records of an attested session."""

    __slots__ = ("_clock", "_connection", "_sink", "session")

    def __init__(self, connection: MessageConnection, session: Session, *, clock: Clock = utc_now) -> None:
        self._connection = connection
        self.session = session
        self._clock = clock
        self._sink: MessageSink | None = None
        connection.delimit(HEADER_SIZE, self._body_length, RecordTruncated)

    @property
    def connection(self) -> MessageConnection:
        return self._connection

    @property
    def max_message_size(self) -> int:
        return self.session.limits.max_record_size

    @property
    def peer(self) -> AttestedPeer | None:
        return self.session.peer

    @property
    def client_key(self) -> bytes | None:
        """The client identity key the handshake proved (None: an anonymous client)."""
        return self.session.client_key

    @classmethod
    async def initiate(
        cls,
        connection: MessageConnection,
        initiator: Initiator,
        *,
        timeout: float = 10.0,
        clock: Clock = utc_now,
    ) -> ChannelStream:
        """Run the initiator's handshake on a fresh connection. On failure the connection is closed."""
        connection.delimit(HEADER_SIZE, _handshake_length, HandshakeMalformed)
        try:
            async with asyncio.timeout(timeout):
                handshake, hello = initiator.start(now=clock())
                await _write(connection, hello)
                server_hello = await _read_handshake(connection)
                finish, session = await asyncio.to_thread(handshake.finish, server_hello, now=clock())
                await _write(connection, finish)
        except TimeoutError:
            await connection.close()
            raise HandshakeTimeout(f"the handshake did not complete within {timeout} s") from None
        except BaseException as exc:
            if isinstance(exc, Error) and not isinstance(exc, ConnectionClosed):
                await _send_alert(connection, exc)
            await connection.close()
            raise
        return cls(connection, session, clock=clock)

    @classmethod
    async def respond(
        cls,
        connection: MessageConnection,
        responder: Responder,
        *,
        timeout: float = 10.0,
        clock: Clock = utc_now,
    ) -> ChannelStream:
        """Run the responder's handshake on an accepted connection. On failure: alert, close, raise."""
        connection.delimit(HEADER_SIZE, _handshake_length, HandshakeMalformed)
        try:
            async with asyncio.timeout(timeout):
                hello = await _read_handshake(connection)
                handshake, server_hello = await asyncio.to_thread(responder.accept, hello, now=clock())
                await _write(connection, server_hello)
                finish = await _read_handshake(connection)
                session = handshake.finish(finish, now=clock())
        except TimeoutError:
            await connection.close()
            raise HandshakeTimeout(f"the handshake did not complete within {timeout} s") from None
        except BaseException as exc:
            if isinstance(exc, Error) and not isinstance(exc, ConnectionClosed):
                await _send_alert(connection, exc)
            await connection.close()
            raise
        return cls(connection, session, clock=clock)

    async def send(self, message: bytes) -> None:
        self.send_nowait(message)
        await self._connection.drain()

    def send_nowait(self, message: bytes) -> None:
        # Sealing and writing with no await between: records leave in the order of their sequence numbers.
        self._connection.write(self.session.seal(message, now=self._clock()))

    def deliver(self, sink: MessageSink) -> None:
        self._sink = sink
        self._connection.deliver(self)

    def message_received(self, message: bytes) -> None:
        data = self._open(message)
        if data is not None:
            assert self._sink is not None
            self._sink.message_received(data)

    def connection_ended(self, error: Error | None) -> None:
        assert self._sink is not None
        if error is None:
            try:
                self._open(None)
            except Error as exc:
                error = exc
        self._sink.connection_ended(error)

    def _open(self, message: bytes | None) -> bytes | None:
        """The data of one record (None for a record that carries none); raises at the session's end."""
        session = self.session
        if message is None:
            session.end_of_stream()  # raises SessionTruncated unless the peer sent its close record
            raise ConnectionClosed("the peer closed the session")
        if message[1] == MessageType.ALERT:  # the responder refused our client finish
            alert = Alert.from_bytes(message)
            raise HandshakeAborted(f"the peer aborted the handshake: {alert.code}", peer_code=alert.code)
        data = session.open(message, now=self._clock())
        if data is None and session.peer_closed:
            raise ConnectionClosed("the peer closed the session")
        return data

    def _body_length(self, header: bytes) -> int:
        return parse_header(header, max_record_size=self.session.limits.max_record_size).length

    async def close(self) -> None:
        """Send the close record (best effort) and close the connection."""
        with contextlib.suppress(Error):
            record = self.session.close()
            if record:
                self._connection.write(record)
        await self._connection.close()


async def _write(connection: MessageConnection, data: bytes) -> None:
    connection.write(data)
    await connection.drain()


async def _read_handshake(connection: MessageConnection) -> bytes:
    message = await connection.receive()
    if message is None:
        raise ConnectionClosed("the peer closed the connection during the handshake")
    return message


def _handshake_length(header: bytes) -> int:
    parsed = parse_header(header, max_record_size=0, handshake=True)
    if parsed.type.is_record:
        raise HandshakeMalformed("a record arrived before the handshake completed")
    if parsed.length > MAX_HANDSHAKE_SIZE:  # pragma: no cover - parse_header enforces it
        raise HandshakeMalformed("handshake message too large")
    return parsed.length


async def _send_alert(connection: MessageConnection, error: Error) -> None:
    if isinstance(error, HandshakeAborted):
        return
    with contextlib.suppress(Error, TimeoutError):
        async with asyncio.timeout(1.0):
            await _write(connection, Responder.alert(error))
