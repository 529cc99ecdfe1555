"""A user's vault state at rest: one encrypted object per item and a versioned, encrypted index.

Objects (all XChaCha20-Poly1305 under the generation's ``state`` subkey; the associated data names the user, the
generation, what the object is and its number, so no object can be moved, renamed or replayed into another
place)::

    vaults/{user}/index.{generation}.{version}   the index: every item's id, write number and digest
    vaults/{user}/items/{item}.{n}               one item's value (a secret version, an audit record...)

A change writes the new item objects, then the index of ``version + 1``, then raises the ledger's ``version``
to it (a majority write), then deletes what the new index no longer names — incremental, nothing is rewritten
that did not change (the reference rewrote one blob per change and lost tables on reload). Loading takes the
newest index of the current generation that decrypts, and refuses it if it is older than the ledger's version:
a host that restores an older copy gets :class:`StateRolledBack`, not old data.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from enclavekit.services.vault.errors import StateCorrupt, StateRolledBack
from enclavekit.services.vault.guesses import GuessEntry, GuessLedger
from enclavekit.services.vault.objects import ObjectStore

__all__ = ["ItemRef", "StateIndex", "VaultStore", "item_key", "open_object", "seal_object"]

OBJECT_VERSION: Final = 1
NONCE_SIZE: Final = 24
MAX_ITEMS: Final = 10_000


def seal_object(key: bytes, associated: bytes, plaintext: bytes) -> bytes:
    """``0x01 ‖ nonce(24) ‖ XChaCha20-Poly1305(key, nonce, plaintext, associated)``."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return (
        bytes([OBJECT_VERSION]) + nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated, nonce, key)
    )


def open_object(key: bytes, associated: bytes, data: bytes) -> bytes:
    """The plaintext of a :func:`seal_object` output, or :class:`StateCorrupt`."""
    if len(data) < 1 + NONCE_SIZE + 16 or data[0] != OBJECT_VERSION:
        raise StateCorrupt("stored object is not a vault object v1")
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            data[1 + NONCE_SIZE :], associated, data[1 : 1 + NONCE_SIZE], key
        )
    except CryptoError as exc:
        raise StateCorrupt("stored object does not decrypt under this vault's key here") from exc


def item_key(user: str, item: str, n: int) -> str:
    return f"vaults/{user}/items/{item}.{n}"


def _index_key(user: str, generation: int, version: int) -> str:
    return f"vaults/{user}/index.{generation}.{version}"


def _ad(*parts: object) -> bytes:
    return b"enclavekit vault v1\x00" + b"\x00".join(str(p).encode() for p in parts)


@dataclass(frozen=True, slots=True)
class ItemRef:
    """Where an item's current value is: its write number and the SHA-256 of its object."""

    n: int
    digest: str


@dataclass
class StateIndex:
    """The decrypted index: item refs and the application's metadata (secret names, versions, the audit head)."""

    generation: int
    version: int
    items: dict[str, ItemRef] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "generation": self.generation,
                "version": self.version,
                "items": {k: [r.n, r.digest] for k, r in self.items.items()},
                "meta": self.meta,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> StateIndex:
        try:
            raw = json.loads(data)
            items = {str(k): ItemRef(int(v[0]), str(v[1])) for k, v in raw["items"].items()}
            index = cls(int(raw["generation"]), int(raw["version"]), items, dict(raw["meta"]))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise StateCorrupt(f"vault index does not parse: {exc}") from exc
        if len(index.items) > MAX_ITEMS:
            raise StateCorrupt("vault index names too many items")
        return index


@dataclass
class VaultStore:
    """Loads and changes one unlocked vault's state; ``key`` is the generation's ``state`` subkey."""

    objects: ObjectStore
    ledger: GuessLedger
    user: str
    key: bytes = field(repr=False)
    entry: GuessEntry
    index: StateIndex | None = None

    async def load(self) -> StateIndex:
        """The newest index of this generation, checked against the ledger's version (rollback)."""
        generation = self.entry.generation
        prefix = f"vaults/{self.user}/index.{generation}."
        versions = sorted(
            (
                int(k.removeprefix(prefix))
                for k in await self.objects.list(f"vaults/{self.user}/")
                if k.startswith(prefix) and k.removeprefix(prefix).isdigit()
            ),
            reverse=True,
        )
        for version in versions:
            data = await self.objects.get(_index_key(self.user, generation, version))
            if data is None:
                continue
            try:
                index = StateIndex.from_bytes(open_object(self.key, _ad(self.user, generation, "index", version), data))
            except StateCorrupt:
                continue  # a half-finished or forged newer index: not ours, try the previous one
            if index.version != version or index.generation != generation:
                continue
            if version < self.entry.version:
                break
            self.index = index
            return index
        if self.entry.version == 0 and not versions:
            self.index = StateIndex(generation, 0)
            return self.index
        raise StateRolledBack(f"{self.user}'s newest readable state is older than version {self.entry.version}")

    async def read_item(self, item: str) -> bytes:
        index = self.index or await self.load()
        ref = index.items.get(item)
        if ref is None:
            raise StateCorrupt(f"item {item} is not in the index")
        data = await self.objects.get(item_key(self.user, item, ref.n))
        if data is None or hashlib.sha256(data).hexdigest() != ref.digest:
            raise StateRolledBack(f"item {item} is missing or not the one the index names")
        return open_object(self.key, _ad(self.user, index.generation, "item", item, ref.n), data)

    async def commit(
        self, writes: Mapping[str, bytes], meta: dict[str, Any], removed: tuple[str, ...] = ()
    ) -> StateIndex:
        """Write ``writes`` (item id → plaintext) and the new metadata as the next version, then confirm it."""
        old = self.index or await self.load()
        new = StateIndex(old.generation, old.version + 1, dict(old.items), meta)
        stale: list[str] = []
        for item, plaintext in writes.items():
            previous = old.items.get(item)
            n = (previous.n + 1) if previous else 1
            data = seal_object(self.key, _ad(self.user, new.generation, "item", item, n), plaintext)
            await self.objects.put(item_key(self.user, item, n), data)
            new.items[item] = ItemRef(n, hashlib.sha256(data).hexdigest())
            if previous:
                stale.append(item_key(self.user, item, previous.n))
        for item in removed:
            previous = new.items.pop(item, None)
            if previous:
                stale.append(item_key(self.user, item, previous.n))
        if len(new.items) > MAX_ITEMS:
            raise StateCorrupt("a vault holds at most 10000 items")
        await self.objects.put(
            _index_key(self.user, new.generation, new.version),
            seal_object(self.key, _ad(self.user, new.generation, "index", new.version), new.to_bytes()),
        )
        self.entry = await self.ledger.bump(self.user, self.entry, version=new.version)  # the switch
        self.index = new
        for key in [*stale, _index_key(self.user, old.generation, old.version)]:
            await self.objects.delete(key)
        return new

    async def rekey(self, key: bytes, generation: int) -> tuple[StateIndex, dict[str, bytes]]:
        """Re-encrypt every item and the index under a new generation's key; returns the new index (written, not
        yet current: the caller moves the ledger to ``generation`` and then calls :meth:`forget_generation`)."""
        old = self.index or await self.load()
        values = {item: await self.read_item(item) for item in old.items}
        new = StateIndex(generation, old.version + 1, {}, old.meta)
        for item, plaintext in values.items():
            n = old.items[item].n + 1
            data = seal_object(key, _ad(self.user, generation, "item", item, n), plaintext)
            await self.objects.put(item_key(self.user, item, n), data)
            new.items[item] = ItemRef(n, hashlib.sha256(data).hexdigest())
        await self.objects.put(
            _index_key(self.user, generation, new.version),
            seal_object(key, _ad(self.user, generation, "index", new.version), new.to_bytes()),
        )
        return new, values

    async def forget_generation(self, old: StateIndex) -> None:
        """After the switch: delete the old generation's index and item objects."""
        for item, ref in old.items.items():
            await self.objects.delete(item_key(self.user, item, ref.n))
        await self.objects.delete(_index_key(self.user, old.generation, old.version))
