"""What verification found: named checks, the verdict, and the verified result.

Every verifier in :mod:`enclavekit.attestation` is built the same way: a ``report(...)`` function that never
raises for bad evidence and returns a :class:`Report` listing its checks in order, and a ``verify(...)``
function that calls it and either returns the verified attestation or raises the first failure's error.
UIs show the report; code that acts on a verdict calls ``verify``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from enclavekit.attestation.errors import AttestationError

__all__ = ["Check", "CheckList", "CheckStatus", "Report", "VerifiedAttestation"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedAttestation:
    """Evidence that passed every check of a policy. Only verifiers construct it.

    ``measurements`` names the TEE's registers in lower case (``pcr0``..., or ``mrtd``, ``rtmr0``...).
    """

    tee: str
    timestamp: datetime | None
    debug: bool
    measurements: Mapping[str, bytes]

    def measurements_hex(self) -> dict[str, str]:
        return {name: value.hex() for name, value in self.measurements.items()}


T = TypeVar("T", bound=VerifiedAttestation)


CheckStatus = Literal["passed", "failed", "not_checked"]
"""A check's state: ``passed``; ``failed``; ``not_checked``: the policy chose not to check it (measurements not
pinned, hardware not verified without collateral), which does not fail the verdict and is not a pass either."""


@dataclass(frozen=True, slots=True)
class Check:
    """One named check and its outcome.

    ``name`` is stable (``cose.signature``, ``chain.validity``, ``policy.measurements``...); ``phase`` groups
    checks for people (``hardware``, ``os``, ``source``, ``binding``); ``code`` is the error code when the
    check failed. ``ok`` is False only for a failure; ``checked`` is False when the policy chose not to check
    (then ``ok`` is True and :attr:`status` is ``not_checked``): show it as such, never as passed.
    """

    name: str
    ok: bool
    detail: str
    phase: str = ""
    code: str | None = None
    expected: str | None = None
    actual: str | None = None
    checked: bool = True

    def __post_init__(self) -> None:
        if not self.ok and not self.checked:
            raise ValueError("a check that was not performed cannot have failed")

    @property
    def status(self) -> CheckStatus:
        if not self.ok:
            return "failed"
        return "passed" if self.checked else "not_checked"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ok": self.ok, "status": self.status, "detail": self.detail}
        if self.phase:
            out["phase"] = self.phase
        if self.code is not None:
            out["code"] = self.code
        if self.expected is not None:
            out["expected"] = self.expected
        if self.actual is not None:
            out["actual"] = self.actual
        return out


@dataclass(frozen=True, slots=True)
class Report(Generic[T]):
    """The outcome of verifying one piece of evidence.

    ``attestation`` is set exactly when every check passed; otherwise ``error`` is the first failure.
    ``facts`` holds what could be read from the evidence even when it did not verify (for display only:
    nothing in it is trusted unless ``valid``).
    """

    tee: str
    checks: tuple[Check, ...]
    attestation: T | None
    error: AttestationError | None
    facts: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if (self.attestation is None) == (self.error is None):
            raise ValueError("a report has either a verified attestation or an error")

    @property
    def valid(self) -> bool:
        return self.error is None

    def verified(self) -> T:
        """The verified attestation, or the first failure raised."""
        if self.error is not None:
            raise self.error
        assert self.attestation is not None
        return self.attestation

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "tee": self.tee,
            "error": None if self.error is None else self.error.to_json(),
            "checks": [check.to_json() for check in self.checks],
        }


class CheckList:
    """Collects checks while a verifier runs; remembers the first failure (used by ``report`` functions)."""

    __slots__ = ("_checks", "first_error")

    def __init__(self) -> None:
        self._checks: list[Check] = []
        self.first_error: AttestationError | None = None

    def passed(
        self, name: str, detail: str, *, phase: str = "", expected: str | None = None, actual: str | None = None
    ) -> None:
        self._checks.append(Check(name, True, detail, phase, None, expected, actual))

    def not_checked(self, name: str, detail: str, *, phase: str = "") -> None:
        """A check the policy chose not to make (unpinned measurements, unverified hardware): not a pass."""
        self._checks.append(Check(name, True, detail, phase, checked=False))

    def failed(
        self,
        name: str,
        error: AttestationError,
        *,
        phase: str = "",
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        self._checks.append(Check(name, False, error.message, phase, error.code, expected, actual))
        if self.first_error is None:
            self.first_error = error

    def failures(self) -> int:
        """How many checks failed so far (a method, so type checkers re-evaluate it at each call)."""
        return sum(1 for check in self._checks if not check.ok)

    def freeze(self) -> tuple[Check, ...]:
        return tuple(self._checks)
