"""Why an AIR receipt was refused: one exception type per reason, each with a stable ``code``.

The codes are the ones ``enclavekit receipt verify`` prints (issue #14). The reference implementation's codes
(EphemeralML, in the AIR v1 golden vectors) map onto them as :data:`AIR_CODES` says.
"""

from __future__ import annotations

from typing import ClassVar

from enclavekit.errors import Rejected

__all__ = [
    "AIR_CODES",
    "BadMeasurementLength",
    "KeyNotBound",
    "ModelHashMismatch",
    "NonceMismatch",
    "PlatformMismatch",
    "ReceiptError",
    "ReceiptMalformed",
    "SignatureInvalid",
    "Stale",
    "TimestampInFuture",
    "UnsupportedAlgorithm",
    "ZeroModelHash",
]


class ReceiptError(Rejected):
    """A receipt did not verify. Subclasses name the reason; ``layer`` is the AIR verification layer (1-4)."""

    code = "receipt_invalid"
    layer: ClassVar[int] = 0


class ReceiptMalformed(ReceiptError):
    """Layer 1: not an AIR v1 receipt (CBOR, tag, header, claim keys or types, sizes)."""

    code = "malformed"
    layer = 1


class UnsupportedAlgorithm(ReceiptError):
    """Layer 1: the protected header names another algorithm than EdDSA (-8)."""

    code = "unsupported_algorithm"
    layer = 1


class SignatureInvalid(ReceiptError):
    """Layer 2: the Ed25519 signature does not verify with the given key (altered, or another signer)."""

    code = "signature_invalid"
    layer = 2


class ZeroModelHash(ReceiptError):
    """Layer 3: the model hash is all zeros, so the receipt names no model."""

    code = "zero_model_hash"
    layer = 3


class BadMeasurementLength(ReceiptError):
    """Layer 3: an enclave measurement is not a 48-byte SHA-384 value."""

    code = "bad_measurement_length"
    layer = 3


class NonceMismatch(ReceiptError):
    """Layer 4: the receipt does not carry the nonce the client sent (a replay, or another client's receipt)."""

    code = "nonce_mismatch"
    layer = 4


class ModelHashMismatch(ReceiptError):
    """Layer 4: the receipt names another model than the one expected."""

    code = "model_hash_mismatch"
    layer = 4


class PlatformMismatch(ReceiptError):
    """Layer 4: the receipt's measurement type is not the expected platform's."""

    code = "platform_mismatch"
    layer = 4


class Stale(ReceiptError):
    """Layer 4: the receipt was issued longer ago than the policy's maximum age."""

    code = "stale"
    layer = 4


class TimestampInFuture(ReceiptError):
    """Layer 4: the receipt claims to be issued after the verification time, beyond the allowed clock skew."""

    code = "timestamp_in_future"
    layer = 4


class KeyNotBound(ReceiptError):
    """Binding: the receipt's key or attestation hash is not the attestation document's (or the key given)."""

    code = "key_not_bound"
    layer = 4


AIR_CODES: dict[str, type[ReceiptError]] = {
    "SIG_FAILED": SignatureInvalid,
    "BAD_ALG": UnsupportedAlgorithm,
    "ZERO_MODEL_HASH": ZeroModelHash,
    "BAD_MEASUREMENT_LENGTH": BadMeasurementLength,
    "NONCE_MISMATCH": NonceMismatch,
    "MODEL_HASH_MISMATCH": ModelHashMismatch,
    "PLATFORM_MISMATCH": PlatformMismatch,
    "TIMESTAMP_STALE": Stale,
}
"""The reference verifier's failure codes (as the golden vectors name them) and our error for each."""
