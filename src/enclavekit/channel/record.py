"""The record layer: an established session seals and opens records. Sans-I/O; time is a parameter.

A record is ``version u8 ‖ type u8 ‖ length u32 ‖ sequence u64 ‖ ChaCha20-Poly1305 ciphertext``, where
``length`` counts the sequence number and the ciphertext. Each direction has its own key, nonce base and
64-bit counter; the nonce is ``nonce base XOR (0^32 ‖ sequence)`` and the AAD is
``version ‖ type ‖ session id ‖ sequence`` (26 bytes). A receiver authenticates a record first, then checks its
sequence number, so every refusal names what happened: ``record_tampered`` (it does not authenticate),
``record_replayed`` (authentic, already seen), ``record_out_of_order`` (authentic, but one before it is
missing). Any refusal breaks the session for good.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from enclavekit.channel.errors import (
    HandshakeMalformed,
    RecordAfterClose,
    RecordError,
    RecordMalformed,
    RecordOutOfOrder,
    RecordReplayed,
    RecordTampered,
    RecordTooLarge,
    RecordTruncated,
    SessionClosed,
    SessionExpired,
    SessionTruncated,
)
from enclavekit.channel.protocols import AttestedPeer
from enclavekit.channel.schedule import SessionSecrets, traffic_keys
from enclavekit.channel.wire import (
    HEADER_SIZE,
    MAX_RECORD_LIMIT,
    RECORD_OVERHEAD,
    MessageType,
    parse_header,
)

__all__ = ["DEFAULT_MAX_RECORD_SIZE", "MessageReader", "Role", "Session", "SessionLimits"]

Role = Literal["initiator", "responder"]

DEFAULT_MAX_RECORD_SIZE: Final = 4 * 1024 * 1024
_RECORD_HEADER = struct.Struct(">BBIQ")
_MAX_SEQUENCE: Final = 2**64 - 1
_RECORD_TYPES: Final = frozenset({MessageType.DATA, MessageType.KEY_UPDATE, MessageType.CLOSE})


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLimits:
    """Bounds of a session. Both sides enforce their own; the defaults suit RPC between a client and an enclave.

    * ``max_record_size``: the largest plaintext in one record (the header's length is checked against it before
      the body is read).
    * ``lifetime``: a session is refused (``session_expired``) after this long; the client opens a new one.
    * ``rekey_interval``, ``rekey_after_records``: a sender updates its key when either is reached.
    * ``handshake_timeout``: the responder refuses a client finish that arrives later than this.
    """

    max_record_size: int = DEFAULT_MAX_RECORD_SIZE
    lifetime: timedelta = timedelta(hours=24)
    rekey_interval: timedelta = timedelta(hours=1)
    rekey_after_records: int = 2**24
    handshake_timeout: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if not 0 < self.max_record_size <= MAX_RECORD_LIMIT:
            raise ValueError(f"max_record_size must be 1..{MAX_RECORD_LIMIT}")
        for name in ("lifetime", "rekey_interval", "handshake_timeout"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        if self.rekey_after_records < 1:
            raise ValueError("rekey_after_records must be positive")


class _Direction:
    """One direction's key epoch: AEAD key, nonce base, successor secret, and when the epoch began."""

    __slots__ = ("aead", "iv", "next_secret", "records", "started")

    def __init__(self, secret: bytes, started: datetime) -> None:
        key, iv, self.next_secret = traffic_keys(secret)
        self.aead = ChaCha20Poly1305(key)
        self.iv = int.from_bytes(iv, "big")
        self.records = 0
        self.started = started

    def successor(self, now: datetime) -> _Direction:
        return _Direction(self.next_secret, now)


class Session:
    """An established attested session. Only a completed handshake creates one.

    ``peer`` is the verified attestation of the other side (the responder's, on the initiator; the initiator's
    on the responder when the handshake was mutual, else None). ``client_key`` is the client identity's raw
    Ed25519 public key that the handshake proved (None for an anonymous client), the same on both sides.
    """

    __slots__ = (
        "_aad",
        "_broken",
        "_closed",
        "_peer_closed",
        "_receive",
        "_receive_sequence",
        "_send",
        "_send_sequence",
        "client_key",
        "established_at",
        "expires_at",
        "limits",
        "peer",
        "role",
        "session_id",
        "version",
    )

    def __init__(
        self,
        *,
        role: Role,
        version: int,
        secrets: SessionSecrets,
        peer: AttestedPeer | None,
        now: datetime,
        limits: SessionLimits,
        client_key: bytes | None = None,
    ) -> None:
        self.role: Role = role
        self.client_key = client_key
        self.version = version
        self.session_id = secrets.session_id
        self.peer = peer
        self.limits = limits
        self.established_at = now
        self.expires_at = now + limits.lifetime
        send, receive = (secrets.c2s, secrets.s2c) if role == "initiator" else (secrets.s2c, secrets.c2s)
        self._send = _Direction(send, now)
        self._receive = _Direction(receive, now)
        self._send_sequence = 0
        self._receive_sequence = 0
        self._aad = {t: bytes([version, t]) + secrets.session_id for t in _RECORD_TYPES}
        self._closed = False
        self._peer_closed = False
        self._broken = False

    # --- sending ---------------------------------------------------------------------------------------

    def seal(self, data: bytes, *, now: datetime) -> bytes:
        """One data record carrying ``data`` (preceded by a key update record when one is due)."""
        self._check_can_send(now)
        if len(data) > self.limits.max_record_size:
            raise RecordTooLarge(f"cannot seal {len(data)} bytes; the record limit is {self.limits.max_record_size}")
        direction, limits = self._send, self.limits
        prefix = b""
        if direction.records >= limits.rekey_after_records or now - direction.started >= limits.rekey_interval:
            prefix = self._seal_key_update(now)
        return prefix + self._seal(MessageType.DATA, data)

    def update_keys(self, *, now: datetime) -> bytes:
        """A key update record: after it, this side sends under a new key (the old one is forgotten)."""
        self._check_can_send(now)
        return self._seal_key_update(now)

    def close(self) -> bytes:
        """The close record (authenticated end of stream). Idempotent: later calls return ``b""``."""
        if self._closed or self._broken:
            self._closed = True
            return b""
        record = self._seal(MessageType.CLOSE, b"")
        self._closed = True
        return record

    def _check_can_send(self, now: datetime) -> None:
        if self._closed or self._broken:
            raise SessionClosed("the session is closed")
        if now >= self.expires_at:
            raise SessionExpired(f"the session expired at {self.expires_at.isoformat()}")

    def _seal_key_update(self, now: datetime) -> bytes:
        record = self._seal(MessageType.KEY_UPDATE, b"")
        self._send = self._send.successor(now)
        return record

    def _seal(self, record_type: MessageType, data: bytes) -> bytes:
        sequence = self._send_sequence
        if sequence >= _MAX_SEQUENCE:
            raise SessionExpired("the session's sequence numbers are exhausted")
        direction = self._send
        nonce = (direction.iv ^ sequence).to_bytes(12, "big")
        aad = self._aad[record_type] + sequence.to_bytes(8, "big")
        ciphertext = direction.aead.encrypt(nonce, data, aad)
        self._send_sequence = sequence + 1
        direction.records += 1
        return _RECORD_HEADER.pack(self.version, record_type, 8 + len(ciphertext), sequence) + ciphertext

    # --- receiving -------------------------------------------------------------------------------------

    def open(self, message: bytes, *, now: datetime) -> bytes | None:
        """Authenticate and decrypt one whole record. Returns the data, or None for a key update or a close.

        Raises a :class:`~enclavekit.channel.errors.RecordError` naming the problem; after one, the session is
        broken and every later call fails.
        """
        if self._broken:
            raise SessionClosed("the session was broken by an earlier refused record")
        try:
            return self._open(message, now)
        except RecordError:
            self._broken = True
            raise

    def _open(self, message: bytes, now: datetime) -> bytes | None:
        if self._peer_closed:
            raise RecordAfterClose("a record arrived after the peer closed the session")
        if now >= self.expires_at:
            raise SessionExpired(f"the session expired at {self.expires_at.isoformat()}")
        size = len(message)
        if size < RECORD_OVERHEAD:
            raise RecordMalformed(f"a record is at least {RECORD_OVERHEAD} bytes, got {size}")
        version, raw_type, length, sequence = _RECORD_HEADER.unpack_from(message)
        if raw_type not in _RECORD_TYPES:
            raise RecordMalformed(f"type 0x{raw_type:02x} is not a record type")
        if length != size - HEADER_SIZE:
            raise RecordMalformed(f"record header says {length} bytes, the record has {size - HEADER_SIZE}")
        limit = self.limits.max_record_size
        if size - RECORD_OVERHEAD > limit:
            raise RecordTooLarge(f"record of {size - RECORD_OVERHEAD} bytes; the limit is {limit}")
        if version != self.version:
            raise RecordTampered(f"record version {version} is not the session's {self.version}")
        direction = self._receive
        nonce = (direction.iv ^ sequence).to_bytes(12, "big")
        aad = self._aad[raw_type] + sequence.to_bytes(8, "big")
        try:
            data = direction.aead.decrypt(nonce, message[HEADER_SIZE + 8 :], aad)
        except InvalidTag:
            raise RecordTampered(f"record {sequence} does not authenticate") from None
        expected = self._receive_sequence
        if sequence != expected:
            if sequence < expected:
                raise RecordReplayed(f"record {sequence} was already received (expected {expected})")
            raise RecordOutOfOrder(f"record {sequence} arrived while {expected} was expected")
        self._receive_sequence = expected + 1
        if raw_type == MessageType.DATA:
            return data
        if data:
            raise RecordMalformed(f"a {MessageType(raw_type).name.lower()} record carries no data")
        if raw_type == MessageType.KEY_UPDATE:
            self._receive = direction.successor(now)
        else:
            self._peer_closed = True
        return None

    def end_of_stream(self) -> None:
        """The transport ended: fine after the peer's close record, :class:`SessionTruncated` otherwise."""
        if not self._peer_closed:
            raise SessionTruncated("the stream ended without the peer's close record")

    # --- state -------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """This side sent its close record (or the session broke)."""
        return self._closed or self._broken

    @property
    def peer_closed(self) -> bool:
        return self._peer_closed

    @property
    def sent(self) -> int:
        """Records sent so far (all types): the next send sequence number."""
        return self._send_sequence

    @property
    def received(self) -> int:
        return self._receive_sequence

    def __repr__(self) -> str:
        return f"Session(role={self.role}, version={self.version}, id={self.session_id.hex()})"


class MessageReader:
    """Splits a byte stream into whole channel messages, refusing oversized ones from their header alone.

    Sans-I/O: :meth:`feed` what arrives, take what :meth:`next_message` returns, call :meth:`eof` when the
    stream ends. Never buffers more than one message plus one header beyond the limit of its type.
    """

    __slots__ = ("_buffer", "_needed", "handshake", "max_record_size")

    def __init__(self, *, max_record_size: int = DEFAULT_MAX_RECORD_SIZE, handshake: bool = True) -> None:
        self.max_record_size = max_record_size
        self.handshake = handshake
        """True until the session is established: header errors are then handshake errors."""
        self._buffer = bytearray()
        self._needed: int | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> bytes | None:
        """The next whole message (header included), or None until more bytes arrive."""
        if self._needed is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            header = parse_header(
                bytes(self._buffer[:HEADER_SIZE]), max_record_size=self.max_record_size, handshake=self.handshake
            )
            self._needed = HEADER_SIZE + header.length
        if len(self._buffer) < self._needed:
            return None
        message = bytes(self._buffer[: self._needed])
        del self._buffer[: self._needed]
        self._needed = None
        return message

    def eof(self) -> None:
        """The stream ended; raise if it ended inside a message."""
        if self._buffer:
            error = HandshakeMalformed if self.handshake else RecordTruncated
            raise error(f"the stream ended {len(self._buffer)} byte(s) into a message")
