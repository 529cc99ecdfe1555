"""Intel TDX quotes: verify with dcap-qvl against Intel collateral, then against a :class:`TdxPolicy`.

Pure: it takes the quote, the collateral (already loaded, see :mod:`enclavekit.attestation.collateral`) and the
time ``now``::

    attestation = tdx.verify(quote_bytes, policy, now=datetime.now(UTC), collateral=collateral)

Checks, by phase (each a named :class:`~enclavekit.attestation.report.Check`):

* hardware — the quote's signature, QE report and PCK chain to Intel's root, with collateral current at
  ``now`` (dcap-qvl); the TCB status (default: ``UpToDate`` only) and advisory IDs the policy allows; the
  platform configuration (dynamic platform, cached keys, SMT) when the policy restricts it; a zero
  ``mr_signer_seam`` (Intel's TDX module).
* os — debug TDs refused unless allowed; MRTD and RTMR0..2 equal to one allowed measurement set (a known OS
  image on a known VM shape).
* source — for dstack evidence, see :mod:`enclavekit.attestation.dstack` (event log, compose hash, app id).
* binding — REPORTDATA as the policy expects: exact, the hash of a preimage, or a public key + nonce commitment.

dcap-qvl's own ``is_valid`` accepts every TCB status but Revoked; here the policy decides, and fails closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import dcap_qvl

from enclavekit.attestation._debug_td import shadow_verdict
from enclavekit.attestation.collateral import Collateral
from enclavekit.attestation.errors import (
    AttestationError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRevoked,
    CollateralExpired,
    CollateralInvalid,
    CollateralMismatch,
    CollateralMissing,
    ComposeHashMismatch,
    DebugMode,
    Malformed,
    MeasurementMismatch,
    PlatformRejected,
    PolicyInvalid,
    QuoteSignatureInvalid,
    QuoteUnclassified,
    ReportDataMismatch,
    TcbStatusRejected,
    TdAttributesRejected,
    TeeMismatch,
)
from enclavekit.attestation.nitro import UnsafePolicyWarning
from enclavekit.attestation.quote import Quote, TdReport
from enclavekit.attestation.report import CheckList, Report, VerifiedAttestation

__all__ = [
    "REPORT_DATA_SIZE",
    "TCB_STATUSES",
    "ExactReportData",
    "HardwareVerdict",
    "HashedReportData",
    "KeyNonceReportData",
    "MeasurementSet",
    "ReportDataRule",
    "TdxAttestation",
    "TdxPolicy",
    "attestation_from",
    "check_hardware",
    "check_report_data",
    "check_td",
    "check_tee",
    "key_nonce_report_data",
    "measurements_of",
    "parse_quote",
    "quote_facts",
    "report",
    "verify",
]

logger = logging.getLogger(__name__)

TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "TDRelaunchAdvised",
        "TDRelaunchAdvisedConfigurationNeeded",
    }
)
"""TCB statuses a policy may allow. ``Revoked`` is not among them: a revoked platform never passes."""
REPORT_DATA_SIZE = 64
_MEASUREMENT_SIZE = 48
_KEY_NONCE_DOMAIN = b"enclavekit.report-data.v1\x00"
_PLATFORM_OIDS = {
    "dynamic_platform": "1.2.840.113741.1.13.1.7.1",
    "cached_keys": "1.2.840.113741.1.13.1.7.2",
    "smt": "1.2.840.113741.1.13.1.7.3",
}


# --- policy -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeasurementSet:
    """An allowed OS measurement: MRTD and RTMR0..2 of a known image on a known VM shape (48 bytes each)."""

    mrtd: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    name: str = ""

    def __post_init__(self) -> None:
        for register in ("mrtd", "rtmr0", "rtmr1", "rtmr2"):
            value = getattr(self, register)
            if not isinstance(value, bytes) or len(value) != _MEASUREMENT_SIZE:
                raise PolicyInvalid(f"measurement set {self.name or '?'}: {register} must be 48 bytes (SHA-384)")

    def matches(self, td: TdReport) -> bool:
        return (td.mr_td, td.rtmrs[0], td.rtmrs[1], td.rtmrs[2]) == (self.mrtd, self.rtmr0, self.rtmr1, self.rtmr2)

    def describe(self) -> str:
        label = f"{self.name}: " if self.name else ""
        return (
            f"{label}mrtd={self.mrtd.hex()}, rtmr0={self.rtmr0.hex()}, rtmr1={self.rtmr1.hex()}, "
            f"rtmr2={self.rtmr2.hex()}"
        )


class ReportDataRule:
    """What REPORTDATA (64 bytes) must be. Subclasses say how the expected value is derived."""

    __slots__ = ()

    def expected(self) -> bytes:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ExactReportData(ReportDataRule):
    """REPORTDATA must be exactly ``value`` (64 bytes)."""

    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes) or len(self.value) != REPORT_DATA_SIZE:
            raise PolicyInvalid("report_data.exact must be 64 bytes (128 hex digits)")

    def expected(self) -> bytes:
        return self.value

    def describe(self) -> str:
        return "the exact value"


_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


@dataclass(frozen=True, slots=True)
class HashedReportData(ReportDataRule):
    """REPORTDATA must be ``hash(preimage)``, zero-padded to 64 bytes (dstack gateways: SHA-512 of
    ``"acme-account:" + account URI``)."""

    preimage: bytes
    algorithm: Literal["sha256", "sha384", "sha512"] = "sha512"

    def __post_init__(self) -> None:
        if self.algorithm not in _HASHES:
            raise PolicyInvalid(f"report_data hash must be one of {sorted(_HASHES)}, got {self.algorithm!r}")
        if not isinstance(self.preimage, bytes):
            raise PolicyInvalid("report_data preimage must be bytes")

    def expected(self) -> bytes:
        return _HASHES[self.algorithm](self.preimage).digest().ljust(REPORT_DATA_SIZE, b"\x00")

    def describe(self) -> str:
        return f"{self.algorithm.upper()} of the given preimage ({len(self.preimage)} bytes)"


def key_nonce_report_data(public_key: bytes, nonce: bytes) -> bytes:
    """The REPORTDATA that commits a TD to ``public_key`` for a verifier's ``nonce`` (enclavekit format v1).

    ``SHA-512("enclavekit.report-data.v1" || 0x00 || u16be(len(public_key)) || public_key || nonce)``; the
    length prefix keeps key and nonce apart. Producers (the enclave runtime) and verifiers share this function.
    """
    if not 0 < len(public_key) <= 0xFFFF:
        raise ValueError("public key must be 1..65535 bytes")
    return hashlib.sha512(_KEY_NONCE_DOMAIN + struct.pack(">H", len(public_key)) + public_key + nonce).digest()


@dataclass(frozen=True, slots=True)
class KeyNonceReportData(ReportDataRule):
    """REPORTDATA must commit to ``public_key`` and ``nonce`` (see :func:`key_nonce_report_data`)."""

    public_key: bytes
    nonce: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or not 0 < len(self.public_key) <= 0xFFFF:
            raise PolicyInvalid("report_data public_key must be 1..65535 bytes")
        if not isinstance(self.nonce, bytes) or not self.nonce:
            raise PolicyInvalid("report_data nonce must be a non-empty byte string")

    def expected(self) -> bytes:
        return key_nonce_report_data(self.public_key, self.nonce)

    def describe(self) -> str:
        return f"a commitment to the public key ({len(self.public_key)} bytes) and nonce ({len(self.nonce)} bytes)"


def _frozen_strings(values: Iterable[str], what: str) -> frozenset[str]:
    if isinstance(values, str):
        raise PolicyInvalid(f"{what} must be a list of strings, not one string")
    out = frozenset(values)
    if not all(isinstance(value, str) and value for value in out):
        raise PolicyInvalid(f"{what} must be non-empty strings")
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TdxPolicy:
    """What a TDX verifier accepts. Fails closed: it must pin OS measurements or say, by name, that it does not.

    * ``measurements``: allowed :class:`MeasurementSet`\\ s (MRTD + RTMR0..2); the TD must match one.
    * ``unsafe_any_measurements``: accept any OS image (hardware authenticity, and app pins if any, only).
    * ``allowed_tcb_statuses``: default ``UpToDate`` only; ``allowed_advisory_ids``: advisories that may apply
      (any other advisory on the platform's TCB level rejects it).
    * ``allow_debug``: accept debug TDs, whose memory the host can read. Warns.
    * ``allow_dynamic_platform``, ``allow_cached_keys``, ``allow_smt``: the PCK certificate's platform
      configuration; allowed by default (as Intel's verifier does), dcap-qvl's ``QuotePolicy.strict`` refuses all.
    * ``compose_hashes``, ``app_ids``, ``key_providers``: dstack app pins (need an event log). A key provider is
      ``"kms"`` (any id) or ``"kms:<id hex>"``, likewise ``local-sgx``, ``tpm``, ``none``.
    * ``report_data``: a :class:`ReportDataRule`.
    * ``intel_root``: a DER root certificate trusted *instead of* Intel's SGX root (dcap-qvl's built-in). For
      tests with a stand-in PKI only; a policy file cannot set it.
    """

    measurements: Sequence[MeasurementSet] = ()
    unsafe_any_measurements: bool = False
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    allowed_advisory_ids: frozenset[str] = frozenset()
    allow_debug: bool = False
    allow_dynamic_platform: bool = True
    allow_cached_keys: bool = True
    allow_smt: bool = True
    compose_hashes: frozenset[bytes] = frozenset()
    app_ids: frozenset[bytes] = frozenset()
    key_providers: frozenset[str] = frozenset()
    report_data: ReportDataRule | None = None
    intel_root: bytes | None = None

    def __post_init__(self) -> None:
        if self.intel_root is not None and not (isinstance(self.intel_root, bytes) and self.intel_root):
            raise PolicyInvalid("intel_root must be a DER certificate")
        sets = tuple(self.measurements)
        object.__setattr__(self, "measurements", sets)
        if not all(isinstance(s, MeasurementSet) for s in sets):
            raise PolicyInvalid("measurements must be MeasurementSet values")
        if self.unsafe_any_measurements and sets:
            raise PolicyInvalid("a policy cannot both pin measurements and accept any")
        if not self.unsafe_any_measurements and not sets:
            raise PolicyInvalid(
                "policy pins no TDX measurements: give at least one measurement set (MRTD, RTMR0..2) "
                "(or unsafe_any_measurements=True to check authenticity only)"
            )
        statuses = _frozen_strings(self.allowed_tcb_statuses, "allowed_tcb_statuses")
        if not statuses:
            raise PolicyInvalid("allowed_tcb_statuses is empty: no platform could pass")
        unknown = sorted(statuses - TCB_STATUSES)
        if unknown:
            raise PolicyInvalid(f"unknown TCB status(es) {unknown}; known: {sorted(TCB_STATUSES)}")
        object.__setattr__(self, "allowed_tcb_statuses", statuses)
        object.__setattr__(
            self, "allowed_advisory_ids", _frozen_strings(self.allowed_advisory_ids, "allowed_advisory_ids")
        )
        compose = frozenset(self.compose_hashes)
        if not all(isinstance(h, bytes) and len(h) == 32 for h in compose):
            raise PolicyInvalid("compose_hashes must be 32-byte SHA-256 values")
        object.__setattr__(self, "compose_hashes", compose)
        app_ids = frozenset(self.app_ids)
        if not all(isinstance(a, bytes) and 0 < len(a) <= 64 for a in app_ids):
            raise PolicyInvalid("app_ids must be byte strings of 1..64 bytes")
        object.__setattr__(self, "app_ids", app_ids)
        providers = _frozen_strings(self.key_providers, "key_providers")
        for provider in providers:
            _, _, ident = provider.partition(":")
            try:
                bytes.fromhex(ident)
            except ValueError as exc:
                raise PolicyInvalid(f"key provider {provider!r}: the id after ':' must be hex") from exc
        object.__setattr__(self, "key_providers", providers)
        if self.report_data is not None and not isinstance(self.report_data, ReportDataRule):
            raise PolicyInvalid("report_data must be a ReportDataRule")
        if self.allow_debug:
            warnings.warn(
                "attestation policy allows DEBUG TDs: their memory is readable by the host",
                UnsafePolicyWarning,
                stacklevel=3,
            )

    @property
    def pins_app(self) -> bool:
        """Whether the policy pins anything only a dstack event log can show."""
        return bool(self.compose_hashes or self.app_ids or self.key_providers)

    @property
    def restricts_platform(self) -> bool:
        return not (self.allow_dynamic_platform and self.allow_cached_keys and self.allow_smt)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, base_dir: Path) -> TdxPolicy:
        """The ``[tdx]`` section of a TOML policy file (see ``docs/attestation-tdx.md``). Unknown keys are errors."""
        return _policy_from_mapping(table, base_dir)


# --- results ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TdxAttestation(VerifiedAttestation):
    """A TDX quote that passed a policy.

    ``hardware_verified`` is False only when the caller chose to skip the hardware check (no collateral, unsafe);
    then ``tcb_status`` is None and nothing about the platform is known.
    """

    quote: Quote
    td: TdReport
    tcb_status: str | None
    advisory_ids: tuple[str, ...]
    fmspc: str | None
    hardware_verified: bool


@dataclass(frozen=True, slots=True)
class HardwareVerdict:
    """What the hardware phase established (``verified`` False: no collateral, checked nothing)."""

    verified: bool
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    fmspc: str | None = None


# --- checks (building blocks shared with dstack) ----------------------------------------------------------------


def parse_quote(checks: CheckList, quote: bytes | Quote) -> Quote | None:
    """Parse ``quote`` (raw or hex) into ``checks``; None if it is not a well-formed DCAP quote."""
    if isinstance(quote, Quote):
        parsed = quote
    else:
        try:
            parsed = Quote.parse(quote)
        except Malformed as exc:
            checks.failed("quote.parse", exc, phase="hardware")
            return None
    body = f"TD report {parsed.td.version}" if parsed.td is not None else "SGX enclave report"
    checks.passed("quote.parse", f"{parsed.tee.upper()} quote v{parsed.version}, {body}", phase="hardware")
    return parsed


_REFUSALS: tuple[tuple[tuple[str, ...], type[AttestationError], str], ...] = (
    # (markers in dcap-qvl's message, lower case; the error; what it means), first match wins. The messages are
    # those of dcap-qvl 0.7 (its Rust verifier and webpki/rustls underneath); see docs/verdicts.md.
    (("debug mode is enabled",), DebugMode, "the TD runs in debug mode: the host can read and change its memory"),
    (
        (
            "td profiling is enabled",
            "servtd_ext is enabled",
            "sept_ve_disable is not enabled",
            "td migration is enabled",
            "reserved bits in td attributes",
            "invalid mr service td",
        ),
        TdAttributesRejected,
        "the TD's attributes weaken its isolation",
    ),
    (
        (
            "dynamic platform is not allowed",
            "cached keys are not allowed",
            "smt (hyperthreading) is not allowed",
        ),
        PlatformRejected,
        "the platform configuration is not allowed",
    ),
    (
        (
            "tcb status is invalid",
            "no matching tcb level",
            "tcb level mismatch",
            "tcb too old",
            "below minimum required",
            "is not acceptable by policy",
            "is rejected by policy",
            "failed to evaluate the current tdx tcb",
        ),
        TcbStatusRejected,
        "the platform's TCB level is not acceptable",
    ),
    (
        (
            "revocation list expired",
            "crlexpired",
            "crl expired",
            "tcbinfo expired",
            "tcbinfo issue date is in the future",
            "qe identity expired",
            "qeidentity expired",
            "qe identity issue date is in the future",
            "collateral expired",
        ),
        CollateralExpired,
        "the collateral is not current at the verification time",
    ),
    (
        ("certificate not valid yet", "certnotvalidyet", "notvalidyet"),
        CertificateNotYetValid,
        "a certificate of the chain is not yet valid at the verification time (check the time given)",
    ),
    (
        ("certificate expired", "certexpired"),
        CertificateExpired,
        "a certificate of the chain had expired at the verification time",
    ),
    (
        ("certificate revoked", "certrevoked"),
        CertificateRevoked,
        "a certificate of the chain is revoked by Intel",
    ),
    (
        (
            "fmspc mismatch",
            "unsupported qe identity",
            "component count mismatch",
            "mrsigner mismatch",
            "isvprodid mismatch",
            "miscselect mismatch",
            "qe attributes mismatch",
            "seamattributes",
            "non-sgx tcb info",
            "non-tdx tcb info",
            "unknownrevocationstatus",
            "no tcb levels found in qe identity",
        ),
        CollateralMismatch,
        "the collateral does not go with this quote",
    ),
    (
        (
            "signature is invalid for tcb_info",
            "signature is invalid for qe_identity",
            "tcb info",
            "tcbinfo",
            "qe identity",
            "qeidentity",
            "crl",
            "pck certificates from collateral",
            "tdxmodule field",
        ),
        CollateralInvalid,
        "the collateral is not usable (not signed by Intel, or not well-formed)",
    ),
    (
        (
            "isv enclave report signature is invalid",
            "signature is invalid for qe_report",
            "qe report hash mismatch",
            "qe report validation failed",
            "invalid qe auth data",
            "failed to verify certificate chain",
            "unknownissuer",
            "badsignature",
            "invalidsignatureforpublickey",
            "failed to load root ca",
        ),
        QuoteSignatureInvalid,
        "the quote's signature or its certification chain does not verify: altered or forged",
    ),
    (
        (
            "failed to decode quote",
            "failed to parse quote",
            "unsupported dcap quote version",
            "quote must have version",
            "unsupported dcap attestation key type",
            "unknown qe vendor id",
            "unsupported certification data type",
            "unsupported dcap pck cert format",
            "pck certificates from quote",
            "certificate chain is too short in quote",
            "failed to parse pck certificate",
            "could not decode",
            "failed to find",
            "length mismatch",
            "failed to decode",
        ),
        Malformed,
        "the quote is not well-formed",
    ),
)


def _classify(message: str) -> AttestationError:
    """dcap-qvl raises ValueError with a message only: name its reason, keeping the message in the detail.

    A message enclavekit does not recognise is :class:`QuoteUnclassified`, never a signature failure.
    """
    said = " ".join(message.removeprefix("Verification failed: ").split())  # one line ("Caused by:" chains)
    text = said.lower()
    for markers, error, meaning in _REFUSALS:
        if any(marker in text for marker in markers):
            return error(f"{meaning} (Intel DCAP verification refused the quote: {said})")
    return QuoteUnclassified(f"Intel DCAP verification refused the quote for a reason not classified: {said}")


def _platform_flags(quote: Quote) -> dict[str, bool]:
    extension = dcap_qvl.parse_quote(quote.raw).pck_extension()
    if extension is None:
        raise QuoteSignatureInvalid("the quote's PCK certificate has no readable SGX extension")
    return {name: extension.get_value(oid) == b"\xff" for name, oid in _PLATFORM_OIDS.items()}


def check_hardware(
    checks: CheckList,
    quote: Quote,
    policy: TdxPolicy,
    *,
    now: datetime,
    collateral: Collateral | None,
    unsafe_no_collateral: bool = False,
) -> HardwareVerdict | None:
    """Verify the quote with Intel collateral and apply the TCB policy. None: the quote is not authentic
    (later checks would only describe forged data)."""
    if collateral is None:
        if unsafe_no_collateral:
            checks.not_checked(
                "hardware.quote",
                "NOT VERIFIED (unsafe, no collateral): the quote's signature, certification chain and TCB "
                "status were not checked; nothing proves this ran on genuine, up-to-date Intel TDX hardware",
                phase="hardware",
            )
        else:
            checks.failed(
                "hardware.quote",
                CollateralMissing(
                    "no collateral: the quote's signature and TCB status cannot be checked without Intel's "
                    "collateral for its platform"
                ),
                phase="hardware",
            )
        return HardwareVerdict(False)
    if collateral.tee != quote.tee:
        checks.failed(
            "hardware.collateral",
            CollateralMismatch(f"collateral is for {collateral.tee.upper()}, the quote is {quote.tee.upper()}"),
            phase="hardware",
        )
        return None
    if not collateral.valid_at(now):
        checks.failed(
            "hardware.collateral",
            CollateralExpired(f"collateral is current {collateral.describe_validity()}, not at {now.isoformat()}"),
            phase="hardware",
            expected=collateral.describe_validity(),
            actual=now.isoformat(),
        )
        return None
    debug_note = ""
    seconds = int(now.timestamp())
    try:
        if policy.intel_root is None:
            verified = dcap_qvl.verify(quote.raw, collateral.qvl, seconds)
        else:
            verified = dcap_qvl.verify_with_root_ca(quote.raw, collateral.qvl, policy.intel_root, seconds)
    except ValueError as exc:
        error = _classify(str(exc))
        if not (isinstance(error, DebugMode) and policy.allow_debug and quote.td is not None and quote.td.debug):
            checks.failed("hardware.quote", error, phase="hardware")
            return None
        # authentic (dcap-qvl refuses debug TDs only after every signature and chain check); its verdict on the
        # TCB level and the other TD attributes comes from the shadow (see enclavekit.attestation._debug_td)
        try:
            verified = shadow_verdict(quote, collateral, now)
        except ValueError as shadow_exc:
            checks.failed("hardware.quote", _classify(str(shadow_exc)), phase="hardware")
            return None
        except Malformed as shadow_exc:  # fail closed: the debug TD's TCB status cannot be had
            checks.failed(
                "hardware.quote",
                DebugMode(f"debug TD allowed by policy, but its TCB status cannot be evaluated: {shadow_exc.message}"),
                phase="hardware",
            )
            return None
        debug_note = (
            "; a debug TD, allowed by policy: dcap-qvl refuses debug TDs after these checks, so the TCB level and "
            "the other TD attributes are its verdict on the same values with DEBUG clear"
        )
    status: str = verified.status
    advisories = tuple(verified.advisory_ids)
    checks.passed(
        "hardware.quote",
        f"Intel DCAP: quote signature, QE report and PCK chain verified to Intel's root with collateral for "
        f"FMSPC {collateral.fmspc} (TCB evaluation {collateral.tcb_evaluation_data_number}, current "
        f"{collateral.describe_validity()}){debug_note}",
        phase="hardware",
    )
    allowed = ", ".join(sorted(policy.allowed_tcb_statuses))
    if status in policy.allowed_tcb_statuses:
        checks.passed("hardware.tcb_status", f"{status} (allowed: {allowed})", phase="hardware")
    else:
        checks.failed(
            "hardware.tcb_status",
            TcbStatusRejected(f"platform TCB status is {status}; the policy allows {allowed}"),
            phase="hardware",
            expected=allowed,
            actual=status,
        )
    refused = [a for a in advisories if a not in policy.allowed_advisory_ids]
    if refused:
        checks.failed(
            "hardware.advisories",
            TcbStatusRejected(f"advisories not allowed by the policy apply: {', '.join(refused)}"),
            phase="hardware",
            expected=", ".join(sorted(policy.allowed_advisory_ids)) or "none",
            actual=", ".join(advisories),
        )
    else:
        checks.passed(
            "hardware.advisories",
            f"allowed by policy: {', '.join(advisories)}" if advisories else "no advisories apply",
            phase="hardware",
        )
    _check_platform(checks, quote, policy)
    return HardwareVerdict(True, status, advisories, collateral.fmspc)


def _check_platform(checks: CheckList, quote: Quote, policy: TdxPolicy) -> None:
    if not policy.restricts_platform:
        checks.passed(
            "hardware.platform",
            "not restricted by policy (dynamic platform, cached keys and SMT allowed)",
            phase="hardware",
        )
        return
    try:
        flags = _platform_flags(quote)
    except (QuoteSignatureInvalid, ValueError) as exc:
        error = exc if isinstance(exc, QuoteSignatureInvalid) else QuoteSignatureInvalid(str(exc))
        checks.failed("hardware.platform", error, phase="hardware")
        return
    allowed = {
        "dynamic_platform": policy.allow_dynamic_platform,
        "cached_keys": policy.allow_cached_keys,
        "smt": policy.allow_smt,
    }
    described = ", ".join(f"{name}={'yes' if flags[name] else 'no'}" for name in allowed)
    refused = [name for name, ok in allowed.items() if flags[name] and not ok]
    if refused:
        checks.failed(
            "hardware.platform",
            PlatformRejected(f"platform configuration not allowed by the policy: {', '.join(refused)}"),
            phase="hardware",
            actual=described,
        )
    else:
        checks.passed("hardware.platform", f"{described} (allowed by policy)", phase="hardware")


def check_td(checks: CheckList, td: TdReport, policy: TdxPolicy) -> None:
    """The TD's own facts: TDX module signer, debug mode, OS measurements."""
    if any(td.mr_signer_seam):
        checks.failed(
            "td.mr_signer_seam",
            MeasurementMismatch("mr_signer_seam is not zero: the TDX module is not Intel's"),
            phase="hardware",
            expected="0" * 96,
            actual=td.mr_signer_seam.hex(),
        )
    else:
        checks.passed("td.mr_signer_seam", "zero (the TDX module is signed by Intel)", phase="hardware")
    if td.debug and not policy.allow_debug:
        checks.failed(
            "td.debug",
            DebugMode("TD runs in debug mode (TD_ATTRIBUTES bit 0): the host can read and change its memory"),
            phase="os",
        )
    else:
        checks.passed("td.debug", "debug TD (allowed by policy)" if td.debug else "production TD", phase="os")
    if policy.unsafe_any_measurements:
        checks.not_checked("policy.measurements", "not pinned: any OS image accepted", phase="os")
        return
    for number, measurement in enumerate(policy.measurements, 1):
        if measurement.matches(td):
            label = f" ({measurement.name})" if measurement.name else ""
            checks.passed("policy.measurements", f"matches allowed measurement set {number}{label}", phase="os")
            return
    checks.failed(
        "policy.measurements",
        MeasurementMismatch(
            f"MRTD and RTMR0..2 match none of the {len(policy.measurements)} allowed measurement set(s)"
        ),
        phase="os",
        expected="; ".join(m.describe() for m in policy.measurements),
        actual=MeasurementSet(td.mr_td, td.rtmrs[0], td.rtmrs[1], td.rtmrs[2]).describe(),
    )


def check_report_data(checks: CheckList, report_data: bytes, policy: TdxPolicy) -> None:
    if policy.report_data is None:
        return
    expected = policy.report_data.expected()
    if report_data == expected:
        checks.passed("policy.report_data", f"REPORTDATA is {policy.report_data.describe()}", phase="binding")
    else:
        checks.failed(
            "policy.report_data",
            ReportDataMismatch(f"REPORTDATA is not {policy.report_data.describe()}"),
            phase="binding",
            expected=expected.hex(),
            actual=report_data.hex(),
        )


def measurements_of(td: TdReport) -> dict[str, bytes]:
    """The TD's registers by the names the JSON report uses."""
    return {
        "mrtd": td.mr_td,
        "rtmr0": td.rtmrs[0],
        "rtmr1": td.rtmrs[1],
        "rtmr2": td.rtmrs[2],
        "rtmr3": td.rtmrs[3],
        "report_data": td.report_data,
        "mr_config_id": td.mr_config_id,
        "mr_owner": td.mr_owner,
        "mr_owner_config": td.mr_owner_config,
        "mr_seam": td.mr_seam,
        "mr_signer_seam": td.mr_signer_seam,
    }


def quote_facts(quote: Quote, hardware: HardwareVerdict | None) -> dict[str, Any]:
    """What the quote says, for display (trusted only if the report is valid)."""
    facts: dict[str, Any] = {"debug": None, "timestamp": None, "quote_version": quote.version}
    if quote.td is not None:
        td = quote.td
        facts.update(
            debug=td.debug,
            td_report=td.version,
            measurements={name: value.hex() for name, value in measurements_of(td).items()},
            td_attributes=td.td_attributes.hex(),
            xfam=td.xfam.hex(),
            tee_tcb_svn=td.tee_tcb_svn.hex(),
        )
    elif quote.sgx is not None:
        sgx = quote.sgx
        facts.update(
            debug=sgx.debug,
            measurements={
                "mr_enclave": sgx.mr_enclave.hex(),
                "mr_signer": sgx.mr_signer.hex(),
                "report_data": sgx.report_data.hex(),
            },
            isv_prod_id=sgx.isv_prod_id,
            isv_svn=sgx.isv_svn,
        )
    facts["hardware_verified"] = bool(hardware and hardware.verified)
    facts["tcb_status"] = hardware.tcb_status if hardware else None
    facts["advisory_ids"] = list(hardware.advisory_ids) if hardware else []
    facts["fmspc"] = hardware.fmspc if hardware else None
    return facts


def check_tee(checks: CheckList, quote: Quote) -> bool:
    """TDX policies apply to TDX quotes; an SGX quote is reported as SGX and refused."""
    if quote.td is None:
        assert quote.sgx is not None
        checks.failed(
            "quote.tee",
            TeeMismatch(
                f"an SGX quote (MRENCLAVE {quote.sgx.mr_enclave.hex()}), not a TDX quote: TDX policies do not apply"
            ),
            phase="hardware",
        )
        return False
    checks.passed("quote.tee", "Intel TDX", phase="hardware")
    return True


def attestation_from(quote: Quote, td: TdReport, hardware: HardwareVerdict, **extra: Any) -> dict[str, Any]:
    """Keyword arguments shared by every TDX attestation type."""
    return {
        "tee": "tdx",
        "timestamp": None,
        "debug": td.debug,
        "measurements": MappingProxyType(measurements_of(td)),
        "quote": quote,
        "td": td,
        "tcb_status": hardware.tcb_status,
        "advisory_ids": hardware.advisory_ids,
        "fmspc": hardware.fmspc,
        "hardware_verified": hardware.verified,
        **extra,
    }


def report(
    quote: bytes | Quote,
    policy: TdxPolicy,
    *,
    now: datetime,
    collateral: Collateral | None = None,
    unsafe_no_collateral: bool = False,
) -> Report[TdxAttestation]:
    """Check a bare quote against ``policy`` at ``now``; never raises for bad evidence.

    Without ``collateral`` the result is invalid (``collateral_missing``) unless ``unsafe_no_collateral``, in
    which case every other check runs and the attestation says ``hardware_verified=False``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    checks = CheckList()
    parsed = parse_quote(checks, quote)
    if parsed is None:
        return _result("tdx", checks, None, {})
    hardware = check_hardware(
        checks, parsed, policy, now=now, collateral=collateral, unsafe_no_collateral=unsafe_no_collateral
    )
    facts = quote_facts(parsed, hardware)
    tee = "tdx" if parsed.td is not None else "sgx"
    if hardware is None or not check_tee(checks, parsed):
        return _result(tee, checks, None, facts)
    assert parsed.td is not None
    check_td(checks, parsed.td, policy)
    if policy.pins_app:
        checks.failed(
            "policy.app",
            ComposeHashMismatch(
                "the policy pins the dstack app (compose hashes, app ids or key providers) but this evidence "
                "is a bare quote, without the event log that would show them"
            ),
            phase="source",
        )
    check_report_data(checks, parsed.td.report_data, policy)
    attestation = None
    if not checks.failures():
        attestation = TdxAttestation(**attestation_from(parsed, parsed.td, hardware))
    return _result(tee, checks, attestation, facts)


def _result(
    tee: str, checks: CheckList, attestation: TdxAttestation | None, facts: Mapping[str, Any]
) -> Report[TdxAttestation]:
    return Report(
        tee,
        checks.freeze(),
        None if checks.failures() else attestation,
        checks.first_error,
        MappingProxyType(dict(facts)),
    )


def verify(
    quote: bytes | Quote,
    policy: TdxPolicy,
    *,
    now: datetime,
    collateral: Collateral | None = None,
    unsafe_no_collateral: bool = False,
) -> TdxAttestation:
    """Verify a quote against ``policy`` at ``now``; raise the first failure's error."""
    return report(quote, policy, now=now, collateral=collateral, unsafe_no_collateral=unsafe_no_collateral).verified()


# --- [tdx] section of a policy file -----------------------------------------------------------------------------

_POLICY_KEYS = frozenset(
    {
        "measurements",
        "unsafe_any_measurements",
        "allowed_tcb_statuses",
        "allowed_advisory_ids",
        "allow_debug",
        "allow_dynamic_platform",
        "allow_cached_keys",
        "allow_smt",
        "compose_hashes",
        "compose_files",
        "app_ids",
        "key_providers",
        "report_data",
    }
)
_MEASUREMENT_KEYS = frozenset({"name", "mrtd", "rtmr0", "rtmr1", "rtmr2", "file"})
_MAX_MEASUREMENT_FILE = 64 * 1024
_MAX_COMPOSE_FILE = 4 * 1024 * 1024


def _hex(value: Any, what: str, *, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise PolicyInvalid(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError as exc:
        raise PolicyInvalid(f"{what} is not valid hex") from exc
    if length is not None and len(raw) != length:
        raise PolicyInvalid(f"{what} must be {length} bytes ({2 * length} hex digits), got {len(raw)}")
    return raw


def _string_list(table: Mapping[str, Any], key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PolicyInvalid(f"tdx.{key} must be an array of strings")
    return value


def _bool(table: Mapping[str, Any], key: str, options: dict[str, Any]) -> None:
    if key in table:
        if not isinstance(table[key], bool):
            raise PolicyInvalid(f"tdx.{key} must be true or false")
        options[key] = table[key]


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise PolicyInvalid(f"{what}: cannot read {path} ({exc.strerror})") from exc
    if len(data) > limit:
        raise PolicyInvalid(f"{what}: {path} is over {limit} bytes")
    return data


def _measurement_entry(entry: Any, base_dir: Path, number: int) -> MeasurementSet:
    what = f"tdx measurement set {number}"
    if not isinstance(entry, Mapping):
        raise PolicyInvalid(f"{what} must be a table ([[tdx.measurements]])")
    unknown = sorted(set(entry) - _MEASUREMENT_KEYS)
    if unknown:
        raise PolicyInvalid(f"{what} has unknown key(s) {unknown}")
    values: Mapping[str, Any] = entry
    name = entry.get("name", "")
    if not isinstance(name, str):
        raise PolicyInvalid(f"{what}: name must be a string")
    if "file" in entry:
        if set(entry) - {"file", "name"}:
            raise PolicyInvalid(f"{what}: file cannot be combined with register values")
        path = base_dir / str(entry["file"])
        try:
            loaded = json.loads(_read_limited(path, _MAX_MEASUREMENT_FILE, what))
        except ValueError as exc:
            raise PolicyInvalid(f"{what}: {path} is not JSON") from exc
        if not isinstance(loaded, Mapping):
            raise PolicyInvalid(f"{what}: {path} is not a JSON object")
        values = {str(k).lower(): v for k, v in loaded.items()}
        name = name or path.name
    missing = [key for key in ("mrtd", "rtmr0", "rtmr1", "rtmr2") if key not in values]
    if missing:
        raise PolicyInvalid(f"{what} lacks {', '.join(missing)}")
    return MeasurementSet(
        mrtd=_hex(values["mrtd"], f"{what}: mrtd", length=48),
        rtmr0=_hex(values["rtmr0"], f"{what}: rtmr0", length=48),
        rtmr1=_hex(values["rtmr1"], f"{what}: rtmr1", length=48),
        rtmr2=_hex(values["rtmr2"], f"{what}: rtmr2", length=48),
        name=name,
    )


def _report_data_rule(value: Any) -> ReportDataRule:
    if not isinstance(value, Mapping):
        raise PolicyInvalid("tdx.report_data must be a table")
    keys = set(value)
    if keys == {"exact"}:
        return ExactReportData(_hex(value["exact"], "tdx.report_data.exact", length=REPORT_DATA_SIZE))
    if keys in ({"hash", "preimage"}, {"hash", "preimage_hex"}):
        algorithm = value["hash"]
        if algorithm not in _HASHES:
            raise PolicyInvalid(f"tdx.report_data.hash must be one of {sorted(_HASHES)}")
        if "preimage" in value:
            if not isinstance(value["preimage"], str):
                raise PolicyInvalid("tdx.report_data.preimage must be a string (UTF-8)")
            preimage = value["preimage"].encode("utf-8")
        else:
            preimage = _hex(value["preimage_hex"], "tdx.report_data.preimage_hex")
        return HashedReportData(preimage, algorithm)
    if keys == {"public_key", "nonce"}:
        return KeyNonceReportData(
            _hex(value["public_key"], "tdx.report_data.public_key"), _hex(value["nonce"], "tdx.report_data.nonce")
        )
    raise PolicyInvalid(
        "tdx.report_data must be {exact}, {hash, preimage}, {hash, preimage_hex} or {public_key, nonce}; "
        f"got keys {sorted(keys)}"
    )


def _policy_from_mapping(table: Mapping[str, Any], base_dir: Path) -> TdxPolicy:
    if not isinstance(table, Mapping):
        raise PolicyInvalid("[tdx] must be a table")
    unknown = sorted(set(table) - _POLICY_KEYS)
    if unknown:
        raise PolicyInvalid(f"[tdx] has unknown key(s) {unknown}")
    entries = table.get("measurements", [])
    if not isinstance(entries, list):
        raise PolicyInvalid("tdx.measurements must be an array of tables ([[tdx.measurements]])")
    options: dict[str, Any] = {
        "measurements": [_measurement_entry(e, base_dir, i) for i, e in enumerate(entries, 1)],
    }
    for key in ("unsafe_any_measurements", "allow_debug", "allow_dynamic_platform", "allow_cached_keys", "allow_smt"):
        _bool(table, key, options)
    if "allowed_tcb_statuses" in table:
        options["allowed_tcb_statuses"] = frozenset(_string_list(table, "allowed_tcb_statuses"))
    options["allowed_advisory_ids"] = frozenset(_string_list(table, "allowed_advisory_ids"))
    compose = {_hex(v, "tdx.compose_hashes entry", length=32) for v in _string_list(table, "compose_hashes")}
    for name in _string_list(table, "compose_files"):
        path = base_dir / name
        compose.add(hashlib.sha256(_read_limited(path, _MAX_COMPOSE_FILE, "tdx.compose_files")).digest())
    options["compose_hashes"] = frozenset(compose)
    options["app_ids"] = frozenset(_hex(v, "tdx.app_ids entry") for v in _string_list(table, "app_ids"))
    options["key_providers"] = frozenset(_string_list(table, "key_providers"))
    if "report_data" in table:
        options["report_data"] = _report_data_rule(table["report_data"])
    return TdxPolicy(**options)
