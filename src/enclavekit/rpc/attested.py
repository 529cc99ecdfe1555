"""The attested channel over an asyncio connection: run the handshake, then one record per message.

This is the only I/O glue of :mod:`enclavekit.channel`. The CPU-heavy handshake steps (making the attestation
document, verifying the peer's) run in a worker thread so one handshake does not stall the other connections.
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
from enclavekit.rpc.errors import ConnectionClosed
from enclavekit.rpc.transport import close_writer, read_message, write_all

__all__ = ["ChannelStream", "Clock", "utc_now"]

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ChannelStream:
    """A :class:`~enclavekit.rpc.transport.MessageStream` whose messages are records of an attested session."""

    __slots__ = ("_clock", "_lock", "_read_timeout", "_reader", "_writer", "session")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        *,
        clock: Clock = utc_now,
        read_timeout: float | None = 30.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.session = session
        self._clock = clock
        self._read_timeout = read_timeout
        self._lock = asyncio.Lock()

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
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        initiator: Initiator,
        *,
        timeout: float = 10.0,
        read_timeout: float | None = 30.0,
        clock: Clock = utc_now,
    ) -> ChannelStream:
        """Run the initiator's handshake on a fresh connection. On failure the connection is closed."""
        try:
            async with asyncio.timeout(timeout):
                handshake, hello = initiator.start(now=clock())
                await write_all(writer, hello)
                server_hello = await _read_handshake(reader, read_timeout)
                finish, session = await asyncio.to_thread(handshake.finish, server_hello, now=clock())
                await write_all(writer, finish)
        except TimeoutError:
            await close_writer(writer)
            raise HandshakeTimeout(f"the handshake did not complete within {timeout} s") from None
        except BaseException as exc:
            if isinstance(exc, Error) and not isinstance(exc, ConnectionClosed):
                await _send_alert(writer, exc)
            await close_writer(writer)
            raise
        return cls(reader, writer, session, clock=clock, read_timeout=read_timeout)

    @classmethod
    async def respond(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        responder: Responder,
        *,
        timeout: float = 10.0,
        read_timeout: float | None = 30.0,
        clock: Clock = utc_now,
    ) -> ChannelStream:
        """Run the responder's handshake on an accepted connection. On failure: alert, close, raise."""
        try:
            async with asyncio.timeout(timeout):
                hello = await _read_handshake(reader, read_timeout)
                handshake, server_hello = await asyncio.to_thread(responder.accept, hello, now=clock())
                await write_all(writer, server_hello)
                finish = await _read_handshake(reader, read_timeout)
                session = handshake.finish(finish, now=clock())
        except TimeoutError:
            await close_writer(writer)
            raise HandshakeTimeout(f"the handshake did not complete within {timeout} s") from None
        except BaseException as exc:
            if isinstance(exc, Error) and not isinstance(exc, ConnectionClosed):
                await _send_alert(writer, exc)
            await close_writer(writer)
            raise
        return cls(reader, writer, session, clock=clock, read_timeout=read_timeout)

    async def send(self, message: bytes) -> None:
        async with self._lock:
            record = self.session.seal(message, now=self._clock())
            await write_all(self._writer, record)

    async def receive(self, *, idle_timeout: float | None = None) -> bytes:
        session = self.session
        while True:
            message = await read_message(
                self._reader,
                header_size=HEADER_SIZE,
                body_length=self._body_length,
                idle_timeout=idle_timeout,
                read_timeout=self._read_timeout,
                truncated=RecordTruncated,
            )
            if message is None:
                session.end_of_stream()  # raises SessionTruncated unless the peer sent its close record
                raise ConnectionClosed("the peer closed the session")
            if message[1] == MessageType.ALERT:  # the responder refused our client finish
                alert = Alert.from_bytes(message)
                raise HandshakeAborted(f"the peer aborted the handshake: {alert.code}", peer_code=alert.code)
            data = session.open(message, now=self._clock())
            if data is not None:
                return data
            if session.peer_closed:
                raise ConnectionClosed("the peer closed the session")

    def _body_length(self, header: bytes) -> int:
        return parse_header(header, max_record_size=self.session.limits.max_record_size).length

    async def close(self) -> None:
        """Send the close record (best effort) and close the connection."""
        try:
            async with self._lock:
                record = self.session.close()
                if record:
                    await write_all(self._writer, record)
        except Error:
            pass
        await close_writer(self._writer)


async def _read_handshake(reader: asyncio.StreamReader, read_timeout: float | None) -> bytes:
    message = await read_message(
        reader,
        header_size=HEADER_SIZE,
        body_length=lambda header: _handshake_length(header),
        idle_timeout=None,
        read_timeout=read_timeout,
        truncated=HandshakeMalformed,
    )
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


async def _send_alert(writer: asyncio.StreamWriter, error: Error) -> None:
    if isinstance(error, HandshakeAborted):
        return
    with contextlib.suppress(Error, TimeoutError):
        async with asyncio.timeout(1.0):
            await write_all(writer, Responder.alert(error))
