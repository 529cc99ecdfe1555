"""The emulator's ciphertext blob: self-describing (it names its key, so Decrypt needs no KeyId, as on AWS).

Format, version 1 (all lengths checked before use)::

    0      1 byte    version = 0x01
    1      1 byte    L = length of the key id (1..64)
    2      L bytes   key id (ASCII)
    2+L    12 bytes  AES-GCM nonce
    14+L   n+16      AES-256-GCM(key material, plaintext) ‖ tag

The associated data is the header (bytes ``0 .. 2+L``) followed by the encryption context, encoded as its pairs
sorted by the UTF-8 bytes of their keys, each ``u16 len(key) ‖ key ‖ u16 len(value) ‖ value`` (big-endian,
UTF-8). Altering any byte, naming another key, or decrypting under another context fails authentication.
``docs/kms.md`` has a test vector. AWS's own blob format is not public; this one is not meant to match it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclavekit.kms.errors import InvalidCiphertext

__all__ = ["MAX_BLOB_SIZE", "VERSION", "CiphertextBlob", "encode_context", "seal", "unseal"]

VERSION: Final = 1
MAX_BLOB_SIZE: Final = 6144
"""AWS's limit on ``CiphertextBlob``."""
MAX_KEY_ID: Final = 64
_NONCE: Final = 12
_TAG: Final = 16


def encode_context(context: Mapping[str, str]) -> bytes:
    """The canonical bytes of an encryption context (see the module docstring)."""
    pairs = sorted((key.encode(), value.encode()) for key, value in context.items())
    out = bytearray()
    for key, value in pairs:
        out += struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value
    return bytes(out)


@dataclass(frozen=True, slots=True)
class CiphertextBlob:
    """A parsed (not yet authenticated) blob: which key made it, and the sealed bytes."""

    key_id: str
    header: bytes
    nonce: bytes
    sealed: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> CiphertextBlob:
        """Parse a blob; raise :class:`InvalidCiphertext` if it is not a version-1 blob."""
        if not _NONCE + _TAG + 3 <= len(data) <= MAX_BLOB_SIZE or data[0] != VERSION:
            raise InvalidCiphertext("the ciphertext is not a ciphertext blob of this KMS")
        size = data[1]
        if not 1 <= size <= MAX_KEY_ID or len(data) < 2 + size + _NONCE + _TAG + 1:
            raise InvalidCiphertext("the ciphertext is not a ciphertext blob of this KMS")
        try:
            key_id = data[2 : 2 + size].decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidCiphertext("the ciphertext is not a ciphertext blob of this KMS") from exc
        header = data[: 2 + size]
        return cls(key_id, header, data[2 + size : 2 + size + _NONCE], data[2 + size + _NONCE :])


def seal(
    key: bytes,
    key_id: str,
    plaintext: bytes,
    context: Mapping[str, str],
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``plaintext`` under a 32-byte key, naming ``key_id`` and binding ``context``."""
    encoded_id = key_id.encode("ascii")
    if not 1 <= len(encoded_id) <= MAX_KEY_ID:
        raise ValueError("key id must be 1..64 ASCII characters")
    header = bytes((VERSION, len(encoded_id))) + encoded_id
    nonce = random(_NONCE)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header + encode_context(context))


def unseal(key: bytes, blob: CiphertextBlob, context: Mapping[str, str]) -> bytes:
    """Authenticate and decrypt; raise :class:`InvalidCiphertext` on any mismatch (bytes, key or context)."""
    try:
        return AESGCM(key).decrypt(blob.nonce, blob.sealed, blob.header + encode_context(context))
    except InvalidTag as exc:
        raise InvalidCiphertext(
            "the ciphertext does not decrypt: it was altered, or the encryption context differs"
        ) from exc
