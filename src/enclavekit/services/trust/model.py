"""The trust service's vocabulary: targets (apps), tasks, their statuses, and what a verdict means.

* A **target** (an *app* in the web app, as in the reference) is something to verify: evidence uploaded once
  (re-verified from the stored bytes), or an endpoint polled for fresh evidence.
* A **task** is one verification of a target. Its ``status`` follows the reference (``pending``, ``active``,
  ``completed``, ``failed``, ``cancelled``); ``completed`` means a report was produced, whatever it says.
* A **verdict** says what the report says: ``verified`` (no check failed or errored), ``failed`` (a check
  failed: the evidence contradicts the policy), ``incomplete`` (nothing failed, but a check could not be done:
  no collateral, PCCS down), ``error`` (no report: the evidence could not be fetched or the task kept failing),
  ``pending`` (not verified yet).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from enclavekit.attestation.verification_time import At, AtInvalid
from enclavekit.services.trust.errors import UploadInvalid

__all__ = [
    "AppRecord",
    "Kind",
    "Source",
    "TargetOptions",
    "TaskRecord",
    "TaskStatus",
    "Verdict",
    "parse_at",
]


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class Verdict(enum.StrEnum):
    VERIFIED = "verified"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    ERROR = "error"
    PENDING = "pending"


class Source(enum.StrEnum):
    UPLOAD = "upload"
    ENDPOINT = "endpoint"


class Kind(enum.StrEnum):
    """What a target is, as the reference names its entities (``enclave``: an enclavekit Nitro enclave)."""

    APP = "app"
    KMS = "kms"
    GATEWAY = "gateway"
    ENCLAVE = "enclave"


_MAX_OPTION_TEXT = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetOptions:
    """How a target is verified, chosen when it is registered and kept for every re-verification.

    * ``at``: when to verify (:class:`~enclavekit.attestation.verification_time.At`): ``now`` (the wall clock at
      each verification), ``doc`` (the evidence's own time: archived evidence), or a fixed time.
    * ``pcrs``: Nitro PCRs the enclave must have (index → hex), for example PCR0 from ``stack.json``.
    * ``nonce``: ask the endpoint for a fresh document carrying a random nonce, and require it (freshness).
    * ``trust_simulator``: accept documents of the simulated NSM whose roots the service was told to trust.
    * ``report_data``: TDX REPORTDATA that must be exactly this (hex); ``acme_account``: a dstack gateway's ACME
      account URI, whose SHA-512 REPORTDATA must be.
    """

    at: At = At.NOW
    pcrs: Mapping[int, str] = field(default_factory=dict)
    nonce: bool = False
    trust_simulator: bool = False
    report_data: str | None = None
    acme_account: str | None = None

    def __post_init__(self) -> None:
        for index, value in self.pcrs.items():
            if not isinstance(index, int) or not 0 <= index < 32:
                raise UploadInvalid(f"PCR index {index!r} is out of range")
            if len(value) != 96 or not _is_hex(value):
                raise UploadInvalid(f"PCR{index} must be 96 hex digits")
        if self.report_data is not None and (len(self.report_data) != 128 or not _is_hex(self.report_data)):
            raise UploadInvalid("report_data must be 128 hex digits (64 bytes)")
        if self.acme_account is not None and not 0 < len(self.acme_account) <= _MAX_OPTION_TEXT:
            raise UploadInvalid("acme_account must be a non-empty URI")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at.text}
        if self.pcrs:
            out["pcrs"] = {str(k): v.lower() for k, v in sorted(self.pcrs.items())}
        if self.nonce:
            out["nonce"] = True
        if self.trust_simulator:
            out["trust_simulator"] = True
        if self.report_data is not None:
            out["report_data"] = self.report_data.lower()
        if self.acme_account is not None:
            out["acme_account"] = self.acme_account
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> TargetOptions:
        data = data or {}
        pcrs_raw = data.get("pcrs") or {}
        if not isinstance(pcrs_raw, Mapping):
            raise UploadInvalid("pcrs must be an object of index → hex")
        try:
            pcrs = {int(k): str(v).lower() for k, v in pcrs_raw.items()}
        except ValueError as exc:
            raise UploadInvalid("pcrs keys must be PCR indexes") from exc
        at = data.get("at", "now")
        report_data = data.get("report_data")
        acme = data.get("acme_account")
        if not isinstance(at, str) or (report_data is not None and not isinstance(report_data, str)):
            raise UploadInvalid("at and report_data must be strings")
        if acme is not None and not isinstance(acme, str):
            raise UploadInvalid("acme_account must be a string")
        return cls(
            at=parse_at(at),
            pcrs=pcrs,
            nonce=bool(data.get("nonce", False)),
            trust_simulator=bool(data.get("trust_simulator", False)),
            report_data=None if report_data is None else report_data.lower(),
            acme_account=acme,
        )


def parse_at(text: str) -> At:
    """:meth:`At.parse` for untrusted input: :class:`UploadInvalid` (``at: ...``) if it is not a time."""
    try:
        return At.parse(text)
    except AtInvalid as exc:
        raise UploadInvalid(f"at: {exc.message}") from exc


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppRecord:
    """A target as stored, with the summary of its latest verification."""

    id: str
    name: str
    kind: Kind
    source: Source
    tee: str
    endpoint_url: str | None
    evidence_key: str | None
    collateral_key: str | None
    compose_key: str | None
    options: TargetOptions
    metadata: Mapping[str, Any]
    subject: str
    os_name: str | None
    verdict: Verdict
    summary: Mapping[str, Any]
    last_task_id: str | None
    created_at: datetime
    updated_at: datetime
    last_verified_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    next_check_at: datetime | None
    enabled: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": str(self.kind),
            "source": str(self.source),
            "tee": self.tee,
            "endpoint": self.endpoint_url,
            "subject": self.subject,
            "os": self.os_name,
            "verdict": str(self.verdict),
            "valid": self.verdict is Verdict.VERIFIED,
            "summary": dict(self.summary),
            "options": self.options.to_json(),
            "metadata": dict(self.metadata),
            "last_task_id": self.last_task_id,
            "created_at": _iso(self.created_at),
            "last_verified_at": _iso(self.last_verified_at),
            "last_success_at": _iso(self.last_success_at),
            "last_failure_at": _iso(self.last_failure_at),
            "next_check_at": _iso(self.next_check_at),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """One verification task as stored."""

    id: str
    app_id: str
    job_name: str
    status: TaskStatus
    verdict: Verdict | None
    valid: bool | None
    error_code: str | None
    error_message: str | None
    app_metadata: Mapping[str, Any]
    verification_flags: Mapping[str, Any]
    evidence_key: str | None
    result_bucket: str | None
    result_key: str | None
    summary: Mapping[str, Any]
    attempts: int
    worker_id: str | None
    lease_until: datetime | None
    not_before: datetime | None
    enqueued_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app_id": self.app_id,
            "job_name": self.job_name,
            "status": str(self.status),
            "verdict": None if self.verdict is None else str(self.verdict),
            "valid": self.valid,
            "error": None
            if self.error_code is None
            else {"code": self.error_code, "message": self.error_message or ""},
            "app_metadata": dict(self.app_metadata),
            "verification_flags": dict(self.verification_flags),
            "summary": dict(self.summary),
            "attempts": self.attempts,
            "result": None if self.result_key is None else {"bucket": self.result_bucket, "key": self.result_key},
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
