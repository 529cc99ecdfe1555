"""The encrypted model format: a streaming AEAD over fixed-size chunks (``EKMC`` v1). Sans-I/O.

::

    header  = "EKMC" ‖ version (u8 = 1) ‖ algorithm (u8 = 1: ChaCha20-Poly1305) ‖ chunk_size (u32 BE)
              ‖ nonce_prefix (7 bytes, random) ‖ plaintext_length (u64 BE)                    — 25 bytes
    chunk i = ChaCha20-Poly1305(key, nonce = nonce_prefix ‖ i (u32 BE) ‖ final (u8: 1 last, else 0),
                                plaintext[i·chunk_size : (i+1)·chunk_size], aad = header)     — +16-byte tag
    file    = header ‖ chunk 0 ‖ … ‖ chunk n-1,  n = max(1, ceil(plaintext_length / chunk_size))

The index in the nonce stops reordering; the final flag stops truncation (the chunk that becomes last after a
drop was sealed with final = 0) and extension; the header as associated data stops any change to the chunk
size or the length, which also fixes where each chunk ends. The key is used for one file only (a fresh KMS data
key per package). ``docs/inference.md`` has a test vector.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from enclavekit.services.inference.errors import ChunkInvalid

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HEADER_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_PLAINTEXT",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "ChunkHeader",
    "OpenedStream",
    "Reader",
    "open_stream",
    "seal_stream",
]

MAGIC: Final = b"EKMC"
VERSION: Final = 1
CHACHA20_POLY1305: Final = 1
HEADER_SIZE: Final = 25
TAG_SIZE: Final = 16
MIN_CHUNK_SIZE: Final = 1 << 12
MAX_CHUNK_SIZE: Final = 1 << 24
DEFAULT_CHUNK_SIZE: Final = 1 << 20
MAX_PLAINTEXT: Final = 1 << 34
"""16 GiB: larger models are refused before any allocation."""
_HEADER = struct.Struct(">4sBBI7sQ")


class Reader(Protocol):
    """Where chunks come from: a file opened ``rb``, ``io.BytesIO``, a socket's reader..."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The parsed, checked header of an encrypted model."""

    chunk_size: int
    nonce_prefix: bytes
    plaintext_length: int

    @property
    def chunks(self) -> int:
        return max(1, -(-self.plaintext_length // self.chunk_size))

    @property
    def ciphertext_length(self) -> int:
        return HEADER_SIZE + self.plaintext_length + self.chunks * TAG_SIZE

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            MAGIC, VERSION, CHACHA20_POLY1305, self.chunk_size, self.nonce_prefix, self.plaintext_length
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkHeader:
        if len(data) != HEADER_SIZE:
            raise ChunkInvalid(f"the header is {len(data)} bytes, not {HEADER_SIZE}")
        magic, version, algorithm, chunk_size, prefix, length = _HEADER.unpack(data)
        if magic != MAGIC or version != VERSION:
            raise ChunkInvalid("not an EKMC v1 encrypted model")
        if algorithm != CHACHA20_POLY1305:
            raise ChunkInvalid(f"unknown algorithm {algorithm}")
        header = cls(chunk_size, prefix, length)
        header._check()
        return header

    def _check(self) -> None:
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ChunkInvalid(f"chunk size {self.chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        if self.plaintext_length > MAX_PLAINTEXT or len(self.nonce_prefix) != 7:
            raise ChunkInvalid(f"plaintext length {self.plaintext_length} is over {MAX_PLAINTEXT}")
        if self.chunks >= 1 << 32:
            raise ChunkInvalid("too many chunks")

    def nonce(self, index: int) -> bytes:
        return self.nonce_prefix + struct.pack(">IB", index, 1 if index == self.chunks - 1 else 0)


def seal_stream(
    key: bytes,
    source: Reader,
    plaintext_length: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    nonce_prefix: bytes | None = None,
) -> Iterator[bytes]:
    """The encrypted file, piece by piece: the header, then each sealed chunk read from ``source``."""
    header = ChunkHeader(chunk_size, nonce_prefix if nonce_prefix is not None else os.urandom(7), plaintext_length)
    header._check()
    aad = header.to_bytes()
    aead = ChaCha20Poly1305(key)
    yield aad
    remaining = plaintext_length
    for index in range(header.chunks):
        size = min(chunk_size, remaining)
        plaintext = source.read(size)
        if len(plaintext) != size:
            raise ValueError(f"source ended {remaining - len(plaintext)} bytes early")
        remaining -= size
        yield aead.encrypt(header.nonce(index), plaintext, aad)


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """A decrypted file in one buffer (the only plaintext copy) and the SHA-256 of that plaintext."""

    plaintext: bytearray
    sha256: bytes


def open_stream(key: bytes, source: Reader, *, max_plaintext: int = MAX_PLAINTEXT) -> OpenedStream:
    """Authenticate and decrypt every chunk of ``source`` into one preallocated buffer, hashing as it goes.

    Raises :class:`ChunkInvalid` at the first chunk that does not authenticate at its place, when the stream is
    short, or when bytes follow the last chunk. Peak memory is the buffer plus two chunks.
    """
    header = ChunkHeader.from_bytes(source.read(HEADER_SIZE))
    if header.plaintext_length > max_plaintext:
        raise ChunkInvalid(f"the model is {header.plaintext_length} bytes, over the {max_plaintext} allowed")
    aad = header.to_bytes()
    aead = ChaCha20Poly1305(key)
    buffer = bytearray(header.plaintext_length)
    digest = hashlib.sha256()
    offset = 0
    for index in range(header.chunks):
        size = min(header.chunk_size, header.plaintext_length - offset)
        sealed = source.read(size + TAG_SIZE)
        if len(sealed) != size + TAG_SIZE:
            raise ChunkInvalid(f"the stream ends inside chunk {index} of {header.chunks}")
        try:
            plaintext = aead.decrypt(header.nonce(index), sealed, aad)
        except InvalidTag as exc:
            raise ChunkInvalid(f"chunk {index} does not authenticate (tampered, moved, dropped or cut)") from exc
        buffer[offset : offset + size] = plaintext
        digest.update(plaintext)
        del plaintext
        offset += size
    if source.read(1):
        raise ChunkInvalid("bytes follow the final chunk")
    return OpenedStream(buffer, digest.digest())
