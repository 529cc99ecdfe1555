"""What the vault enclave does with a user's PIN: enroll, unlock, change the PIN — the guess limit first.

Every unlock counts the guess at a majority of the ledger replicas *before* the material is unsealed or the
PIN stretched (:mod:`~enclavekit.services.vault.guesses`), and checks the PIN every time: a warm vault (material
already in memory) never skips the check (the reference's warm vault accepted a wrong PIN). At the limit the
vault locks (until a recovery, :mod:`~enclavekit.services.vault.recovery`) and its sealed material is deleted;
a host that restores the deleted blob gains nothing, the ledger says locked.

The header (``vaults/{user}/header.{generation}``, JSON) holds the KMS blob of the material, the Argon2id cost
and the PIN verifier — nothing the host can test a guess against without the enclave. Its generation must be
the ledger's: a header put back from before a PIN change is refused (:class:`StateRolledBack`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from enclavekit.services.vault.backup import Backup
from enclavekit.services.vault.errors import (
    AlreadyEnrolled,
    LedgerUnavailable,
    NotEnrolled,
    PinInvalid,
    StateCorrupt,
    StateRolledBack,
    VaultLocked,
)
from enclavekit.services.vault.guesses import DEFAULT_GUESS_LIMIT, GuessEntry, GuessLedger
from enclavekit.services.vault.keys import (
    ARGON2,
    Argon2Params,
    VaultKeys,
    check_pin_format,
    derive_keys,
    stretch_pin,
)
from enclavekit.services.vault.objects import ObjectStore, check_user
from enclavekit.services.vault.sealing import Sealer
from enclavekit.services.vault.state import VaultStore

__all__ = ["HEADER_FORMAT", "Header", "Unlocked", "VaultCore", "header_key"]

logger = logging.getLogger(__name__)

HEADER_FORMAT: Final = "enclavekit-vault-header"
STRETCH_CONCURRENCY: Final = 2
"""Argon2id runs at most this many at once (each holds its memory cost: 64 MiB), in threads, so the event loop
— and the ledger's quorum calls — stay responsive under a burst of unlocks."""
WARM_MATERIAL: Final = 1024
"""Unsealed materials kept in memory (saves a KMS round trip per unlock; never skips the PIN check)."""


def header_key(user: str, generation: int) -> str:
    return f"vaults/{user}/header.{generation}"


@dataclass(frozen=True, slots=True)
class Header:
    """A user's vault header of one generation, parsed once from the stored JSON."""

    user: str
    generation: int
    sealed: bytes
    verifier: bytes
    argon2: Argon2Params

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": HEADER_FORMAT,
                "version": 1,
                "user": self.user,
                "generation": self.generation,
                "sealed": base64.b64encode(self.sealed).decode(),
                "verifier": base64.b64encode(self.verifier).decode(),
                "argon2": {
                    "opslimit": self.argon2.opslimit,
                    "memlimit": self.argon2.memlimit,
                    "name": self.argon2.name,
                },
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        try:
            raw = json.loads(data)
            if raw["format"] != HEADER_FORMAT or raw["version"] != 1:
                raise ValueError("not a vault header v1")
            argon2 = Argon2Params(
                int(raw["argon2"]["opslimit"]), int(raw["argon2"]["memlimit"]), str(raw["argon2"]["name"])
            )
            header = cls(
                check_user(raw["user"]),
                int(raw["generation"]),
                base64.b64decode(raw["sealed"], validate=True),
                base64.b64decode(raw["verifier"], validate=True),
                argon2,
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise StateCorrupt(f"vault header does not parse: {exc}") from exc
        if len(header.verifier) != 32 or not 0 < len(header.sealed) <= 4096:
            raise StateCorrupt("vault header fields have the wrong size")
        return header


@dataclass(frozen=True, slots=True)
class Unlocked:
    """An unlocked vault: its keys (enclave memory only) and the ledger entry as of the unlock."""

    user: str
    keys: VaultKeys
    entry: GuessEntry


@dataclass
class VaultCore:
    """Enroll, unlock and change PINs for the users of this vault enclave."""

    ledger: GuessLedger
    sealer: Sealer
    objects: ObjectStore
    argon2: Argon2Params = ARGON2
    _warm: OrderedDict[tuple[str, int, bytes], bytes] = field(default_factory=OrderedDict)
    locked_here: set[str] = field(default_factory=set)
    """Users this enclave locked (its sessions for them end at once; another enclave's lock ends them on expiry)."""
    _stretch_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(STRETCH_CONCURRENCY))
    backup: Backup | None = None
    """Wraps every generation's state key under the user's backup key (recovery); None: no backup is kept."""

    async def _keys(
        self, pin: str, user: str, material: bytes, entry: GuessEntry, generation: int, params: Argon2Params
    ) -> VaultKeys:
        async with self._stretch_slots:
            stretched = await asyncio.to_thread(stretch_pin, pin, user, material, params)
        return derive_keys(stretched, material, user, generation, epoch=entry.epoch)

    async def enroll(
        self,
        user: str,
        pin: str,
        limit: int = DEFAULT_GUESS_LIMIT,
        *,
        admit: Callable[[], Awaitable[object]] | None = None,
    ) -> Unlocked:
        """A new vault for ``user`` with ``pin``; refused if the ledger knows the user (even locked). ``admit``
        (the invitation's check and single-use record) runs once nothing else refuses, before the ledger entry is
        made: a refused enrollment does not use up the code."""
        check_user(user)
        check_pin_format(pin)
        async with self.ledger.lock(user):
            entry = await self.ledger.read(user)
            if entry.enrolled:
                raise AlreadyEnrolled(f"{user} already has a vault" + (" (locked)" if entry.locked else ""))
            if await self.objects.list(f"vaults/{user}/"):
                raise AlreadyEnrolled(f"{user} has stored state the ledger does not know: recovery, not enrollment")
            if admit is not None:
                await admit()
            epoch = secrets.token_hex(16)
            entry = await self.ledger.enroll(user, limit, epoch=epoch)
            if entry.epoch != epoch:
                raise AlreadyEnrolled(f"{user} was enrolled at the same moment by another request")
            keys = await self._write_header(user, pin, entry, entry.generation)
            return Unlocked(user, keys, entry)

    async def _write_header(self, user: str, pin: str, entry: GuessEntry, generation: int) -> VaultKeys:
        material, sealed = await self.sealer.seal(user, generation)
        keys = await self._keys(pin, user, material, entry, generation, self.argon2)
        header = Header(user, generation, sealed, keys.pin_verifier(user, generation), self.argon2)
        await self.objects.put(header_key(user, generation), header.to_bytes())
        if self.backup is not None:
            await self.backup.write(user, generation, keys.state)
        self._remember(user, generation, sealed, material)
        return keys

    def _remember(self, user: str, generation: int, sealed: bytes, material: bytes) -> None:
        self._warm[(user, generation, sealed)] = material
        while len(self._warm) > WARM_MATERIAL:
            self._warm.popitem(last=False)

    async def _header(self, user: str, entry: GuessEntry) -> Header:
        data = await self.objects.get(header_key(user, entry.generation))
        if data is None:
            raise StateRolledBack(f"{user}'s vault header of generation {entry.generation} is missing")
        header = Header.from_bytes(data)
        if header.user != user or header.generation != entry.generation:
            raise StateRolledBack(f"{user}'s vault header is not the one the ledger names")
        return header

    async def unlock(self, user: str, pin: str) -> Unlocked:
        """The vault's keys if ``pin`` is right. The guess is counted first; raises :class:`PinInvalid` (with
        the attempts left) or :class:`VaultLocked`."""
        check_user(user)
        check_pin_format(pin)  # a malformed PIN tries no key: not a guess
        async with self.ledger.lock(user):
            entry = await self.ledger.read(user)
            if not entry.enrolled:
                if await self.objects.list(f"vaults/{user}/"):
                    raise LedgerUnavailable(f"{user} has stored state but the ledger has no entry: refusing")
                raise NotEnrolled(f"{user} has no vault")
            if entry.locked:
                raise VaultLocked(f"{user}'s vault is locked")
            attempt = await self.ledger.begin_attempt(user, entry)
            if attempt.over_limit:
                await self._lock(user, attempt.entry)
                raise VaultLocked(f"{user}'s vault is locked")
            header = await self._header(user, attempt.entry)
            material = self._warm.get((user, header.generation, header.sealed))
            if material is None:
                material = await self.sealer.unseal(user, header.generation, header.sealed)
                self._remember(user, header.generation, header.sealed, material)
            keys = await self._keys(pin, user, material, attempt.entry, header.generation, header.argon2)
            if keys.pin_matches(user, header.generation, header.verifier):
                entry = await self.ledger.clear(user, attempt)
                if entry.recovery_pending:  # whoever knows the PIN needs no recovery: a started one dies (ADR 0022)
                    entry = await self.ledger.close_recovery(user, entry, entry.recovery[0])
                return Unlocked(user, keys, entry)
            if attempt.entry.exhausted:
                await self._lock(user, attempt.entry)
                raise VaultLocked(f"{user}'s vault is locked: the guess limit was reached")
            left = attempt.entry.attempts_left
            raise PinInvalid(f"wrong PIN; {left} attempts left", attempts_left=left)

    async def _lock(self, user: str, entry: GuessEntry) -> None:
        self.locked_here.add(user)
        await self.ledger.lock_out(user, entry)
        for key in await self.objects.list(f"vaults/{user}/"):
            if key.rsplit("/", 1)[-1].startswith("header."):
                await self.objects.delete(key)
        for warm in [k for k in self._warm if k[0] == user]:
            del self._warm[warm]
        logger.warning("vault of %s locked: guess limit reached, sealed material destroyed", user)

    def store(self, unlocked: Unlocked) -> VaultStore:
        """The state of an unlocked vault (objects under its ``state`` key, versions checked by the ledger)."""
        return VaultStore(self.objects, self.ledger, unlocked.user, unlocked.keys.state, unlocked.entry)

    async def change_pin(self, user: str, pin: str, new_pin: str) -> Unlocked:
        """Unlock with ``pin``, then switch to ``new_pin`` crash-safely: new material, header and re-encrypted state
        of the next generation are written first; one ledger write makes them current; the old ones are deleted
        after. A crash before the switch leaves the old PIN working and the new objects unused."""
        check_pin_format(new_pin)
        old = await self.unlock(user, pin)
        async with self.ledger.lock(user):
            store = self.store(old)
            old_index = await store.load()
            generation = old.entry.generation + 1
            keys = await self._write_header(user, new_pin, old.entry, generation)
            new_index, _ = await store.rekey(keys.state, generation)
            entry = await self.ledger.switch_generation(
                user, store.entry, generation=generation, version=new_index.version
            )
            await self.objects.delete(header_key(user, old.entry.generation))
            if self.backup is not None:
                await self.backup.forget(user, old.entry.generation)
            await store.forget_generation(old_index)
            return Unlocked(user, keys, entry)

    async def open_backup(self, user: str, known: GuessEntry) -> tuple[VaultStore, list[int]]:
        """``user``'s state opened with the backup key, without the PIN (recovery only: the caller checked why), and
        the generations that have a backup. The current generation's — or, when the ledger lost the user
        (``known`` not enrolled), the newest stored one's: then nothing detects a host that restores older
        objects (docs/vault.md, recovery)."""
        if self.backup is None:
            raise StateRolledBack(f"{user}'s vault keeps no backup")
        stored = await self.backup.generations(user)
        generation = known.generation if known.enrolled else (stored[0] if stored else 0)
        if generation == 0:
            raise NotEnrolled(f"{user} has no vault backup")
        at = known if known.enrolled else GuessEntry(generation=generation)
        return VaultStore(self.objects, self.ledger, user, await self.backup.state_key(user, generation), at), stored

    async def restore(self, user: str, new_pin: str, known: GuessEntry, *, limit: int) -> Unlocked:
        """Complete a recovery (the caller holds the ledger lock and checked the recovery is due and claimed): open
        the backup of the current generation — or, when the ledger lost the user, of the newest one stored — and
        re-encrypt it into a new generation with ``new_pin``; one ledger write makes it current, clears the
        attempts and closes the recovery; the old generation's objects are deleted after."""
        check_pin_format(new_pin)
        store, stored = await self.open_backup(user, known)
        old_index = await store.load()
        new_generation = max(store.entry.generation, *stored, known.locked_at) + 1
        epoch = known.epoch if known.enrolled else secrets.token_hex(16)  # a ledger that lost the user: a new epoch
        keys = await self._write_header(user, new_pin, GuessEntry(epoch=epoch), new_generation)
        new_index, _ = await store.rekey(keys.state, new_generation)
        entry = await self.ledger.complete_recovery(
            user, known, generation=new_generation, version=new_index.version, limit=limit, epoch=epoch
        )
        if entry.epoch != epoch:
            raise AlreadyEnrolled(f"{user} was enrolled or recovered at the same moment by another request")
        if self.backup is not None:
            for old in stored:
                await self.backup.forget(user, old)
        for key in await self.objects.list(f"vaults/{user}/"):
            name = key.rsplit("/", 1)[-1]
            if name.startswith("header.") and name != f"header.{new_generation}":
                await self.objects.delete(key)
        await store.forget_generation(old_index)
        self.locked_here.discard(user)
        logger.warning("vault of %s recovered into generation %d", user, new_generation)
        return Unlocked(user, keys, entry)
