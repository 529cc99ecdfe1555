"""COSE_Sign1 (RFC 9052) as AWS Nitro uses it: ES384 only, detached nothing, raw r‖s signatures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from enclavekit.attestation import cbor
from enclavekit.attestation.errors import Malformed, SignatureInvalid, UnsupportedAlgorithm

__all__ = [
    "COSE_SIGN1_TAG",
    "ES384",
    "ES384_PROTECTED",
    "CoseSign1",
    "sig_structure",
    "sign_es384",
    "verify_es384",
]

COSE_SIGN1_TAG = 18
ES384 = -35
ES384_PROTECTED = cbor2.dumps({1: ES384})
"""The protected header every Nitro document carries: ``h'a1013822'``."""
_P384_COORDINATE = 48


@dataclass(frozen=True, slots=True)
class CoseSign1:
    """A COSE_Sign1 structure, split but not yet verified. ``protected`` is kept as received."""

    protected: bytes
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int) -> CoseSign1:
        """Parse a tagged (18) or untagged COSE_Sign1 whose protected header is exactly ES384."""
        item = cbor.decode(data, max_size=max_size, what="COSE_Sign1")
        if isinstance(item, cbor2.CBORTag):
            if item.tag != COSE_SIGN1_TAG:
                raise Malformed(f"COSE_Sign1: unexpected CBOR tag {item.tag} (expected 18 or none)")
            item = item.value  # cbor2 decodes arrays under a tag as tuples
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise Malformed("COSE_Sign1: expected an array of 4 items")
        protected, unprotected, payload, signature = item
        if not isinstance(protected, bytes):
            raise Malformed("COSE_Sign1: protected header is not a byte string")
        if not isinstance(unprotected, Mapping):
            raise Malformed("COSE_Sign1: unprotected header is not a map")
        if not isinstance(payload, bytes):
            raise Malformed("COSE_Sign1: payload is not a byte string (detached payloads are not accepted)")
        if not isinstance(signature, bytes):
            raise Malformed("COSE_Sign1: signature is not a byte string")
        header = cbor.decode(protected, max_size=64, what="COSE protected header") if protected else {}
        if not isinstance(header, dict) or header.get(1) != ES384 or len(header) != 1:
            raise UnsupportedAlgorithm(
                f"COSE_Sign1: protected header must be exactly {{1: -35}} (ES384), got {header!r}"
            )
        if 1 in unprotected:
            raise UnsupportedAlgorithm("COSE_Sign1: algorithm must not be given in the unprotected header")
        if len(signature) != 2 * _P384_COORDINATE:
            raise Malformed(f"COSE_Sign1: ES384 signature must be 96 bytes, got {len(signature)}")
        return cls(protected, unprotected, payload, signature)

    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected, self.payload)


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes a COSE_Sign1 signature covers: ``["Signature1", protected, external_aad, payload]``."""
    return cbor2.dumps(["Signature1", protected, external_aad, payload])


def verify_es384(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> None:
    """Check a raw r‖s ES384 signature. High-S signatures are legal (Nitro produces them)."""
    if len(signature) != 2 * _P384_COORDINATE:
        raise SignatureInvalid(f"ES384 signature must be 96 bytes, got {len(signature)}")
    r = int.from_bytes(signature[:_P384_COORDINATE], "big")
    s = int.from_bytes(signature[_P384_COORDINATE:], "big")
    if r == 0 or s == 0:
        raise SignatureInvalid("ES384 signature has a zero component")
    try:
        public_key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise SignatureInvalid("COSE signature does not verify with the leaf certificate's key") from exc


def sign_es384(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """Sign ``message`` with ES384 and return the raw 96-byte r‖s form COSE uses."""
    r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(_P384_COORDINATE, "big") + s.to_bytes(_P384_COORDINATE, "big")
