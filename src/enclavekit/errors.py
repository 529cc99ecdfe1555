"""The one error hierarchy of enclavekit.

Every error has a stable ``code`` (a snake_case string that programs may match on; it never changes once
released) and a human ``message``. Two families matter to callers:

* :class:`Rejected` — untrusted input was refused (a forged document, a garbage frame, a bad request). Retrying
  the same input cannot succeed.
* :class:`InfrastructureError` — something we depend on failed (a socket, a queue, a database). Retry with
  backoff.

:class:`ConfigurationError` is the operator's mistake (an empty policy, a missing file): fix the settings.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConfigurationError",
    "Error",
    "InfrastructureError",
    "Rejected",
]


class Error(Exception):
    """Base class of every error enclavekit raises on purpose."""

    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_json(self) -> dict[str, str]:
        """The error as it travels in JSON reports and RPC responses."""
        return {"code": self.code, "message": self.message}


class Rejected(Error):
    """Untrusted input was refused. Never retried."""

    code = "rejected"


class InfrastructureError(Error):
    """A dependency failed (I/O, service unavailable). Worth retrying with backoff."""

    code = "infrastructure"
    retryable = True


class ConfigurationError(Error):
    """The operator's settings are unusable (for example, a policy that pins nothing)."""

    code = "configuration"
