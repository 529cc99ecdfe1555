"""The AWS KMS JSON 1.1 wire format: request bodies in, typed fields out; answers and errors back to JSON.

A request is ``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` and a JSON object body; binary fields
travel as standard base64 strings. Errors are ``{"__type": "<Type>", "message": "..."}`` with an HTTP status
(400 for every client error KMS defines). This module parses and checks fields once, at the boundary, with the
limits AWS documents; everything behind it works on typed values.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from enclavekit.errors import Error
from enclavekit.kms.errors import (
    KmsInternal,
    KmsRejected,
    KmsUnavailable,
    SerializationError,
    ValidationError,
)

__all__ = [
    "CONTENT_TYPE",
    "MAX_BODY_SIZE",
    "OPERATIONS",
    "TARGET_PREFIX",
    "Fields",
    "RecipientRequest",
    "b64",
    "encode_error",
    "encode_response",
    "parse_body",
    "parse_target",
]

CONTENT_TYPE: Final = "application/x-amz-json-1.1"
TARGET_PREFIX: Final = "TrentService."
MAX_BODY_SIZE: Final = 128 * 1024
"""Largest request body read: a 32 KiB policy or a 16 KiB attestation document (base64) fit with room to spare."""
MAX_CONTEXT_PAIRS: Final = 64
MAX_CONTEXT_SIZE: Final = 8192
OPERATIONS: Final = frozenset(
    {
        "CreateKey",
        "DescribeKey",
        "ListKeys",
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "GenerateRandom",
        "Sign",
        "GetPublicKey",
        "GetKeyPolicy",
    }
)
RSAES_OAEP_SHA_256: Final = "RSAES_OAEP_SHA_256"


def parse_target(target: str | None) -> str | None:
    """The operation named by an ``X-Amz-Target`` header, or None when it is not ``TrentService.<Op>``."""
    if target is None or not target.startswith(TARGET_PREFIX):
        return None
    operation = target[len(TARGET_PREFIX) :]
    return operation if operation.isascii() and operation.isalnum() and len(operation) <= 64 else None


def parse_body(body: bytes) -> dict[str, Any]:
    """The request's JSON object; :class:`SerializationError` for anything else (an empty body is ``{}``)."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SerializationError("the request body is not valid UTF-8 JSON") from exc
    if not isinstance(document, dict):
        raise SerializationError("the request body must be a JSON object")
    return document


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_response(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def encode_error(error: Error) -> tuple[int, bytes]:
    """HTTP status and body for an error. Anything but a KMS protocol error is an internal error whose details
    (paths, settings) stay in the server's log."""
    if isinstance(error, KmsRejected | KmsUnavailable):
        return error.http_status, encode_response({"__type": error.aws_type, "message": error.message})
    return KmsInternal.http_status, encode_response({"__type": KmsInternal.aws_type, "message": "internal error"})


@dataclass(frozen=True, slots=True)
class RecipientRequest:
    """A ``Recipient`` parameter as sent, before its attestation document is verified."""

    attestation_document: bytes
    key_encryption_algorithm: str = RSAES_OAEP_SHA_256


class Fields:
    """Typed, checked access to one request's fields; every failure is a :class:`ValidationError`."""

    __slots__ = ("_body",)

    def __init__(self, body: Mapping[str, Any]) -> None:
        self._body = body

    def _get(self, name: str, required: bool) -> Any:
        value = self._body.get(name)
        if value is None and required:
            raise ValidationError(f"1 validation error detected: Value null at '{_camel(name)}' must not be null")
        return value

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        default: str | None = None,
        max_length: int = 2048,
        choices: frozenset[str] | None = None,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, str) or not 1 <= len(value) <= max_length:
            raise ValidationError(f"'{_camel(name)}' must be a string of 1 to {max_length} characters")
        if choices is not None and value not in choices:
            raise ValidationError(
                f"Value '{value[:64]}' at '{_camel(name)}' failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{', '.join(sorted(choices))}]"
            )
        return value

    def required_string(self, name: str, **options: Any) -> str:
        value = self.string(name, required=True, **options)
        assert value is not None
        return value

    def description(self, name: str, *, max_length: int) -> str:
        value = self._get(name, False)
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > max_length:
            raise ValidationError(f"'{_camel(name)}' must be a string of at most {max_length} characters")
        return value

    def blob(self, name: str, *, required: bool = False, minimum: int = 1, maximum: int) -> bytes | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > (maximum + 2) // 3 * 4 + 4:
            raise ValidationError(f"'{_camel(name)}' must be base64 of at most {maximum} bytes")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"'{_camel(name)}' is not valid base64") from exc
        if not minimum <= len(data) <= maximum:
            raise ValidationError(f"'{_camel(name)}' must be {minimum} to {maximum} bytes; got {len(data)}")
        return data

    def required_blob(self, name: str, *, minimum: int = 1, maximum: int) -> bytes:
        value = self.blob(name, required=True, minimum=minimum, maximum=maximum)
        assert value is not None
        return value

    def integer(self, name: str, *, minimum: int, maximum: int, required: bool = False) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        if type(value) is not int or not minimum <= value <= maximum:
            raise ValidationError(f"'{_camel(name)}' must be an integer from {minimum} to {maximum}")
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValidationError(f"'{_camel(name)}' must be a boolean")
        return value

    def encryption_context(self) -> dict[str, str]:
        value = self._get("EncryptionContext", False)
        if value is None:
            return {}
        if not isinstance(value, dict) or len(value) > MAX_CONTEXT_PAIRS:
            raise ValidationError(f"'encryptionContext' must be a map of at most {MAX_CONTEXT_PAIRS} pairs")
        size = 0
        for key, item in value.items():
            if not isinstance(key, str) or not key or not isinstance(item, str):
                raise ValidationError("'encryptionContext' keys must be non-empty strings, its values strings")
            try:
                size += len(key.encode("utf-8")) + len(item.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise ValidationError("'encryptionContext' must be valid Unicode (no lone surrogates)") from exc
        if size > MAX_CONTEXT_SIZE:
            raise ValidationError(f"'encryptionContext' is {size} bytes; at most {MAX_CONTEXT_SIZE}")
        return dict(value)

    def recipient(self, *, max_document: int) -> RecipientRequest | None:
        value = self._get("Recipient", False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValidationError("'recipient' must be an object")
        inner = Fields(value)
        algorithm = inner.string(
            "KeyEncryptionAlgorithm", default=RSAES_OAEP_SHA_256, choices=frozenset({RSAES_OAEP_SHA_256})
        )
        document = inner.blob("AttestationDocument", minimum=1, maximum=max_document)
        if document is None:
            raise ValidationError("'recipient.attestationDocument' must not be null")
        return RecipientRequest(document, algorithm or RSAES_OAEP_SHA_256)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]
