"""AWS Nitro Enclaves attestation documents: parse, verify against a policy, report.

A document is a COSE_Sign1 (ES384) whose payload is a CBOR map signed by a per-enclave leaf certificate that
chains, through the ``cabundle``, to the AWS Nitro Enclaves root. Verification is pure: it takes the bytes,
a :class:`NitroPolicy` and the time ``now`` at which to judge them::

    attestation = nitro.verify(document, NitroPolicy(measurements=[{0: pcr0}]), now=datetime.now(UTC))

The parser accepts documents as real NSMs produce them (nulls for unset optional fields, 1024-byte
``user_data``/``nonce``/``public_key``, indefinite-length maps, high-S signatures) and nothing looser.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from enclavekit.attestation import cbor
from enclavekit.attestation.chain import ChainVerifier, VerifiedChain
from enclavekit.attestation.cose import CoseSign1, verify_es384
from enclavekit.attestation.errors import (
    AttestationError,
    DebugMode,
    Malformed,
    MeasurementMismatch,
    NonceMismatch,
    PolicyInvalid,
    PublicKeyMismatch,
    SignatureInvalid,
    Stale,
    TimestampInFuture,
    UnsupportedEvidence,
    UserDataMismatch,
)
from enclavekit.attestation.report import CheckList, Report, VerifiedAttestation
from enclavekit.attestation.roots import aws_nitro_root

__all__ = [
    "MAX_DOCUMENT_SIZE",
    "AttestationDocument",
    "NitroAttestation",
    "NitroPolicy",
    "UnsafePolicyWarning",
    "report",
    "verify",
]


MAX_DOCUMENT_SIZE = 16 * 1024
"""Largest document accepted. Real ones are 4.4-7.6 KiB; the NSM caps its response at 12 KiB."""
MAX_FIELD = 1024
"""Largest ``public_key``, ``user_data``, ``nonce`` and certificate (real NSMs fill 1024-byte fields)."""
MAX_CABUNDLE = 7
PCR_COUNT = 32
PCR_SIZES = frozenset({32, 48, 64})
DEBUG_PCRS = (0, 1, 2)
PINNABLE_PCRS = frozenset({0, 1, 2, 3, 4, *range(8, PCR_COUNT)})
_PAYLOAD_KEYS = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
_MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_OPTIONAL_KEYS = frozenset({"public_key", "user_data", "nonce"})


def _utc(timestamp_ms: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class AttestationDocument:
    """A parsed, NOT verified, Nitro attestation document. Use :func:`verify` before trusting any field."""

    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    cose: CoseSign1

    @property
    def timestamp(self) -> datetime:
        return _utc(self.timestamp_ms)

    @property
    def debug(self) -> bool:
        """Debug mode: PCR0, PCR1 and PCR2 all zero (PCR8 is zero for unsigned images too, so not used)."""
        return all(index in self.pcrs and not any(self.pcrs[index]) for index in DEBUG_PCRS)

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationDocument:
        """Parse a tagged or untagged COSE_Sign1 Nitro document; raise :class:`Malformed` on any deviation, and
        :class:`UnsupportedEvidence` for a NitroTPM document (``nitrotpm_pcrs``), which is another kind of evidence."""
        cose = CoseSign1.from_bytes(data, max_size=MAX_DOCUMENT_SIZE)
        payload = cbor.decode(cose.payload, max_size=MAX_DOCUMENT_SIZE, what="attestation payload")
        if not isinstance(payload, dict):
            raise Malformed("attestation payload is not a CBOR map")
        if "nitrotpm_pcrs" in payload and "pcrs" not in payload:
            raise UnsupportedEvidence(
                "a NitroTPM attestation document (an EC2 instance's TPM PCRs, nitrotpm_pcrs), not a Nitro Enclaves "
                "document: NitroTPM evidence is not supported"
            )
        missing = [key for key in _PAYLOAD_KEYS if key not in payload and key not in _OPTIONAL_KEYS]
        if missing:
            raise Malformed(f"attestation payload lacks {', '.join(missing)}")
        unknown = [key for key in payload if key not in _PAYLOAD_KEYS]
        if unknown:
            raise Malformed(f"attestation payload has unknown field(s) {unknown!r}")

        module_id = payload["module_id"]
        if not isinstance(module_id, str) or not 0 < len(module_id) <= 256:
            raise Malformed("module_id must be a non-empty text string of at most 256 characters")
        digest = payload["digest"]
        if digest != "SHA384":
            raise Malformed(f"digest must be 'SHA384', got {digest!r}")
        timestamp = payload["timestamp"]
        if type(timestamp) is not int or not 0 < timestamp <= _MAX_TIMESTAMP_MS:
            raise Malformed("timestamp must be a positive integer of milliseconds since the epoch, before 10000 AD")
        pcrs = _parse_pcrs(payload["pcrs"])
        certificate = _bytes_field(payload["certificate"], "certificate", minimum=1)
        cabundle_raw = payload["cabundle"]
        if not isinstance(cabundle_raw, list) or not 1 <= len(cabundle_raw) <= MAX_CABUNDLE:
            raise Malformed(f"cabundle must be an array of 1 to {MAX_CABUNDLE} certificates")
        cabundle = tuple(_bytes_field(c, f"cabundle[{i}]", minimum=1) for i, c in enumerate(cabundle_raw))
        optional = {key: _optional_bytes(payload.get(key), key) for key in _OPTIONAL_KEYS}
        return cls(
            module_id=module_id,
            digest=digest,
            timestamp_ms=timestamp,
            pcrs=MappingProxyType(pcrs),
            certificate=certificate,
            cabundle=cabundle,
            public_key=optional["public_key"],
            user_data=optional["user_data"],
            nonce=optional["nonce"],
            cose=cose,
        )


def _bytes_field(value: Any, name: str, *, minimum: int = 0) -> bytes:
    if not isinstance(value, bytes):
        raise Malformed(f"{name} must be a byte string")
    if not minimum <= len(value) <= MAX_FIELD:
        raise Malformed(f"{name} is {len(value)} bytes; allowed {minimum}..{MAX_FIELD}")
    return value


def _optional_bytes(value: Any, name: str) -> bytes | None:
    return None if value is None else _bytes_field(value, name)


def _parse_pcrs(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict) or not 1 <= len(value) <= PCR_COUNT:
        raise Malformed(f"pcrs must be a map of 1 to {PCR_COUNT} entries")
    pcrs: dict[int, bytes] = {}
    for index, digest in value.items():
        if type(index) is not int or not 0 <= index < PCR_COUNT:
            raise Malformed(f"PCR index {index!r} is not an integer in 0..{PCR_COUNT - 1}")
        if not isinstance(digest, bytes) or len(digest) not in PCR_SIZES:
            raise Malformed(f"PCR{index} must be a 32, 48 or 64-byte string")
        pcrs[index] = digest
    return pcrs


MeasurementSet = Mapping[int, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class NitroPolicy:
    """What a verifier accepts. Fails closed: it must pin measurements or say, by name, that it does not.

    * ``measurements``: allowed sets, each mapping PCR index (0..4, 8..31) to its expected value; a document
      passes if it matches every entry of at least one set (several sets let an upgrade roll out).
    * ``unsafe_any_measurements``: accept any code (authenticity only). Never for a client deciding whether
      to send secrets.
    * ``allow_debug``: accept debug-mode enclaves, whose memory the host can read. Logs a warning.
    * ``max_age``: reject documents older than this at ``now``; ``clock_skew`` tolerates a document timestamp
      slightly ahead of ``now``.
    * ``nonce``, ``public_key``, ``user_data``: values the document must carry exactly.
    * ``roots``: trusted root certificates (DER). Default: the pinned AWS Nitro Enclaves root. Add a
      simulator root only where simulated enclaves are meant to be trusted.
    """

    measurements: Sequence[MeasurementSet] = ()
    unsafe_any_measurements: bool = False
    allow_debug: bool = False
    max_age: timedelta | None = None
    clock_skew: timedelta = timedelta(seconds=60)
    nonce: bytes | None = None
    public_key: bytes | None = None
    user_data: bytes | None = None
    roots: tuple[bytes, ...] = field(default_factory=lambda: (aws_nitro_root(),))

    def __post_init__(self) -> None:
        sets = tuple(MappingProxyType(dict(s)) for s in self.measurements)
        object.__setattr__(self, "measurements", sets)
        if self.unsafe_any_measurements and sets:
            raise PolicyInvalid("a policy cannot both pin measurements and accept any")
        if not self.unsafe_any_measurements and not sets:
            raise PolicyInvalid(
                "policy pins no measurements: give at least one measurement set "
                "(or unsafe_any_measurements=True to check authenticity only)"
            )
        for number, pcr_set in enumerate(sets, 1):
            if not pcr_set:
                raise PolicyInvalid(f"measurement set {number} is empty")
            for index, value in pcr_set.items():
                if index not in PINNABLE_PCRS:
                    raise PolicyInvalid(f"measurement set {number}: PCR{index} cannot be pinned")
                if not isinstance(value, bytes) or len(value) != 48:
                    raise PolicyInvalid(f"measurement set {number}: PCR{index} must be 48 bytes (SHA-384)")
        if not self.roots:
            raise PolicyInvalid("policy trusts no root certificate")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise PolicyInvalid("max_age must be positive")
        if self.allow_debug:
            warnings.warn(
                "attestation policy allows DEBUG enclaves: their memory is readable by the host",
                UnsafePolicyWarning,
                stacklevel=3,
            )

    @classmethod
    def from_measurements(cls, *sets: Mapping[int, bytes], **options: Any) -> NitroPolicy:
        return cls(measurements=sets, **options)


@dataclass(frozen=True, slots=True, kw_only=True)
class NitroAttestation(VerifiedAttestation):
    """A Nitro attestation document that passed a policy. ``chain`` is DER, root first, leaf last."""

    module_id: str
    digest: str
    pcrs: Mapping[int, bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    chain: tuple[bytes, ...]


def _facts(doc: AttestationDocument) -> dict[str, Any]:
    return {
        "module_id": doc.module_id,
        "timestamp": doc.timestamp.isoformat(),
        "debug": doc.debug,
        "measurements": {f"pcr{i}": v.hex() for i, v in sorted(doc.pcrs.items())},
    }


class UnsafePolicyWarning(UserWarning):
    """A policy accepts something unsafe (debug enclaves, unpinned code); shown once per call site."""


_verifiers: dict[tuple[bytes, ...], ChainVerifier] = {}


def _chain_verifier(roots: tuple[bytes, ...]) -> ChainVerifier:
    verifier = _verifiers.get(roots)
    if verifier is None:
        if len(_verifiers) > 16:
            _verifiers.clear()
        verifier = _verifiers[roots] = ChainVerifier(roots)
    return verifier


def report(
    document: bytes | AttestationDocument, policy: NitroPolicy, *, now: datetime, chains: ChainVerifier | None = None
) -> Report[NitroAttestation]:
    """Check ``document`` (bytes, or already parsed) against ``policy`` at time ``now``; never raises for bad
    evidence.

    Authenticity checks (parse, chain, signature, time) run in order and stop at the first failure; policy
    checks then all run, so a report shows every mismatch. ``chains`` is the verifier (and cache) of
    certificate chains; by default one shared per set of roots.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    checks = CheckList()
    if isinstance(document, AttestationDocument):
        doc = document
    else:
        try:
            doc = AttestationDocument.from_bytes(document)
        except UnsupportedEvidence as exc:
            _check_other_kind(checks, document, policy, now, chains)
            checks.failed("document.kind", exc, phase="hardware")
            return _result(checks, None)
        except AttestationError as exc:
            checks.failed("document.parse", exc, phase="hardware")
            return _result(checks, None)
    checks.passed("document.parse", f"COSE_Sign1 ES384, module {doc.module_id}", phase="hardware")
    facts = _facts(doc)

    chain: VerifiedChain | None = None
    try:
        chain = (chains or _chain_verifier(policy.roots)).verify(doc.cabundle[1:], doc.certificate, now=now)
    except AttestationError as exc:
        checks.failed("certificate.chain", exc, phase="hardware")
        return _result(checks, None, facts)
    checks.passed(
        "certificate.chain",
        f"{len(chain.ders)} certificates to {chain.root_subject}, valid at {now.isoformat()}",
        phase="hardware",
    )

    try:
        verify_es384(chain.leaf_key, doc.cose.signature, doc.cose.to_be_signed())
    except AttestationError as exc:
        checks.failed("cose.signature", exc, phase="hardware")
        return _result(checks, None, facts)
    checks.passed("cose.signature", "ES384 signature by the leaf certificate", phase="hardware")

    _check_time(checks, doc, policy, now)
    if checks.failures():
        return _result(checks, None, facts)

    _check_policy(checks, doc, policy)
    if checks.failures():
        return _result(checks, None, facts)
    attestation = NitroAttestation(
        tee="nitro",
        timestamp=doc.timestamp,
        debug=doc.debug,
        measurements=MappingProxyType({f"pcr{i}": v for i, v in sorted(doc.pcrs.items())}),
        module_id=doc.module_id,
        digest=doc.digest,
        pcrs=doc.pcrs,
        public_key=doc.public_key,
        user_data=doc.user_data,
        nonce=doc.nonce,
        chain=chain.ders,
    )
    return _result(checks, attestation, facts)


def _check_other_kind(
    checks: CheckList, document: bytes, policy: NitroPolicy, now: datetime, chains: ChainVerifier | None
) -> None:
    """For evidence of another kind signed the Nitro way (a NitroTPM document): say whether its chain and
    signature verify, so the report tells a genuine unsupported document from a forged one."""
    try:
        cose = CoseSign1.from_bytes(document, max_size=MAX_DOCUMENT_SIZE)
        payload = cbor.decode(cose.payload, max_size=MAX_DOCUMENT_SIZE, what="attestation payload")
        certificate = _bytes_field(payload.get("certificate"), "certificate", minimum=1)
        bundle = payload.get("cabundle")
        if not isinstance(bundle, list) or not 1 <= len(bundle) <= MAX_CABUNDLE:
            return
        cabundle = [_bytes_field(c, "cabundle entry", minimum=1) for c in bundle]
    except AttestationError:
        return  # nothing more to say about it than that it is another kind
    try:
        chain = (chains or _chain_verifier(policy.roots)).verify(cabundle[1:], certificate, now=now)
        verify_es384(chain.leaf_key, cose.signature, cose.to_be_signed())
    except AttestationError as exc:
        name = "cose.signature" if isinstance(exc, SignatureInvalid) else "certificate.chain"
        checks.failed(name, exc, phase="hardware")
        return
    checks.passed(
        "certificate.chain",
        f"{len(chain.ders)} certificates to {chain.root_subject}, valid at {now.isoformat()}; ES384 signature valid",
        phase="hardware",
    )


def _result(
    checks: CheckList, attestation: NitroAttestation | None, facts: Mapping[str, Any] | None = None
) -> Report[NitroAttestation]:
    return Report(
        "nitro",
        checks.freeze(),
        None if checks.failures() else attestation,
        checks.first_error,
        MappingProxyType(dict(facts or {})),
    )


def _check_time(checks: CheckList, doc: AttestationDocument, policy: NitroPolicy, now: datetime) -> None:
    made = doc.timestamp
    if made > now + policy.clock_skew:
        checks.failed(
            "document.timestamp",
            TimestampInFuture(f"document made at {made.isoformat()}, after the verification time {now.isoformat()}"),
            phase="hardware",
        )
    elif policy.max_age is not None and now - made > policy.max_age:
        checks.failed(
            "document.freshness",
            Stale(
                f"document is {(now - made).total_seconds():.0f} s old; the policy allows "
                f"{policy.max_age.total_seconds():.0f} s"
            ),
            phase="binding",
        )
    else:
        age = max(0.0, (now - made).total_seconds())
        checks.passed("document.timestamp", f"made {made.isoformat()} ({math.floor(age)} s before)", phase="hardware")


def _check_policy(checks: CheckList, doc: AttestationDocument, policy: NitroPolicy) -> None:
    if doc.debug and not policy.allow_debug:
        checks.failed(
            "enclave.debug",
            DebugMode("enclave runs in debug mode (PCR0-2 are zero): the host can read its memory"),
            phase="os",
        )
    else:
        checks.passed("enclave.debug", "debug mode (allowed by policy)" if doc.debug else "production mode", phase="os")

    if policy.unsafe_any_measurements:
        checks.not_checked("policy.measurements", "not pinned: authenticity only", phase="source")
    else:
        matched = _matching_set(doc.pcrs, policy.measurements)
        if matched is None:
            expected = "; ".join(
                ", ".join(f"PCR{i}={v.hex()}" for i, v in sorted(s.items())) for s in policy.measurements
            )
            pinned = sorted({i for s in policy.measurements for i in s})
            actual = ", ".join(f"PCR{i}={doc.pcrs[i].hex()}" if i in doc.pcrs else f"PCR{i}=absent" for i in pinned)
            checks.failed(
                "policy.measurements",
                MeasurementMismatch(f"PCRs match none of the {len(policy.measurements)} allowed measurement set(s)"),
                phase="source",
                expected=expected,
                actual=actual,
            )
        else:
            checks.passed("policy.measurements", f"matches allowed measurement set {matched}", phase="source")

    for name, expected_value, actual_value, error in (
        ("nonce", policy.nonce, doc.nonce, NonceMismatch),
        ("public_key", policy.public_key, doc.public_key, PublicKeyMismatch),
        ("user_data", policy.user_data, doc.user_data, UserDataMismatch),
    ):
        if expected_value is None:
            continue
        if actual_value == expected_value:
            checks.passed(f"policy.{name}", f"{name} is the expected value", phase="binding")
        else:
            checks.failed(
                f"policy.{name}",
                error(f"document {name} is {'absent' if actual_value is None else 'a different value'}"),
                phase="binding",
                expected=expected_value.hex(),
                actual=None if actual_value is None else actual_value.hex(),
            )


def _matching_set(pcrs: Mapping[int, bytes], sets: Iterable[MeasurementSet]) -> int | None:
    for number, pcr_set in enumerate(sets, 1):
        if all(pcrs.get(index) == value for index, value in pcr_set.items()):
            return number
    return None


def verify(
    document: bytes, policy: NitroPolicy, *, now: datetime, chains: ChainVerifier | None = None
) -> NitroAttestation:
    """Verify ``document`` against ``policy`` at time ``now``; raise the first failure's error."""
    return report(document, policy, now=now, chains=chains).verified()
