"""When evidence is verified: one type (:class:`At`), one parser and one resolver for every caller.

``enclavekit verify --at``, ``enclavekit receipt verify --at``, the trust service's ``at`` (its API, its stored
target options) and its worker all mean the same three things by it: the wall clock at verification (``now``),
the evidence's own timestamp (``doc``: archived Nitro documents), or a fixed time. The messages here name no
command-line flag: the CLI adds its own hints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from enclavekit.attestation.errors import PolicyInvalid
from enclavekit.errors import Rejected

__all__ = ["At", "AtInvalid", "NoEvidenceTime"]

_MAX_TEXT = 64


class AtInvalid(Rejected):
    """A verification time that is not ``now``, ``doc``, UNIX seconds or an ISO 8601 time."""

    code = "at_invalid"


class NoEvidenceTime(PolicyInvalid):
    """``doc`` was asked for evidence that carries no timestamp of its own (a DCAP quote has none)."""


@dataclass(frozen=True, slots=True)
class At:
    """A verification time: the wall clock (``At.NOW``), the evidence's own timestamp (``At.DOC``), or
    ``moment``, a fixed timezone-aware time. Make one with :meth:`parse` (text) or :meth:`fixed`."""

    moment: datetime | None = None
    evidence_time: bool = False

    NOW: ClassVar[At]
    DOC: ClassVar[At]

    def __post_init__(self) -> None:
        if self.moment is not None and (self.evidence_time or self.moment.tzinfo is None):
            raise ValueError("a fixed verification time is timezone-aware and not also the evidence's own")

    @classmethod
    def fixed(cls, moment: datetime) -> At:
        """``moment`` (UTC if it names no zone)."""
        return cls(moment if moment.tzinfo else moment.replace(tzinfo=UTC))

    @classmethod
    def parse(cls, text: str) -> At:
        """``now``, ``doc``, UNIX seconds, or an ISO 8601 time (UTC if no zone); else :class:`AtInvalid`."""
        value = text.strip()
        if value == "now":
            return cls.NOW
        if value == "doc":
            return cls.DOC
        if len(value) <= _MAX_TEXT:
            try:
                return cls(datetime.fromtimestamp(float(value), tz=UTC))
            except (ValueError, OverflowError, OSError):
                pass
            try:
                return cls.fixed(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                pass
        shown = value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "..."
        raise AtInvalid(f"verification time {shown!r}: expected now, doc, UNIX seconds or an ISO 8601 time")

    @property
    def is_now(self) -> bool:
        return self.moment is None and not self.evidence_time

    @property
    def text(self) -> str:
        """``now``, ``doc`` or the ISO 8601 time: what :meth:`parse` reads back (stored, shown, sent)."""
        if self.moment is not None:
            return self.moment.isoformat()
        return "doc" if self.evidence_time else "now"

    def __str__(self) -> str:
        return self.text

    def resolve(self, *, now: datetime, evidence_time: datetime | None) -> datetime:
        """The time to verify at, given the wall clock ``now`` and the evidence's own timestamp (None if it has
        none); :class:`NoEvidenceTime` for ``doc`` without one."""
        if self.moment is not None:
            return self.moment
        if not self.evidence_time:
            return now
        if evidence_time is None:
            raise NoEvidenceTime(
                "verification time 'doc': this evidence carries no timestamp of its own (a DCAP quote has none); "
                "give a time (or now)"
            )
        return evidence_time


At.NOW = At()
At.DOC = At(evidence_time=True)
