"""Delayed, cancellable recovery: the way back from a forgotten PIN, a lock-out, or a ledger that lost the user.

Anyone who can publish on the user's subjects can *start* a recovery — the user's new device, or a hostile
operator — so what protects the vault is the delay and the cancel, not who asks (ADR 0022)::

    start ──▶ pending (due = now + delay, measured: 24 h) ──cancel (an enrolled device's signature, or PIN)──▶ dead
                 │ at/after due, the starter's claim ──▶ token (random, 10 minutes, single-use, enclave memory)
                 └ token + new PIN ──▶ the backup restored into a new generation; attempts cleared; recovery closed

The pending recovery lives in the guess ledger (:class:`~enclavekit.services.vault.guesses.GuessEntry`
``recovery``, ``recovery_closed``), never on the host's disk: merged by maximum, the *first* start of a number
keeps its due time (a replayed or concurrent start can only push it later; a start while one is pending is
refused), and a cancel raises ``recovery_closed``, which never goes back — the host cannot resurrect a cancelled
recovery by restoring objects or replaying messages. Only the starter can complete: the start returns a random
claim (inside the envelope; the ledger keeps its SHA-256), and only the claim gets a token once the recovery is due.

This module is the state machine, sans I/O beyond the ledger and the core: every method takes ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclavekit.services.vault.core import Unlocked, VaultCore
from enclavekit.services.vault.errors import NotEnrolled, VaultRejected
from enclavekit.services.vault.guesses import DEFAULT_GUESS_LIMIT, GuessEntry
from enclavekit.services.vault.keys import check_pin_format
from enclavekit.services.vault.state import VaultStore

__all__ = [
    "DEFAULT_RECOVERY_DELAY",
    "MAX_DEVICES",
    "MAX_RECOVERY_DELAY",
    "TOKEN_TTL",
    "DeviceNotEnrolled",
    "NoRecovery",
    "RecoveryClaimInvalid",
    "RecoveryDesk",
    "RecoveryNotDue",
    "RecoveryPending",
    "RecoveryStatus",
    "RecoveryTokenInvalid",
    "add_device",
    "cancel_message",
]

DEFAULT_RECOVERY_DELAY: Final = 24 * 3600
MAX_RECOVERY_DELAY: Final = 30 * 24 * 3600
TOKEN_TTL: Final = 600.0
MAX_TOKENS: Final = 10_000
MAX_DEVICES: Final = 16
DEVICE_SIZE: Final = 32


class RecoveryPending(VaultRejected):
    """A recovery is already pending: a new start would restart nothing (the first start's due time holds)."""

    code = "recovery_pending"


class NoRecovery(VaultRejected):
    """No recovery is pending (none was started, or it was cancelled or completed)."""

    code = "no_recovery"


class RecoveryNotDue(VaultRejected):
    """The recovery's delay has not passed yet."""

    code = "recovery_not_due"


class RecoveryClaimInvalid(VaultRejected):
    """The claim is not the one the pending recovery's start returned."""

    code = "recovery_claim_invalid"


class RecoveryTokenInvalid(VaultRejected):
    """The token is unknown, used, expired, or for another user or recovery."""

    code = "recovery_token_invalid"


class DeviceNotEnrolled(VaultRejected):
    """The cancel is not signed by a device key enrolled in the vault (or there are too many devices)."""

    code = "device_not_enrolled"


def cancel_message(user: str, number: int) -> bytes:
    """What an enrolled device signs (Ed25519) to cancel recovery ``number`` of ``user``."""
    return b"enclavekit vault recovery cancel v1\x00" + user.encode() + b"\x00" + str(number).encode()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RecoveryStatus:
    """What a device is told: is a recovery pending, which one, and when it is due."""

    pending: bool
    number: int
    due: int

    @classmethod
    def of(cls, entry: GuessEntry) -> RecoveryStatus:
        number, due, _ = entry.recovery
        return cls(entry.recovery_pending, number, due if entry.recovery_pending else 0)

    def to_json(self) -> dict[str, Any]:
        return {"pending": self.pending, "recovery": self.number, "due": self.due}


def devices_of(store: VaultStore) -> list[str]:
    """The enrolled device keys (hex) in the loaded index's metadata."""
    assert store.index is not None
    devices = store.index.meta.get("devices", [])
    return [d for d in devices if isinstance(d, str)] if isinstance(devices, list) else []


async def add_device(store: VaultStore, device: bytes) -> list[str]:
    """Enroll ``device`` (a raw Ed25519 public key) in an unlocked vault; idempotent; at most :data:`MAX_DEVICES`."""
    try:
        Ed25519PublicKey.from_public_bytes(device)
    except ValueError as exc:
        raise DeviceNotEnrolled("a device key is a raw 32-byte Ed25519 public key") from exc
    index = store.index or await store.load()
    devices = devices_of(store)
    if device.hex() in devices:
        return devices
    if len(devices) >= MAX_DEVICES:
        raise DeviceNotEnrolled(f"a vault enrolls at most {MAX_DEVICES} devices")
    meta = json.loads(json.dumps(index.meta))
    meta["devices"] = [*devices, device.hex()]
    await store.commit({}, meta)
    return list(meta["devices"])


@dataclass
class RecoveryDesk:
    """Starts, cancels and completes one enclave's users' recoveries. ``delay`` comes from the measured config."""

    core: VaultCore
    delay: int = DEFAULT_RECOVERY_DELAY
    token_ttl: float = TOKEN_TTL
    limit: int = DEFAULT_GUESS_LIMIT
    """The guess limit of a vault recovered after its ledger entry was lost (otherwise it keeps its own)."""
    _tokens: OrderedDict[str, tuple[str, int, float]] = field(default_factory=OrderedDict, repr=False)

    async def _vault_exists(self, user: str, entry: GuessEntry) -> bool:
        return entry.enrolled or bool(await self.core.objects.list(f"vaults/{user}/"))

    async def status(self, user: str) -> RecoveryStatus:
        async with self.core.ledger.lock(user):
            return RecoveryStatus.of(await self.core.ledger.read(user))

    async def start(self, user: str, *, now: float) -> tuple[RecoveryStatus, str]:
        """Record a new pending recovery, due at ``now + delay``; returns it and the claim (for the starter only)."""
        ledger = self.core.ledger
        async with ledger.lock(user):
            entry = await ledger.read(user)
            if not await self._vault_exists(user, entry):
                raise NotEnrolled(f"{user} has no vault")
            if entry.recovery_pending:
                raise RecoveryPending(f"recovery {entry.recovery[0]} is pending, due at {entry.recovery[1]}")
            claim = secrets.token_hex(32)
            mine = (max(entry.recovery[0], entry.recovery_closed) + 1, int(now) + self.delay, _digest(claim))
            entry = await ledger.start_recovery(user, entry, number=mine[0], due=mine[1], claim=mine[2])
            if entry.recovery != mine:  # another coordinator started the same number at once: theirs or a later one
                raise RecoveryPending(f"recovery {entry.recovery[0]} is pending, due at {entry.recovery[1]}")
            return RecoveryStatus.of(entry), claim

    async def _pending(self, user: str) -> GuessEntry:
        entry = await self.core.ledger.read(user)
        if not entry.recovery_pending:
            raise NoRecovery(f"{user} has no pending recovery")
        return entry

    async def cancel(self, user: str, *, device: bytes | None = None, signature: bytes = b"") -> RecoveryStatus:
        """Cancel the pending recovery: signed by an enrolled ``device`` (over :func:`cancel_message`), or with no
        device when the caller already checked the user's PIN (or session)."""
        ledger = self.core.ledger
        async with ledger.lock(user):
            entry = await self._pending(user)
            number = entry.recovery[0]
            if device is not None:
                store, _ = await self.core.open_backup(user, entry)
                await store.load()
                if device.hex() not in devices_of(store):
                    raise DeviceNotEnrolled("the cancel is not signed by a device enrolled in this vault")
                try:
                    Ed25519PublicKey.from_public_bytes(device).verify(signature, cancel_message(user, number))
                except (InvalidSignature, ValueError) as exc:
                    raise DeviceNotEnrolled("the cancel's signature does not verify") from exc
            return RecoveryStatus.of(await ledger.close_recovery(user, entry, number))

    async def token(self, user: str, claim: str, *, now: float) -> tuple[str, float]:
        """A single-use token for the pending recovery, to the holder of its claim, once it is due."""
        async with self.core.ledger.lock(user):
            entry = await self._pending(user)
        number, due, digest = entry.recovery
        if not hmac.compare_digest(_digest(claim), digest):
            raise RecoveryClaimInvalid("this claim did not start the pending recovery")
        if now < due:
            raise RecoveryNotDue(f"the recovery is due at {due} ({int(due - now)} s from now)")
        token = secrets.token_hex(16)
        expires = now + self.token_ttl
        self._tokens[_digest(token)] = (user, number, expires)
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)
        return token, expires

    async def complete(self, user: str, token: str, new_pin: str, *, now: float) -> Unlocked:
        """Restore the backup into a new generation with ``new_pin``: the token is used up whatever happens."""
        check_pin_format(new_pin)  # before the token is spent: a typo in the PIN costs nothing
        held = self._tokens.pop(_digest(token), None)
        if held is None or held[0] != user or held[2] < now:
            raise RecoveryTokenInvalid("the recovery token is unknown, used, expired or not this user's")
        async with self.core.ledger.lock(user):
            entry = await self._pending(user)
            if entry.recovery[0] != held[1]:
                raise RecoveryTokenInvalid("the recovery this token was issued for is over")
            if now < entry.recovery[1]:
                raise RecoveryNotDue("the recovery is not due")
            return await self.core.restore(user, new_pin, entry, limit=self.limit)
