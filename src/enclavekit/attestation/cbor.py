"""Strict CBOR decoding for untrusted bytes.

cbor2 does the decoding (its C extension is fast and bounds-checks every length against the input); this
module adds what a verifier needs on top: an explicit size limit checked before anything is decoded, no
trailing bytes, no duplicate map keys, a nesting limit, and one error type (:class:`Malformed`).
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from enclavekit.attestation.errors import Malformed

__all__ = ["MAX_DEPTH", "decode", "encode"]

MAX_DEPTH = 16
"""Deepest nesting accepted; attestation structures need 4."""


def decode(data: bytes, *, max_size: int, what: str = "CBOR item") -> Any:
    """Decode exactly one CBOR item that fills ``data``.

    Raises :class:`Malformed` when ``data`` is larger than ``max_size``, is not well-formed CBOR, has bytes
    after the item, repeats a map key or nests deeper than :data:`MAX_DEPTH`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Malformed(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise Malformed(f"{what}: {len(data)} bytes is over the limit of {max_size}")
    if not data:
        raise Malformed(f"{what}: empty input")
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(stream, allow_duplicate_keys=False, max_depth=MAX_DEPTH)
    try:
        item = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        raise Malformed(f"{what}: not well-formed CBOR ({exc})") from exc
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError) as exc:
        raise Malformed(f"{what}: not decodable ({type(exc).__name__}: {exc})") from exc
    trailing = len(data) - stream.tell()
    if trailing:
        raise Malformed(f"{what}: {trailing} trailing byte(s) after the CBOR item")
    return item


def encode(item: Any) -> bytes:
    """Encode ``item`` as canonical-length CBOR (definite lengths, shortest integers)."""
    return cbor2.dumps(item)
