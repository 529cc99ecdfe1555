"""The vault end to end, each piece its own process: a real nats-server with per-user authorization, the KMS
emulator, the vault enclave (simulated NSM, production Argon2id) and the host bridge; the user's app is the
client (and the CLI) over NATS. What the host can do — capture and replay messages, restore object snapshots,
call the enclave directly, read every byte it relays or stores — gains no guess and no plaintext."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.client import AttestedClient
from enclavekit.errors import Error
from enclavekit.nsm import load_root
from enclavekit.services.vault.client import VaultClient, VaultError
from enclavekit.services.vault.envelope import seal_request
from enclavekit.services.vault.host import enclave_index
from enclavekit.services.vault.ledger_peers import PEER_TIMEOUT
from enclavekit.services.vault.nats_auth import BRIDGE_USER, add_user, credentials, for_vault
from enclavekit.services.vault.stack import expected_pcr0, load_local, prepare_vault, start_vault
from enclavekit.services.vault.wire import LEDGER_SNAPSHOT, MESSAGE, LedgerSnapshotRequest, Message
from enclavekit.stack.state import StateDir
from enclavekit.stack.up import Stack
from tests.polling import wait_for_async
from tests.vault_support import invite

pytestmark = pytest.mark.asyncio(loop_scope="module")

RECOVERY_DELAY = 5
"""The stack's measured recovery delay in seconds (24 h in production): the recovery tests wait it out."""


@dataclass
class World:
    stack: Stack
    state: Path
    local: dict[str, Any]
    captured: list[tuple[str, bytes]] = field(default_factory=list)
    """Every request the host relayed (tapped with the bridge's own credentials)."""
    answers: list[bytes] = field(default_factory=list)
    """Every answer a user received."""
    codes: list[str] = field(default_factory=list)
    """Every invitation code the operator issued (the host must never see one)."""

    def invite(self, user: str | None = None, **options: Any) -> str:
        code = invite(self.state, user, **options)
        self.codes.append(code)
        return code

    needles: list[bytes] = field(default_factory=list)
    """More values the host must never see (tokens, claims, new PINs), added by the tests that made them."""

    def client(self, user: str) -> VaultClient:
        creds = credentials(self.state, user)
        roots = [load_root(self.state)]
        client = VaultClient(
            creds.url(self.local["nats_url"]), user, [bytes.fromhex(p) for p in self.local["pcr0"]], roots
        )
        original = client._on_message

        async def tap(msg: Any) -> None:
            self.answers.append(msg.data)
            await original(msg)

        client._on_message = tap  # type: ignore[method-assign]
        return client

    def vault_names(self) -> list[str]:
        return sorted(e["name"] for e in self.stack.enclaves if e["name"].startswith("vault"))

    def serving(self, user: str) -> str:
        """The name of the vault enclave the bridge sends ``user``'s messages to."""
        names = self.vault_names()
        return names[enclave_index(user, len(names))]

    def enclave(self, user: str) -> AttestedClient:
        """The host's own attested connection to ``user``'s vault enclave (what the bridge holds)."""
        return self.enclave_named(self.serving(user))

    def enclave_named(self, name: str) -> AttestedClient:
        """The host's own attested connection to the vault enclave ``name``."""
        policy = NitroPolicy(measurements=[{0: bytes.fromhex(self.local["pcr0"][0])}], roots=(load_root(self.state),))
        address = next(e["address"] for e in self.stack.enclaves if e["name"] == name)
        return AttestedClient.nitro(address, policy)

    async def restart(self, name: str, *, ready_timeout: float = 30.0) -> None:
        """The host restarts one vault enclave process (its memory — keys, ledger replica — is gone)."""
        old = next(p for p in self.stack.processes if p.name == f"enclave-{name}")
        await old.stop()
        self.stack.processes.remove(old)
        process = self.stack._process(old.name, old.argv)
        process.ready_timeout = ready_timeout
        await process.start()

    async def wait_all_ready(self, timeout: float = 120.0) -> None:
        """Poll every vault enclave's ledger replica until each answers ``ready`` (caught up with its peers): a test
        that starts while one is still catching up would count its guesses at a smaller set than it thinks."""
        policy = NitroPolicy(measurements=[{0: bytes.fromhex(self.local["pcr0"][0])}], roots=(load_root(self.state),))
        for entry in [e for e in self.stack.enclaves if e["name"].startswith("vault")]:

            async def ready(address: str = entry["address"]) -> bool:
                try:
                    async with AttestedClient.nitro(address, policy, connect_attempts=1) as enclave:
                        return (await enclave.call(LEDGER_SNAPSHOT, LedgerSnapshotRequest(), timeout=5)).ready
                except (Error, OSError):
                    return False

            await wait_for_async(ready, timeout, interval=0.2, what=f"{entry['name']} ready")

    def cut_off(self, name: str) -> None:
        """The host cuts one vault enclave off the network: frozen, it keeps its memory but answers nobody."""
        os.kill(next(p for p in self.stack.processes if p.name == f"enclave-{name}").pid, signal.SIGSTOP)

    def reconnect(self, name: str) -> None:
        os.kill(next(p for p in self.stack.processes if p.name == f"enclave-{name}").pid, signal.SIGCONT)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    state = StateDir(tmp_path_factory.mktemp("vault-stack") / "state")
    state.create()
    users = ("alice", "bob", "carol", "dave", "erin", "mallory", "frank", "henry", "oscar", "ivan", "judy")
    for user in (*users, "mike", "nina", "rita", "tara", "lena"):
        add_user(state.root, user)
    stack = Stack(state)
    prepare_vault(stack)
    try:
        await stack.start_nats()
        expected_pcr0(state.root)  # creates the simulator's CA, which the KMS emulator trusts
        # starts the stack's KMS emulator (HTTPS, its CA measured) when none runs
        await start_vault(stack, recovery_delay=RECOVERY_DELAY)
        state.write_stack(stack.snapshot())  # the CLI finds the NATS server (to reload users) through it
        built = World(stack, state.root, load_local(state.root))
        tap = await nats.connect(credentials(state.root, BRIDGE_USER).url(built.local["nats_url"]))

        async def on_request(msg: Any) -> None:
            built.captured.append((msg.subject, msg.data))

        await tap.subscribe("OwnerSpace.*.forVault.>", cb=on_request)
        await tap.flush()
        yield built
        await tap.close()
    finally:
        await stack.stop()


async def _code(call: Any) -> VaultError:
    with pytest.raises(VaultError) as caught:
        await call
    return caught.value


async def test_enroll_put_get_list_and_pin_change_through_nats(world: World) -> None:
    async with world.client("alice") as alice:
        await alice.enroll("2468", invitation=world.invite("alice"))
        assert await alice.put_secret("note", b"first-value-7f3a", pin="2468") == 1
        assert await alice.put_secret("note", b"second-value-7f3a", pin="2468") == 2
        assert await alice.get_secret("note", pin="2468") == b"second-value-7f3a"
        assert await alice.get_secret("note", pin="2468", version=1) == b"first-value-7f3a"
        assert await alice.list_secrets(pin="2468") == [{"name": "note", "versions": 2, "critical": False}]
        await alice.change_pin("2468", "975310")
        assert await alice.get_secret("note", pin="975310") == b"second-value-7f3a"
        error = await _code(alice.get_secret("note", pin="2468"))
        assert error.remote_code == "pin_invalid" and error.attempts_left == 9


def _run_cli(state: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``enclavekit vault ARGS --state STATE --json`` as the user's app would run it."""
    return subprocess.run(
        [sys.executable, "-m", "enclavekit.cli", "vault", *args, "--state", str(state), "--json"],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, "ENCLAVEKIT_LOG_LEVEL": "WARNING"},
    )


def _cli(world: World, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return _run_cli(world.state, *args, stdin=stdin)


def vault_cli(state: Path, *args: str, stdin: bytes = b"") -> tuple[int, Any]:
    """``enclavekit vault ARGS --state STATE --json`` as its own process: (exit code, the JSON it printed)."""
    run = _run_cli(state, *args, stdin=stdin)
    return run.returncode, json.loads(run.stdout or b"null")


async def test_cli_reports_pin_invalid_and_locked_as_json_with_exit_1(world: World) -> None:
    def cli(*args: str, stdin: bytes = b"") -> tuple[int, Any]:
        return vault_cli(world.state, *args, stdin=stdin)

    def both() -> list[tuple[int, Any]]:
        status, issued = cli("invite", "create", "--user", "gina", "--ttl", "1h")  # the operator's command
        assert status == 0 and len(issued["code"]) == 148 and issued["user"] == "gina", issued
        world.codes.append(issued["code"])
        return [
            cli("enroll", "gina", "--pin", "1470", "--invite", issued["code"], "--limit", "2"),
            cli("secret", "put", "gina", "motto", "--pin", "1470", stdin=b"carpe diem"),
            cli("secret", "get", "gina", "motto", "--pin", "1470"),
            cli("secret", "list", "gina", "--pin", "9999"),
            cli("secret", "list", "gina", "--pin", "9998"),
        ]

    results = await asyncio.to_thread(both)
    assert results[0][0] == 0, results[0]
    assert results[1] == (0, {"name": "motto", "version": 1})
    assert results[2][0] == 0 and results[2][1]["value"] == "carpe diem"
    assert results[3][0] == 1 and results[3][1]["error"]["code"] == "pin_invalid"
    assert results[3][1]["error"]["attempts_left"] == 1
    assert results[4][0] == 1 and results[4][1]["error"]["code"] == "vault_locked"


async def test_cli_recovery_shows_qr_codes_cancels_with_its_device_key_and_completes_after_the_delay(
    world: World,
) -> None:
    def cli(*args: str, stdin: bytes = b"") -> tuple[int, Any, str]:
        run = _cli(world, *args, stdin=stdin)
        return run.returncode, json.loads(run.stdout or b"null"), run.stderr.decode(errors="replace")

    def scenario() -> list[tuple[int, Any, str]]:
        steps = [
            cli("enroll", "cleo", "--pin", "2580", "--invite", world.invite("cleo")),  # registers the device key
            cli("secret", "put", "cleo", "motto", "--pin", "2580", stdin=b"cleo-motto-3be1"),
            cli("recover", "start", "cleo", "--qr"),
            cli("recover", "status", "cleo"),
            cli("recover", "watch", "cleo", "--timeout", "1"),
            cli("recover", "cancel", "cleo"),  # signed by the enrolled device key
            cli("recover", "start", "cleo"),
        ]
        deadline = time.monotonic() + RECOVERY_DELAY + 60
        while (token := cli("recover", "token", "cleo", "--qr"))[0] != 0 and time.monotonic() < deadline:
            assert token[1]["error"]["code"] == "recovery_not_due", token
            time.sleep(0.5)
        steps.append(token)
        new_pin = ("--new-pin", "135799")
        steps.append(cli("recover", "complete", "cleo", "--token", str(token[1].get("token")), *new_pin))
        steps.append(cli("secret", "get", "cleo", "motto", "--pin", "135799"))
        return steps

    enrolled, put, started, status, watched, cancelled, again, token, completed, got = await asyncio.to_thread(scenario)
    assert enrolled[0] == 0 and len(enrolled[1]["device"]) == 64, enrolled
    assert put[0] == 0, put
    assert started[0] == 0 and started[1]["pending"] and "\u2588" in started[2], started  # the QR, on stderr
    assert status[:2] == (0, {"user": "cleo", "pending": True, "recovery": 1, "due": started[1]["due"]})
    assert watched[:2] == status[:2], watched  # the watcher prints the status at once (one JSON line: no change)
    assert cancelled[0] == 0 and cancelled[1]["pending"] is False, cancelled
    assert again[0] == 0 and again[1]["recovery"] == 2, again
    assert token[0] == 0 and "\u2588" in token[2], token
    assert completed[0] == 0 and completed[1]["generation"] == 2, completed
    assert got[0] == 0 and got[1]["value"] == "cleo-motto-3be1", got
    world.needles += [token[1]["token"].encode(), b'"new_pin": "135799"']


async def test_critical_secret_needs_the_pin_on_every_read_and_is_audited(world: World) -> None:
    from enclavekit.services.vault.secret_store import verify_audit

    async with world.client("frank") as frank:
        await frank.enroll("1111", invitation=world.invite("frank"))
        await frank.put_secret("seed", b"abandon ability able", pin="1111", critical=True)
        await frank.put_secret("wifi", b"hunter2", pin="1111")
        assert await frank.get_secret("wifi") == b"hunter2"  # a session is enough for an ordinary secret
        assert (await _code(frank.get_secret("seed"))).remote_code == "pin_required"
        assert await frank.get_secret("seed", pin="1111") == b"abandon ability able"
        records, head = await frank.audit(pin="1111")
        assert [r["op"] for r in records] == ["enroll", "secret.put", "secret.put", "secret.get"]
        assert verify_audit(records, head) == head


async def test_wrong_pin_never_opens_a_warm_vault_and_ten_guesses_lock(world: World) -> None:
    async with world.client("bob") as bob:
        await bob.enroll("8642", invitation=world.invite("bob"))
        await bob.put_secret("k", b"v", pin="8642")  # warm
        lefts = []
        for guess in range(10):
            error = await _code(bob.list_secrets(pin=f"{guess:04d}"))
            lefts.append((error.remote_code, error.attempts_left))
        assert lefts == [("pin_invalid", n) for n in range(9, 0, -1)] + [("vault_locked", None)]
        assert (await _code(bob.list_secrets(pin="8642"))).remote_code == "vault_locked"
        assert (await _code(bob.get_secret("k"))).remote_code == "vault_locked"  # its open session ended too


async def test_replayed_captured_messages_get_no_extra_guess(world: World) -> None:
    async with world.client("carol") as carol:
        await carol.enroll("1357", invitation=world.invite("carol"))
        error = await _code(carol.list_secrets(pin="0000"))
        assert error.attempts_left == 9
        wrong = [data for subject, data in world.captured if subject == for_vault("carol", "secret.list")]
        good = [data for subject, data in world.captured if subject == for_vault("carol", "enroll")]
        async with world.enclave("carol") as enclave:  # the host replays straight to the enclave
            for data in wrong + good:
                request = Message(user="carol", op="secret.list", envelope=base64.b64encode(data).decode())
                if data in good:
                    request = Message(user="carol", op="enroll", envelope=request.envelope)
                with pytest.raises(Error) as caught:
                    await enclave.call(MESSAGE, request)
                assert "envelope_replayed" in str(caught.value)
        error = await _code(carol.list_secrets(pin="0001"))
        assert error.attempts_left == 8  # exactly one more guess was counted: the replays counted none


async def test_restoring_a_snapshot_of_the_objects_gets_no_extra_guess(world: World, tmp_path: Path) -> None:
    objects = world.state / "vault" / "objects"
    async with world.client("dave") as dave:
        await dave.enroll("2580", invitation=world.invite("dave"), limit=3)
        await dave.put_secret("k", b"v", pin="2580")
        shutil.copytree(objects / "vaults" / "dave", tmp_path / "dave")
        for guess in ("0000", "0001", "0002"):
            await _code(dave.list_secrets(pin=guess))
        shutil.rmtree(objects / "vaults" / "dave")
        shutil.copytree(tmp_path / "dave", objects / "vaults" / "dave")  # sealed material back on disk
        assert (await _code(dave.list_secrets(pin="2580"))).remote_code == "vault_locked"


async def _fresh_call(world: World, user: str, call: Any) -> Any:
    """A new app connection after an enclave restart: the first attempts may meet the bridge's broken session."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        client = world.client(user)
        client.timeout = 10
        try:
            async with client:
                return await call(client)
        except VaultError:
            raise
        except Error:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_restarting_vault_enclaves_grants_no_extra_guess(world: World) -> None:
    async with world.client("henry") as henry:
        await henry.enroll("3690", invitation=world.invite("henry"))
        for _ in range(3):
            await _code(henry.list_secrets(pin="0000"))
    for name in [world.serving("henry"), *[n for n in world.vault_names() if n != world.serving("henry")][:1]]:
        await world.restart(name)  # the serving enclave, then another replica: never a majority at once

        async def wrong(client: VaultClient) -> VaultError:
            return await _code(client.list_secrets(pin="0001"))

        error = await _fresh_call(world, "henry", wrong)
        assert error.remote_code == "pin_invalid"
        left = error.attempts_left
    assert left == 5  # 3 guesses before, 2 after the restarts: every one counted

    async def right(client: VaultClient) -> list[dict[str, Any]]:
        return await client.list_secrets(pin="3690")

    assert await _fresh_call(world, "henry", right) == []


async def test_host_cutting_off_replicas_and_restarting_another_gets_no_extra_guess(world: World) -> None:
    """The reviewer's attack with real enclaves: wrong guesses are written to {A, C} while the host has cut B off;
    the host restarts C while hiding every peer (a lone C used to start empty), then lets it reach B only (a C that
    catches up from B alone used to forget them); a quorum {B, C} would not know the guesses. C must wait until it
    reaches A too, and then every guess is counted."""

    async def wrong(client: VaultClient) -> VaultError:
        return await _code(client.list_secrets(pin="0000"))

    c = world.serving("oscar")
    a, b = [name for name in world.vault_names() if name != c]
    await world.wait_all_ready()  # the tests before restarted replicas: every one must have caught up first
    async with world.client("oscar") as oscar:
        await oscar.enroll("2468", invitation=world.invite("oscar"))
    assert (await _fresh_call(world, "oscar", wrong)).attempts_left == 9
    world.cut_off(b)
    try:
        for left in (8, 7, 6):  # counted at {A, C}: B never hears of them
            assert (await _fresh_call(world, "oscar", wrong)).attempts_left == left
    finally:
        world.reconnect(b)
    world.cut_off(a)
    world.cut_off(b)
    restart: asyncio.Task[None] | None = None
    try:
        restart = asyncio.create_task(world.restart(c, ready_timeout=120))
        # No peer answers: C may neither start empty nor serve. (A bounded wait for something that must not happen;
        # the old rule started empty 3 s after no peer answered, i.e. after one 5 s round.)
        done, _ = await asyncio.wait({restart}, timeout=2 * PEER_TIMEOUT + 2)
        assert not done, "a restarted replica that reached no peer became ready"
        world.reconnect(b)  # C now reaches B, which missed the guesses, and A is still cut off
        error = await _fresh_call(world, "oscar", wrong)
        assert error.remote_code == "ledger_unavailable"  # never pin_invalid with guesses forgotten
        done, _ = await asyncio.wait({restart}, timeout=PEER_TIMEOUT + 2)
        assert not done, "a restarted replica became ready from one ready peer"
    finally:
        world.reconnect(a)
        world.reconnect(b)
    await asyncio.wait_for(restart, 120)  # with A back, C catches up from A and B and serves
    assert (await _fresh_call(world, "oscar", wrong)).attempts_left == 5  # 1 + 3 + this one: nothing forgotten


async def test_killing_a_vault_enclave_fails_its_users_over_and_loses_no_guess(world: World) -> None:
    """kill -9 one vault enclave of three (real processes): the next requests of its users go to another enclave
    (the app re-keys to it, attested, when the bridge says the key's enclave is gone), other users are untouched,
    and every guess counted before the kill still counts (the ledger is at the two survivors)."""
    victim = world.serving("mike")
    assert world.serving("rita") != victim and world.serving("nina") != victim
    async with world.client("mike") as mike, world.client("rita") as rita, world.client("nina") as nina:
        for client in (mike, rita, nina):
            await client.enroll("1593", invitation=world.invite(client.user))
            await client.put_secret("k", client.user.encode(), pin="1593")
        assert (await _code(mike.list_secrets(pin="0000"))).attempts_left == 9
        process = next(p for p in world.stack.processes if p.name == f"enclave-{victim}")
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        try:
            started = asyncio.get_running_loop().time()
            error = await _code(mike.list_secrets(pin="0001"))  # same client: its key's enclave is dead
            failover = asyncio.get_running_loop().time() - started
            assert error.attempts_left == 8  # served by another enclave, and the guess before the kill still counts
            assert await mike.get_secret("k", pin="1593") == b"mike"
            for client in (rita, nina):
                assert await client.get_secret("k", pin="1593") == client.user.encode()
            async with world.client("mike") as fresh:  # a new app connection goes to a live enclave at once
                assert await fresh.list_secrets(pin="1593") == [{"name": "k", "versions": 1, "critical": False}]
            assert failover < 10, failover
        finally:
            await world.restart(victim)  # the host brings it back: a new member that catches up from the two others
    await world.wait_all_ready()


async def test_bad_input_on_every_subject_is_a_specific_error_never_a_crash(world: World) -> None:
    async with world.client("erin") as erin:
        await erin.enroll("4321", invitation=world.invite("erin"))
        key = await erin.vault_key()
        mallory_nc = await nats.connect(credentials(world.state, "erin").url(world.local["nats_url"]))
        answers: list[tuple[str, dict[str, str]]] = []

        async def on_answer(msg: Any) -> None:
            answers.append((msg.subject, dict(msg.headers or {})))

        await mallory_nc.subscribe("OwnerSpace.erin.forApp.>", cb=on_answer)
        garbage = [b"", b"\x01", b"\x02" + bytes(200), secrets.token_bytes(300)]
        ops = ["enroll", "secret.put", "secret.get", "secret.list", "pin.change", "audit.get", "nonsense"]
        for op in ops:
            for data in garbage:
                await mallory_nc.publish(for_vault("erin", op), data)
        wrong_key = seal_request(secrets.token_bytes(32), "erin", "secret.list", b"{}", now=__import__("time").time())
        await mallory_nc.publish(for_vault("erin", "secret.list"), wrong_key.data)
        rerouted = seal_request(key, "erin", "secret.get", b"{}", now=__import__("time").time())
        await mallory_nc.publish(for_vault("erin", "secret.list"), rerouted.data)  # subject ≠ authenticated op
        await mallory_nc.publish(for_vault("erin", "key"), b"not json")
        expected = len(ops) * len(garbage) + 2
        deadline = asyncio.get_running_loop().time() + 30
        while len([a for a in answers if "Vault-Error" in a[1]]) < expected:
            assert asyncio.get_running_loop().time() < deadline, answers
            await asyncio.sleep(0.05)
        codes = {headers["Vault-Error"] for _, headers in answers if "Vault-Error" in headers}
        assert codes == {"envelope_invalid"}
        await mallory_nc.close()
        assert (await _code(erin.call("nonsense", {"pin": "4321"}))).remote_code == "unknown_op"
        assert (await _code(erin.call("secret.put", {"pin": "4321", "name": "../x", "value": "eA=="}))).remote_code == (
            "invalid_secret"
        )
        assert (await _code(erin.call("secret.put", {"pin": "4321", "name": "x", "value": "%%"}))).remote_code == (
            "bad_payload"
        )
        assert (await _code(erin.call("enroll", {"pin": "12"}))).remote_code == "pin_format"
        assert await erin.put_secret("still", b"alive", pin="4321") == 1  # nothing crashed, nothing lost


async def test_host_cannot_merge_into_the_ledger_without_a_vault_enclaves_attestation(world: World) -> None:
    from enclavekit.nsm import NsmSimulator
    from enclavekit.services.vault.guesses import GuessEntry
    from enclavekit.services.vault.ledger_peers import merge_binding
    from enclavekit.services.vault.wire import LEDGER_MERGE, LedgerMerge

    entry = GuessEntry(generation=1, locked_at=1)  # the host would like to lock (or reset) alice's vault
    other_image = NsmSimulator(world.state, app={"other.py": b"not the vault"})  # same CA, another PCR0
    forged = other_image.client().attestation(user_data=merge_binding("alice", entry, "any-replica"))
    async with world.enclave("alice") as enclave:
        for document in (b"garbage", forged):
            request = LedgerMerge(user="alice", entry=entry.to_json(), document=base64.b64encode(document).decode())
            with pytest.raises(Error, match="ledger_merge_refused"):
                await enclave.call(LEDGER_MERGE, request)
    async with world.client("alice") as alice:
        assert await alice.list_secrets(pin="975310")  # not locked


async def server_refuses(world: World, user: str, publish: str, subscribe: str) -> None:
    """``user``'s credentials publishing to ``publish`` and subscribing to ``subscribe``: the NATS server itself
    answers "Permissions Violation" to both."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(credentials(world.state, user).url(world.local["nats_url"]), error_cb=on_error)
    try:
        await nc.publish(publish, b"x")
        await nc.subscribe(subscribe)
        deadline = asyncio.get_running_loop().time() + 5
        while len(errors) < 2:
            assert asyncio.get_running_loop().time() < deadline, errors
            await asyncio.sleep(0.02)
        assert all("permissions violation" in e for e in errors)
    finally:
        await nc.close()


async def test_one_users_credentials_cannot_call_anothers_vault(world: World) -> None:
    await server_refuses(world, "mallory", for_vault("alice", "secret.list"), "OwnerSpace.alice.forApp.>")


async def test_enrollment_needs_an_unused_unexpired_invitation_signed_by_the_operator(world: World) -> None:
    from enclavekit.channel.keys import ClientIdentityKey
    from enclavekit.services.vault.invitation import issue

    forged = issue(ClientIdentityKey.generate(), ttl=3600, now=__import__("time").time())[1]
    async with world.client("ivan") as ivan:
        refused = [
            await _code(ivan.enroll("2468", invitation=None)),
            await _code(ivan.enroll("2468", invitation=forged)),  # signed by a key the vault does not measure
            await _code(ivan.enroll("2468", invitation=world.invite(ttl=3600, now=__import__("time").time() - 7200))),
            await _code(ivan.enroll("2468", invitation=world.invite("judy"))),  # bound to another user
        ]
        assert [e.remote_code for e in refused] == [
            "invitation_invalid",
            "invitation_invalid",
            "invitation_expired",
            "invitation_invalid",
        ]
        code = world.invite()  # anyone, once
        await ivan.enroll("2468", invitation=code)
    async with world.client("judy") as judy:
        assert (await _code(judy.enroll("1357", invitation=code))).remote_code == "invitation_used"
        assert (await _code(judy.list_secrets(pin="1357"))).remote_code == "not_enrolled"  # nothing was made
        replayed = [data for subject, data in world.captured if subject == for_vault("ivan", "enroll")][-1]
        refusals = []
        for name in world.vault_names():  # the host replays ivan's admitted enroll to every vault enclave
            async with world.enclave_named(name) as enclave:
                with pytest.raises(Error) as refused:
                    await enclave.call(
                        MESSAGE, Message(user="ivan", op="enroll", envelope=base64.b64encode(replayed).decode())
                    )
                refusals.append(refused.value.code)
        assert sorted(refusals) == ["envelope_invalid", "envelope_invalid", "envelope_replayed"], refusals
        await judy.enroll("1357", invitation=world.invite("judy"))
    async with world.client("ivan") as ivan:  # ivan's code admitted ivan once: enrolling again is refused
        assert (await _code(ivan.enroll("2468", invitation=code))).remote_code == "already_enrolled"


async def test_operator_sees_members_their_vault_state_and_invitations_never_their_data(world: World) -> None:
    """Runs after the tests above in this module: their users (bob and gina locked, ivan just enrolled...) are the
    members the operator's commands must show, as the bridge read them from the ledger."""

    def cli(*args: str) -> Any:
        run = subprocess.run(
            [sys.executable, "-m", "enclavekit.cli", "vault", *args, "--state", str(world.state), "--json"],
            capture_output=True,
            timeout=60,
            env={**os.environ, "ENCLAVEKIT_LOG_LEVEL": "WARNING"},
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    deadline = asyncio.get_running_loop().time() + 30
    while True:  # the bridge refreshes the registry from the ledger shortly after activity
        members = {m["user"]: m for m in (await asyncio.to_thread(cli, "members"))["members"]}
        if {"alice", "bob", "ivan", "judy", "gina"} <= {u for u, m in members.items() if m["state_at"]}:
            break
        assert asyncio.get_running_loop().time() < deadline, members
        await asyncio.sleep(0.2)
    assert members["bob"]["status"] == "locked" and members["gina"]["status"] == "locked"
    assert members["ivan"]["status"] == "enrolled" and members["ivan"]["attempts_left"] == 10
    assert members["ivan"]["enrolled_at"] is not None and members["ivan"]["last_op"] == "enroll"
    assert members["alice"]["attempts_left"] == 10 and members["alice"]["guess_limit"] == 10
    assert members["dave"]["guess_limit"] == 3 and members["dave"]["status"] == "locked"
    invitations = (await asyncio.to_thread(cli, "invite", "list"))["invitations"]
    by_user = {}
    for record in invitations:
        by_user.setdefault(record["user"], []).append(record)
    assert [r["status"] for r in by_user["gina"]] == ["used"] and by_user["gina"][0]["used_by"] == ["gina"]
    assert {r["status"] for r in invitations} == {"used", "expired", "open"}  # judy's first code stays open
    assert any(r["used_by"] == ["ivan"] and r["user"] is None for r in invitations)
    registry = (world.state / "vault" / "members.db").read_bytes()
    assert b"2468" not in registry and all(code.encode() not in registry for code in world.codes)


async def _until_due(client: VaultClient, claim: str) -> str:
    """Poll for the recovery's token until the measured delay has passed (the enclave's clock, not a sleep)."""
    deadline = asyncio.get_running_loop().time() + RECOVERY_DELAY + 60
    while True:
        try:
            return str((await client.recover_token(claim))["token"])
        except VaultError as exc:
            if exc.remote_code != "recovery_not_due" or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def test_recovery_waits_out_the_delay_and_an_enrolled_device_cancels_it_through_nats(world: World) -> None:
    device = ClientIdentityKey.generate()
    notices: list[dict[str, Any]] = []

    async def on_notice(notice: dict[str, Any]) -> None:
        notices.append(notice)

    async with world.client("tara") as phone, world.client("tara") as new_phone:
        await phone.enroll("2468", invitation=world.invite("tara"))
        await phone.put_secret("seed", b"recovered-seed-9c1e", pin="2468", critical=True)
        await phone.add_device(device.public_key)
        await phone.watch_recovery(on_notice)
        for op, payload in [
            ("recover.token", {"claim": "zz"}),
            ("recover.complete", {"token": "00" * 17, "new_pin": "1234"}),
            ("recover.cancel", {"device": device.public_key.hex(), "signature": 7}),
            ("device.add", {"pin": "2468", "device": "00" * 31}),
        ]:
            assert (await _code(new_phone.call(op, payload))).remote_code == "bad_payload", op
        first = await new_phone.recover_start()  # whoever can publish on tara's subjects: her, or the operator
        assert first["pending"] and first["recovery"] == 1
        deadline = asyncio.get_running_loop().time() + 60  # the enrolled phone hears of it within a minute
        while not any(n.get("op") == "recover.start" for n in notices):
            assert asyncio.get_running_loop().time() < deadline, notices
            await asyncio.sleep(0.05)
        status = await phone.recover_status()  # the notice is a hint; the vault says what is pending
        assert status == {"pending": True, "recovery": 1, "due": first["due"]}
        assert (await _code(new_phone.recover_start())).remote_code == "recovery_pending"  # no new delay clock
        assert not (await phone.recover_cancel(device))["pending"]
        assert (await _code(new_phone.recover_token(first["claim"]))).remote_code == "no_recovery"
        second = await new_phone.recover_start()
        assert not (await phone.recover_cancel(pin="2468"))["pending"]  # whoever knows the PIN needs no recovery
        again = await new_phone.recover_start()
        assert (second["recovery"], again["recovery"]) == (2, 3)
        token = await _until_due(new_phone, again["claim"])
        assert (await _code(new_phone.recover_complete(token, "12"))).remote_code == "pin_format"
        assert (await new_phone.recover_complete(token, "975310"))["generation"] == 2
        assert await new_phone.get_secret("seed", pin="975310") == b"recovered-seed-9c1e"
        assert (await _code(new_phone.recover_complete(token, "975310"))).remote_code == "recovery_token_invalid"
        assert (await _code(phone.get_secret("seed", pin="2468"))).remote_code == "pin_invalid"
    claims = [first["claim"].encode(), second["claim"].encode(), again["claim"].encode()]
    world.needles += [*claims, token.encode(), b'"new_pin": "975310"']


async def test_a_locked_vault_whose_ledger_was_lost_comes_back_only_through_recovery(world: World) -> None:
    """Every vault enclave restarts at once (a full stop of ``enclavekit up``): the ledger forgets every user and
    every stored vault fails closed — recovery is the way back. Runs after every other test that uses the vault."""
    async with world.client("lena") as lena:
        await lena.enroll("1357", limit=2, invitation=world.invite("lena"))
        await lena.put_secret("note", b"lena-note-51d2", pin="1357")
        for guess in ("0000", "0001"):
            await _code(lena.list_secrets(pin=guess))
        assert (await _code(lena.list_secrets(pin="1357"))).remote_code == "vault_locked"
    await asyncio.gather(*(world.restart(name, ready_timeout=120) for name in world.vault_names()))

    async def right(client: VaultClient) -> VaultError:
        return await _code(client.list_secrets(pin="1357"))

    assert (await _fresh_call(world, "lena", right)).remote_code == "ledger_unavailable"

    async def recover(client: VaultClient) -> bytes:
        assert (
            await _code(client.enroll("2222", invitation=world.invite("lena")))
        ).remote_code == "already_enrolled"  # no fresh start over it
        started = await client.recover_start()
        token = await _until_due(client, started["claim"])
        await client.recover_complete(token, "864200")
        world.needles.extend([started["claim"].encode(), token.encode(), b'"new_pin": "864200"'])
        return await client.get_secret("note", pin="864200")

    assert await _fresh_call(world, "lena", recover) == b"lena-note-51d2"


async def test_host_sees_no_pin_and_no_secret_in_traffic_objects_or_logs(world: World) -> None:
    # runs last in this module: everything above crossed the host
    secret_values = [b"abandon ability able", b"hunter2", b"carpe diem", b"second-value-7f3a"]
    secret_values += [b"recovered-seed-9c1e", b"lena-note-51d2", b"cleo-motto-3be1"]
    pins = [b"2468", b"975310", b"1111", b"8642", b"1357", b"2580", b"4321", b"1470"]
    needles: list[bytes] = []
    codes = [code.encode() for code in world.codes]  # the host never holds an invitation code either
    assert codes
    pins_json = [b'"pin": "' + p + b'"' for p in pins] + [b'"pin":"' + p + b'"' for p in pins]
    for value in secret_values + codes + pins_json + world.needles:
        needles += [value, value.hex().encode(), base64.b64encode(value)]
    haystacks: list[tuple[str, bytes]] = [(f"nats {s}", d) for s, d in world.captured]
    haystacks += [("nats answer", d) for d in world.answers]
    for path in world.state.rglob("*"):
        if path.is_file() and "users" not in path.parts and path.suffix != ".sock":
            haystacks.append((str(path), path.read_bytes()))
    assert len(world.captured) > 40 and any("objects" in name for name, _ in haystacks)
    for name, data in haystacks:
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {name}"
    for log in (world.state / "logs").glob("*.log"):  # nor whether a guess was right: that is inside the envelope
        text = log.read_bytes()
        assert b"pin_invalid" not in text and b"vault_locked" not in text, log
