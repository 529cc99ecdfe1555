"""A vault enclave in process (real KMS emulator, real crypto, test-cost Argon2id, the enclave's clock injected):
connection invitations are single use and short-lived, and a wrong token uses nothing up; and, with an object
store that yields at every call as S3 does, the owner's and the peers' operations on one vault run at once lose no
change and no audit record — each reads the index and commits the next version, so the enclave runs them one at a
time."""

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


async def _answer(vault: VaultEnclave, user: str, op: str, payload: dict[str, Any], **peer: Any) -> dict[str, Any]:
    """One envelope to ``vault`` for ``user``'s ``op`` (from ``sender``'s app with ``sender=``), as the bridge
    relays it, stamped with the vault's clock; the vault's answer (``ok`` or ``error``)."""
    message_id = peer.pop("message_id", None)
    payload_bytes = json.dumps(payload).encode()
    request = seal_request(vault.public_key, user, op, payload_bytes, now=vault.clock(), message_id=message_id)
    envelope = base64.b64encode(request.data).decode()
    if peer:
        reply = await vault.peer_message(PeerMessage(user=user, op=op, envelope=envelope, **peer), None)  # type: ignore[arg-type]
    else:
        reply = await vault.message(Message(user=user, op=op, envelope=envelope), None)  # type: ignore[arg-type]
    return dict(json.loads(open_response(request, base64.b64decode(reply.envelope))))


async def _ask(vault: VaultEnclave, user: str, op: str, payload: dict[str, Any], **peer: Any) -> dict[str, Any]:
    answer = await _answer(vault, user, op, payload, **peer)
    assert "ok" in answer, answer
    return dict(answer["ok"])


async def _refused(vault: VaultEnclave, user: str, op: str, payload: dict[str, Any], **peer: Any) -> str:
    answer = await _answer(vault, user, op, payload, **peer)
    assert "error" in answer, answer
    return str(answer["error"]["code"])


async def _enrolled(vault: VaultEnclave, user: str, pin: str) -> str:
    """Enroll ``user`` in ``vault``'s core (the invitation check is the enroll operation's, tested elsewhere) and
    open a session, as a successful ``enroll`` does."""
    assert vault.core is not None
    return vault.open_session(await vault.core.enroll(user, pin))


async def _acceptance(vault: VaultEnclave, session: str, invitation: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Bob's vault prepares to accept ``invitation``: the body his app sends to the inviter's vault, and the
    pending record's id."""
    prepared = await _ask(
        vault, "bob", "connection.accept", {"session": session, "inviter": "alice", "invitation": invitation["id"]}
    )
    body = {"invitation": invitation["id"], "token": invitation["token"], "key": prepared["key"]}
    return body | {"proof": prepared["proof"]}, str(prepared["pending"])


async def test_connection_invitation_is_single_use_short_lived_and_a_wrong_token_uses_nothing_up(
    world: VaultWorld,
) -> None:
    clock = [time.time()]
    vault = VaultEnclave(core=world.enclave(), clock=lambda: clock[0])
    alice = await _enrolled(vault, "alice", "2468")
    bob = await _enrolled(vault, "bob", "1357")

    async def invite() -> dict[str, Any]:
        answer = await _ask(vault, "alice", "connection.invite", {"session": alice, "ttl": 60})
        return dict(answer["invitation"])

    invitation = await invite()
    body, _ = await _acceptance(vault, bob, invitation)
    wrong = body | {"token": "00" * 32}
    assert await _refused(vault, "alice", "connection.accept", wrong, sender="bob") == "connection_invitation_invalid"
    assert "connection" in await _ask(vault, "alice", "connection.accept", body, sender="bob")  # still usable
    again = await _refused(vault, "alice", "connection.accept", body, sender="bob")
    assert again == "connection_invitation_invalid"  # used up

    late = await invite()
    late_body, _ = await _acceptance(vault, bob, late)
    clock[0] += 61
    expired = await _refused(vault, "alice", "connection.accept", late_body, sender="bob")
    assert expired == "connection_invitation_invalid"
    connections = (await _ask(vault, "alice", "connection.list", {"session": alice}))["connections"]
    assert len(connections) == 1  # only the first acceptance made a connection
    ops = [r["op"] for r in (await _ask(vault, "alice", "audit.get", {"session": alice}))["records"]]
    assert ops.count("connection.invite") == 2 and ops.count("connection.accepted") == 1
    assert "connection.invitation_expired" in ops


async def test_owner_and_peer_operations_at_once_lose_no_change_and_no_audit_record(world: VaultWorld) -> None:
    core = world.enclave()
    core.objects = YieldingStore(world.objects_dir)
    vault = VaultEnclave(core=core)
    alice = await _enrolled(vault, "alice", "2468")
    bob = await _enrolled(vault, "bob", "1357")
    await _ask(vault, "alice", "profile.set", {"session": alice, "fields": {"name": "Alice"}})
    invitation = (await _ask(vault, "alice", "connection.invite", {"session": alice, "grant": {"profile": ["name"]}}))[
        "invitation"
    ]
    body, pending = await _acceptance(vault, bob, invitation)
    accepted = await _ask(vault, "alice", "connection.accept", body, sender="bob")
    confirm = {"session": bob, "pending": pending, "connection": accepted["connection"]}
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
