"""The vault's backup: the user's state stays readable by the attested enclave without the PIN.

Each user has a **backup key**: 32 random bytes, a KMS data key sealed to the vault's PCR0 like the PIN material
but under its own encryption context (``enclavekit:purpose = backup``, the user; :mod:`sealing`), so neither
blob stands for the other. It does not depend on the PIN. Every generation's ``state`` subkey is wrapped under it::

    vaults/{user}/backup-key          the backup key's KMS blob (made once, at enrollment)
    vaults/{user}/backup.{generation}  0x01 ‖ nonce ‖ XChaCha20-Poly1305(backup key, state key,
                                        ad = "enclavekit vault backup v1" ‖ user ‖ generation)

The backup is therefore the stored state itself (incremental: each change already writes only what changed),
plus one wrapped key per generation — written with the header, before the ledger switches to the generation.
Only the vault enclave can unwrap it (KMS releases the backup key to its PCR0 only), and it does so only to complete
a recovery (:mod:`~enclavekit.services.vault.recovery`: a delay the user's devices can cancel), never for the host.
A locked vault (its PIN material destroyed) and a vault whose ledger entry was lost keep their backup.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from enclavekit.services.vault.errors import StateCorrupt, StateRolledBack
from enclavekit.services.vault.objects import ObjectStore
from enclavekit.services.vault.sealing import Sealer
from enclavekit.services.vault.state import open_object, seal_object

__all__ = ["BACKUP_GENERATION", "Backup", "backup_key_name", "backup_wrap_name"]

BACKUP_GENERATION: Final = 0
"""The generation the backup key's encryption context names (material generations start at 1)."""
WARM_KEYS: Final = 1024


def backup_key_name(user: str) -> str:
    return f"vaults/{user}/backup-key"


def backup_wrap_name(user: str, generation: int) -> str:
    return f"vaults/{user}/backup.{generation}"


def _ad(user: str, generation: int) -> bytes:
    return b"enclavekit vault backup v1\x00" + user.encode() + b"\x00" + str(generation).encode()


@dataclass
class Backup:
    """Writes and opens the wrapped state keys of one enclave's users (``sealer``: purpose ``backup``)."""

    objects: ObjectStore
    sealer: Sealer
    _warm: OrderedDict[tuple[str, bytes], bytes] = field(default_factory=OrderedDict, repr=False)

    async def _key(self, user: str, *, create: bool) -> bytes:
        sealed = await self.objects.get(backup_key_name(user))
        if sealed is None:
            if not create:
                raise StateRolledBack(f"{user}'s backup key is missing")
            key, sealed = await self.sealer.seal(user, BACKUP_GENERATION)
            await self.objects.put(backup_key_name(user), sealed)
        else:
            key = self._warm.get((user, sealed)) or await self.sealer.unseal(user, BACKUP_GENERATION, sealed)
        self._warm[(user, sealed)] = key
        while len(self._warm) > WARM_KEYS:
            self._warm.popitem(last=False)
        return key

    async def write(self, user: str, generation: int, state_key: bytes) -> None:
        """Wrap ``generation``'s state key (the backup key is made on the first call for ``user``)."""
        key = await self._key(user, create=True)
        await self.objects.put(backup_wrap_name(user, generation), seal_object(key, _ad(user, generation), state_key))

    async def state_key(self, user: str, generation: int) -> bytes:
        """``generation``'s state key, unwrapped (enclave memory only); :class:`StateRolledBack` if it is gone."""
        data = await self.objects.get(backup_wrap_name(user, generation))
        if data is None:
            raise StateRolledBack(f"{user}'s backup of generation {generation} is missing")
        state_key = open_object(await self._key(user, create=False), _ad(user, generation), data)
        if len(state_key) != 32:
            raise StateCorrupt(f"{user}'s backup of generation {generation} is not a key")
        return state_key

    async def generations(self, user: str) -> list[int]:
        """The generations with a wrapped key in storage, newest first."""
        prefix = f"vaults/{user}/backup."
        found = [key.removeprefix(prefix) for key in await self.objects.list(f"vaults/{user}/")]
        return sorted((int(g) for g in found if g.isdigit()), reverse=True)

    async def forget(self, user: str, generation: int) -> None:
        await self.objects.delete(backup_wrap_name(user, generation))
