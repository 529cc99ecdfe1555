"""Evidence of any supported kind: recognise it, pick the policy and the time, verify, describe the result.

This is what ``enclavekit verify`` and the trust service share: given bytes whose kind is not known in
advance, produce one :class:`EvidenceResult` with the project's JSON report shape.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from enclavekit.attestation import nitro
from enclavekit.attestation.errors import AttestationError, Malformed, PolicyInvalid
from enclavekit.attestation.report import Report, VerifiedAttestation

if TYPE_CHECKING:  # TDX and dstack (and dcap-qvl) load only for TDX evidence: a Nitro check never pays for them
    from enclavekit.attestation import tdx
    from enclavekit.attestation.collateral import Collateral
    from enclavekit.attestation.policy_file import PolicyFile

__all__ = ["EvidenceKind", "EvidenceResult", "VerifyOptions", "detect", "parse_at", "verify_evidence"]

MAX_EVIDENCE_SIZE = 4 * 1024 * 1024
"""Largest evidence file accepted (dstack bundles with event logs are the largest, well under this)."""


class EvidenceKind(enum.StrEnum):
    NITRO = "nitro"
    QUOTE = "quote"  # an Intel DCAP quote (TDX or SGX), raw or hex
    DSTACK = "dstack"  # a dstack bundle: JSON with a quote and its event log
    UNKNOWN = "unknown"


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF \t\r\n")


def detect(data: bytes) -> EvidenceKind:
    """Recognise evidence by its first bytes (no parsing beyond that)."""
    if data[:1] in (b"\x84", b"\xd2"):  # COSE_Sign1: array(4), or tag 18
        return EvidenceKind.NITRO
    if data[:2] in (b"\x03\x00", b"\x04\x00", b"\x05\x00"):  # DCAP quote versions 3, 4, 5
        return EvidenceKind.QUOTE
    from enclavekit.attestation import dstack

    if dstack.is_bundle(data):
        return EvidenceKind.DSTACK
    text = data.strip().removeprefix(b"0x").removeprefix(b"0X")
    if text[:4] in (b"0300", b"0400", b"0500") and _HEX_DIGITS.issuperset(text):
        return EvidenceKind.QUOTE
    return EvidenceKind.UNKNOWN


At = Literal["now", "doc"] | datetime


def parse_at(text: str) -> At:
    """``now``, ``doc`` (the evidence's own timestamp), UNIX seconds, or an ISO 8601 time (UTC if no zone)."""
    value = text.strip()
    if value in ("now", "doc"):
        return value  # type: ignore[return-value]
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"verification time {text!r}: expected now, doc, UNIX seconds or an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyOptions:
    """How to verify: which policy, at what time, which extra roots (simulator), which bypasses."""

    policy: PolicyFile | None = None
    at: At = "now"
    allow_debug: bool = False
    extra_nitro_roots: tuple[bytes, ...] = ()
    collateral: tuple[Collateral, ...] = ()
    unsafe_no_collateral: bool = False
    app_compose: bytes | None = None


@dataclass(frozen=True, slots=True)
class EvidenceResult:
    """One piece of evidence, verified: the report plus what the JSON output shows."""

    kind: EvidenceKind
    report: Report[Any] | None
    error: AttestationError | PolicyInvalid | None
    verified_at: datetime
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def attestation(self) -> VerifiedAttestation | None:
        return None if self.report is None else self.report.attestation

    def to_json(self) -> dict[str, Any]:
        """The project's report shape (the ``enclavekit verify --json`` contract, less ``file``)."""
        facts = dict(self.facts)
        out: dict[str, Any] = {
            "valid": self.valid,
            "tee": self.report.tee if self.report is not None else str(self.kind),
            "error": None if self.error is None else self.error.to_json(),
            "debug": facts.pop("debug", None),
            "timestamp": facts.pop("timestamp", None),
            "verified_at": self.verified_at.isoformat(),
        }
        out["module_id"] = facts.pop("module_id", None)
        out["measurements"] = facts.pop("measurements", {})
        out.update(facts)
        out["checks"] = [] if self.report is None else [c.to_json() for c in self.report.checks]
        return out

    def to_ear(self, *, issued_at: datetime | None = None) -> dict[str, Any]:
        """The result as an EAR claims set (``enclavekit verify --format ear``)."""
        from enclavekit.attestation import ear  # only for --format ear: the report needs none of it

        moment = issued_at or self.verified_at
        if self.report is not None:
            return ear.ear_from_report(self.report, issued_at=moment).to_json()
        assert self.error is not None
        return ear.ear_for_error(str(self.kind), self.error, issued_at=moment).to_json()


def verify_evidence(data: bytes, options: VerifyOptions, *, wall_clock: datetime | None = None) -> EvidenceResult:
    """Recognise ``data`` and verify it as ``options`` say. Never raises for bad evidence or policy."""
    now = wall_clock or datetime.now(UTC)
    if len(data) > MAX_EVIDENCE_SIZE:
        error = Malformed(f"evidence of {len(data)} bytes is over the limit of {MAX_EVIDENCE_SIZE}")
        return EvidenceResult(EvidenceKind.UNKNOWN, None, error, now)
    kind = detect(data)
    if kind is EvidenceKind.NITRO:
        return _verify_nitro(data, options, now)
    if kind in (EvidenceKind.QUOTE, EvidenceKind.DSTACK):
        return _verify_tdx(data, kind, options, now)
    error = Malformed(
        "not recognised as attestation evidence (expected a Nitro COSE_Sign1 document, a DCAP quote, or a dstack "
        "bundle)"
    )
    return EvidenceResult(kind, None, error, now)


def _collateral_for(data: bytes, kind: EvidenceKind, candidates: tuple[Collateral, ...]) -> Collateral | None:
    """The collateral given for this quote's platform (the only one given, or the one with its FMSPC)."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    import dcap_qvl

    from enclavekit.attestation import dstack
    from enclavekit.attestation.quote import Quote

    try:
        quote = dstack.DstackBundle.from_json(data).quote if kind is EvidenceKind.DSTACK else Quote.parse(data)
        fmspc = dcap_qvl.parse_quote(quote.raw).fmspc().upper()
    except (AttestationError, ValueError):
        return candidates[0]  # the report will say what is wrong with the evidence
    return next((c for c in candidates if c.tee == quote.tee and c.fmspc == fmspc), candidates[0])


def _verify_tdx(data: bytes, kind: EvidenceKind, options: VerifyOptions, wall_clock: datetime) -> EvidenceResult:
    from enclavekit.attestation import dstack, tdx

    policy: tdx.TdxPolicy
    if options.policy is not None:
        if options.policy.tdx is None:
            error = PolicyInvalid(f"{options.policy.source}: no [tdx] section, so TDX evidence is refused")
            return EvidenceResult(kind, None, error, wall_clock)
        policy = options.policy.tdx
        if options.allow_debug:
            policy = replace(policy, allow_debug=True)
    else:
        policy = tdx.TdxPolicy(unsafe_any_measurements=True, allow_debug=options.allow_debug)
    if options.at == "doc":
        error = PolicyInvalid(
            "verification time 'doc': a DCAP quote carries no timestamp of its own; give a time (or now)"
        )
        return EvidenceResult(kind, None, error, wall_clock)
    now = _resolve_at(options.at, data, wall_clock)
    collateral = _collateral_for(data, kind, options.collateral)
    report: Report[Any]
    if kind is EvidenceKind.DSTACK:
        report = dstack.report(
            data,
            policy,
            now=now,
            collateral=collateral,
            unsafe_no_collateral=options.unsafe_no_collateral,
            app_compose=options.app_compose,
        )
    else:
        report = tdx.report(
            data, policy, now=now, collateral=collateral, unsafe_no_collateral=options.unsafe_no_collateral
        )
    return EvidenceResult(kind, report, report.error, now, dict(report.facts))


def _verify_nitro(data: bytes, options: VerifyOptions, wall_clock: datetime) -> EvidenceResult:
    policy: nitro.NitroPolicy
    if options.policy is not None:
        if options.policy.nitro is None:
            error = PolicyInvalid(f"{options.policy.source}: no [nitro] section, so Nitro evidence is refused")
            return EvidenceResult(EvidenceKind.NITRO, None, error, wall_clock)
        policy = options.policy.nitro
        if options.allow_debug:
            policy = replace(policy, allow_debug=True)
    else:
        policy = nitro.NitroPolicy(unsafe_any_measurements=True, allow_debug=options.allow_debug)
    if options.extra_nitro_roots:
        policy = replace(policy, roots=(*policy.roots, *options.extra_nitro_roots))
    now = _resolve_at(options.at, data, wall_clock)
    report = nitro.report(data, policy, now=now)
    return EvidenceResult(EvidenceKind.NITRO, report, report.error, now, dict(report.facts))


def _resolve_at(at: At, data: bytes, wall_clock: datetime) -> datetime:
    if at == "now":
        return wall_clock
    if at == "doc":
        try:
            return nitro.AttestationDocument.from_bytes(data).timestamp
        except AttestationError:
            return wall_clock  # the report will say why the document is unusable
    assert isinstance(at, datetime)
    return at
