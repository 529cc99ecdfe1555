"""A vault enclave in process (real KMS emulator, real crypto, test-cost Argon2id) whose object store yields at
every call, as S3 does: the owner's and the peers' operations on one vault, run at once, lose no change and no
audit record — each reads the index and commits the next version, so the enclave runs them one at a time."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclavekit.services.vault.connection import body_digest
from enclavekit.services.vault.enclave_app import VaultEnclave
from enclavekit.services.vault.envelope import open_response, seal_request
from enclavekit.services.vault.objects import DirectoryObjectStore
from enclavekit.services.vault.secret_store import verify_audit
from enclavekit.services.vault.wire import Message, PeerMessage
from tests.vault_support import VaultWorld, vault_world


class YieldingStore(DirectoryObjectStore):
    """The folder store, giving the event loop a turn before and after every call (a network store's awaits)."""

    async def get(self, key: str) -> bytes | None:
        await asyncio.sleep(0)
        data = await super().get(key)
        await asyncio.sleep(0)
        return data

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.sleep(0)
        await super().put(key, data)
        await asyncio.sleep(0)

    async def list(self, prefix: str) -> list[str]:
        await asyncio.sleep(0)
        return await super().list(prefix)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[VaultWorld]:
    with vault_world(tmp_path) as built:
        yield built


async def _ask(vault: VaultEnclave, user: str, op: str, payload: dict[str, Any], **peer: Any) -> dict[str, Any]:
    """One envelope to ``vault`` for ``user``'s ``op`` (from ``sender``'s app with ``sender=``), as the bridge
    relays it; the vault's ``ok`` answer."""
    message_id = peer.pop("message_id", None)
    request = seal_request(
        vault.public_key, user, op, json.dumps(payload).encode(), now=time.time(), message_id=message_id
    )
    envelope = base64.b64encode(request.data).decode()
    if peer:
        reply = await vault.peer_message(PeerMessage(user=user, op=op, envelope=envelope, **peer), None)  # type: ignore[arg-type]
    else:
        reply = await vault.message(Message(user=user, op=op, envelope=envelope), None)  # type: ignore[arg-type]
    answer = json.loads(open_response(request, base64.b64decode(reply.envelope)))
    assert "ok" in answer, answer
    return dict(answer["ok"])


async def test_owner_and_peer_operations_at_once_lose_no_change_and_no_audit_record(world: VaultWorld) -> None:
    core = world.enclave()
    core.objects = YieldingStore(world.objects_dir)
    vault = VaultEnclave(core=core)
    alice = (await _ask(vault, "alice", "enroll", {"pin": "2468"}))["session"]
    bob = (await _ask(vault, "bob", "enroll", {"pin": "1357"}))["session"]
    await _ask(vault, "alice", "profile.set", {"session": alice, "fields": {"name": "Alice"}})
    invitation = (await _ask(vault, "alice", "connection.invite", {"session": alice, "grant": {"profile": ["name"]}}))[
        "invitation"
    ]
    prepared = await _ask(
        vault, "bob", "connection.accept", {"session": bob, "inviter": "alice", "invitation": invitation["id"]}
    )
    body = {k: invitation[k] for k in ("token",)} | {"invitation": invitation["id"]}
    body |= {"key": prepared["key"], "proof": prepared["proof"]}
    accepted = await _ask(vault, "alice", "connection.accept", body, sender="bob")
    confirm = {"session": bob, "pending": prepared["pending"], "connection": accepted["connection"]}
    await _ask(vault, "bob", "connection.confirm", confirm | {"key": accepted["key"], "granted": accepted["granted"]})

    async def peer_read() -> dict[str, Any]:
        message_id = secrets.token_bytes(16)
        read = {"fields": ["name"]}
        signed = await _ask(
            vault,
            "bob",
            "connection.sign",
            {
                "session": bob,
                "connection": accepted["connection"],
                "op": "profile.get",
                "message_id": message_id.hex(),
                "body": body_digest(read),
            },
        )
        return await _ask(
            vault, "alice", "profile.get", read | {"auth": signed["auth"]}, sender="bob", message_id=message_id
        )

    def put(i: int) -> Any:
        return _ask(vault, "alice", "secret.put", {"session": alice, "name": f"s{i}", "value": "dg=="})

    results = await asyncio.gather(*(put(i) for i in range(6)), *(peer_read() for _ in range(6)))
    assert [r["fields"] for r in results[6:]] == [{"name": "Alice"}] * 6
    names = {s["name"] for s in (await _ask(vault, "alice", "secret.list", {"session": alice}))["secrets"]}
    assert names == {f"s{i}" for i in range(6)}
    audit = await _ask(vault, "alice", "audit.get", {"session": alice})
    assert verify_audit(audit["records"], audit["head"]) == audit["head"]
    ops = [r["op"] for r in audit["records"]]
    assert ops.count("secret.put") == 6 and ops.count("peer.profile.get") == 6
