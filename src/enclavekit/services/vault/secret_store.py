"""Named secrets with versions, and the vault's hash-chained audit feed — on top of :class:`VaultStore`.

Each secret version is one item (a random id; the host sees neither names nor values); the index metadata holds
``{"secrets": {name: {"critical": bool, "versions": [item ids]}}, "audit": {"seq": n, "head": hex}}``. Every
change (and every read of a critical secret) appends an audit record::

    record_n = {"seq": n, "at": unix seconds, "op": ..., "name": ..., "version": ..., "prev": head_{n-1}}
    head_n   = SHA-256(canonical JSON of record_n)          (head_0 = 64 zeros)

stored as its own item; the user verifies the chain with :func:`verify_audit` and can pin the head the vault
returns with each answer, so history cannot be rewritten without the user noticing.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from typing import Any, Final

from enclavekit.services.vault.errors import SecretNotFound, StateCorrupt, VaultRejected
from enclavekit.services.vault.state import VaultStore

__all__ = [
    "GENESIS",
    "MAX_VALUE",
    "MAX_VERSIONS",
    "AuditBroken",
    "InvalidSecret",
    "SecretStore",
    "audit_hash",
    "verify_audit",
]

GENESIS: Final = "0" * 64
MAX_VALUE: Final = 64 * 1024
MAX_VERSIONS: Final = 100
_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")


class InvalidSecret(VaultRejected):
    """A secret name is 1..128 of ``A-Z a-z 0-9 . _ -``; a value at most 64 KiB."""

    code = "invalid_secret"


class AuditBroken(VaultRejected):
    """An audit feed whose hashes do not chain (or do not end at the pinned head)."""

    code = "audit_broken"


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def audit_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(record)).hexdigest()


def verify_audit(records: Sequence[dict[str, Any]], head: str | None = None) -> str:
    """Check that ``records`` chain from genesis (and end at ``head`` if given); returns the last head."""
    previous = GENESIS
    for seq, record in enumerate(records, start=1):
        if record.get("seq") != seq or record.get("prev") != previous:
            raise AuditBroken(f"audit record {seq} does not follow the one before it")
        previous = audit_hash(record)
    if head is not None and head != previous:
        raise AuditBroken("the audit feed does not end at the pinned head")
    return previous


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSecret("a secret name is 1..128 characters of A-Z a-z 0-9 . _ -")
    return name


class SecretStore:
    """The secrets of one unlocked vault."""

    def __init__(self, store: VaultStore) -> None:
        self.store = store

    async def _meta(self) -> dict[str, Any]:
        index = self.store.index or await self.store.load()
        meta = json.loads(json.dumps(index.meta))  # a deep copy to change
        meta.setdefault("secrets", {})
        meta.setdefault("audit", {"seq": 0, "head": GENESIS})
        return dict(meta)

    @staticmethod
    def _audit(meta: dict[str, Any], now: float, op: str, **fields: Any) -> tuple[str, bytes]:
        seq = int(meta["audit"]["seq"]) + 1
        record = {"seq": seq, "at": int(now), "op": op, "prev": meta["audit"]["head"], **fields}
        meta["audit"] = {"seq": seq, "head": audit_hash(record)}
        return f"audit-{seq}", _canonical(record)

    async def record(self, op: str, *, now: float, **fields: Any) -> str:
        """Append an audit record on its own (e.g. enrollment, a PIN change); returns the new head."""
        meta = await self._meta()
        item, data = self._audit(meta, now, op, **fields)
        await self.store.commit({item: data}, meta)
        return str(meta["audit"]["head"])

    async def put(self, name: str, value: bytes, *, critical: bool, now: float) -> int:
        """Store a new version of ``name``; returns its version number (1-based)."""
        _check_name(name)
        if not isinstance(value, bytes) or len(value) > MAX_VALUE:
            raise InvalidSecret("a secret value is at most 64 KiB")
        meta = await self._meta()
        entry = meta["secrets"].setdefault(name, {"critical": critical, "versions": []})
        entry["critical"] = bool(entry["critical"] or critical)  # once critical, always critical
        item = secrets.token_hex(16)
        entry["versions"].append(item)
        removed: tuple[str, ...] = ()
        if len(entry["versions"]) > MAX_VERSIONS:
            removed = (entry["versions"].pop(0),)
        version = len(entry["versions"]) if not removed else MAX_VERSIONS
        audit_item, audit_record = self._audit(meta, now, "secret.put", name=name, version=version)
        await self.store.commit({item: value, audit_item: audit_record}, meta, removed)
        return version

    async def describe(self, name: str) -> dict[str, Any]:
        meta = await self._meta()
        entry = meta["secrets"].get(_check_name(name))
        if entry is None:
            raise SecretNotFound(f"no secret named {name}")
        return dict(entry)

    async def get(self, name: str, version: int | None = None, *, now: float) -> tuple[bytes, int, bool]:
        """The value of ``name`` (latest, or ``version``), its version and whether it is critical. A critical
        read is recorded in the audit feed (the caller has checked the PIN again)."""
        entry = await self.describe(name)
        versions = entry["versions"]
        number = len(versions) if version is None else version
        if not 1 <= number <= len(versions):
            raise SecretNotFound(f"{name} has no version {number}")
        value = await self.store.read_item(versions[number - 1])
        if entry["critical"]:
            meta = await self._meta()
            item, data = self._audit(meta, now, "secret.get", name=name, version=number)
            await self.store.commit({item: data}, meta)
        return value, number, bool(entry["critical"])

    async def names(self) -> list[dict[str, Any]]:
        meta = await self._meta()
        return [
            {"name": name, "versions": len(entry["versions"]), "critical": bool(entry["critical"])}
            for name, entry in sorted(meta["secrets"].items())
        ]

    async def audit(self) -> tuple[list[dict[str, Any]], str]:
        meta = await self._meta()
        records = []
        for seq in range(1, int(meta["audit"]["seq"]) + 1):
            try:
                records.append(json.loads(await self.store.read_item(f"audit-{seq}")))
            except ValueError as exc:
                raise StateCorrupt(f"audit record {seq} does not parse") from exc
        return records, str(meta["audit"]["head"])
