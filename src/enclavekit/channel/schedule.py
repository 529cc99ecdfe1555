"""The key schedule: RFC 9180 HPKE base mode, with the handshake transcript as ``info``.

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 (RFC 9180 §7: KEM 0x0020, KDF 0x0001,
AEAD 0x0003). The initiator encapsulates to the responder's attested X25519 key; both sides then take every
session secret from the HPKE exporter, never from the HPKE AEAD itself:

    info        = "enclavekit-session" ‖ version ‖ SHA-256(client hello) ‖ SHA-256(server hello)
                  ‖ SHA-256(responder's attestation document)
    c2s secret  = Export("enclavekit c2s", 32)        s2c secret = Export("enclavekit s2c", 32)
    finished    = Export("enclavekit finished", 32)   session id = Export("enclavekit session id", 16)
    identity    = Export("enclavekit client identity", 32)   (version 2: seals the client identity field)

A traffic secret ``s`` yields the record key ``HKDF-Expand(s, "enclavekit key", 32)``, the nonce base
``HKDF-Expand(s, "enclavekit iv", 12)``, and, on a key update, its successor ``HKDF-Expand(s, "enclavekit key
update", 32)``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyInterface, KEMKeyPair

__all__ = [
    "INFO_LABEL",
    "SUITE",
    "SessionSecrets",
    "expand",
    "hpke_info",
    "initiator_secrets",
    "responder_secrets",
    "traffic_keys",
]

SUITE: Final = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
INFO_LABEL: Final = b"enclavekit-session"
SESSION_ID_SIZE: Final = 16


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def expand(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-SHA256 (RFC 5869) for outputs of at most 32 bytes: a single HMAC block."""
    if not 0 < length <= 32:
        raise ValueError("expand produces 1..32 bytes")
    return hmac.digest(secret, label + b"\x01", "sha256")[:length]


def hpke_info(version: int, client_hello: bytes, server_hello: bytes, document: bytes) -> bytes:
    """The HPKE ``info``: binds the version, both hellos and the attestation document into every key."""
    return INFO_LABEL + bytes([version]) + sha256(client_hello) + sha256(server_hello) + sha256(document)


def traffic_keys(secret: bytes) -> tuple[bytes, bytes, bytes]:
    """(ChaCha20-Poly1305 key, 12-byte nonce base, next secret) for one direction and key epoch."""
    return (
        expand(secret, b"enclavekit key", 32),
        expand(secret, b"enclavekit iv", 12),
        expand(secret, b"enclavekit key update", 32),
    )


@dataclass(frozen=True, slots=True)
class SessionSecrets:
    """What the handshake hands to the record layer (held in memory only)."""

    c2s: bytes
    s2c: bytes
    finished: bytes
    session_id: bytes
    identity: bytes
    """Seals the client finish's identity field (ChaCha20-Poly1305, used for that one message only)."""

    def __repr__(self) -> str:
        return f"SessionSecrets(session_id={self.session_id.hex()})"


def _secrets(context: object) -> SessionSecrets:
    export = context.export  # type: ignore[attr-defined]
    return SessionSecrets(
        c2s=export(b"enclavekit c2s", 32),
        s2c=export(b"enclavekit s2c", 32),
        finished=export(b"enclavekit finished", 32),
        session_id=export(b"enclavekit session id", SESSION_ID_SIZE),
        identity=export(b"enclavekit client identity", 32),
    )


def initiator_secrets(peer_kem_public_key: bytes, info: bytes, ephemeral_seed: bytes) -> tuple[bytes, SessionSecrets]:
    """HPKE SetupBaseS to the responder's key; the ephemeral key is DeriveKeyPair(``ephemeral_seed``).

    Returns ``(enc, secrets)``. Raises ``ValueError`` for an unusable peer key (the caller maps it).
    """
    public_key = SUITE.kem.deserialize_public_key(peer_kem_public_key)
    ephemeral: KEMKeyPair = SUITE.kem.derive_key_pair(ephemeral_seed)
    enc, context = SUITE.create_sender_context(public_key, info, eks=ephemeral)
    return enc, _secrets(context)


def responder_secrets(enc: bytes, private_key: KEMKeyInterface, info: bytes) -> SessionSecrets:
    """HPKE SetupBaseR with the responder's key. Raises ``ValueError`` for an unusable ``enc``."""
    return _secrets(SUITE.create_recipient_context(enc, private_key, info))


def confirmation(finished: bytes, transcript_hash: bytes) -> bytes:
    """The initiator's key confirmation: HMAC-SHA256(finished, SHA-256(client hello ‖ server hello ‖ enc))."""
    return hmac.digest(finished, transcript_hash, "sha256")
