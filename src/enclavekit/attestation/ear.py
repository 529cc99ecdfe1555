"""Verification results as EAR: the IETF RATS "EAT Attestation Results" claims set (draft-ietf-rats-ear-04).

An EAR carries, per attester (``submods``), a status tier (``affirming`` / ``warning`` / ``contraindicated``,
or ``none``), an AR4SI trustworthiness vector with one claim per aspect (``hardware``, ``executables``,
``configuration``...), the appraisal policy, and here the evidence's measurements (``ear_attester_claims``) and
the verifier's own findings such as the TCB status (``ear_verifier_claims``). This module builds the unsigned
claims set from any :class:`~enclavekit.attestation.report.Report`; signing it (JWT/CWT) is the caller's choice.

Trustworthiness claim values follow AR4SI: 0 no claim, 2..31 affirming, 32..95 warning, 96..127
contraindicated, 99 cryptographic validation failed, -1 verifier malfunction. The status is never more
favourable than the worst claim, and an invalid report is always ``contraindicated``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import enclavekit
from enclavekit.attestation.report import Check, Report
from enclavekit.errors import Error

__all__ = [
    "EAR_PROFILE",
    "Appraisal",
    "AttestationResult",
    "TrustTier",
    "TrustVector",
    "appraise",
    "ear_for_error",
    "ear_from_report",
    "tier_of",
]

EAR_PROFILE = "tag:ietf.org,2026:rats/ear#04"
VERIFIER_DEVELOPER = "https://github.com/enclavekit"

# AR4SI claim values (draft-ietf-rats-ar4si §2.3; names as in the Veraison reference implementation)
NO_CLAIM = 0
UNEXPECTED_EVIDENCE = 1
CRYPTO_VALIDATION_FAILED = 99
GENUINE_HARDWARE = 2
UNSAFE_HARDWARE = 32
CONTRAINDICATED_HARDWARE = 96
APPROVED_RUNTIME = 2
APPROVED_BOOT = 3
UNRECOGNIZED_RUNTIME = 33
CONTRAINDICATED_RUNTIME = 96
APPROVED_CONFIG = 2
UNSUPPORTABLE_CONFIG = 96
APPROVED_FILES = 2
CONTRAINDICATED_FILES = 96
ENCRYPTED_MEMORY = 2
VISIBLE_MEMORY = 96
TRUSTWORTHY_INSTANCE = 2
UNTRUSTWORTHY_INSTANCE = 96

UNPINNED = "not pinned"
"""How a verifier's ``policy.measurements`` check starts when its policy accepted any code (authenticity only)."""
_CRYPTO_CODES = frozenset({"signature_invalid", "quote_signature_invalid", "chain_untrusted"})
_UNEXPECTED_CODES = frozenset({"malformed", "unsupported_algorithm", "tee_mismatch", "unsupported_evidence"})
_INSUFFICIENT_CODES = frozenset(
    {"collateral_missing", "collateral_expired", "collateral_mismatch", "collateral_invalid"}
)
_CLAIM_BY_CODE = {
    "debug_mode": "configuration",
    "td_attributes_rejected": "configuration",
    "platform_policy": "configuration",
    "measurement_mismatch": "executables",
    "rtmr_mismatch": "executables",
    "event_digest_mismatch": "executables",
    "compose_hash_mismatch": "file-system",
    "report_data_mismatch": "instance-identity",
    "nonce_mismatch": "instance-identity",
    "public_key_mismatch": "instance-identity",
    "user_data_mismatch": "instance-identity",
    "stale": "instance-identity",
}
_CLAIM_BY_PHASE = {"hardware": "hardware", "os": "executables", "source": "executables", "binding": "instance-identity"}
_FAILED_VALUE = {
    "hardware": CONTRAINDICATED_HARDWARE,
    "executables": CONTRAINDICATED_RUNTIME,
    "configuration": UNSUPPORTABLE_CONFIG,
    "file-system": CONTRAINDICATED_FILES,
    "instance-identity": UNTRUSTWORTHY_INSTANCE,
    "runtime-opaque": VISIBLE_MEMORY,
}


class TrustTier(enum.StrEnum):
    """The AR4SI tiers, from best to worst (``none``: no claim was made)."""

    NONE = "none"
    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"


_RANK = {TrustTier.NONE: 0, TrustTier.AFFIRMING: 1, TrustTier.WARNING: 2, TrustTier.CONTRAINDICATED: 3}


def tier_of(value: int) -> TrustTier:
    """The tier of a trustworthiness claim value (-1 and 1, malfunction and unexpected evidence, are ``none``)."""
    if not -128 <= value <= 127:
        raise ValueError(f"trustworthiness claim {value} is outside -128..127")
    if -1 <= value <= 1:
        return TrustTier.NONE
    if 2 <= value <= 31 or -32 <= value <= -2:
        return TrustTier.AFFIRMING
    if 32 <= value <= 95 or -96 <= value <= -33:
        return TrustTier.WARNING
    return TrustTier.CONTRAINDICATED


def _worst(*tiers: TrustTier) -> TrustTier:
    return max(tiers, key=_RANK.__getitem__, default=TrustTier.NONE)


_VECTOR_KEYS = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)


@dataclass(frozen=True, slots=True)
class TrustVector:
    """An AR4SI trustworthiness vector; absent claims are 0 (no claim) and left out of the JSON."""

    claims: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.claims) - set(_VECTOR_KEYS))
        if unknown:
            raise ValueError(f"unknown trustworthiness claim(s) {unknown}")
        for name, value in self.claims.items():
            tier_of(value)  # range check
            if type(value) is not int:
                raise ValueError(f"trustworthiness claim {name} must be an integer")
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    def __getitem__(self, name: str) -> int:
        return self.claims.get(name, NO_CLAIM)

    @property
    def tier(self) -> TrustTier:
        """The worst tier among the claims made."""
        return _worst(*(tier_of(value) for value in self.claims.values()))

    def to_json(self) -> dict[str, int]:
        return {key: self.claims[key] for key in _VECTOR_KEYS if self.claims.get(key, NO_CLAIM) != NO_CLAIM}


@dataclass(frozen=True, slots=True)
class Appraisal:
    """One attester's appraisal (an EAR ``submods`` entry)."""

    status: TrustTier
    trust_vector: TrustVector
    policy_ids: tuple[str, ...] = ()
    attester_claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    verifier_claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ear_status": str(self.status)}
        vector = self.trust_vector.to_json()
        if vector:
            out["ear_trustworthiness_vector"] = vector
        if self.policy_ids:
            out["ear_appraisal_policy_ids"] = list(self.policy_ids)
        if self.attester_claims:
            out["ear_attester_claims"] = dict(self.attester_claims)
        if self.verifier_claims:
            out["ear_verifier_claims"] = dict(self.verifier_claims)
        return out


@dataclass(frozen=True, slots=True)
class AttestationResult:
    """An EAR claims set: issue time, verifier identity, and one appraisal per attester."""

    issued_at: int
    submods: Mapping[str, Appraisal]
    nonce: str | None = None
    verifier_build: str = field(default_factory=lambda: f"enclavekit {enclavekit.__version__}")

    @property
    def status(self) -> TrustTier:
        return _worst(*(a.status for a in self.submods.values()))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "eat_profile": EAR_PROFILE,
            "iat": self.issued_at,
            "ear_verifier_id": {"developer": VERIFIER_DEVELOPER, "build": self.verifier_build},
            "ear_status": str(self.status),
            "submods": {name: appraisal.to_json() for name, appraisal in self.submods.items()},
        }
        if self.nonce is not None:
            out["eat_nonce"] = self.nonce
        return out


def _claim_of(check: Check) -> str:
    if check.code is not None and check.code in _CLAIM_BY_CODE:
        return _CLAIM_BY_CODE[check.code]
    return _CLAIM_BY_PHASE.get(check.phase, "hardware")


def _failed_value(claim: str, code: str | None) -> int:
    if code in _CRYPTO_CODES:
        return CRYPTO_VALIDATION_FAILED
    if code in _UNEXPECTED_CODES:
        return UNEXPECTED_EVIDENCE
    if code in _INSUFFICIENT_CODES:
        return NO_CLAIM  # the hardware could not be appraised, which is not evidence against it
    if code == "measurement_mismatch" and claim == "executables":
        return UNRECOGNIZED_RUNTIME
    return _FAILED_VALUE.get(claim, CONTRAINDICATED_HARDWARE)


def appraise(report: Report[Any], *, policy_id: str | None = None) -> Appraisal:
    """Map a report's checks onto a trustworthiness vector and status.

    Passed checks affirm their aspect (``hardware`` 2 genuine, or 32 when the TCB is allowed but not
    ``UpToDate`` or advisories apply; ``executables`` 2 for pinned Nitro PCRs or a pinned TDX OS and app, 3 for a
    pinned TDX OS alone; ``file-system`` 2 for an allowed compose hash; ``configuration`` 2 for a production
    TEE); failed checks contraindicate theirs (99 when a signature failed). Unverified hardware
    (``hardware_verified`` False in the facts) and unpinned measurements make no claim and cap the status at
    ``warning``: authenticity alone is not an approval.
    """
    facts = report.facts
    claims: dict[str, int] = {}

    def worse(claim: str, value: int) -> None:
        current = claims.get(claim)
        if current is None or _RANK[tier_of(value)] > _RANK[tier_of(current)] or value == CRYPTO_VALIDATION_FAILED:
            claims[claim] = value

    phases_passed: set[str] = set()
    names_passed: set[str] = set()
    for check in report.checks:
        if check.ok:
            phases_passed.add(check.phase)
            names_passed.add(check.name)
        else:
            claim = _claim_of(check)
            worse(claim, _failed_value(claim, check.code))

    hardware_verified = facts.get("hardware_verified", True) is not False
    if "hardware" not in claims and "hardware" in phases_passed and hardware_verified:
        warning = facts.get("tcb_status") not in (None, "UpToDate") or bool(facts.get("advisory_ids"))
        claims["hardware"] = UNSAFE_HARDWARE if warning else GENUINE_HARDWARE
    measurements = next((c for c in report.checks if c.name == "policy.measurements" and c.ok), None)
    unpinned = measurements is not None and (not measurements.checked or measurements.detail.startswith(UNPINNED))
    app_approved = bool(names_passed & {"policy.compose_hash", "policy.app_id"})
    if "executables" not in claims and measurements is not None and not unpinned:
        # Nitro PCRs cover the whole image; TDX MRTD/RTMR0..2 only the OS, the app needs its own pin
        claims["executables"] = APPROVED_RUNTIME if report.tee != "tdx" or app_approved else APPROVED_BOOT
    if "file-system" not in claims and "policy.compose_hash" in names_passed:
        claims["file-system"] = APPROVED_FILES
    if "configuration" not in claims and any(name.endswith(".debug") for name in names_passed):
        claims["configuration"] = UNSUPPORTABLE_CONFIG if facts.get("debug") else APPROVED_CONFIG
    if report.tee == "tdx" and report.valid:
        claims["runtime-opaque"] = VISIBLE_MEMORY if facts.get("debug") else ENCRYPTED_MEMORY
    if "instance-identity" not in claims and "binding" in phases_passed:
        claims["instance-identity"] = TRUSTWORTHY_INSTANCE

    vector = TrustVector(claims)
    status = vector.tier
    if not report.valid:
        status = TrustTier.CONTRAINDICATED
    elif not hardware_verified or unpinned:
        status = _worst(status, TrustTier.WARNING)
    verifier_claims: dict[str, Any] = {"checks": [check.to_json() for check in report.checks]}
    for key in ("tcb_status", "advisory_ids", "fmspc", "hardware_verified", "app", "mr_config_id"):
        if key in facts:
            verifier_claims[key] = facts[key]
    if report.error is not None:
        verifier_claims["error"] = report.error.to_json()
    attester_claims = {"tee": report.tee, "measurements": dict(facts.get("measurements") or {})}
    return Appraisal(
        status=status,
        trust_vector=vector,
        policy_ids=() if policy_id is None else (policy_id,),
        attester_claims=MappingProxyType(attester_claims),
        verifier_claims=MappingProxyType(verifier_claims),
    )


def ear_from_report(
    report: Report[Any],
    *,
    issued_at: datetime,
    name: str | None = None,
    policy_id: str | None = None,
    nonce: str | None = None,
) -> AttestationResult:
    """An EAR with one submodule (named ``name``, default the report's TEE) appraising ``report``."""
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    appraisal = appraise(report, policy_id=policy_id)
    return AttestationResult(
        issued_at=int(issued_at.timestamp()),
        submods=MappingProxyType({name or report.tee: appraisal}),
        nonce=nonce,
    )


def ear_for_error(name: str, error: Error, *, issued_at: datetime) -> AttestationResult:
    """An EAR for evidence that could not be appraised at all (unreadable, of no known kind, no usable policy)."""
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    appraisal = Appraisal(
        status=TrustTier.CONTRAINDICATED,
        trust_vector=TrustVector({}),
        verifier_claims=MappingProxyType({"error": error.to_json()}),
    )
    return AttestationResult(issued_at=int(issued_at.timestamp()), submods=MappingProxyType({name: appraisal}))
