"""Connections between vaults end to end, each piece its own process (the stack of ``test_vault_e2e``: a real
nats-server with per-user authorization, the KMS emulator, three vault enclaves, the host bridge). Two users
connect, share one profile field and not another, message with receipts, rotate a key and revoke; a third user
cannot reach either vault — neither on NATS (the server refuses the subject) nor through the vault (no connection);
what the host relays and stores holds no profile value or message."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
import pytest_asyncio

from enclavekit.services.vault.client import VaultClient, VaultError
from enclavekit.services.vault.connection import Authorization, authorization_message, body_digest, new_key, sign
from enclavekit.services.vault.data_contract import offer_contract
from enclavekit.services.vault.envelope import open_response, seal_request
from enclavekit.services.vault.nats_auth import BRIDGE_USER, add_user, credentials, peer_for_vault
from enclavekit.services.vault.wire import PEER, PeerMessage
from tests.test_vault_e2e import World, _code, _fresh_call, server_refuses, vault_cli, world

pytestmark = pytest.mark.asyncio(loop_scope="module")

__all__ = ["world"]  # the module's stack (a fixture)

SECRETS = [
    b"Alice Liddell-9q",
    b"alice-private-mail-9q@example.org",
    b"meet at noon-9q",
    b"bob-shared-wifi-9q",
    b"12 Rue du Contrat-9q",
    b"hello from the cli-9q",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module", autouse=True)
async def peer_traffic(world: World) -> AsyncIterator[list[tuple[str, bytes]]]:
    """What the host sees of vault-to-vault traffic in this module (tapped with the bridge's own credentials)."""
    captured: list[tuple[str, bytes]] = []
    tap = await nats.connect(credentials(world.state, BRIDGE_USER).url(world.local["nats_url"]))

    async def on_request(msg: Any) -> None:
        captured.append((msg.subject, msg.data))

    await tap.subscribe("MessageSpace.*.forVault.>", cb=on_request)
    await tap.flush()
    yield captured
    await tap.close()


async def _connected(inviter: VaultClient, invitee: VaultClient, grant: dict[str, Any] | None = None) -> str:
    """Connect two vaults whose owners have sessions; the inviter grants ``grant`` (the profile's name)."""
    grant = grant or {"profile": ["name"]}
    invitation = await inviter.invite(grant=grant)
    accepted = await invitee.accept(invitation)
    assert accepted["granted"] == {"profile": [], "secrets": [], "messages": False, "calls": False} | grant
    return str(accepted["connection"])


async def _presigned(client: VaultClient, connection: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A read of the peer's ``name`` that ``client``'s vault signs now, to be sent later (what an app, or a host
    that captured it, could hold back)."""
    message_id, body = secrets.token_bytes(16), {"fields": ["name"]}
    payload = {"connection": connection, "op": "profile.get", "message_id": message_id.hex(), "body": body_digest(body)}
    signed = await client.call("connection.sign", {"session": client.session, **payload})

    def send() -> Awaitable[dict[str, Any]]:
        auth = {**body, "auth": signed["auth"]}
        return client.call("profile.get", auth, peer=str(signed["peer"]), message_id=message_id)

    return send


async def test_two_users_connect_share_one_field_not_another_message_with_receipts_and_revoke(world: World) -> None:
    async with world.client("alice") as alice, world.client("bob") as bob, world.client("carol") as carol:
        await alice.enroll("2468", invitation=world.invite(alice.user))
        await bob.enroll("1357", invitation=world.invite(bob.user))
        await carol.enroll("9753", invitation=world.invite(carol.user))
        await alice.set_profile({"name": SECRETS[0].decode(), "email": SECRETS[1].decode()}, pin="2468")
        await bob.put_secret("wifi", SECRETS[3], pin="1357")
        invitation = await alice.invite(grant={"profile": ["name"], "messages": True}, pin="2468")
        accepted = await bob.accept(invitation, grant={"messages": True, "secrets": ["wifi"]}, pin="1357")
        connection = accepted["connection"]
        # the invitation was single use: nobody else (nor bob again) can use it
        assert (await _code(carol.accept(invitation, pin="9753"))).remote_code == "connection_invitation_invalid"

        assert await bob.peer_profile(connection, ["name"]) == {"name": SECRETS[0].decode()}
        assert await bob.peer_profile(connection) == {"name": SECRETS[0].decode()}  # only what is shared
        assert (await _code(bob.peer_profile(connection, ["email"]))).remote_code == "capability_denied"
        assert await alice.peer_secret(connection, "wifi", pin="2468") == SECRETS[3]
        assert (await _code(alice.peer_secret(connection, "other"))).remote_code == "capability_denied"
        both = {c["peer"]: c for c in await alice.connections()} | {c["peer"]: c for c in await bob.connections()}
        assert both["bob"]["status"] == both["alice"]["status"] == "active"
        assert both["bob"]["connection"] == both["alice"]["connection"] == connection

        sent = await bob.send_message(connection, SECRETS[2].decode())
        assert sent["delivered_at"] > 0  # the delivery receipt: alice's vault stored it
        inbox = (await alice.messages())["inbox"]
        assert [(m["from"], m["text"], m["read_at"]) for m in inbox] == [("bob", SECRETS[2].decode(), None)]
        await alice.read_message(inbox[0]["id"])
        outbox = (await bob.messages())["outbox"]
        assert outbox[0]["id"] == sent["id"] and outbox[0]["delivered_at"] == sent["delivered_at"]
        assert outbox[0]["read_at"] is not None  # the read receipt reached bob's vault
        # alice granted bob messages, bob granted alice messages too: the reply goes through
        await alice.send_message(connection, "reply-9q")

        old_key_read = await _presigned(bob, connection)
        await bob.rotate(connection)  # a new key on bob's side, announced to alice's vault with the old one
        assert await bob.peer_profile(connection, ["name"]) == {"name": SECRETS[0].decode()}
        assert (await _code(old_key_read())).remote_code == "connection_refused"  # the old key opens nothing

        await alice.grant(connection, {"profile": ["name", "email"]})  # sharing changes per connection
        assert (await bob.peer_profile(connection, ["email"]))["email"] == SECRETS[1].decode()
        assert (await _code(bob.send_message(connection, "x"))).remote_code == "capability_denied"

        # bob's vault signs a read before the revocation; sent after it, alice's vault itself refuses it
        late_read = await _presigned(bob, connection)
        assert await alice.revoke(connection)  # at once, and bob's vault was told
        assert (await _code(late_read())).remote_code == "connection_refused"
        assert (await _code(bob.peer_profile(connection, ["name"]))).remote_code == "connection_refused"
        assert (await _code(alice.peer_secret(connection, "wifi"))).remote_code == "connection_refused"
        assert [c["status"] for c in await bob.connections()] == ["revoked"]
        records, _ = await alice.audit(pin="2468")
        ops = [r["op"] for r in records]
        assert ops.count("peer.profile.get") == 4 and "connection.revoke" in ops and "message.received" in ops
        assert all(r.get("peer") == "bob" for r in records if r["op"] == "peer.profile.get")
        assert "connection.revoked_by_peer" in [r["op"] for r in (await bob.audit(pin="1357"))[0]]


async def test_third_user_cannot_reach_either_vault(world: World) -> None:
    async with world.client("dave") as dave, world.client("erin") as erin, world.client("mallory") as mallory:
        await dave.enroll("2580", invitation=world.invite(dave.user))
        await erin.enroll("4321", invitation=world.invite(erin.user))
        await mallory.enroll("8642", invitation=world.invite(mallory.user))
        await dave.set_profile({"name": "Dave"}, pin="2580")
        connection = await _connected(dave, erin)
        assert await erin.peer_profile(connection, pin="4321") == {"name": "Dave"}

        # NATS: mallory's credentials may not publish as erin, nor read erin's answers
        await server_refuses(
            world, "mallory", peer_for_vault("dave", "erin", "profile.get"), "MessageSpace.erin.forApp.>"
        )

        # The vault: as herself, mallory reaches dave's vault but no connection lets her in — not with erin's
        # connection id signed by another key, not with none, not by replaying an invitation she never got
        message_id = secrets.token_bytes(16)
        body: dict[str, Any] = {"fields": ["name"]}
        at = time.time()
        forged = Authorization(
            "connection",
            connection,
            at,
            sign(
                new_key(),
                authorization_message(
                    kind="connection",
                    ident=connection,
                    sender="mallory",
                    target="dave",
                    op="profile.get",
                    message_id=message_id.hex(),
                    at=at,
                    digest=body_digest(body),
                ),
            ),
        )
        call = mallory.call("profile.get", {**body, "auth": forged.to_json()}, peer="dave", message_id=message_id)
        assert (await _code(call)).remote_code == "connection_refused"
        assert (await _code(mallory.call("profile.get", body, peer="dave"))).remote_code == "authorization_invalid"
        guess = {"invitation": "0" * 32, "token": "00" * 32, "key": "11" * 32, "proof": "22" * 64}
        assert (await _code(mallory.call("connection.accept", guess, peer="dave"))).remote_code == (
            "connection_invitation_invalid"
        )
        # and a signature by erin's vault cannot be moved to another body (by the host, or erin's app)
        message_id = secrets.token_bytes(16)
        signed = await erin.call(
            "connection.sign",
            {
                "session": erin.session,
                "connection": connection,
                "op": "profile.get",
                "message_id": message_id.hex(),
                "body": body_digest(body),
            },
        )
        moved = erin.call("profile.get", {"fields": [], "auth": signed["auth"]}, peer="dave", message_id=message_id)
        assert (await _code(moved)).remote_code == "connection_refused"


async def test_host_misstating_who_accepts_an_invitation_is_refused_and_uses_nothing_up(world: World) -> None:
    """The bridge names the sender of a peer request. A host that relays bob's acceptance as mallory's gets
    ``invitation_invalid`` (the acceptance is signed for bob), and the invitation still works for bob."""
    async with world.client("alice") as alice, world.client("bob") as bob:
        await alice.profile(pin="2468")
        await bob.profile(pin="1357")
        invitation = await alice.invite(grant={"profile": ["name"]})
        prepared = await bob.call(
            "connection.accept", {"session": bob.session, "inviter": "alice", "invitation": invitation["id"]}
        )
        body = {"invitation": invitation["id"], "token": invitation["token"], "key": prepared["key"]}
        body["proof"] = prepared["proof"]
        request = seal_request(
            await bob.vault_key("alice"), "alice", "connection.accept", json.dumps(body).encode(), now=time.time()
        )
        async with world.enclave("alice") as enclave:  # the host, relaying it under another name
            relayed = PeerMessage(
                user="alice", sender="mallory", op="connection.accept", envelope=base64.b64encode(request.data).decode()
            )
            reply = await enclave.call(PEER, relayed)
        answer = json.loads(open_response(request, base64.b64decode(reply.envelope)))
        assert answer["error"]["code"] == "connection_invitation_invalid"
        accepted = await bob.call("connection.accept", body, peer="alice")  # a fresh envelope, the true sender
        assert len(accepted["connection"]) == 32
        assert "mallory" not in [c["peer"] for c in await alice.connections()]


async def test_a_closed_vault_serves_no_peer_until_its_owner_unlocks_it(world: World) -> None:
    """The data key is derived from the owner's PIN: after the enclave restarts, peers wait for the owner."""
    async with world.client("frank") as frank, world.client("henry") as henry:
        await frank.enroll("1111", invitation=world.invite(frank.user))
        await henry.enroll("2222", invitation=world.invite(henry.user))
        await frank.set_profile({"name": "Frank"}, pin="1111")
        connection = await _connected(frank, henry)
    await world.restart(world.serving("frank"))

    async def read(client: VaultClient) -> VaultError:
        return await _code(client.peer_profile(connection, pin="2222"))

    assert (await _fresh_call(world, "henry", read)).remote_code == "vault_closed"

    async def unlock(client: VaultClient) -> Any:
        return await client.profile(pin="1111")

    assert await _fresh_call(world, "frank", unlock) == {"name": "Frank"}

    async def read_again(client: VaultClient) -> dict[str, str]:
        return await client.peer_profile(connection, pin="2222")

    assert await _fresh_call(world, "henry", read_again) == {"name": "Frank"}


async def test_bad_input_on_peer_subjects_is_a_specific_error_never_a_crash(world: World) -> None:
    async with world.client("oscar") as oscar, world.client("alice") as alice:
        await oscar.enroll("3690", invitation=world.invite(oscar.user))
        answers: list[dict[str, str]] = []
        nc = await nats.connect(credentials(world.state, "oscar").url(world.local["nats_url"]))

        async def on_answer(msg: Any) -> None:
            answers.append(dict(msg.headers or {}))

        await nc.subscribe("MessageSpace.oscar.forApp.>", cb=on_answer)
        for op in ("profile.get", "message.send", "connection.accept", "nonsense"):
            for data in (b"", b"\x01", secrets.token_bytes(300)):
                await nc.publish(peer_for_vault("alice", "oscar", op), data)
        deadline = asyncio.get_running_loop().time() + 30
        while len([a for a in answers if "Vault-Error" in a]) < 12:
            assert asyncio.get_running_loop().time() < deadline, answers
            await asyncio.sleep(0.05)
        assert {a["Vault-Error"] for a in answers} == {"envelope_invalid"}
        await nc.close()
        bad: list[tuple[str, dict[str, Any], str]] = [
            ("nonsense", {}, "unknown_op"),
            ("secret.list", {}, "unknown_op"),  # the owner's operations are not a peer's
            ("profile.get", {"auth": {"kind": "x"}}, "authorization_invalid"),
            ("connection.accept", {"invitation": "../x", "token": "00", "key": "11"}, "vault_rejected"),
            ("connection.accept", {"invitation": "a", "token": "zz", "key": "11"}, "bad_payload"),
        ]
        for op, payload, code in bad:
            assert (await _code(oscar.call(op, payload, peer="alice"))).remote_code == code, op
        assert (await _code(oscar.set_profile({"../x": "y"}))).remote_code == "vault_rejected"
        assert (await _code(oscar.set_profile({"big": "x" * 5000}))).remote_code == "vault_rejected"
        assert (await _code(oscar.invite(grant={"profile": "name"}))).remote_code == "capability_denied"
        assert (await _code(oscar.invite(ttl=10**9))).remote_code == "connection_invitation_invalid"
        assert await alice.profile(pin="2468")  # alice's vault still serves: nothing crashed


async def test_call_signalling_needs_the_calls_capability_and_turn_credentials_are_per_call(world: World) -> None:
    import hashlib
    import hmac

    async with world.client("carol") as carol, world.client("erin") as erin:
        await carol.profile(pin="9753")
        await erin.profile(pin="4321")
        connection = await _connected(carol, erin, {"calls": True})  # carol takes calls from erin, not back
        call = secrets.token_hex(16)
        await erin.signal(connection, "offer", call, sdp="v=0 offer-sdp")
        await erin.signal(connection, "ice", call, candidate="candidate:1 1 udp 1 192.0.2.1 5000 typ host")
        waiting = await carol.signals()
        assert [(s["kind"], s["call"], s["from"]) for s in waiting] == [("offer", call, "erin"), ("ice", call, "erin")]
        assert waiting[0]["sdp"] == "v=0 offer-sdp" and await carol.signals() == []  # fetched once
        denied = await _code(carol.signal(connection, "answer", call, sdp="v=0 answer-sdp"))
        assert denied.remote_code == "capability_denied"  # erin did not grant carol calls
        await erin.grant(connection, {"calls": True})
        await carol.signal(connection, "answer", call, sdp="v=0 answer-sdp")
        assert [s["kind"] for s in await erin.signals()] == ["answer"]

        relay = await carol.turn(connection, call)
        expiry, name = relay["username"].split(":", 1)
        assert name == f"{call}:carol" and 0 < int(expiry) - time.time() <= 300
        secret = (world.state / "vault" / "turn-secret").read_bytes().strip()  # what coturn is configured with
        expected = base64.b64encode(hmac.new(secret, relay["username"].encode(), hashlib.sha1).digest()).decode()
        assert relay["credential"] == expected and relay["urls"] == ["turn:127.0.0.1:3478"]

        await carol.revoke(connection)
        assert (await _code(erin.signal(connection, "hangup", call))).remote_code == "connection_refused"
        assert (await _code(carol.turn(connection, call))).remote_code == "capability_denied"


async def test_business_reads_under_its_contract_and_is_refused_after_revocation_and_expiry(world: World) -> None:
    add_user(world.state, "acme", server_pid=world.stack.services["nats"]["pid"])  # the business's NATS identity
    business_key = new_key()
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # until the server has re-read its authorization file
        try:
            probe = await nats.connect(credentials(world.state, "acme").url(world.local["nats_url"]))
            await probe.close()
            break
        except Exception:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)

    def offer(fields: list[str], lifetime: float) -> tuple[dict[str, Any], str]:
        contract, signature = offer_contract(
            business_key,
            business="acme",
            user="henry",
            fields=fields,
            purpose="parcel delivery",
            expires_at=time.time() + lifetime,
        )
        return contract.to_json(), signature.hex()

    async with world.client("henry") as henry, world.client("acme") as acme, world.client("mallory") as mallory:
        await henry.set_profile({"name": "Henry", "address": SECRETS[4].decode(), "phone": "555-0100"}, pin="2222")
        contract, signature = offer(["name", "address"], 3600)
        await henry.accept_contract(contract, signature)
        ident = contract["id"]
        assert await acme.contract_read("henry", ident, business_key, ["address"]) == {"address": SECRETS[4].decode()}
        assert await acme.contract_read("henry", ident, business_key) == {
            "name": "Henry",
            "address": SECRETS[4].decode(),
        }
        denied = await _code(acme.contract_read("henry", ident, business_key, ["phone"]))
        assert denied.remote_code == "capability_denied"  # not in the contract
        stolen = await _code(mallory.contract_read("henry", ident, business_key, ["name"]))
        assert stolen.remote_code == "connection_refused"  # even with the key, only the business's identity
        forged = await _code(acme.contract_read("henry", ident, new_key(), ["name"]))
        assert forged.remote_code == "connection_refused"
        tampered = dict(contract, fields=["name", "address", "phone"])  # the business's signature no longer holds
        assert (await _code(henry.accept_contract(tampered, signature))).remote_code == "contract_invalid"

        await henry.revoke_contract(ident)
        refused = await _code(acme.contract_read("henry", ident, business_key, ["name"]))
        assert refused.remote_code == "contract_revoked"

        short, short_signature = offer(["name"], 4)
        await henry.accept_contract(short, short_signature)
        assert await acme.contract_read("henry", short["id"], business_key) == {"name": "Henry"}
        deadline = asyncio.get_running_loop().time() + 30
        code = None
        while code is None:  # poll until the contract's end has passed: then every read is refused
            try:
                await acme.contract_read("henry", short["id"], business_key)
            except VaultError as exc:
                code = exc.remote_code
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
        assert code == "contract_expired"
        assert time.time() >= short["expires_at"]
        listed = {c["contract"]: c["status"] for c in await henry.contracts()}
        assert listed == {ident: "revoked", short["id"]: "expired"}
        records, _ = await henry.audit(pin="2222")
        reads = [r for r in records if r["op"] == "peer.profile.get"]
        assert len(reads) >= 3 and all(r["business"] == "acme" and r["purpose"] == "parcel delivery" for r in reads)
        assert [r["op"] for r in records].count("contract.accept") == 2


async def test_cli_connects_shares_messages_revokes_and_runs_a_contract_with_json_and_exit_codes(world: World) -> None:
    def cli(*args: str, stdin: bytes = b"") -> tuple[int, Any]:
        return vault_cli(world.state, *args, stdin=stdin)

    def script() -> dict[str, tuple[int, Any]]:
        out = {
            "enroll-ann": cli("enroll", "ann", "--pin", "1212", "--invite", world.invite("ann")),
            "enroll-ben": cli("enroll", "ben", "--pin", "3434", "--invite", world.invite("ben")),
            "set": cli("profile", "set", "ann", "--pin", "1212", "--field", "name=Ann", "--field", "email=a@x.org"),
            "invite": cli("connection", "invite", "ann", "--pin", "1212", "--share-field", "name", "--messages"),
        }
        invitation = json.dumps(out["invite"][1]["invitation"])
        out["accept"] = cli("connection", "accept", "ben", "-", "--pin", "3434", stdin=invitation.encode())
        connection = out["accept"][1]["connection"]
        out["shared"] = cli("profile", "get", "ben", "--pin", "3434", "--connection", connection)
        out["not-shared"] = cli(
            "profile", "get", "ben", "--pin", "3434", "--connection", connection, "--field", "email"
        )
        out["send"] = cli("message", "send", "ben", connection, SECRETS[5].decode(), "--pin", "3434")
        out["inbox"] = cli("message", "list", "ann", "--pin", "1212")
        out["list"] = cli("connection", "list", "ann", "--pin", "1212")
        out["revoke"] = cli("connection", "revoke", "ann", connection, "--pin", "1212")
        out["after-revoke"] = cli("profile", "get", "ben", "--pin", "3434", "--connection", connection)
        out["offer"] = cli("contract", "offer", "shop", "ann", "--field", "name", "--purpose", "receipts")
        out["contract-accept"] = cli("contract", "accept", "ann", json.dumps(out["offer"][1]), "--pin", "1212")
        ident = out["offer"][1]["contract"]["id"]
        out["read"] = cli("contract", "read", "shop", "ann", ident)
        out["contracts"] = cli("contract", "list", "ann", "--pin", "1212")
        out["contract-revoke"] = cli("contract", "revoke", "ann", ident, "--pin", "1212")
        out["read-revoked"] = cli("contract", "read", "shop", "ann", ident)
        out["bad-offer"] = cli("contract", "accept", "ann", "not json", "--pin", "1212")
        return out

    out = await asyncio.to_thread(script)
    for step in ("enroll-ann", "enroll-ben", "set", "invite", "accept", "shared", "send", "inbox", "list", "revoke"):
        assert out[step][0] == 0, (step, out[step])
    assert out["shared"][1]["fields"] == {"name": "Ann"}
    assert out["not-shared"][0] == 1 and out["not-shared"][1]["error"]["code"] == "capability_denied"
    assert out["inbox"][1]["inbox"][0]["text"] == SECRETS[5].decode() and out["send"][1]["delivered_at"] > 0
    assert [c["peer"] for c in out["list"][1]["connections"]] == ["ben"]
    assert out["after-revoke"][0] == 1 and out["after-revoke"][1]["error"]["code"] == "connection_refused"
    for step in ("offer", "contract-accept", "read", "contracts", "contract-revoke"):
        assert out[step][0] == 0, (step, out[step])
    assert out["read"][1]["fields"] == {"name": "Ann"}
    assert [c["status"] for c in out["contracts"][1]["contracts"]] == ["active"]
    assert out["read-revoked"][0] == 1 and out["read-revoked"][1]["error"]["code"] == "contract_revoked"
    assert out["bad-offer"][0] == 1 and out["bad-offer"][1]["error"]["code"] == "bad_input"


async def test_host_sees_no_profile_value_or_message_in_peer_traffic_objects_or_logs(
    world: World, peer_traffic: list[tuple[str, bytes]]
) -> None:
    # runs last in this module: everything above crossed the host
    captured = list(peer_traffic)
    needles: list[bytes] = []
    for value in SECRETS:
        needles += [value, value.hex().encode(), base64.b64encode(value)]
    haystacks = [(f"nats {s}", d) for s, d in captured] + [("nats answer", d) for d in world.answers]
    for path in world.state.rglob("*"):
        if path.is_file() and "users" not in path.parts and path.suffix != ".sock":
            haystacks.append((str(path), path.read_bytes()))
    assert len(captured) > 20 and any("objects" in name for name, _ in haystacks)
    for name, data in haystacks:
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {name}"
