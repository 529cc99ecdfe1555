"""AIR v1 receipts (Attested Inference Receipts): the claims, their encoding, signing and parsing.

A receipt is a tagged COSE_Sign1 (tag 18) with the protected header ``{1: -8 (EdDSA), 3: 61
(application/cwt)}``, an empty unprotected map, a CWT claims map as payload (deterministic CBOR, RFC 8949
§4.2) and a 64-byte Ed25519 signature. ``air-v1.cddl`` (EphemeralML, frozen 2026-02-25) is authoritative for
keys and types; ``docs/receipts.md`` has the format and a test vector.

This module is pure: no I/O, no clock. :func:`sign_receipt` is what an enclave calls per request;
:func:`parse_receipt` is layer 1 of verification (see :mod:`enclavekit.receipts.verify` for layers 2-4).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.attestation import cbor
from enclavekit.attestation.cose import COSE_SIGN1_TAG, sig_structure
from enclavekit.attestation.errors import Malformed
from enclavekit.receipts.errors import BadMeasurementLength, ReceiptMalformed, UnsupportedAlgorithm, ZeroModelHash

__all__ = [
    "AIR_V1_PROFILE",
    "CONTENT_TYPE_CWT",
    "EDDSA",
    "MAX_RECEIPT_SIZE",
    "MODEL_HASH_SCHEMES",
    "PROTECTED_HEADER",
    "EnclaveMeasurements",
    "MeasurementType",
    "Receipt",
    "ReceiptClaims",
    "ReceiptSigner",
    "encode_claims",
    "parse_receipt",
    "sign_receipt",
    "validate_claims",
]

MAX_RECEIPT_SIZE = 64 * 1024
"""Largest receipt accepted or produced, in bytes (AIR v1)."""
EDDSA = -8
CONTENT_TYPE_CWT = 61
PROTECTED_HEADER = bytes.fromhex("a2012703183d")
"""The serialized protected header of every AIR v1 receipt: ``{1: -8, 3: 61}``."""
AIR_V1_PROFILE = "https://spec.cyntrisec.com/air/v1"
MODEL_HASH_SCHEMES = frozenset({"sha256-single", "sha256-concat", "sha256-manifest"})
"""The defined values of the optional ``model_hash_scheme`` claim; any other is rejected (fail closed)."""

_SHA256 = 32
_SHA384 = 48
_CTI = 16
_NONCE_MIN, _NONCE_MAX = 8, 64  # RFC 9711 §4.1: an eat_nonce has 8 to 64 bytes
_UINT_MAX = 2**64 - 1
_SIGNATURE = 64

# CWT claim keys (air-v1.cddl)
_ISS, _IAT, _CTI_KEY, _NONCE, _PROFILE = 1, 6, 7, 10, 265
_MODEL_ID, _MODEL_VERSION, _MODEL_HASH = -65537, -65538, -65539
_REQUEST_HASH, _RESPONSE_HASH, _ATTESTATION_HASH = -65540, -65541, -65542
_MEASUREMENTS, _POLICY_VERSION, _SEQUENCE = -65543, -65544, -65545
_EXECUTION_TIME, _MEMORY_PEAK, _SECURITY_MODE, _HASH_SCHEME = -65546, -65547, -65548, -65549
_REQUIRED_KEYS = frozenset(
    {_ISS, _IAT, _CTI_KEY, _PROFILE, *range(_SECURITY_MODE, _MODEL_ID + 1)}  # -65548..-65537
)
_OPTIONAL_KEYS = frozenset({_NONCE, _HASH_SCHEME})
_KNOWN_KEYS = _REQUIRED_KEYS | _OPTIONAL_KEYS


class MeasurementType(enum.StrEnum):
    """Which TEE measured the enclave: the ``measurement_type`` of ``enclave_measurements``."""

    NITRO = "nitro-pcr"
    TDX = "tdx-mrtd-rtmr"


_OPTIONAL_PCRS: Mapping[MeasurementType, tuple[str, ...]] = {
    MeasurementType.NITRO: ("pcr3", "pcr4", "pcr8"),
    MeasurementType.TDX: ("pcr3", "pcr4"),  # TDX: pcr0 MRTD, pcr1..pcr4 RTMR0..RTMR3
}


_MEASUREMENT_TYPES = {str(kind): kind for kind in MeasurementType}
_MEASUREMENT_KEYS = {
    kind: frozenset({"measurement_type", "pcr0", "pcr1", "pcr2", *optional})
    for kind, optional in _OPTIONAL_PCRS.items()
}


def _malformed(message: str) -> ReceiptMalformed:
    return ReceiptMalformed(f"AIR receipt: {message}")


def _check_text(value: Any, name: str) -> None:
    if type(value) is not str:
        raise _malformed(f"{name} must be a text string, got {type(value).__name__}")


def _check_uint(value: Any, name: str) -> None:
    if type(value) is not int or not 0 <= value <= _UINT_MAX:
        raise _malformed(f"{name} must be an unsigned 64-bit integer, got {value!r:.40}")


def _check_bytes(value: Any, name: str, size: int | None = None) -> None:
    if type(value) is not bytes:
        raise _malformed(f"{name} must be a byte string, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise _malformed(f"{name} must be {size} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveMeasurements:
    """The measured enclave: Nitro PCR0..2 (+3, 4, 8), or TDX MRTD and RTMR0..3 under the names pcr0..pcr4.

    Construction checks types and which registers the platform allows; the 48-byte length of each value is a
    claim check (layer 3, :func:`validate_claims`), so that a receipt with a short value is reported as
    ``bad_measurement_length`` rather than ``malformed``.
    """

    measurement_type: MeasurementType
    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    pcr3: bytes | None = None
    pcr4: bytes | None = None
    pcr8: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.measurement_type, MeasurementType):
            raise _malformed(f"measurement_type {self.measurement_type!r:.40} is not nitro-pcr or tdx-mrtd-rtmr")
        for name in ("pcr0", "pcr1", "pcr2"):
            _check_bytes(getattr(self, name), name)
        allowed = _OPTIONAL_PCRS[self.measurement_type]
        for name in ("pcr3", "pcr4", "pcr8"):
            value = getattr(self, name)
            if value is None:
                continue
            if name not in allowed:
                raise _malformed(f"{name} is not a {self.measurement_type} measurement")
            _check_bytes(value, name)

    @classmethod
    def nitro(cls, pcrs: Mapping[int, bytes], *, optional: tuple[int, ...] = ()) -> EnclaveMeasurements:
        """From a Nitro PCR map (an NSM's or a verified document's): PCR0..2, plus those of 3, 4, 8 named."""
        if not set(optional) <= {3, 4, 8}:
            raise _malformed(f"AIR Nitro measurements have PCR0..4 and PCR8, not {sorted(optional)}")
        extra = {f"pcr{index}": pcrs[index] for index in optional}
        return cls(measurement_type=MeasurementType.NITRO, pcr0=pcrs[0], pcr1=pcrs[1], pcr2=pcrs[2], **extra)

    @classmethod
    def tdx(cls, mrtd: bytes, rtmrs: tuple[bytes, ...]) -> EnclaveMeasurements:
        """From a TD's MRTD and its RTMR0..1 (at least) to RTMR3: pcr0 = MRTD, pcr1..pcr4 = RTMR0..RTMR3."""
        if not 2 <= len(rtmrs) <= 4:
            raise _malformed(f"TDX measurements take RTMR0..1 to RTMR0..3, got {len(rtmrs)} RTMRs")
        extra = {f"pcr{index + 1}": value for index, value in enumerate(rtmrs)}
        return cls(measurement_type=MeasurementType.TDX, pcr0=mrtd, **extra)

    def registers(self) -> dict[str, bytes]:
        """The present registers by name (``pcr0``... in key order), without ``measurement_type``."""
        out = {"pcr0": self.pcr0, "pcr1": self.pcr1, "pcr2": self.pcr2}
        for name in ("pcr3", "pcr4", "pcr8"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_cbor_map(self) -> dict[str, Any]:
        # deterministic order (RFC 8949 §4.2.1, bytewise on encoded keys): the 4-letter pcr names, then
        # "measurement_type" (text of 16 letters: head byte 0x70 > 0x64)
        return {**self.registers(), "measurement_type": str(self.measurement_type)}

    @classmethod
    def from_cbor_map(cls, value: Any) -> EnclaveMeasurements:
        if type(value) is not dict:
            raise _malformed(f"enclave_measurements must be a map, got {type(value).__name__}")
        kind = value.get("measurement_type")
        measurement_type = _MEASUREMENT_TYPES.get(kind) if type(kind) is str else None
        if measurement_type is None:
            raise _malformed(f"enclave_measurements: measurement_type {kind!r:.40} is not nitro-pcr or tdx-mrtd-rtmr")
        allowed = _MEASUREMENT_KEYS[measurement_type]
        for key in value:
            if type(key) is not str or key not in allowed:
                raise _malformed(f"enclave_measurements: unknown key {key!r:.40} for {measurement_type}")
        for name in ("pcr0", "pcr1", "pcr2"):
            if name not in value:
                raise _malformed(f"enclave_measurements: {name} is missing")
        return cls(
            measurement_type=measurement_type,
            pcr0=value["pcr0"],
            pcr1=value["pcr1"],
            pcr2=value["pcr2"],
            pcr3=value.get("pcr3"),
            pcr4=value.get("pcr4"),
            pcr8=value.get("pcr8"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptClaims:
    """The claims of one AIR v1 receipt. Construction checks every type and fixed length of air-v1.cddl.

    Hashes are SHA-256 (32 bytes): ``model_hash`` of the model artifacts, ``request_hash`` and
    ``response_hash`` of the request and response bytes, ``attestation_doc_hash`` of the attestation document
    that binds the signing key. ``iat`` is UNIX seconds; ``cti`` a 16-byte receipt id (UUID v4).
    """

    iss: str
    iat: int
    cti: bytes
    model_id: str
    model_version: str
    model_hash: bytes
    request_hash: bytes
    response_hash: bytes
    attestation_doc_hash: bytes
    enclave_measurements: EnclaveMeasurements
    policy_version: str
    sequence_number: int
    execution_time_ms: int
    memory_peak_mb: int
    security_mode: str
    eat_nonce: bytes | None = None
    model_hash_scheme: str | None = None
    eat_profile: str = AIR_V1_PROFILE

    def __post_init__(self) -> None:
        _check_text(self.iss, "iss")
        _check_text(self.model_id, "model_id")
        _check_text(self.model_version, "model_version")
        _check_text(self.policy_version, "policy_version")
        _check_text(self.security_mode, "security_mode")
        _check_uint(self.iat, "iat")
        _check_uint(self.sequence_number, "sequence_number")
        _check_uint(self.execution_time_ms, "execution_time_ms")
        _check_uint(self.memory_peak_mb, "memory_peak_mb")
        _check_bytes(self.cti, "cti", _CTI)
        _check_bytes(self.model_hash, "model_hash", _SHA256)
        _check_bytes(self.request_hash, "request_hash", _SHA256)
        _check_bytes(self.response_hash, "response_hash", _SHA256)
        _check_bytes(self.attestation_doc_hash, "attestation_doc_hash", _SHA256)
        if not isinstance(self.enclave_measurements, EnclaveMeasurements):
            raise _malformed("enclave_measurements must be EnclaveMeasurements")
        if self.eat_nonce is not None:
            _check_bytes(self.eat_nonce, "eat_nonce")
            if not _NONCE_MIN <= len(self.eat_nonce) <= _NONCE_MAX:
                raise _malformed(f"eat_nonce must have {_NONCE_MIN} to {_NONCE_MAX} bytes, got {len(self.eat_nonce)}")
        if self.model_hash_scheme is not None:
            _check_text(self.model_hash_scheme, "model_hash_scheme")
            if self.model_hash_scheme not in MODEL_HASH_SCHEMES:
                raise _malformed(f"model_hash_scheme {self.model_hash_scheme!r:.40} is not a defined scheme")
        if self.eat_profile != AIR_V1_PROFILE:
            raise _malformed(f"eat_profile {self.eat_profile!r:.60} is not {AIR_V1_PROFILE}")

    def to_cbor_map(self) -> dict[int, Any]:
        """The CWT claims map, keys in deterministic order (RFC 8949 §4.2.1)."""
        out: dict[int, Any] = {_ISS: self.iss, _IAT: self.iat, _CTI_KEY: self.cti}
        if self.eat_nonce is not None:
            out[_NONCE] = self.eat_nonce
        out[_PROFILE] = self.eat_profile
        out[_MODEL_ID] = self.model_id
        out[_MODEL_VERSION] = self.model_version
        out[_MODEL_HASH] = self.model_hash
        out[_REQUEST_HASH] = self.request_hash
        out[_RESPONSE_HASH] = self.response_hash
        out[_ATTESTATION_HASH] = self.attestation_doc_hash
        out[_MEASUREMENTS] = self.enclave_measurements.to_cbor_map()
        out[_POLICY_VERSION] = self.policy_version
        out[_SEQUENCE] = self.sequence_number
        out[_EXECUTION_TIME] = self.execution_time_ms
        out[_MEMORY_PEAK] = self.memory_peak_mb
        out[_SECURITY_MODE] = self.security_mode
        if self.model_hash_scheme is not None:
            out[_HASH_SCHEME] = self.model_hash_scheme
        return out

    @classmethod
    def from_cbor_map(cls, value: Any) -> ReceiptClaims:
        """Read a decoded claims map; unknown, missing and mistyped claims are :class:`ReceiptMalformed`."""
        if type(value) is not dict:
            raise _malformed(f"the payload must be a claims map, got {type(value).__name__}")
        for key in value:
            if type(key) is not int or key not in _KNOWN_KEYS:
                raise _malformed(f"unknown claim key {key!r:.40}")
        missing = _REQUIRED_KEYS - value.keys()
        if missing:
            raise _malformed(f"required claim(s) missing: {sorted(missing)}")
        return cls(
            iss=value[_ISS],
            iat=value[_IAT],
            cti=value[_CTI_KEY],
            eat_nonce=value.get(_NONCE),
            eat_profile=value[_PROFILE],
            model_id=value[_MODEL_ID],
            model_version=value[_MODEL_VERSION],
            model_hash=value[_MODEL_HASH],
            request_hash=value[_REQUEST_HASH],
            response_hash=value[_RESPONSE_HASH],
            attestation_doc_hash=value[_ATTESTATION_HASH],
            enclave_measurements=EnclaveMeasurements.from_cbor_map(value[_MEASUREMENTS]),
            policy_version=value[_POLICY_VERSION],
            sequence_number=value[_SEQUENCE],
            execution_time_ms=value[_EXECUTION_TIME],
            memory_peak_mb=value[_MEMORY_PEAK],
            security_mode=value[_SECURITY_MODE],
            model_hash_scheme=value.get(_HASH_SCHEME),
        )

    def to_json(self) -> dict[str, Any]:
        """The claims for JSON output: byte strings as hex, absent optional claims as ``null``."""
        measurements: dict[str, Any] = {"measurement_type": str(self.enclave_measurements.measurement_type)}
        measurements.update({name: v.hex() for name, v in self.enclave_measurements.registers().items()})
        return {
            "iss": self.iss,
            "iat": self.iat,
            "cti": self.cti.hex(),
            "eat_nonce": None if self.eat_nonce is None else self.eat_nonce.hex(),
            "eat_profile": self.eat_profile,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "model_hash": self.model_hash.hex(),
            "model_hash_scheme": self.model_hash_scheme,
            "request_hash": self.request_hash.hex(),
            "response_hash": self.response_hash.hex(),
            "attestation_doc_hash": self.attestation_doc_hash.hex(),
            "enclave_measurements": measurements,
            "policy_version": self.policy_version,
            "sequence_number": self.sequence_number,
            "execution_time_ms": self.execution_time_ms,
            "memory_peak_mb": self.memory_peak_mb,
            "security_mode": self.security_mode,
        }


def validate_claims(claims: ReceiptClaims) -> None:
    """Layer 3, the claim checks: a model hash that is not all zeros, 48-byte measurements. Raises."""
    if not any(claims.model_hash):
        raise ZeroModelHash("AIR receipt: model_hash is all zeros")
    for name, value in claims.enclave_measurements.registers().items():
        if len(value) != _SHA384:
            raise BadMeasurementLength(f"AIR receipt: measurement {name} has {len(value)} bytes, expected 48")


def encode_claims(claims: ReceiptClaims) -> bytes:
    """The receipt payload: the claims as deterministic CBOR (the bytes the signature covers)."""
    return cbor2.dumps(claims.to_cbor_map())


def sign_receipt(claims: ReceiptClaims, private_key: Ed25519PrivateKey) -> bytes:
    """Sign ``claims`` into an AIR v1 receipt (tagged COSE_Sign1, EdDSA). Deterministic: same input, same bytes.

    Refuses (raises :class:`ZeroModelHash`, :class:`BadMeasurementLength`, :class:`ReceiptMalformed`) claims
    that a verifier would reject, so an enclave never hands out a receipt that cannot verify.
    """
    validate_claims(claims)
    payload = encode_claims(claims)
    signature = private_key.sign(sig_structure(PROTECTED_HEADER, payload))
    receipt = cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [PROTECTED_HEADER, {}, payload, signature]))
    if len(receipt) > MAX_RECEIPT_SIZE:
        raise _malformed(f"{len(receipt)} bytes is over the limit of {MAX_RECEIPT_SIZE}")
    return receipt


_EMPTY_HASH = b"\x00" * _SHA256


class ReceiptSigner:
    """Signs one enclave's receipts: the same bytes as :func:`sign_receipt`, with the claims that never change
    per request (issuer, model, measurements, policy, security mode, hash scheme) checked and encoded once.

    An enclave signs a receipt after every engine call, when the engine's pass over the weights has evicted the
    CPU caches; building and checking a :class:`ReceiptClaims` and encoding all of it there cost ~3× the
    signature itself. Here a request costs the checks of its own values, the CBOR of those values (cbor2, each
    value on its own), joins with the constant parts encoded at construction, and the Ed25519 signature.
    ``tests/test_receipts_sign.py`` checks it against :func:`sign_receipt` byte for byte on generated claims.
    """

    __slots__ = ("_after_attestation", "_after_profile", "_constant", "_count", "_iss", "_key", "_tail")

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        *,
        iss: str,
        model_id: str,
        model_version: str,
        model_hash: bytes,
        enclave_measurements: EnclaveMeasurements,
        policy_version: str,
        security_mode: str,
        model_hash_scheme: str | None = None,
    ) -> None:
        constant = ReceiptClaims(  # the constant claims, checked as sign_receipt checks them
            iss=iss,
            iat=0,
            cti=bytes(_CTI),
            model_id=model_id,
            model_version=model_version,
            model_hash=model_hash,
            request_hash=_EMPTY_HASH,
            response_hash=_EMPTY_HASH,
            attestation_doc_hash=_EMPTY_HASH,
            enclave_measurements=enclave_measurements,
            policy_version=policy_version,
            sequence_number=0,
            execution_time_ms=0,
            memory_peak_mb=0,
            security_mode=security_mode,
            model_hash_scheme=model_hash_scheme,
        )
        validate_claims(constant)
        self._constant = _constant_claims(constant)
        dumps = cbor2.dumps
        self._key = private_key
        self._iss = _KEY[_ISS] + dumps(iss) + _KEY[_IAT]
        self._after_profile = b"".join(  # the profile .. the model hash, then the request hash's key
            (
                _KEY[_PROFILE] + dumps(AIR_V1_PROFILE),
                _KEY[_MODEL_ID] + dumps(model_id),
                _KEY[_MODEL_VERSION] + dumps(model_version),
                _KEY[_MODEL_HASH] + dumps(model_hash),
                _KEY[_REQUEST_HASH],
            )
        )
        self._after_attestation = b"".join(  # the measurements, the policy, then the sequence number's key
            (
                _KEY[_MEASUREMENTS] + dumps(enclave_measurements.to_cbor_map()),
                _KEY[_POLICY_VERSION] + dumps(policy_version),
                _KEY[_SEQUENCE],
            )
        )
        tail = _KEY[_SECURITY_MODE] + dumps(security_mode)
        if model_hash_scheme is not None:
            tail += _KEY[_HASH_SCHEME] + dumps(model_hash_scheme)
        self._tail = tail
        self._count = len(_REQUIRED_KEYS) + (model_hash_scheme is not None)  # claims, the nonce aside

    def sign(
        self,
        *,
        iat: int,
        cti: bytes,
        request_hash: bytes,
        response_hash: bytes,
        attestation_doc_hash: bytes,
        sequence_number: int,
        execution_time_ms: int,
        memory_peak_mb: int,
        eat_nonce: bytes | None = None,
    ) -> bytes:
        """The receipt of one request. Raises :class:`ReceiptMalformed` for a value ``ReceiptClaims`` refuses."""
        _check_uint(iat, "iat")
        _check_uint(sequence_number, "sequence_number")
        _check_uint(execution_time_ms, "execution_time_ms")
        _check_uint(memory_peak_mb, "memory_peak_mb")
        _check_bytes(cti, "cti", _CTI)
        _check_bytes(request_hash, "request_hash", _SHA256)
        _check_bytes(response_hash, "response_hash", _SHA256)
        _check_bytes(attestation_doc_hash, "attestation_doc_hash", _SHA256)
        dumps = cbor2.dumps
        count = self._count
        nonce = b""
        if eat_nonce is not None:
            _check_bytes(eat_nonce, "eat_nonce")
            if not _NONCE_MIN <= len(eat_nonce) <= _NONCE_MAX:
                raise _malformed(f"eat_nonce must have {_NONCE_MIN} to {_NONCE_MAX} bytes, got {len(eat_nonce)}")
            nonce = _KEY[_NONCE] + dumps(eat_nonce)
            count += 1
        claims = b"".join(  # in the order of ReceiptClaims.to_cbor_map (deterministic: RFC 8949 §4.2.1)
            (
                _map_head(count),
                self._iss,
                dumps(iat),
                _KEY[_CTI_KEY],
                dumps(cti),
                nonce,
                self._after_profile,
                dumps(request_hash),
                _KEY[_RESPONSE_HASH],
                dumps(response_hash),
                _KEY[_ATTESTATION_HASH],
                dumps(attestation_doc_hash),
                self._after_attestation,
                dumps(sequence_number),
                _KEY[_EXECUTION_TIME],
                dumps(execution_time_ms),
                _KEY[_MEMORY_PEAK],
                dumps(memory_peak_mb),
                self._tail,
            )
        )
        payload = dumps(claims)  # the payload as the byte string both structures carry
        receipt = _ENVELOPE_HEAD + payload + dumps(self._key.sign(_SIG_STRUCTURE_HEAD + payload))
        if len(receipt) > MAX_RECEIPT_SIZE:
            raise _malformed(f"{len(receipt)} bytes is over the limit of {MAX_RECEIPT_SIZE}")
        return receipt

    def sign_claims(self, claims: ReceiptClaims) -> bytes:
        """:meth:`sign` with the per-request values of ``claims``, whose other claims must be this signer's
        (``ReceiptMalformed`` otherwise): for callers that already hold a :class:`ReceiptClaims`."""
        if _constant_claims(claims) != self._constant:
            raise _malformed("the claims are not those this signer was prepared with (issuer, model, measurements…)")
        return self.sign(
            iat=claims.iat,
            cti=claims.cti,
            request_hash=claims.request_hash,
            response_hash=claims.response_hash,
            attestation_doc_hash=claims.attestation_doc_hash,
            sequence_number=claims.sequence_number,
            execution_time_ms=claims.execution_time_ms,
            memory_peak_mb=claims.memory_peak_mb,
            eat_nonce=claims.eat_nonce,
        )


def _constant_claims(claims: ReceiptClaims) -> tuple[object, ...]:
    return (
        claims.iss,
        claims.model_id,
        claims.model_version,
        claims.model_hash,
        claims.model_hash_scheme,
        claims.enclave_measurements,
        claims.policy_version,
        claims.security_mode,
        claims.eat_profile,
    )


def _map_head(count: int) -> bytes:
    """The head of a CBOR map of ``count`` < 24 pairs (RFC 8949 §3: major type 5, the count in the low bits)."""
    return bytes((0xA0 | count,))


_KEY = {key: cbor2.dumps(key) for key in _KNOWN_KEYS}
"""Each claim key's CBOR."""
# ["Signature1", protected, external_aad = b"", payload] up to the payload; the payload follows as a byte string
_SIG_STRUCTURE_HEAD = sig_structure(PROTECTED_HEADER, b"")[:-1]
# 18([protected, {}, payload, signature]) up to the payload
_ENVELOPE_HEAD = cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [PROTECTED_HEADER, {}, b"", b""]))[:-2]


@dataclass(frozen=True, slots=True)
class Receipt:
    """An AIR v1 receipt that passed layer 1 (parse): well-formed, EdDSA, claims typed. NOT yet verified."""

    claims: ReceiptClaims
    payload: bytes
    signature: bytes
    raw: bytes

    def to_be_signed(self) -> bytes:
        """The COSE Sig_structure the signature must cover."""
        return sig_structure(PROTECTED_HEADER, self.payload)


def _decode(data: bytes, what: str) -> Any:
    try:
        return cbor.decode(data, max_size=MAX_RECEIPT_SIZE, what=what)
    except Malformed as exc:
        raise _malformed(exc.message) from exc


def _reject_protected_header(protected: Any) -> None:
    """Say why a protected header that is not exactly ``PROTECTED_HEADER`` is refused (always raises)."""
    if type(protected) is not bytes:
        raise _malformed("protected header is not a byte string")
    header = _decode(protected, "protected header") if protected else {}
    if type(header) is not dict:
        raise _malformed("protected header is not a map")
    alg = header.get(1)
    if type(alg) is not int or alg != EDDSA:
        raise UnsupportedAlgorithm(f"AIR receipt: algorithm {alg!r:.40} is not EdDSA (-8)")
    raise _malformed(f"protected header must be {{1: -8, 3: 61}} ({PROTECTED_HEADER.hex()}), got {protected.hex()}")


def parse_receipt(data: bytes) -> Receipt:
    """Layer 1: parse untrusted bytes into a :class:`Receipt`, or raise a :class:`ReceiptError`.

    Rejects (``malformed``) input over :data:`MAX_RECEIPT_SIZE`, bad or trailing CBOR, an untagged or
    otherwise tagged envelope, a protected header other than ``{1: -8, 3: 61}``, a non-empty unprotected map,
    a signature that is not 64 bytes, unknown/duplicate/missing/mistyped claims, and a payload that is not
    deterministically encoded; an algorithm other than EdDSA is ``unsupported_algorithm``.
    """
    if not isinstance(data, bytes):
        raise _malformed(f"expected bytes, got {type(data).__name__}")
    item = _decode(data, "COSE_Sign1")
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
        tag = item.tag if isinstance(item, cbor2.CBORTag) else None
        raise _malformed(f"expected a COSE_Sign1 under CBOR tag 18, got tag {tag}")
    body = item.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise _malformed("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = body
    if protected != PROTECTED_HEADER:
        _reject_protected_header(protected)
    if not isinstance(unprotected, Mapping) or unprotected:  # cbor2 freezes maps under a tag
        raise _malformed("the unprotected header must be an empty map")
    if type(payload) is not bytes:
        raise _malformed("payload is not a byte string (detached payloads are not AIR v1)")
    if type(signature) is not bytes or len(signature) != _SIGNATURE:
        size = len(signature) if isinstance(signature, bytes) else type(signature).__name__
        raise _malformed(f"signature must be a 64-byte string, got {size}")
    claims = ReceiptClaims.from_cbor_map(_decode(payload, "claims"))
    if encode_claims(claims) != payload:
        raise _malformed("payload is not deterministic CBOR (RFC 8949 §4.2): key order or integer/length form")
    return Receipt(claims, payload, signature, data)
