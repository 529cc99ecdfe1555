"""Messages between a client and the inference enclave (over the attested session), and the hashes receipts
sign. Shared and pure.

``request_hash`` and ``response_hash`` are defined over bytes both sides can rebuild, so a client checks a
receipt against what it sent and what it got:

* request:  SHA-256("enclavekit inference request v1\\0" ‖ u32 count ‖ (u32 len ‖ UTF-8 text)…)
* response: SHA-256("enclavekit inference response v1\\0" ‖ u32 count ‖ u32 dims ‖ float32 LE embeddings
  (row-major) ‖ one byte per text: 1 truncated, 0 not)
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from enclavekit.rpc import Route
from enclavekit.services.inference.errors import BadInput

__all__ = [
    "EMBED",
    "INFO",
    "MAX_TEXTS",
    "EmbedRequest",
    "EmbedResponse",
    "InferenceInfo",
    "InfoRequest",
    "decode_embeddings",
    "decode_embeddings_and_bytes",
    "embedding_bytes",
    "encode_embeddings",
    "request_hash",
    "response_hash",
    "response_hash_of_bytes",
    "utf8_texts",
]

MAX_TEXTS: Final = 4096
"""A hard bound of the wire; the enclave's configured ``max_batch`` is usually lower."""
_REQUEST: Final = b"enclavekit inference request v1\x00"
_RESPONSE: Final = b"enclavekit inference response v1\x00"


class EmbedRequest(BaseModel):
    """Texts to embed and, optionally, the client's nonce (hex, 8..64 bytes) for the receipt's ``eat_nonce``."""

    model_config = {"extra": "forbid"}
    texts: list[str] = Field(max_length=MAX_TEXTS)
    nonce: str | None = Field(default=None, min_length=16, max_length=128, pattern=r"^(?:[0-9a-fA-F]{2})*$")


class EmbedResponse(BaseModel):
    model_id: str
    model_version: str
    count: int
    dimensions: int
    embeddings: str
    """float32 little-endian, row-major, base64."""
    truncated: list[bool]
    tokens: int
    receipt: str
    """The AIR v1 receipt (COSE_Sign1), base64."""


class InfoRequest(BaseModel):
    model_config = {"extra": "forbid"}


class InferenceInfo(BaseModel):
    """What the enclave serves and the attestation document that binds its receipt key (``user_data``)."""

    ready: bool
    error: dict[str, str] | None
    model_id: str | None
    model_version: str | None
    model_hash: str | None
    receipt_public_key: str
    receipt_document: str
    """Attestation document (base64): ``user_data`` = the receipt key, ``public_key`` = the session key."""
    config_digest: str
    max_batch: int
    max_text_bytes: int


EMBED = Route("inference.embed", EmbedRequest, EmbedResponse)
INFO = Route("inference.info", InfoRequest, InferenceInfo)


def utf8_texts(texts: Sequence[str]) -> list[bytes]:
    """Each text as strict UTF-8, or :class:`BadInput` naming the first that is not (a lone surrogate...)."""
    out: list[bytes] = []
    for index, text in enumerate(texts):
        try:
            out.append(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise BadInput(f"text {index} is not valid UTF-8 ({exc.reason})") from None
    return out


def request_hash(texts: Sequence[bytes]) -> bytes:
    digest = hashlib.sha256(_REQUEST + struct.pack(">I", len(texts)))
    for text in texts:
        digest.update(struct.pack(">I", len(text)))
        digest.update(text)
    return digest.digest()


def embedding_bytes(vectors: npt.NDArray[np.float32]) -> bytes:
    """The embeddings as the wire and ``response_hash`` carry them: float32 little-endian, row-major."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def response_hash(vectors: npt.NDArray[np.float32], truncated: Sequence[bool]) -> bytes:
    count, dimensions = vectors.shape
    return response_hash_of_bytes(embedding_bytes(vectors), count, dimensions, truncated)


def response_hash_of_bytes(raw: bytes, count: int, dimensions: int, truncated: Sequence[bool]) -> bytes:
    """:func:`response_hash` of embeddings already in their wire bytes (:func:`embedding_bytes`): the enclave
    hashes exactly the bytes it sends, converting the vectors once."""
    digest = hashlib.sha256(_RESPONSE + struct.pack(">II", count, dimensions))
    digest.update(raw)
    digest.update(bytes(1 if t else 0 for t in truncated))
    return digest.digest()


def encode_embeddings(vectors: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(embedding_bytes(vectors)).decode()


def decode_embeddings(text: str, count: int, dimensions: int) -> npt.NDArray[np.float32]:
    """The embeddings of a response, checked to be ``count × dimensions`` float32 values."""
    return decode_embeddings_and_bytes(text, count, dimensions)[0]


def decode_embeddings_and_bytes(text: str, count: int, dimensions: int) -> tuple[npt.NDArray[np.float32], bytes]:
    """:func:`decode_embeddings`, and the wire bytes decoded (:func:`embedding_bytes` of the result): a client
    hashes what it received (:func:`response_hash_of_bytes`) without converting the vectors back."""
    raw = base64.b64decode(text, validate=True)
    if count < 0 or dimensions <= 0 or len(raw) != count * dimensions * 4:
        raise BadInput(f"embeddings hold {len(raw)} bytes, not {count}×{dimensions} float32")
    return np.frombuffer(raw, dtype="<f4").reshape(count, dimensions).astype(np.float32), raw
