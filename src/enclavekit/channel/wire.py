"""The byte format of every channel message (``docs/wire-session.md`` is the prose version).

Every message starts with the same 6-byte header, ``version u8 ‖ type u8 ‖ length u32`` (big-endian), where
``length`` counts the body that follows. Limits are per type and checked on the header, before any body byte is
read or allocated. Messages parse once, here, into frozen dataclasses; nothing else looks at raw handshake bytes.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from typing import Final

from enclavekit.channel.errors import (
    HandshakeIdentityKeyUnsupported,
    HandshakeIdentityMalformed,
    HandshakeMalformed,
    HandshakeVersionUnsupported,
    MessageTooLarge,
    RecordMalformed,
)

__all__ = [
    "ED25519_IDENTITY",
    "HEADER_SIZE",
    "HELLO_VERSION",
    "IDENTITY_VERSION",
    "MAX_DOCUMENT_SIZE",
    "MAX_HANDSHAKE_SIZE",
    "MAX_IDENTITY_SIZE",
    "MAX_RECORD_LIMIT",
    "NONCE_SIZE",
    "RANDOM_SIZE",
    "RECORD_OVERHEAD",
    "SIGNATURE_SIZE",
    "SUPPORTED_VERSIONS",
    "TAG_SIZE",
    "Alert",
    "Binding",
    "ClientFinish",
    "ClientHello",
    "ClientIdentityProof",
    "Header",
    "MessageType",
    "Mode",
    "ServerHello",
    "encode_header",
    "identity_key_field",
    "modes_from_mask",
    "modes_to_mask",
    "parse_header",
]

SUPPORTED_VERSIONS: Final = (2, 1)
"""Protocol versions this implementation speaks, most preferred first.

Version 2 is version 1 plus the sealed client identity field in the client finish (empty for an anonymous client)
and the client's key in the transcript hash; everything else is the same bytes."""
IDENTITY_VERSION: Final = 2
"""The first protocol version whose client finish can carry a client identity."""
HELLO_VERSION: Final = 1
"""The format version of the client hello, fixed so any responder can read any offer."""

HEADER_SIZE: Final = 6
NONCE_SIZE: Final = 32
RANDOM_SIZE: Final = 32
ENC_SIZE: Final = 32
CONFIRM_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
TAG_SIZE: Final = 16
SEQUENCE_SIZE: Final = 8
RECORD_OVERHEAD: Final = HEADER_SIZE + SEQUENCE_SIZE + TAG_SIZE
MAX_VERSIONS: Final = 8
MAX_DOCUMENT_SIZE: Final = 32 * 1024
"""Largest attestation document carried (Nitro documents are under 16 KiB, TDX quotes with certificates ~8)."""
MAX_HANDSHAKE_SIZE: Final = MAX_DOCUMENT_SIZE + 1024
ED25519_IDENTITY: Final = 1
"""The client identity key type of a raw 32-byte Ed25519 public key (the only one today)."""
MAX_IDENTITY_SIZE: Final = 512
"""Largest sealed client identity accepted (an Ed25519 one is 97 + 16 bytes; room for a larger key type later)."""
_ED25519_IDENTITY_SIZE: Final = 1 + 32 + SIGNATURE_SIZE
MAX_RECORD_LIMIT: Final = 64 * 1024 * 1024
"""The most any session may allow as a record's plaintext (the default is much lower)."""

_HEADER = struct.Struct(">BBI")
_ALERT_CODE = re.compile(rb"[a-z0-9_]{1,64}")


class MessageType(enum.IntEnum):
    CLIENT_HELLO = 0x01
    SERVER_HELLO = 0x02
    CLIENT_FINISH = 0x03
    ALERT = 0x0F
    DATA = 0x10
    KEY_UPDATE = 0x11
    CLOSE = 0x12

    @property
    def is_record(self) -> bool:
        return self >= MessageType.DATA


_TYPES: Final = frozenset(int(t) for t in MessageType)


class Mode(enum.IntEnum):
    """How the responder proves freshness: a document made for this handshake, or a cached one plus a signature."""

    FRESH = 1
    CACHED = 2


def modes_to_mask(modes: frozenset[Mode]) -> int:
    return sum(1 << (mode - 1) for mode in modes)


def modes_from_mask(mask: int) -> frozenset[Mode]:
    return frozenset(mode for mode in Mode if mask & (1 << (mode - 1)))


_MODE_MASK_ALL: Final = modes_to_mask(frozenset(Mode))


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    type: MessageType
    length: int


def encode_header(version: int, message_type: MessageType, length: int) -> bytes:
    return _HEADER.pack(version, message_type, length)


def parse_header(data: bytes, *, max_record_size: int, handshake: bool = False) -> Header:
    """Parse and limit-check a 6-byte header, before reading the body it announces.

    ``max_record_size`` is the largest record *plaintext* the reader accepts; handshake messages have their own
    fixed limit. Raises :class:`MessageTooLarge` for a length over the limit; for an unknown type or version,
    a handshake error while ``handshake`` is true, else :class:`RecordMalformed`.
    """
    malformed = HandshakeMalformed if handshake else RecordMalformed
    if len(data) != HEADER_SIZE:
        raise malformed(f"a message header is {HEADER_SIZE} bytes, got {len(data)}")
    version, raw_type, length = _HEADER.unpack(data)
    if raw_type not in _TYPES:
        raise malformed(f"unknown message type 0x{raw_type:02x}")
    message_type = MessageType(raw_type)
    if version not in SUPPORTED_VERSIONS:
        if handshake:
            raise HandshakeVersionUnsupported(f"message of unknown protocol version {version}")
        raise RecordMalformed(f"message of unknown protocol version {version}")
    limit = SEQUENCE_SIZE + max_record_size + TAG_SIZE if message_type.is_record else MAX_HANDSHAKE_SIZE
    if length > limit:
        raise MessageTooLarge(f"{message_type.name.lower()} announces {length} bytes; the limit is {limit}")
    return Header(version, message_type, length)


class _Reader:
    """Consumes a handshake body; every shortfall or leftover is :class:`HandshakeMalformed`."""

    __slots__ = ("_data", "_offset", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    def take(self, size: int, field: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise HandshakeMalformed(f"{self._what}: truncated in {field}")
        chunk = self._data[self._offset : end]
        self._offset = end
        return bytes(chunk)

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise HandshakeMalformed(f"{self._what}: {len(self._data) - self._offset} trailing byte(s)")


def _body(message: bytes, expected: MessageType, what: str) -> tuple[int, bytes]:
    """Split a whole message into (version, body), checking its header against the message itself."""
    if len(message) < HEADER_SIZE:
        raise HandshakeMalformed(f"{what}: shorter than a header")
    header = parse_header(bytes(message[:HEADER_SIZE]), max_record_size=0, handshake=True)
    if header.type != expected:
        raise HandshakeMalformed(f"expected {what}, got {header.type.name.lower()}")
    if header.length != len(message) - HEADER_SIZE:
        raise HandshakeMalformed(f"{what}: header says {header.length} body bytes, message has {len(message) - 6}")
    return header.version, bytes(message[HEADER_SIZE:])


def _check_versions(versions: tuple[int, ...], what: str) -> None:
    if not 1 <= len(versions) <= MAX_VERSIONS:
        raise HandshakeMalformed(f"{what}: offers {len(versions)} versions (1..{MAX_VERSIONS} allowed)")
    if len(set(versions)) != len(versions) or 0 in versions:
        raise HandshakeMalformed(f"{what}: versions must be distinct and non-zero")


def _check_mode_mask(mask: int, what: str) -> None:
    if mask == 0 or mask & ~_MODE_MASK_ALL:
        raise HandshakeMalformed(f"{what}: mode mask 0x{mask:02x} is empty or has unknown bits")


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The initiator's offer: versions (preferred first), acceptable modes, a fresh nonce, its own document."""

    versions: tuple[int, ...]
    modes: frozenset[Mode]
    nonce: bytes
    document: bytes | None = None

    def __post_init__(self) -> None:
        _check_versions(self.versions, "client hello")
        _check_mode_mask(modes_to_mask(self.modes), "client hello")
        if len(self.nonce) != NONCE_SIZE:
            raise HandshakeMalformed(f"client hello: nonce must be {NONCE_SIZE} bytes")
        if self.document is not None and not 1 <= len(self.document) <= MAX_DOCUMENT_SIZE:
            raise HandshakeMalformed(f"client hello: document must be 1..{MAX_DOCUMENT_SIZE} bytes")

    def to_bytes(self) -> bytes:
        document = self.document or b""
        body = b"".join(
            (
                bytes([len(self.versions), *self.versions]),
                bytes([modes_to_mask(self.modes)]),
                self.nonce,
                len(document).to_bytes(4, "big"),
                document,
            )
        )
        return encode_header(HELLO_VERSION, MessageType.CLIENT_HELLO, len(body)) + body

    @classmethod
    def from_bytes(cls, message: bytes) -> ClientHello:
        version, body = _body(message, MessageType.CLIENT_HELLO, "client hello")
        if version != HELLO_VERSION:
            raise HandshakeVersionUnsupported(f"client hello format version {version} is not {HELLO_VERSION}")
        reader = _Reader(body, "client hello")
        count = reader.u8("version count")
        if not 1 <= count <= MAX_VERSIONS:
            raise HandshakeMalformed(f"client hello: offers {count} versions (1..{MAX_VERSIONS} allowed)")
        versions = tuple(reader.take(count, "versions"))
        mask = reader.u8("modes")
        _check_mode_mask(mask, "client hello")
        nonce = reader.take(NONCE_SIZE, "nonce")
        size = reader.u32("document length")
        if size > MAX_DOCUMENT_SIZE:
            raise HandshakeMalformed(f"client hello: document of {size} bytes is over {MAX_DOCUMENT_SIZE}")
        document = reader.take(size, "document") if size else None
        reader.finish()
        return cls(versions, modes_from_mask(mask), nonce, document)


@dataclass(frozen=True, slots=True)
class Binding:
    """What the responder attests (fresh mode, via ``user_data``) or signs (cached mode): its view of the offer.

    Carrying the offer *as the responder saw it* lets the initiator tell a downgrade (the offer was edited in
    transit) from any other alteration, before it derives a key.
    """

    version: int
    mode: Mode
    offered_versions: tuple[int, ...]
    offered_modes: frozenset[Mode]
    client_hello_hash: bytes
    server_random: bytes

    def __post_init__(self) -> None:
        _check_versions(self.offered_versions, "binding")
        _check_mode_mask(modes_to_mask(self.offered_modes), "binding")
        if len(self.client_hello_hash) != 32 or len(self.server_random) != RANDOM_SIZE:
            raise HandshakeMalformed("binding: hash and random are 32 bytes each")

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                bytes([self.version, self.mode, len(self.offered_versions), *self.offered_versions]),
                bytes([modes_to_mask(self.offered_modes)]),
                self.client_hello_hash,
                self.server_random,
            )
        )

    @classmethod
    def read(cls, reader: _Reader) -> Binding:
        version = reader.u8("binding version")
        raw_mode = reader.u8("binding mode")
        if raw_mode not in tuple(Mode):
            raise HandshakeMalformed(f"server hello: unknown mode {raw_mode}")
        count = reader.u8("binding version count")
        if not 1 <= count <= MAX_VERSIONS:
            raise HandshakeMalformed(f"server hello: binding has {count} offered versions")
        offered = tuple(reader.take(count, "binding versions"))
        mask = reader.u8("binding modes")
        _check_mode_mask(mask, "server hello")
        return cls(
            version=version,
            mode=Mode(raw_mode),
            offered_versions=offered,
            offered_modes=modes_from_mask(mask),
            client_hello_hash=reader.take(32, "client hello hash"),
            server_random=reader.take(RANDOM_SIZE, "server random"),
        )


@dataclass(frozen=True, slots=True)
class ServerHello:
    """The responder's answer: its binding, its attestation document, and (cached mode) a signature."""

    binding: Binding
    document: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        if not 1 <= len(self.document) <= MAX_DOCUMENT_SIZE:
            raise HandshakeMalformed(f"server hello: document must be 1..{MAX_DOCUMENT_SIZE} bytes")
        if len(self.signature) not in (0, SIGNATURE_SIZE):
            raise HandshakeMalformed(f"server hello: signature must be empty or {SIGNATURE_SIZE} bytes")

    def to_bytes(self) -> bytes:
        body = b"".join(
            (
                self.binding.to_bytes(),
                len(self.document).to_bytes(4, "big"),
                self.document,
                bytes([len(self.signature)]),
                self.signature,
            )
        )
        return encode_header(self.binding.version, MessageType.SERVER_HELLO, len(body)) + body

    @classmethod
    def from_bytes(cls, message: bytes) -> ServerHello:
        version, body = _body(message, MessageType.SERVER_HELLO, "server hello")
        reader = _Reader(body, "server hello")
        binding = Binding.read(reader)
        if binding.version != version:
            raise HandshakeMalformed(f"server hello: header version {version} differs from binding {binding.version}")
        size = reader.u32("document length")
        if not 1 <= size <= MAX_DOCUMENT_SIZE:
            raise HandshakeMalformed(f"server hello: document of {size} bytes (1..{MAX_DOCUMENT_SIZE} allowed)")
        document = reader.take(size, "document")
        signature = reader.take(reader.u8("signature length"), "signature")
        reader.finish()
        return cls(binding, document, signature)


@dataclass(frozen=True, slots=True)
class ClientIdentityProof:
    """A client's long-term public key and its signature over the handshake transcript (version 2 and later).

    ``key_type ‖ public key ‖ proof``; the only key type is :data:`ED25519_IDENTITY` (32-byte key, 64-byte
    Ed25519 signature). This is the *plaintext* of the client finish's sealed identity field (the relay never
    sees it). Parsing checks the shape only; the handshake checks the proof.
    """

    public_key: bytes
    proof: bytes
    key_type: int = ED25519_IDENTITY

    def __post_init__(self) -> None:
        if self.key_type != ED25519_IDENTITY:
            raise HandshakeIdentityKeyUnsupported(f"client identity key type {self.key_type} is not supported")
        if len(self.public_key) != 32 or len(self.proof) != SIGNATURE_SIZE:
            raise HandshakeIdentityMalformed("an Ed25519 client identity is a 32-byte key and a 64-byte proof")

    def key_field(self) -> bytes:
        """``key_type ‖ public key``: what the transcript and the key schedule bind."""
        return bytes([self.key_type]) + self.public_key

    def to_bytes(self) -> bytes:
        return self.key_field() + self.proof

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientIdentityProof:
        """Parse the opened identity field (its sealed length already checked against :data:`MAX_IDENTITY_SIZE`)."""
        if not data:
            raise HandshakeIdentityMalformed("client identity: empty")
        if data[0] != ED25519_IDENTITY:
            raise HandshakeIdentityKeyUnsupported(f"client identity key type {data[0]} is not supported")
        if len(data) != _ED25519_IDENTITY_SIZE:
            raise HandshakeIdentityMalformed(
                f"client identity: an Ed25519 identity is {_ED25519_IDENTITY_SIZE} bytes, got {len(data)}"
            )
        return cls(bytes(data[1:33]), bytes(data[33:]), data[0])


def identity_key_field(public_key: bytes | None) -> bytes:
    """What the transcript hash binds of a client identity: ``0x00`` when anonymous, else
    ``key_type (0x01, Ed25519) ‖ public key``."""
    return b"\x00" if public_key is None else bytes([ED25519_IDENTITY]) + public_key


@dataclass(frozen=True, slots=True)
class ClientFinish:
    """The initiator's HPKE encapsulated key, its key confirmation, (mutual mode) its signature and, from
    version 2, its sealed client identity (empty: anonymous)."""

    version: int
    enc: bytes
    confirm: bytes
    signature: bytes = b""
    sealed_identity: bytes = b""

    def __post_init__(self) -> None:
        if len(self.enc) != ENC_SIZE or len(self.confirm) != CONFIRM_SIZE:
            raise HandshakeMalformed("client finish: enc and confirmation are 32 bytes each")
        if len(self.signature) not in (0, SIGNATURE_SIZE):
            raise HandshakeMalformed(f"client finish: signature must be empty or {SIGNATURE_SIZE} bytes")
        if self.sealed_identity and self.version < IDENTITY_VERSION:
            raise HandshakeVersionUnsupported(f"version {self.version} cannot carry a client identity")
        if len(self.sealed_identity) > MAX_IDENTITY_SIZE:
            raise HandshakeIdentityMalformed(f"client finish: identity over {MAX_IDENTITY_SIZE} bytes")

    def to_bytes(self) -> bytes:
        body = self.enc + self.confirm + bytes([len(self.signature)]) + self.signature
        if self.version >= IDENTITY_VERSION:
            body += len(self.sealed_identity).to_bytes(2, "big") + self.sealed_identity
        return encode_header(self.version, MessageType.CLIENT_FINISH, len(body)) + body

    @classmethod
    def from_bytes(cls, message: bytes) -> ClientFinish:
        version, body = _body(message, MessageType.CLIENT_FINISH, "client finish")
        reader = _Reader(body, "client finish")
        enc = reader.take(ENC_SIZE, "enc")
        confirm = reader.take(CONFIRM_SIZE, "confirmation")
        signature = reader.take(reader.u8("signature length"), "signature")
        sealed = b""
        if version >= IDENTITY_VERSION:
            if reader.remaining < 2:
                raise HandshakeIdentityMalformed("client finish: truncated in identity length")
            size = reader.u16("identity length")
            if size > MAX_IDENTITY_SIZE:
                raise HandshakeIdentityMalformed(f"client finish: identity of {size} bytes is over {MAX_IDENTITY_SIZE}")
            if reader.remaining < size:
                raise HandshakeIdentityMalformed(f"client finish: identity truncated ({reader.remaining} of {size})")
            sealed = reader.take(size, "identity")
        reader.finish()
        return cls(version, enc, confirm, signature, sealed)


@dataclass(frozen=True, slots=True)
class Alert:
    """A handshake abort, carrying only an error code (unauthenticated: a relay can forge or drop it)."""

    code: str

    def __post_init__(self) -> None:
        if not _ALERT_CODE.fullmatch(self.code.encode("ascii", "replace")):
            raise HandshakeMalformed("alert code must be 1..64 characters of [a-z0-9_]")

    def to_bytes(self) -> bytes:
        code = self.code.encode("ascii")
        body = bytes([len(code)]) + code
        return encode_header(HELLO_VERSION, MessageType.ALERT, len(body)) + body

    @classmethod
    def from_bytes(cls, message: bytes) -> Alert:
        _, body = _body(message, MessageType.ALERT, "alert")
        reader = _Reader(body, "alert")
        code = reader.take(reader.u8("code length"), "code")
        reader.finish()
        if not _ALERT_CODE.fullmatch(code):
            raise HandshakeMalformed("alert code must be 1..64 characters of [a-z0-9_]")
        return cls(code.decode("ascii"))
