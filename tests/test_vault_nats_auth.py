"""Per-user NATS credentials enforced by the real nats-server that ``enclavekit up`` starts: a user's credentials
neither read nor publish another user's subjects; clients without credentials stay in the services account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as Nats
from nats.errors import Error as NatsError

from enclavekit.services.vault.nats_auth import (
    BRIDGE_USER,
    add_user,
    credentials,
    for_app,
    for_vault,
    peer_for_app,
    peer_for_vault,
    render,
)
from enclavekit.stack.state import StateDir
from enclavekit.stack.up import Stack

_ERRORS: list[str] = []


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    state = StateDir(tmp_path / "state")
    state.create()
    add_user(state.root, "alice")
    add_user(state.root, "bob")
    built = Stack(state, nats_includes=[render(state.root)])
    await built.start_nats()
    try:
        yield built
    finally:
        await built.stop()


async def _connect(stack: Stack, user: str | None, errors: list[str]) -> Nats:
    url = stack.services["nats"]["url"]
    if user is not None:
        url = credentials(stack.state.root, user).url(url)

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))
        _ERRORS.append(f"{user}: {exc!r}")

    return await nats.connect(url, error_cb=on_error, allow_reconnect=False)


def _collect(into: list[bytes]):  # type: ignore[no-untyped-def]
    async def callback(msg) -> None:  # type: ignore[no-untyped-def]
        into.append(msg.data)

    return callback


async def _until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; errors so far: {_ERRORS}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "space",
    [
        # OwnerSpace: a user's app and its own vault
        {
            "relay": "OwnerSpace.*.forVault.>",
            "bobs_answers": for_app("bob", ">"),
            "as_bob": for_vault("bob", "secret.get"),
            "as_alice": for_vault("alice", "secret.get"),
            "to_bob": for_app("bob", "secret.get"),
        },
        # MessageSpace.{target}.forVault.{sender}: alice may ask bob's vault as alice, never as bob (the bridge and
        # the target vault learn a sender the server vouches for); answers to bob reach bob only
        {
            "relay": "MessageSpace.*.forVault.>",
            "bobs_answers": "MessageSpace.bob.forApp.>",
            "as_bob": peer_for_vault("alice", "bob", "profile.get"),
            "as_alice": peer_for_vault("bob", "alice", "profile.get"),
            "to_bob": peer_for_app("bob", "alice", "profile.get"),
        },
    ],
    ids=["OwnerSpace", "MessageSpace"],
)
async def test_one_users_credentials_cannot_read_or_publish_anothers_subjects(
    stack: Stack, space: dict[str, str]
) -> None:
    alice_errors: list[str] = []
    alice = await _connect(stack, "alice", alice_errors)
    bob = await _connect(stack, "bob", [])
    bridge = await _connect(stack, BRIDGE_USER, [])
    try:
        seen_by_bridge: list[str] = []
        seen_by_bob: list[bytes] = []
        stolen: list[bytes] = []

        async def on_bridge(msg) -> None:  # type: ignore[no-untyped-def]
            seen_by_bridge.append(msg.subject)

        await bridge.subscribe(space["relay"], cb=on_bridge)
        await bob.subscribe(space["bobs_answers"], cb=_collect(seen_by_bob))
        await alice.subscribe(space["bobs_answers"], cb=_collect(stolen))
        await _until(lambda: any("subscription" in e.lower() for e in alice_errors))
        await alice.publish(space["as_bob"], b"as bob")  # refused by the server
        await _until(lambda: any("publish" in e.lower() for e in alice_errors))
        await alice.publish(space["as_alice"], b"as alice")
        await bridge.publish(space["to_bob"], b"for bob only")
        await _until(lambda: seen_by_bob == [b"for bob only"] and seen_by_bridge == [space["as_alice"]])
        await alice.flush()
        assert stolen == []
        assert all("permissions violation" in e.lower() for e in alice_errors)
    finally:
        for client in (alice, bob, bridge):
            await client.close()


async def test_wrong_password_is_refused_and_services_without_credentials_see_no_vault_traffic(stack: Stack) -> None:
    url = stack.services["nats"]["url"]
    with pytest.raises((NatsError, OSError)):
        await nats.connect(
            url.replace("nats://", "nats://alice:wrong@"), allow_reconnect=False, max_reconnect_attempts=0
        )
    anonymous = await nats.connect(url, allow_reconnect=False)  # the stack's other services: SERVICES account
    bridge = await _connect(stack, BRIDGE_USER, [])
    try:
        got: list[bytes] = []
        await anonymous.subscribe("OwnerSpace.>", cb=_collect(got))
        await anonymous.flush()
        await bridge.publish(for_app("alice", "x"), b"vault traffic")
        await bridge.flush()
        js = anonymous.jetstream()  # JetStream still works for the services (notify, trust, tracks)
        kv = await js.create_key_value(bucket="vault_test")
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
        assert got == []
    finally:
        await anonymous.close()
        await bridge.close()


async def test_user_added_while_running_can_connect_after_reload(stack: Stack) -> None:
    issued = add_user(stack.state.root, "carol", server_pid=stack.services["nats"]["pid"])
    url = issued.url(stack.services["nats"]["url"])
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            client = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
    await client.close()


def test_files_beside_the_credentials_that_name_no_user_are_not_rendered(tmp_path: Path) -> None:
    """The CLI keeps other per-user files in the state folder; one in the credentials folder (a recovery claim
    ``alice.recovery.json`` once was) must not break every later issue with ``invalid_user``."""
    from enclavekit.services.vault.nats_auth import add_user, render

    add_user(tmp_path, "alice")
    (tmp_path / "vault" / "users" / "alice.recovery.json").write_text("{}")
    add_user(tmp_path, "carol")
    text = render(tmp_path).read_text()
    assert '"carol"' in text and "recovery" not in text
