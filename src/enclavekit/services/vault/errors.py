"""Why the vault refused a request or could not finish one. Codes are stable; programs match on them."""

from __future__ import annotations

from enclavekit.errors import InfrastructureError, Rejected

__all__ = [
    "AlreadyEnrolled",
    "InvalidPinFormat",
    "LedgerUnavailable",
    "NotEnrolled",
    "PinInvalid",
    "SecretNotFound",
    "StateCorrupt",
    "StateRolledBack",
    "VaultLocked",
    "VaultRejected",
    "VaultUnavailable",
]


class VaultRejected(Rejected):
    """A request to a vault was refused; retrying the same request cannot succeed."""

    code = "vault_rejected"


class VaultUnavailable(InfrastructureError):
    """The vault could not finish a request because something it depends on failed; retry with backoff."""

    code = "vault_unavailable"


class InvalidPinFormat(VaultRejected):
    """The PIN is not 4 to 8 ASCII digits. Not counted as a guess: no key was tried."""

    code = "pin_format"


class PinInvalid(VaultRejected):
    """The PIN was wrong. The guess was counted (durably, at a quorum) before the PIN was tried."""

    code = "pin_invalid"

    def __init__(self, message: str, *, attempts_left: int) -> None:
        super().__init__(message)
        self.attempts_left = attempts_left


class VaultLocked(VaultRejected):
    """The guess limit was reached: the vault is locked and its sealed material destroyed."""

    code = "vault_locked"


class AlreadyEnrolled(VaultRejected):
    """The user already has a vault (or had one that is locked): enrolling again is refused."""

    code = "already_enrolled"


class NotEnrolled(VaultRejected):
    """The user has no vault."""

    code = "not_enrolled"


class SecretNotFound(VaultRejected):
    """No secret of that name (or version) in the vault."""

    code = "secret_not_found"


class StateRolledBack(VaultRejected):
    """The stored state is older than the ledger says it must be: the host restored an old copy."""

    code = "state_rolled_back"


class StateCorrupt(VaultRejected):
    """A stored object does not decrypt or does not parse under the vault's keys."""

    code = "state_corrupt"


class LedgerUnavailable(VaultUnavailable):
    """Fewer than a majority of the guess-ledger replicas answered, or a majority had never heard of an enrolled
    vault: the vault fails closed rather than count guesses where the host could reset them."""

    code = "ledger_unavailable"
