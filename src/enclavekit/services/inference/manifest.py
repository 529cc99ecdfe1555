"""The model manifest: what a publisher vouches for, signed with its Ed25519 key. Pure.

``manifest.json`` is ``{"manifest": BODY, "signature": HEX}``; the signature is Ed25519 over
``"enclavekit model manifest v1\\0" ‖ canonical JSON of BODY`` (sorted keys, no spaces, ASCII). BODY names the
model (``model_id``, ``version``), the SHA-256 of the plaintext weights, tokenizer and config, the encrypted
weights' chunk size, the KMS key and the encrypted data key (encryption context ``{model_id, version}``), and
``created_at``. Its own SHA-256 (of the canonical body) is the receipts' ``model_hash`` (scheme
``sha256-manifest``): one hash that covers every file the model is made of.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclavekit.services.inference.chunks import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from enclavekit.services.inference.errors import ManifestInvalid

__all__ = ["FORMAT", "MAX_MANIFEST_SIZE", "Manifest", "encryption_context"]

FORMAT: Final = "enclavekit.model-manifest/1"
MAX_MANIFEST_SIZE: Final = 64 * 1024
_CONTEXT: Final = b"enclavekit model manifest v1\x00"
_FIELDS: Final = frozenset(
    {
        "format",
        "model_id",
        "version",
        "hash_algorithm",
        "weights_sha256",
        "weights_size",
        "tokenizer_sha256",
        "config_sha256",
        "chunk_size",
        "key_id",
        "encrypted_data_key",
        "created_at",
    }
)


def encryption_context(model_id: str, version: str) -> dict[str, str]:
    """The KMS encryption context of a model's data key."""
    return {"model_id": model_id, "version": version}


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A model manifest (checked, and — when parsed — verified against the pinned publisher key)."""

    model_id: str
    version: str
    weights_sha256: bytes
    weights_size: int
    tokenizer_sha256: bytes
    config_sha256: bytes
    chunk_size: int
    key_id: str
    encrypted_data_key: bytes = field(repr=False)
    created_at: int

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "version": self.version,
            "hash_algorithm": "sha256",
            "weights_sha256": self.weights_sha256.hex(),
            "weights_size": self.weights_size,
            "tokenizer_sha256": self.tokenizer_sha256.hex(),
            "config_sha256": self.config_sha256.hex(),
            "chunk_size": self.chunk_size,
            "key_id": self.key_id,
            "encrypted_data_key": base64.b64encode(self.encrypted_data_key).decode(),
            "created_at": self.created_at,
        }

    @property
    def model_hash(self) -> bytes:
        """SHA-256 of the canonical body: the receipts' ``model_hash`` (``sha256-manifest``)."""
        return hashlib.sha256(_canonical(self.body())).digest()

    def sign(self, publisher: Ed25519PrivateKey) -> bytes:
        """``manifest.json``: the body and the publisher's signature over it."""
        body = self.body()
        signature = publisher.sign(_CONTEXT + _canonical(body))
        return json.dumps({"manifest": body, "signature": signature.hex()}, indent=1, sort_keys=True).encode()

    @classmethod
    def verify(cls, data: bytes, publisher_key: bytes) -> Manifest:
        """Parse ``manifest.json`` and verify its signature by ``publisher_key`` (raw Ed25519), or raise
        :class:`ManifestInvalid`."""
        if len(data) > MAX_MANIFEST_SIZE:
            raise ManifestInvalid(f"the manifest is {len(data)} bytes, over {MAX_MANIFEST_SIZE}")
        try:
            outer = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestInvalid(f"the manifest is not JSON: {exc}") from exc
        if not isinstance(outer, dict) or set(outer) != {"manifest", "signature"}:
            raise ManifestInvalid("expected exactly {manifest, signature}")
        body, signature = outer["manifest"], outer["signature"]
        if not isinstance(body, dict) or not isinstance(signature, str):
            raise ManifestInvalid("manifest must be an object and signature a hex string")
        try:
            Ed25519PublicKey.from_public_bytes(publisher_key).verify(
                bytes.fromhex(signature), _CONTEXT + _canonical(body)
            )
        except (InvalidSignature, ValueError) as exc:
            raise ManifestInvalid("the manifest is not signed by the pinned publisher key") from exc
        return cls._from_body(body)

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> Manifest:
        if set(body) != _FIELDS:
            raise ManifestInvalid(f"unexpected or missing fields: {sorted(set(body) ^ _FIELDS)}")
        if body["format"] != FORMAT or body["hash_algorithm"] != "sha256":
            raise ManifestInvalid(f"unsupported format {body['format']!r} / {body['hash_algorithm']!r}")
        try:
            manifest = cls(
                model_id=_text(body["model_id"]),
                version=_text(body["version"]),
                weights_sha256=_digest(body["weights_sha256"]),
                weights_size=_count(body["weights_size"]),
                tokenizer_sha256=_digest(body["tokenizer_sha256"]),
                config_sha256=_digest(body["config_sha256"]),
                chunk_size=_count(body["chunk_size"]),
                key_id=_text(body["key_id"]),
                encrypted_data_key=base64.b64decode(body["encrypted_data_key"], validate=True),
                created_at=_count(body["created_at"]),
            )
        except (TypeError, ValueError, binascii.Error) as exc:
            raise ManifestInvalid(f"a field is malformed: {exc}") from exc
        if not MIN_CHUNK_SIZE <= manifest.chunk_size <= MAX_CHUNK_SIZE:
            raise ManifestInvalid(f"chunk_size {manifest.chunk_size} is out of range")
        return manifest


def _text(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise ValueError(f"expected a string of 1..256 characters, found {value!r}")
    return value


def _digest(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("expected a SHA-256 in hex")
    return bytes.fromhex(value)


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise ValueError(f"expected a non-negative integer, found {value!r}")
    return value
