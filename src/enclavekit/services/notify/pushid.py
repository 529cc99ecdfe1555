"""Encrypted push IDs and the enclave's push key.

A client seals its push ID (the Braze alias of its device) to the enclave's X25519 public key with a libsodium
sealed box (``crypto_box_seal``: ``epk(32) ‖ mac(16) ‖ ciphertext``), exactly as World Chat clients do, and sends
it as hex. The host parses that hex once, here, and only checks that it is well formed: it can never open it.

Inside the enclave, :class:`PushKeys` is the one seam through which the private key is used. The default,
:class:`GeneratedPushKeys`, is a key made in memory at boot; :class:`TrackPushKeys` derives it from the
enclave track's shared secret, so every enclave of a track opens the same push IDs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from enclavekit.services.notify.errors import InvalidPushId

__all__ = [
    "MAX_PUSH_ID_BYTES",
    "SEAL_OVERHEAD",
    "EncryptedPushId",
    "GeneratedPushKeys",
    "PushKeys",
    "StaticPushKeys",
    "TrackPushKeys",
    "TrackSecret",
    "seal_push_id",
]

SEAL_OVERHEAD = 48
"""Bytes a sealed box adds: the ephemeral public key (32) and the Poly1305 tag (16)."""
MAX_PUSH_ID_BYTES = 512
"""Largest plaintext push ID accepted (Braze aliases and APNs/FCM tokens are far shorter)."""
MAX_SEALED_HEX = 2 * (SEAL_OVERHEAD + MAX_PUSH_ID_BYTES)
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True, slots=True)
class EncryptedPushId:
    """A well-formed sealed box, as lower-case hex (the canonical form stored and compared by the host)."""

    hex: str

    @classmethod
    def parse(cls, text: str) -> EncryptedPushId:
        """Check ``text`` is hex of a sealed box with a non-empty plaintext of at most 512 bytes."""
        if not isinstance(text, str) or not text or len(text) > MAX_SEALED_HEX or len(text) % 2:
            raise InvalidPushId("encrypted_push_id must be an even number of hex digits, at most 1120")
        if not _HEX.fullmatch(text):
            raise InvalidPushId("encrypted_push_id must be hex")
        if len(text) // 2 <= SEAL_OVERHEAD:
            raise InvalidPushId("encrypted_push_id is too short to be a sealed box (48 bytes of overhead)")
        return cls(text.lower())

    @property
    def raw(self) -> bytes:
        return bytes.fromhex(self.hex)


def seal_push_id(push_id: str, public_key: bytes) -> str:
    """What a client does: seal ``push_id`` to the enclave's X25519 ``public_key``; hex."""
    data = push_id.encode()
    if not 0 < len(data) <= MAX_PUSH_ID_BYTES:
        raise InvalidPushId(f"a push ID has 1..{MAX_PUSH_ID_BYTES} bytes")
    return bytes(SealedBox(PublicKey(public_key)).encrypt(data)).hex()


class PushKeys(Protocol):
    """The enclave's push key: where sealed push IDs are opened. Implementations keep the key in memory."""

    def public_key(self) -> bytes:
        """The X25519 public key (32 bytes) clients seal to; it is in the attestation document."""

    def open_sealed(self, box: bytes) -> bytes:
        """Open a sealed box; raises :class:`InvalidPushId` if it was not sealed to this key (or is damaged)."""

    def derive(self, label: bytes) -> bytes:
        """A 32-byte key for one purpose, the same in every enclave that holds this push key."""


class StaticPushKeys:
    """Push keys from a given X25519 private key (a track's derived key, or a test's)."""

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ValueError("an X25519 private key has 32 bytes")
        self._private = PrivateKey(private_key)
        self._box = SealedBox(self._private)
        self._public = bytes(self._private.public_key)
        self._seed = hashlib.sha256(b"enclavekit notify derive\x00" + private_key).digest()

    def public_key(self) -> bytes:
        return self._public

    def open_sealed(self, box: bytes) -> bytes:
        if len(box) <= SEAL_OVERHEAD or len(box) > SEAL_OVERHEAD + MAX_PUSH_ID_BYTES:
            raise InvalidPushId("not a sealed box of a push ID (length)")
        try:
            return bytes(self._box.decrypt(box))
        except CryptoError as exc:
            raise InvalidPushId("the sealed box does not open with this enclave's push key") from exc

    def derive(self, label: bytes) -> bytes:
        return hmac.new(self._seed, label, hashlib.sha256).digest()


class GeneratedPushKeys(StaticPushKeys):
    """A push key generated in this enclave's memory at boot (the default when the enclave is in no track)."""

    def __init__(self) -> None:
        super().__init__(bytes(PrivateKey.generate()))


class TrackSecret(Protocol):
    """What :class:`TrackPushKeys` needs of an enclave track (:class:`enclavekit.enclave.tracks.Track`)."""

    def derive(self, label: bytes, length: int = 32) -> bytes: ...


class TrackPushKeys(StaticPushKeys):
    """The push key of an enclave track: derived from the track secret, so every member opens the same boxes."""

    LABEL = b"enclavekit notify push key v1"

    def __init__(self, track: TrackSecret) -> None:
        super().__init__(track.derive(self.LABEL))
