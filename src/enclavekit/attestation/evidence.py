"""Evidence of any supported kind: recognise it, pick the policy and the time, verify, describe the result.

This is what ``enclavekit verify`` and the trust service share: given bytes whose kind is not known in
advance, produce one :class:`EvidenceResult` with the project's JSON report shape.

The bytes are recognised and parsed once, at the boundary, into an :class:`Evidence` (kind, bytes, SHA-256 and
the parsed document, quote or bundle); everything after that (the time ``doc`` resolves to, the collateral's
platform, the simulator check, the report itself) reads that value, never the bytes again.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from enclavekit.attestation import nitro
from enclavekit.attestation.errors import AttestationError, Malformed, PolicyInvalid
from enclavekit.attestation.report import Report, VerifiedAttestation
from enclavekit.attestation.verification_time import At, NoEvidenceTime

if TYPE_CHECKING:  # TDX and dstack (and dcap-qvl) load only for TDX evidence: a Nitro check never pays for them
    from enclavekit.attestation import tdx
    from enclavekit.attestation.collateral import Collateral
    from enclavekit.attestation.dstack import DstackBundle
    from enclavekit.attestation.policy_file import PolicyFile
    from enclavekit.attestation.quote import Quote

__all__ = ["Evidence", "EvidenceKind", "EvidenceResult", "VerifyOptions", "detect", "verify_evidence"]

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


_UNRECOGNISED = (
    "not recognised as attestation evidence (expected a Nitro COSE_Sign1 document, a DCAP quote, or a dstack bundle)"
)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Evidence bytes recognised and parsed once, at the boundary: what every later step reads instead of the bytes.

    Making one never raises for bad evidence: ``problem`` says why the bytes are not usable (a report shows it);
    :meth:`require` raises it where bad evidence must be refused at once (an upload).
    """

    kind: EvidenceKind
    raw: bytes
    sha256: str
    parsed: nitro.AttestationDocument | Quote | DstackBundle | None
    problem: AttestationError | None

    def __post_init__(self) -> None:
        if (self.parsed is None) == (self.problem is None):
            raise ValueError("evidence is either parsed or has a problem, never both or neither")

    @classmethod
    def from_bytes(cls, data: bytes) -> Evidence:
        """Recognise ``data`` and parse it as its kind says (size-checked first)."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) > MAX_EVIDENCE_SIZE:
            problem = Malformed(f"evidence of {len(data)} bytes is over the limit of {MAX_EVIDENCE_SIZE}")
            return cls(EvidenceKind.UNKNOWN, data, digest, None, problem)
        kind = detect(data)
        parsed: nitro.AttestationDocument | Quote | DstackBundle
        try:
            if kind is EvidenceKind.NITRO:
                parsed = nitro.AttestationDocument.from_bytes(data)
            elif kind is EvidenceKind.QUOTE:
                from enclavekit.attestation.quote import Quote

                parsed = Quote.parse(data)
            elif kind is EvidenceKind.DSTACK:
                from enclavekit.attestation.dstack import DstackBundle

                parsed = DstackBundle.from_json(data)
            else:
                return cls(kind, data, digest, None, Malformed(_UNRECOGNISED))
        except AttestationError as exc:
            return cls(kind, data, digest, None, exc)
        return cls(kind, data, digest, parsed, None)

    def require(self) -> Evidence:
        """This evidence, if it parsed; else raise why not."""
        if self.problem is not None:
            raise self.problem
        return self

    @property
    def document(self) -> nitro.AttestationDocument | None:
        """The Nitro attestation document, if this is one (and it parsed)."""
        return self.parsed if isinstance(self.parsed, nitro.AttestationDocument) else None

    @property
    def bundle(self) -> DstackBundle | None:
        """The dstack bundle, if this is one (and it parsed)."""
        return cast("DstackBundle", self.parsed) if self.kind is EvidenceKind.DSTACK and self.problem is None else None

    @property
    def quote(self) -> Quote | None:
        """The DCAP quote: the evidence itself, or the dstack bundle's."""
        bundle = self.bundle
        if bundle is not None:
            return bundle.quote
        return cast("Quote", self.parsed) if self.kind is EvidenceKind.QUOTE and self.problem is None else None

    @property
    def timestamp(self) -> datetime | None:
        """The evidence's own time (a Nitro document's ``timestamp``); None for quotes, which carry none."""
        document = self.document
        return None if document is None else document.timestamp


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyOptions:
    """How to verify: which policy, at what time, which extra roots (simulator), which bypasses."""

    policy: PolicyFile | None = None
    at: At = At.NOW
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


def verify_evidence(
    evidence: Evidence | bytes, options: VerifyOptions, *, wall_clock: datetime | None = None
) -> EvidenceResult:
    """Verify ``evidence`` (parsed once: pass an :class:`Evidence`, or bytes to parse here) as ``options`` say.
    Never raises for bad evidence or policy."""
    now = wall_clock or datetime.now(UTC)
    if not isinstance(evidence, Evidence):
        evidence = Evidence.from_bytes(evidence)
    if evidence.kind is EvidenceKind.NITRO:
        return _verify_nitro(evidence, options, now)
    if evidence.kind in (EvidenceKind.QUOTE, EvidenceKind.DSTACK):
        return _verify_tdx(evidence, options, now)
    assert evidence.problem is not None
    return EvidenceResult(evidence.kind, None, evidence.problem, now)


def _collateral_for(evidence: Evidence, candidates: tuple[Collateral, ...]) -> Collateral | None:
    """The collateral given for this quote's platform (the only one given, or the one with its FMSPC)."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    quote = evidence.quote
    if quote is None:
        return candidates[0]  # the report will say what is wrong with the evidence
    import dcap_qvl

    try:
        fmspc = dcap_qvl.parse_quote(quote.raw).fmspc().upper()
    except ValueError:
        return candidates[0]
    return next((c for c in candidates if c.tee == quote.tee and c.fmspc == fmspc), candidates[0])


def _verify_tdx(evidence: Evidence, options: VerifyOptions, wall_clock: datetime) -> EvidenceResult:
    from enclavekit.attestation import dstack, tdx

    kind = evidence.kind
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
    try:
        now = options.at.resolve(now=wall_clock, evidence_time=None)
    except NoEvidenceTime as exc:
        return EvidenceResult(kind, None, exc, wall_clock)
    collateral = _collateral_for(evidence, options.collateral)
    report: Report[Any]
    if kind is EvidenceKind.DSTACK:
        report = dstack.report(
            evidence.bundle or evidence.raw,  # the bytes only when they did not parse: the report says why
            policy,
            now=now,
            collateral=collateral,
            unsafe_no_collateral=options.unsafe_no_collateral,
            app_compose=options.app_compose,
        )
    else:
        report = tdx.report(
            evidence.quote or evidence.raw,
            policy,
            now=now,
            collateral=collateral,
            unsafe_no_collateral=options.unsafe_no_collateral,
        )
    return EvidenceResult(kind, report, report.error, now, dict(report.facts))


def _verify_nitro(evidence: Evidence, options: VerifyOptions, wall_clock: datetime) -> EvidenceResult:
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
    # a document that did not parse has no time of its own: check it at the wall clock, the report says why
    now = options.at.resolve(now=wall_clock, evidence_time=evidence.timestamp or wall_clock)
    report = nitro.report(evidence.document or evidence.raw, policy, now=now)
    return EvidenceResult(EvidenceKind.NITRO, report, report.error, now, dict(report.facts))
