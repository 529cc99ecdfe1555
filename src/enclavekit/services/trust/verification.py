"""One verification, organised by phase: the core verifier's checks, the OS registry, and what the UI shows.

Pure, like the core: it takes the evidence (parsed once: an :class:`~enclavekit.attestation.evidence.Evidence`),
what was fetched at the edge (collateral and how it was obtained), the target's options and the time, and
returns a :class:`TrustReport`. The checks themselves are
the core's (:func:`enclavekit.attestation.evidence.verify_evidence`, with a policy built from the target's
options and the OS registry); this module adds only what a service needs around them:

* each check gets a **status**: ``passed``, ``failed`` (the evidence contradicts the policy), ``error`` (it
  could not be checked: no collateral, the PCCS down), ``not_checked`` (the target pins nothing to check it
  against, e.g. no PCRs: not a pass) or ``skipped`` (not performed: network checks are off);
* the four **phases** — hardware, os, source, binding — each with a status and what the OS registry matched;
* the **verdict**: ``verified`` only if no check failed and none errored (as the reference's ``success``);
* the result as the project's JSON report, as an EAR claims set, and as a trust graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from enclavekit.attestation import nitro, tdx
from enclavekit.attestation.collateral import Collateral
from enclavekit.attestation.dstack import app_info
from enclavekit.attestation.errors import AttestationError, PolicyInvalid
from enclavekit.attestation.evidence import Evidence, EvidenceKind, EvidenceResult, VerifyOptions, verify_evidence
from enclavekit.attestation.policy_file import PolicyFile
from enclavekit.services.trust.graph import TrustGraph, build_graph
from enclavekit.services.trust.model import Kind, TargetOptions, Verdict
from enclavekit.services.trust.registry import OsEntry, OsRegistry, Selection

__all__ = [
    "PHASES",
    "CollateralOutcome",
    "TrustCheck",
    "TrustReport",
    "VerificationInput",
    "verify_target",
]

PHASES: tuple[tuple[str, str, str], ...] = (
    ("hardware", "Hardware", "The TEE is genuine and up to date: signatures, certificate chain, TCB status."),
    ("os", "Operating system", "The OS image is a known one: debug mode off, MRTD and RTMR0..2 (or PCRs) match."),
    ("source", "Source code", "The application is the published one: event log, compose hash, code measurements."),
    ("binding", "Binding & domain", "The keys and endpoint are controlled by this TEE: report data, nonce, TLS."),
)
_ERROR_CODES = frozenset({"collateral_missing", "collateral_unavailable"})
REPORT_VERSION = 1


@dataclass(frozen=True, slots=True)
class TrustCheck:
    """A check as the service shows it: the core's fields, plus a status."""

    name: str
    status: str  # passed | failed | error | not_checked | skipped
    detail: str
    phase: str
    code: str | None = None
    expected: str | None = None
    actual: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "not_checked", "skipped")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "detail": self.detail,
            "phase": self.phase,
        }
        for key in ("code", "expected", "actual"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class CollateralOutcome:
    """What the edge found for a TDX quote's collateral: the collateral, and a sentence on where it came from.

    ``error`` is set when collateral was wanted and could not be had (a PCCS that is down, with nothing cached).
    """

    collateral: Collateral | None = None
    source: str = ""
    error_code: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationInput:
    """Everything one verification needs, already fetched (and the evidence parsed)."""

    evidence: Evidence
    options: TargetOptions
    kind: Kind = Kind.APP
    compose: bytes | None = None
    collateral: CollateralOutcome = field(default_factory=CollateralOutcome)
    nonce: bytes | None = None
    simulator_roots: tuple[bytes, ...] = ()
    registry: OsRegistry | None = None


@dataclass(frozen=True, slots=True)
class TrustReport:
    """A finished verification: verdict, phases, checks, facts, EAR claims and the trust graph."""

    verdict: Verdict
    evidence_kind: str
    tee: str
    checks: tuple[TrustCheck, ...]
    error: Mapping[str, str] | None
    verified_at: datetime
    evidence_time: datetime
    evidence_sha256: str
    core: Mapping[str, Any]
    ear: Mapping[str, Any]
    os: Mapping[str, Any]
    subject: str
    os_name: str | None
    simulated: bool
    graph: TrustGraph
    code_pinned: bool = True

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VERIFIED

    def phase_status(self, phase: str) -> str:
        statuses = {check.status for check in self.checks if check.phase == phase}
        for status in ("failed", "error", "not_checked", "passed", "skipped"):
            if status in statuses:
                return status
        return "skipped"

    def phases(self) -> list[dict[str, Any]]:
        out = []
        for ident, title, purpose in PHASES:
            entry: dict[str, Any] = {
                "id": ident,
                "title": title,
                "purpose": purpose,
                "status": self.phase_status(ident),
                "checks": [c.to_json() for c in self.checks if c.phase == ident],
            }
            if ident == "os" and self.os:
                entry["registry"] = dict(self.os)
            out.append(entry)
        return out

    def summary(self) -> dict[str, Any]:
        """What the database row keeps: enough for lists and badges without reading the report."""
        first = next((c for c in self.checks if c.status == "failed"), None) or next(
            (c for c in self.checks if c.status == "error"), None
        )
        return {
            "verdict": str(self.verdict),
            "tee": self.tee,
            "kind": self.evidence_kind,
            "phases": {ident: self.phase_status(ident) for ident, _, _ in PHASES},
            "checks": {
                status: sum(1 for c in self.checks if c.status == status)
                for status in ("passed", "failed", "error", "not_checked", "skipped")
            },
            "first_problem": None
            if first is None
            else {"name": first.name, "code": first.code, "detail": first.detail},
            "simulated": self.simulated,
            "code_pinned": self.code_pinned,
            "evidence_time": self.evidence_time.isoformat(),
            "measurements": _headline_measurements(self.core.get("measurements") or {}),
        }

    def to_json(self) -> dict[str, Any]:
        """The stored report (``reports/<task>.json``) and the ``report`` of ``GET /api/task/{id}``."""
        return {
            "version": REPORT_VERSION,
            "verdict": str(self.verdict),
            "valid": self.valid,
            "tee": self.tee,
            "evidence_kind": self.evidence_kind,
            "error": None if self.error is None else dict(self.error),
            "verified_at": self.verified_at.isoformat(),
            "evidence_time": self.evidence_time.isoformat(),
            "evidence_sha256": self.evidence_sha256,
            "subject": self.subject,
            "os_name": self.os_name,
            "simulated": self.simulated,
            "code_pinned": self.code_pinned,
            "phases": self.phases(),
            "checks": [c.to_json() for c in self.checks],
            "measurements": dict(self.core.get("measurements") or {}),
            "core": dict(self.core),
            "ear": dict(self.ear),
            "graph": self.graph.to_json(),
        }


_HEADLINE = ("pcr0", "pcr1", "pcr2", "mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


def _headline_measurements(measurements: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(measurements[name]) for name in _HEADLINE if name in measurements}


# --- policies from the target's options ---------------------------------------------------------------------


def _nitro_policy(options: TargetOptions, nonce: bytes | None) -> nitro.NitroPolicy:
    pcrs = {index: bytes.fromhex(value) for index, value in options.pcrs.items()}
    return nitro.NitroPolicy(
        measurements=[pcrs] if pcrs else (),
        unsafe_any_measurements=not pcrs,
        nonce=nonce if options.nonce else None,
    )


@dataclass(frozen=True, slots=True)
class _OsChoice:
    selection: Selection
    candidates: tuple[OsEntry, ...]
    problem: str | None = None


def _tdx_target(evidence: Evidence) -> tuple[str | None, Mapping[str, Any] | None]:
    """The OS image hash and VM config the evidence *claims* (only to choose registry entries)."""
    bundle = evidence.bundle
    if bundle is None:
        return None, None
    image: str | None = None
    try:
        info = app_info(bundle.event_log)
        if info.os_image_hash is not None:
            image = info.os_image_hash.hex()
    except AttestationError:
        pass
    vm = dict(bundle.vm_config) if bundle.vm_config is not None else None
    if image is None and vm is not None and isinstance(vm.get("os_image_hash"), str):
        image = str(vm["os_image_hash"]).lower().removeprefix("0x")
    return image, vm


def _choose_os(registry: OsRegistry | None, evidence: Evidence) -> _OsChoice:
    if registry is None or not registry.entries:
        return _OsChoice(Selection((), {}, "no OS registry"), (), "the OS registry has no entries")
    image, vm = _tdx_target(evidence)
    selection = registry.select(os_image_hash=image, vm_config=vm)
    candidates = selection.entries or registry.entries
    return _OsChoice(selection, candidates)


def _tdx_policy(options: TargetOptions, choice: _OsChoice) -> tdx.TdxPolicy:
    rule: tdx.ReportDataRule | None = None
    if options.report_data is not None:
        rule = tdx.ExactReportData(bytes.fromhex(options.report_data))
    elif options.acme_account is not None:
        rule = tdx.HashedReportData(f"acme-account:{options.acme_account}".encode(), "sha512")
    if not choice.candidates:
        return tdx.TdxPolicy(unsafe_any_measurements=True, report_data=rule)
    return tdx.TdxPolicy(measurements=[e.measurement_set() for e in choice.candidates], report_data=rule)


# --- the verification -------------------------------------------------------------------------------------


def _status(check: Mapping[str, Any]) -> str:
    if check["ok"]:
        return "not_checked" if check.get("status") == "not_checked" else "passed"
    return "error" if check.get("code") in _ERROR_CODES else "failed"


def _core_checks(result: EvidenceResult) -> list[TrustCheck]:
    if result.report is None:
        return []
    return [
        TrustCheck(
            name=check.name,
            status=_status(check.to_json()),
            detail=check.detail,
            phase=check.phase or "hardware",
            code=check.code,
            expected=check.expected,
            actual=check.actual,
        )
        for check in result.report.checks
    ]


def _simulated(evidence: Evidence, roots: Sequence[bytes]) -> bool:
    document = evidence.document
    if not roots or document is None:
        return False
    return bool(document.cabundle) and document.cabundle[0] in roots


def _collateral_check(outcome: CollateralOutcome, uploaded: bool) -> TrustCheck:
    if outcome.collateral is not None:
        return TrustCheck(
            "collateral.source",
            "passed",
            f"{outcome.source}: FMSPC {outcome.collateral.fmspc}, current {outcome.collateral.describe_validity()}",
            "hardware",
        )
    if outcome.error is not None:
        return TrustCheck(
            "collateral.source", "error", outcome.error, "hardware", code=outcome.error_code or "collateral_unavailable"
        )
    detail = (
        "no collateral: none was uploaded with the evidence and no PCCS is configured, so the quote's signature "
        "and TCB status could not be checked"
    )
    if uploaded:
        detail = "the uploaded collateral was not usable"
    return TrustCheck("collateral.source", "error", detail, "hardware", code="collateral_missing")


def _os_registry_info(
    choice: _OsChoice, measurements: Mapping[str, Any], registry: OsRegistry | None
) -> dict[str, Any]:
    matched = registry.find(measurements) if registry is not None else None
    info: dict[str, Any] = {
        "source": None if registry is None else registry.source,
        "sha256": None if registry is None else registry.sha256,
        "entries": 0 if registry is None else len(registry.entries),
        "selection": choice.selection.reason,
        "key": dict(choice.selection.key),
        "candidates": [e.id for e in choice.candidates],
        "matched": None if matched is None else matched.to_json(),
    }
    return info


def verify_target(data: VerificationInput, *, now: datetime) -> TrustReport:
    """Verify ``data.evidence`` as its target's options say, at wall-clock time ``now``. Never raises for bad
    evidence: every problem is a check in the report."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    evidence = data.evidence
    kind = evidence.kind
    extra: list[TrustCheck] = []
    os_info: dict[str, Any] = {}
    choice: _OsChoice | None = None
    policy: PolicyFile
    try:
        if kind in (EvidenceKind.QUOTE, EvidenceKind.DSTACK):
            choice = _choose_os(data.registry, evidence)
            policy = PolicyFile(tdx=_tdx_policy(data.options, choice), source="trust target")
        else:
            policy = PolicyFile(nitro=_nitro_policy(data.options, data.nonce), source="trust target")
    except PolicyInvalid as exc:  # a target option the core refuses: report it, do not crash
        result = EvidenceResult(kind, None, exc, now)
    else:
        collateral = () if data.collateral.collateral is None else (data.collateral.collateral,)
        options = VerifyOptions(
            policy=policy,
            at=data.options.at,
            extra_nitro_roots=data.simulator_roots if data.options.trust_simulator else (),
            collateral=collateral,
            app_compose=data.compose,
        )
        result = verify_evidence(evidence, options, wall_clock=now)

    core = result.to_json()
    measurements = core.get("measurements") or {}
    simulated = False
    if kind is EvidenceKind.NITRO:
        simulated = data.options.trust_simulator and _simulated(evidence, data.simulator_roots)
        if simulated:
            extra.append(
                TrustCheck(
                    "hardware.simulated",
                    "passed",
                    "SIMULATED: signed by the local NSM simulator's CA (trusted for this target), not by AWS",
                    "hardware",
                )
            )
    if kind in (EvidenceKind.QUOTE, EvidenceKind.DSTACK) and result.report is not None:
        extra.insert(0, _collateral_check(data.collateral, uploaded=data.collateral.source == "uploaded"))
        assert choice is not None
        if choice.problem is not None:
            extra.append(TrustCheck("os.registry", "failed", choice.problem, "os", code="measurement_mismatch"))
        os_info = _os_registry_info(choice, measurements, data.registry)
    if kind is EvidenceKind.DSTACK and result.report is not None:
        extra.append(
            TrustCheck(
                "source.onchain",
                "skipped",
                "on-chain governance (compose hash registered in the app's contract on Base) is not checked: "
                "the service runs offline",
                "source",
            )
        )
    if data.kind is Kind.GATEWAY:
        for name, what in (
            ("domain.certificate", "the TLS certificate chain to a public root"),
            ("domain.caa", "DNS CAA records"),
            ("domain.ct", "Certificate Transparency logs"),
        ):
            extra.append(TrustCheck(name, "skipped", f"{what}: network checks are off", "binding"))

    order = {ident: index for index, (ident, _, _) in enumerate(PHASES)}
    checks = sorted(_merge_collateral([*_core_checks(result), *extra]), key=lambda c: order.get(c.phase, 0))
    if result.report is None and result.error is not None:
        checks.append(TrustCheck("evidence", "failed", result.error.message, "hardware", code=result.error.code))
    verdict = _verdict(checks)
    error = _first_error(checks, result)
    evidence_time = result.verified_at
    facts = dict(core)
    subject = _subject(facts, kind)
    matched = os_info.get("matched")
    os_name: str | None = None
    if matched is not None:
        os_name = str(matched["name"])
    elif kind is EvidenceKind.NITRO and result.report is not None and result.report.facts:
        os_name = "AWS Nitro (simulated NSM)" if simulated else "AWS Nitro Enclaves"
    ear_claims = result.to_ear(issued_at=now)
    report = TrustReport(
        verdict=verdict,
        evidence_kind=str(kind),
        tee=str(core.get("tee") or kind),
        checks=tuple(checks),
        error=error,
        verified_at=now,
        evidence_time=evidence_time,
        evidence_sha256=evidence.sha256,
        core=facts,
        ear=ear_claims,
        os=os_info,
        subject=subject,
        os_name=os_name,
        simulated=simulated,
        graph=TrustGraph((), ()),
        code_pinned=bool(data.options.pcrs) if kind is EvidenceKind.NITRO else True,
    )
    return replace(report, graph=build_graph(report.to_json(), kind=str(data.kind)))


def _merge_collateral(checks: list[TrustCheck]) -> list[TrustCheck]:
    """Without collateral the core's ``hardware.quote`` says so in CLI words; ``collateral.source`` says it better.
    Keep one erroring check per cause."""
    source = next((c for c in checks if c.name == "collateral.source"), None)
    if source is None or source.status != "error":
        return checks
    return [c for c in checks if not (c.name == "hardware.quote" and c.code == "collateral_missing")]


def _verdict(checks: Sequence[TrustCheck]) -> Verdict:
    statuses = {check.status for check in checks}
    if "failed" in statuses or not checks:
        return Verdict.FAILED
    if "error" in statuses:
        return Verdict.INCOMPLETE
    return Verdict.VERIFIED


def _first_error(checks: Sequence[TrustCheck], result: EvidenceResult) -> dict[str, str] | None:
    for status in ("failed", "error"):
        for check in checks:
            if check.status == status:
                return {"code": check.code or "check_failed", "message": f"{check.name}: {check.detail}"}
    if result.error is not None:
        return result.error.to_json()
    return None


def _subject(facts: Mapping[str, Any], kind: EvidenceKind) -> str:
    app = facts.get("app")
    if isinstance(app, Mapping) and app.get("app_id"):
        return str(app["app_id"])
    if facts.get("module_id"):
        return str(facts["module_id"])
    measurements = facts.get("measurements") or {}
    if "mrtd" in measurements:
        return f"mrtd {str(measurements['mrtd'])[:16]}"
    return str(kind)
