"""An endpoint's session keys, and how their public halves are bound into an attestation document.

An attesting endpoint (an enclave) holds two key pairs, in memory only:

* an X25519 key pair: the HPKE recipient key, so a client's session secret can be opened only inside the TEE;
* an Ed25519 key pair: signs handshakes when a cached (not per-handshake) attestation document is served, and
  signs the initiator's side of an enclave-to-enclave handshake.

Both public keys travel in the document's ``public_key`` field as a :class:`BoundKeys` (65 bytes, versioned from
its first byte), so whoever verifies the document learns both, and a relay can swap neither.

A client may also hold a long-term :class:`ClientIdentityKey` (Ed25519) that it proves in the handshake, so the
enclave can tell its callers apart (``enclavekit.client.identity`` keeps one in a file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import KEMKey, KEMKeyInterface

from enclavekit.channel.errors import HandshakeKeyInvalid

__all__ = [
    "BOUND_KEYS_SIZE",
    "BOUND_KEYS_VERSION",
    "BoundKeys",
    "ClientIdentityKey",
    "SessionKeys",
    "verify_identity_proof",
]

BOUND_KEYS_VERSION: Final = 1
BOUND_KEYS_SIZE: Final = 1 + 32 + 32
_ALL_ZERO = bytes(32)


@dataclass(frozen=True, slots=True)
class BoundKeys:
    """The public keys an attestation document binds: ``0x01 ‖ X25519 (32) ‖ Ed25519 (32)``."""

    kem_public_key: bytes
    signing_public_key: bytes

    def __post_init__(self) -> None:
        if len(self.kem_public_key) != 32 or len(self.signing_public_key) != 32:
            raise ValueError("bound keys are two 32-byte public keys")

    def to_bytes(self) -> bytes:
        return bytes([BOUND_KEYS_VERSION]) + self.kem_public_key + self.signing_public_key

    @classmethod
    def from_bytes(cls, data: bytes | None) -> BoundKeys:
        """Parse a document's ``public_key``; raise :class:`HandshakeKeyInvalid` unless it is exactly one."""
        if data is None:
            raise HandshakeKeyInvalid("the attestation document binds no public key")
        if len(data) != BOUND_KEYS_SIZE:
            raise HandshakeKeyInvalid(f"the attested public key is {len(data)} bytes, not {BOUND_KEYS_SIZE}")
        if data[0] != BOUND_KEYS_VERSION:
            raise HandshakeKeyInvalid(f"the attested public key has unknown format version {data[0]}")
        kem, signing = bytes(data[1:33]), bytes(data[33:65])
        if kem == _ALL_ZERO or signing == _ALL_ZERO:
            raise HandshakeKeyInvalid("the attested public key is all zeros")
        return cls(kem, signing)

    def verify_signature(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this Ed25519 key's signature of ``message`` (callers raise their own)."""
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


class SessionKeys:
    """An endpoint's X25519 and Ed25519 private keys. Never serialized by enclavekit; lives in memory only."""

    __slots__ = ("_bound", "_hpke", "_kem", "_signing")

    def __init__(self, kem_private_key: X25519PrivateKey, signing_private_key: Ed25519PrivateKey) -> None:
        self._kem = kem_private_key
        self._signing = signing_private_key
        self._hpke: KEMKeyInterface | None = None
        self._bound = BoundKeys(
            kem_private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            signing_private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        )

    @classmethod
    def generate(cls) -> SessionKeys:
        """Fresh keys from the operating system's CSPRNG (inside an enclave: seeded by the NSM)."""
        return cls(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, kem_private_key: bytes, signing_seed: bytes) -> SessionKeys:
        """Keys from raw bytes: for test vectors. Production code uses :meth:`generate`."""
        return cls(
            X25519PrivateKey.from_private_bytes(kem_private_key),
            Ed25519PrivateKey.from_private_bytes(signing_seed),
        )

    @property
    def bound(self) -> BoundKeys:
        return self._bound

    @property
    def public_bytes(self) -> bytes:
        """What an attestation document's ``public_key`` must carry for these keys."""
        return self._bound.to_bytes()

    def hpke_private_key(self) -> KEMKeyInterface:
        """The X25519 private key as pyhpke's key object, for the HPKE recipient context."""
        if self._hpke is None:
            self._hpke = KEMKey.from_pyca_cryptography_key(self._kem)
        return self._hpke

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def __repr__(self) -> str:
        return f"SessionKeys(public={self._bound.to_bytes().hex()[:16]}...)"


class ClientIdentityKey:
    """A client's long-term Ed25519 identity key (satisfies :class:`~enclavekit.channel.protocols.IdentitySigner`).

    Proven in a handshake by signing its transcript; the enclave learns only :attr:`public_key`.
    """

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> ClientIdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, seed: bytes) -> ClientIdentityKey:
        """A key from its 32-byte Ed25519 seed (test vectors; the key store reads PKCS#8 files)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._private

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key: what an enclave sees as ``CallContext.client_key``."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"ClientIdentityKey(public={self._public.hex()})"


def verify_identity_proof(public_key: bytes, proof: bytes, message: bytes) -> bool:
    """True when ``proof`` is the Ed25519 signature of ``message`` by ``public_key`` (callers raise their own)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(proof, message)
    except (InvalidSignature, ValueError):
        return False
    return True
