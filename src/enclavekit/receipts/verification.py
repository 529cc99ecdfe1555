"""Verify an AIR v1 receipt offline, in the format's four layers, plus its binding to an attestation document.

1. parse (:func:`~enclavekit.receipts.air.parse_receipt`): tag, algorithm, headers, claim keys and types;
2. signature: Ed25519 over the COSE Sig_structure, with the given key or the one the attestation binds;
3. claims: a model hash that is not all zeros, 48-byte measurements;
4. policy: nonce, model hash, platform, freshness (``iat`` against the injected ``now``).

With an attestation (:class:`AttestationBinding`) the receipt's key must be the document's ``user_data`` (the
raw 32-byte Ed25519 public key) and ``attestation_doc_hash`` the SHA-256 of the document's bytes; otherwise
``key_not_bound``. :func:`verify_receipt` raises the first failure; :func:`report_receipt` never raises for a bad
receipt and lists every check (for the CLI and UIs).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclavekit.attestation.errors import PolicyInvalid
from enclavekit.attestation.nitro import NitroAttestation
from enclavekit.attestation.report import Check
from enclavekit.receipts.air import MeasurementType, Receipt, ReceiptClaims, parse_receipt, validate_claims
from enclavekit.receipts.errors import (
    KeyNotBound,
    ModelHashMismatch,
    NonceMismatch,
    PlatformMismatch,
    ReceiptError,
    SignatureInvalid,
    Stale,
    TimestampInFuture,
)

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "AttestationBinding",
    "ReceiptPolicy",
    "ReceiptReport",
    "VerifiedReceipt",
    "report_receipt",
    "verify_receipt",
]

_SMALL_ORDER_Y = frozenset(
    bytes.fromhex(value)
    for value in (
        "0000000000000000000000000000000000000000000000000000000000000000",  # y = 0 (order 4)
        "0100000000000000000000000000000000000000000000000000000000000000",  # y = 1, the identity
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p - 1 (order 2)
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p, a non-canonical 0
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1, a non-canonical 1
    )
)
"""Ed25519 public keys of small order, by their y coordinate (sign bit cleared): with one of them a signature
R = identity, S = 0 verifies for every message under OpenSSL. Refused, as ``verify_strict`` refuses them."""

DEFAULT_CLOCK_SKEW = 60
"""Seconds a receipt's ``iat`` may lie after the verification time (clocks differ) before it is refused."""
_ED25519_KEY = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptPolicy:
    """What a receipt must show beyond authenticity. Every field left ``None`` is not checked.

    ``nonce``: the ``eat_nonce`` the client sent (a receipt without one fails); ``model_hash``: the expected
    SHA-256 model identity; ``platform``: the expected ``measurement_type``; ``max_age``: seconds since ``iat``
    after which a receipt is stale; ``max_clock_skew``: seconds ``iat`` may be ahead of ``now``.
    """

    nonce: bytes | None = None
    model_hash: bytes | None = None
    platform: MeasurementType | None = None
    max_age: int | None = None
    max_clock_skew: int = DEFAULT_CLOCK_SKEW

    def __post_init__(self) -> None:
        if self.nonce is not None and (type(self.nonce) is not bytes or not self.nonce):
            raise PolicyInvalid("receipt policy: nonce must be non-empty bytes")
        if self.model_hash is not None and (type(self.model_hash) is not bytes or len(self.model_hash) != 32):
            raise PolicyInvalid("receipt policy: model_hash must be 32 bytes (SHA-256)")
        if self.platform is not None and not isinstance(self.platform, MeasurementType):
            raise PolicyInvalid("receipt policy: platform must be a MeasurementType")
        if self.max_age is not None and (type(self.max_age) is not int or self.max_age <= 0):
            raise PolicyInvalid("receipt policy: max_age must be a positive number of seconds")
        if type(self.max_clock_skew) is not int or self.max_clock_skew < 0:
            raise PolicyInvalid("receipt policy: max_clock_skew must be zero or more seconds")


@dataclass(frozen=True, slots=True)
class AttestationBinding:
    """A Nitro attestation document, already verified, with its bytes: it names the key receipts must use.

    Build it from the document you verified (``enclavekit.attestation.nitro.verify``) and those same bytes.
    """

    document: bytes
    attestation: NitroAttestation
    document_hash: bytes = field(init=False, repr=False, compare=False)
    """SHA-256 of the whole document (the COSE_Sign1 bytes): what ``attestation_doc_hash`` must be. Computed once:
    a client verifies every receipt of a session against the same binding."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "document_hash", hashlib.sha256(self.document).digest())


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """A receipt that passed every layer (and the binding, when an attestation was given)."""

    claims: ReceiptClaims
    public_key: bytes
    raw: bytes
    attestation: NitroAttestation | None = None


@dataclass(frozen=True, slots=True)
class ReceiptReport:
    """Every check run on one receipt. ``receipt`` is set exactly when all passed; else ``error`` is the first.

    ``claims`` are the parsed claims when layer 1 passed, for display: not trusted unless ``valid``.
    """

    checks: tuple[Check, ...]
    receipt: VerifiedReceipt | None
    error: ReceiptError | None
    claims: ReceiptClaims | None

    @property
    def valid(self) -> bool:
        return self.error is None

    def verified(self) -> VerifiedReceipt:
        """The verified receipt, or the first failure raised."""
        if self.error is not None:
            raise self.error
        assert self.receipt is not None
        return self.receipt

    def to_json(self) -> dict[str, Any]:
        """``{valid, error: {code, message} | null, claims, checks}`` (the ``receipt verify --json`` shape)."""
        return {
            "valid": self.valid,
            "error": None if self.error is None else self.error.to_json(),
            "claims": None if self.claims is None else self.claims.to_json(),
            "checks": [check.to_json() for check in self.checks],
        }


class _Checks:
    """Runs the checks of one receipt: records each for a report, or (``fail_fast``, what
    :func:`verify_receipt` needs) only raises the first failure — the same checks in the same order."""

    __slots__ = ("checks", "error", "fail_fast")

    def __init__(self, *, fail_fast: bool = False) -> None:
        self.checks: list[Check] = []
        self.error: ReceiptError | None = None
        self.fail_fast = fail_fast

    def run(self, name: str, phase: str, check: Callable[[], str]) -> bool:
        if self.fail_fast:
            check()
            return True
        try:
            detail = check()
        except ReceiptError as exc:
            self.checks.append(Check(name, False, exc.message, phase, exc.code))
            if self.error is None:
                self.error = exc
            return False
        self.checks.append(Check(name, True, detail, phase))
        return True


@functools.lru_cache(maxsize=64)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """The key object of a raw Ed25519 public key, kept: a client verifies every receipt of an enclave with the same
    key, and loading it costs a third of a verification with cold caches. Raises ``ValueError`` (never cached)."""
    return Ed25519PublicKey.from_public_bytes(raw)


def _key_bytes(public_key: Ed25519PublicKey | bytes | None) -> bytes | None:
    if public_key is None or isinstance(public_key, bytes):
        return public_key
    return public_key.public_bytes_raw()


def report_receipt(
    data: bytes,
    *,
    public_key: Ed25519PublicKey | bytes | None = None,
    policy: ReceiptPolicy | None = None,
    now: datetime,
    attestation: AttestationBinding | None = None,
) -> ReceiptReport:
    """Run every check on ``data``; never raises for a bad receipt (see :func:`verify_receipt`).

    Raises :class:`PolicyInvalid` when there is no key to verify with (neither ``public_key`` nor
    ``attestation``) or ``now`` has no time zone: the caller's mistake, not the receipt's.
    """
    return _run_checks(data, public_key, policy, now, attestation, _Checks())


def _run_checks(
    data: bytes,
    public_key: Ed25519PublicKey | bytes | None,
    policy: ReceiptPolicy | None,
    now: datetime,
    attestation: AttestationBinding | None,
    checks: _Checks,
) -> ReceiptReport:
    if public_key is None and attestation is None:
        raise PolicyInvalid("a receipt needs a key to verify with: give public_key or an attestation")
    if now.tzinfo is None:
        raise PolicyInvalid("now must be timezone-aware")
    policy = policy or ReceiptPolicy()
    given_key = _key_bytes(public_key)
    if given_key is not None and len(given_key) != _ED25519_KEY:
        raise PolicyInvalid(f"an Ed25519 public key has 32 bytes, got {len(given_key)}")
    parsed: list[Receipt] = []

    def parse() -> str:
        parsed.append(parse_receipt(data))
        return f"AIR v1 COSE_Sign1, EdDSA, {len(data)} bytes"

    if not checks.run("receipt.parse", "parse", parse):
        return ReceiptReport(tuple(checks.checks), None, checks.error, None)
    receipt = parsed[0]
    claims = receipt.claims
    key = given_key

    if attestation is not None:

        def bound_key() -> str:
            bound = attestation.attestation.user_data
            if bound is None or len(bound) != _ED25519_KEY:
                size = "none" if bound is None else f"{len(bound)} bytes"
                raise KeyNotBound(f"the attestation's user_data is not a raw Ed25519 public key ({size})")
            if given_key is not None and not hmac.compare_digest(given_key, bound):
                raise KeyNotBound("the key given is not the one the attestation document binds (user_data)")
            return f"user_data {bound.hex()}"

        if not checks.run("binding.key", "binding", bound_key):
            return ReceiptReport(tuple(checks.checks), None, checks.error, claims)
        key = attestation.attestation.user_data
    assert key is not None

    def signature() -> str:
        if key[:31] + bytes([key[31] & 0x7F]) in _SMALL_ORDER_Y:
            raise SignatureInvalid(f"AIR receipt: key {key.hex()} has small order: it would accept forged signatures")
        try:
            _public_key(key).verify(receipt.signature, receipt.to_be_signed())
        except (InvalidSignature, ValueError) as exc:
            raise SignatureInvalid(f"AIR receipt: the Ed25519 signature does not verify with key {key.hex()}") from exc
        return f"Ed25519, key {key.hex()}"

    if not checks.run("receipt.signature", "signature", signature):
        return ReceiptReport(tuple(checks.checks), None, checks.error, claims)

    def claim_checks() -> str:
        validate_claims(claims)
        return "model hash set, measurements 48 bytes"

    checks.run("receipt.claims", "claims", claim_checks)

    if attestation is not None:

        def document_hash() -> str:
            expected = attestation.document_hash
            if not hmac.compare_digest(claims.attestation_doc_hash, expected):
                raise KeyNotBound(
                    f"attestation_doc_hash {claims.attestation_doc_hash.hex()} is not the SHA-256 of the attestation "
                    f"document given ({expected.hex()})"
                )
            return "SHA-256 of the attestation document"

        checks.run("binding.attestation_hash", "binding", document_hash)

    _policy_checks(checks, claims, policy, now)
    if checks.error is not None:
        return ReceiptReport(tuple(checks.checks), None, checks.error, claims)
    verified = VerifiedReceipt(claims, key, data, None if attestation is None else attestation.attestation)
    return ReceiptReport(tuple(checks.checks), verified, None, claims)


def _policy_checks(checks: _Checks, claims: ReceiptClaims, policy: ReceiptPolicy, now: datetime) -> None:
    expected_nonce = policy.nonce
    if expected_nonce is not None:

        def nonce() -> str:
            if claims.eat_nonce is None:
                raise NonceMismatch(f"AIR receipt carries no eat_nonce, expected {expected_nonce.hex()}")
            if not hmac.compare_digest(claims.eat_nonce, expected_nonce):
                raise NonceMismatch(f"AIR receipt nonce {claims.eat_nonce.hex()}, expected {expected_nonce.hex()}")
            return f"eat_nonce {expected_nonce.hex()}"

        checks.run("policy.nonce", "policy", nonce)
    expected_hash = policy.model_hash
    if expected_hash is not None:

        def model_hash() -> str:
            if not hmac.compare_digest(claims.model_hash, expected_hash):
                raise ModelHashMismatch(
                    f"AIR receipt model_hash {claims.model_hash.hex()}, expected {expected_hash.hex()}"
                )
            return f"model_hash {expected_hash.hex()}"

        checks.run("policy.model_hash", "policy", model_hash)
    expected_platform = policy.platform
    if expected_platform is not None:

        def platform() -> str:
            actual = claims.enclave_measurements.measurement_type
            if actual is not expected_platform:
                raise PlatformMismatch(f"AIR receipt measurement_type {actual}, expected {expected_platform}")
            return f"measurement_type {actual}"

        checks.run("policy.platform", "policy", platform)

    def freshness() -> str:
        age = now.timestamp() - claims.iat
        if -age > policy.max_clock_skew:
            raise TimestampInFuture(
                f"AIR receipt issued at {claims.iat}, {-age:.0f} s after the verification time "
                f"(allowed skew {policy.max_clock_skew} s)"
            )
        if policy.max_age is not None and age > policy.max_age:
            raise Stale(f"AIR receipt issued at {claims.iat} is {age:.0f} s old (max age {policy.max_age} s)")
        return f"issued {age:.0f} s before the verification time" + (
            "" if policy.max_age is None else f" (max age {policy.max_age} s)"
        )

    checks.run("policy.freshness", "policy", freshness)


def verify_receipt(
    data: bytes,
    *,
    public_key: Ed25519PublicKey | bytes | None = None,
    policy: ReceiptPolicy | None = None,
    now: datetime,
    attestation: AttestationBinding | None = None,
) -> VerifiedReceipt:
    """Verify ``data`` at time ``now``: return the verified receipt or raise the first failure's
    :class:`~enclavekit.receipts.errors.ReceiptError`. Needs ``public_key`` or ``attestation`` (or both: then
    they must agree). Runs the checks of :func:`report_receipt`, stopping at the first failure."""
    return _run_checks(data, public_key, policy, now, attestation, _Checks(fail_fast=True)).verified()
