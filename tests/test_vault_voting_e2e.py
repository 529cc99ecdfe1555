"""Voting end to end, every piece its own process (the vault e2e stack: real nats-server with per-user
authorization, the KMS emulator, three vault enclaves, the host bridge): 50 users vote on two proposals through
NATS, every inclusion proof verifies against the published root with the independent verifier of
``test_vault_voting``, no voting key repeats across proposals, and what the host sees never links a user to a
voting key."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.client.identity import load
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.services.vault.ballot import Ballot, ballot_key, endorser_binding, endorser_key, raw_public
from enclavekit.services.vault.client import VaultClient, VaultError
from enclavekit.services.vault.nats_auth import add_user, credentials
from enclavekit.services.vault.objects import DirectoryObjectStore
from enclavekit.services.vault.proposal import Proposal, sign_proposal
from enclavekit.services.vault.proposal_board import box_results, publish_proposal
from enclavekit.services.vault.stack import operator_key_path
from tests.test_vault_e2e import World, world
from tests.test_vault_voting import independent_leaf, independent_root, independent_verify

pytestmark = pytest.mark.asyncio(loop_scope="module")

__all__ = ["world"]  # the vault e2e stack, started once for this module

VOTERS = 50
WINDOW = 30
"""Seconds a proposal stays open: long enough for 100 casts on a loaded machine; the test polls for the close."""


async def _code(call: Any) -> str:
    with pytest.raises(VaultError) as caught:
        await call
    return caught.value.remote_code


async def _connected(world: World, user: str) -> VaultClient:
    """A user's app, connected once the server has reloaded the user's just-issued credentials."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        client = world.client(user)
        try:
            return await client.__aenter__()
        except Exception as exc:
            if "uthorization" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


def _cli(world: World, *args: str) -> tuple[int, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "enclavekit.cli", "vault", *args, "--state", str(world.state), "--json"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "ENCLAVEKIT_LOG_LEVEL": "WARNING"},
    )
    return run.returncode, json.loads(run.stdout or b"null")


@pytest.mark.timeout(900)
async def test_fifty_users_vote_on_two_proposals_and_every_proof_verifies_against_the_published_root(
    world: World,
) -> None:
    users = [f"voter{i:02d}" for i in range(VOTERS)]
    pins = {user: f"{(i * 7919) % 10000:04d}{i % 10}" for i, user in enumerate(users)}
    for user in users[:-1]:
        credentials(world.state, user)
    add_user(world.state, users[-1], server_pid=world.stack.services["nats"]["pid"])  # one reload for all
    clients = dict(zip(users, await asyncio.gather(*(_connected(world, u) for u in users)), strict=True))
    try:
        # Argon2id: concurrently
        await asyncio.gather(*(clients[u].enroll(pins[u], invitation=world.invite(u)) for u in users))

        operator = load(operator_key_path(world.state))
        now = int(time.time())
        budget = sign_proposal(
            Proposal("budget", "Adopt the budget?", ("yes", "no", "abstain"), now, now + WINDOW), operator.sign
        )
        mascot = sign_proposal(Proposal("mascot", "Which mascot?", ("owl", "fox"), now, now + WINDOW), operator.sign)
        later = sign_proposal(Proposal("later", "Not yet open", ("a", "b"), now + 3600, now + 7200), operator.sign)
        for signed in (budget, mascot, later):
            publish_proposal(world.state, signed)
        documents = {s.proposal.id: s.to_json() for s in (budget, mascot, later)}
        choice = {("budget", u): ("yes", "no", "abstain")[i % 3] for i, u in enumerate(users)} | {
            ("mascot", u): ("owl", "fox")[(i * 7) % 2] for i, u in enumerate(users) if i != 0
        }
        cli_voter = users[0]  # votes on budget through the CLI (with its PIN), and not at all on mascot
        del choice[("budget", cli_voter)]
        casts = [clients[u].cast_vote(documents[p], c) for (p, u), c in choice.items()]
        answers = await asyncio.gather(*casts)
        assert all(len(a["leaf"]) == 64 for a in answers)
        code, cast = await asyncio.to_thread(
            _cli, world, "vote", "cast", cli_voter, "budget", "yes", "--pin", pins[cli_voter]
        )
        assert code == 0, cast
        choice[("budget", cli_voter)] = "yes"

        # While open: one vote per user, only offered choices, only operator-signed, well-formed proposals.
        alice = clients[users[1]]
        assert await _code(alice.cast_vote(documents["budget"], "no")) == "already_voted"
        assert await _code(clients[cli_voter].cast_vote(documents["mascot"], "wolf")) == "unknown_choice"
        assert await _code(alice.cast_vote(documents["later"], "a")) == "voting_closed"
        forged = sign_proposal(
            Proposal("forged", "The host's own", ("x", "y"), now, now + WINDOW), Ed25519PrivateKey.generate().sign
        )
        assert await _code(alice.cast_vote(forged.to_json(), "x")) == "not_an_operator"
        altered = budget.to_json()
        altered["proposal"]["closes_at"] += 3600
        assert await _code(alice.cast_vote(altered, "no")) == "not_an_operator"
        oversized = budget.to_json()
        oversized["proposal"]["title"] = "x" * 20_000
        bad: Any
        for bad in ("budget", {"proposal": {}}, budget.to_json() | {"extra": 1}, oversized, None, 7):
            request = {"session": alice.session, "proposal": bad, "choice": "no"}
            assert await _code(alice.call("vote.cast", request)) == "proposal_invalid"
        assert await _code(alice.call("vote.cast", {"session": alice.session, "choice": "no"})) == "bad_payload"
        assert await _code(alice.vote_results(documents["budget"])) == "results_not_ready"
        assert await _code(alice.vote_proof(documents["budget"])) == "results_not_ready"

        # The seed survives a PIN change: the proof after it re-derives the same key.
        changer = users[2]
        await clients[changer].change_pin(pins[changer], "86420")
        pins[changer] = "86420"
        await clients[changer].call("secret.list", {"pin": pins[changer]})  # a new session under the new PIN

        # While open, the box holds sealed ballots only: no voting key, no vote, in any name or byte the host sees.
        box = world.state / "vault" / "objects" / "ballots"
        names = sorted(path.name for path in box.rglob("*") if path.is_file())
        assert not [name for name in names if name.startswith("ballot-")]
        assert len([name for name in names if name.startswith("sealed-")]) == len(choice)
        sealed_files = [path.read_bytes() for path in box.rglob("sealed-*")]

        # The host stuffs the box: a ballot with a key it made up, endorsed by an enclave image of its own.
        objects = DirectoryObjectStore(world.state / "vault" / "objects")
        host_endorser = Ed25519PrivateKey.generate()
        own_image = NsmSimulator(world.state, app={"host.py": b"the host's enclave\n"})
        document = own_image.client().attestation(user_data=endorser_binding(raw_public(host_endorser)))
        await objects.put(endorser_key("budget", raw_public(host_endorser)), document)
        stuffed = Ballot.cast(budget.proposal, Ed25519PrivateKey.generate(), "no", now + 1, host_endorser)
        await objects.put(ballot_key("budget", stuffed.voting_key), stuffed.to_bytes())

        # After the close (polled, by the enclave's clock): results and a proof for every voter.
        deadline = now + WINDOW + 60
        while True:
            try:
                published = {p: await alice.vote_results(documents[p]) for p in ("budget", "mascot")}
                break
            except VaultError as exc:
                if exc.remote_code != "results_not_ready" or time.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        pcr0 = [bytes.fromhex(p) for p in world.local["pcr0"]]
        for signed in (budget, mascot):
            recomputed = await box_results(objects, signed, pcr0=pcr0, roots=[load_root(world.state)], now=time.time())
            assert recomputed.to_json() == published[signed.proposal.id]  # anyone recomputes what the vault says
        code, cli_results = await asyncio.to_thread(_cli, world, "vote", "results", "budget")
        assert code == 0 and cli_results == published["budget"]
        assert set(cli_results) == {"proposal", "root", "counts", "leaves"}

        for p in ("budget", "mascot"):
            expected = dict.fromkeys(documents[p]["proposal"]["choices"], 0)
            for (q, _), c in choice.items():
                if q == p:
                    expected[c] += 1
            assert published[p]["counts"] == expected  # the stuffed ballot did not count
            leaves = published[p]["leaves"]
            assert [independent_leaf(leaf) for leaf in leaves] == [leaf["hash"] for leaf in leaves]
            assert published[p]["root"] == independent_root([bytes.fromhex(leaf["hash"]) for leaf in leaves]).hex()
            keys = [leaf["voting_key"] for leaf in leaves]
            assert keys == sorted(keys)
        budget_keys = {leaf["voting_key"] for leaf in published["budget"]["leaves"]}
        mascot_keys = {leaf["voting_key"] for leaf in published["mascot"]["leaves"]}
        assert len(budget_keys) == VOTERS and len(mascot_keys) == VOTERS - 1
        assert not budget_keys & mascot_keys  # no voting key repeats across proposals

        proofs: dict[tuple[str, str], dict[str, Any]] = {}
        for p, u in sorted(choice):
            proofs[(p, u)] = await clients[u].vote_proof(documents[p])
        for (p, u), proof in proofs.items():
            assert independent_verify(proof, published[p]["root"]), (p, u)
            leaf = published[p]["leaves"][proof["index"]]
            assert leaf["hash"] == proof["leaf"] and leaf["vote"] == choice[(p, u)]
        assert len({proof["leaf"] for proof in proofs.values()}) == len(proofs)
        assert await _code(clients[cli_voter].vote_proof(documents["mascot"])) == "not_voted"
        code, cli_proof = await asyncio.to_thread(
            _cli, world, "vote", "proof", cli_voter, "budget", "--pin", pins[cli_voter]
        )
        assert code == 0 and cli_proof == proofs[("budget", cli_voter)]
        assert set(cli_proof) == {"leaf", "index", "path", "root"}

        # Censorship is visible: the host drops a ballot, and the box no longer holds as many as the ledger counted.
        # (It drops the clear ballot and every sealed one, which would re-open into it.)
        victim = users[3]
        victim_key = published["mascot"]["leaves"][proofs[("mascot", victim)]["index"]]["voting_key"]
        dropped = [ballot_key("mascot", bytes.fromhex(victim_key))]
        dropped += [name for name in await objects.list("ballots/mascot/") if "/sealed-" in name]
        kept = {name: await objects.get(name) for name in dropped}
        for name in dropped:
            await objects.delete(name)
        try:
            assert await _code(clients[victim].vote_proof(documents["mascot"])) == "box_incomplete"
        finally:
            for name, data in kept.items():
                assert data is not None
                await objects.put(name, data)
        assert (await clients[victim].vote_proof(documents["mascot"])) == proofs[("mascot", victim)]
        assert await _code(clients[users[4]].cast_vote(documents["mascot"], "owl")) == "voting_closed"

        # Host blindness: no PIN anywhere the host looks, and nothing the host relays or stores for a user holds
        # that user's voting keys — the box holds keys and votes, never who cast them.
        voting_keys = {(p, u): published[p]["leaves"][proof["index"]]["voting_key"] for (p, u), proof in proofs.items()}
        relayed = [data for subject, data in world.captured if ".voter" in subject]
        assert len(relayed) >= len(choice) * 2
        stored = [
            path.read_bytes() for path in (world.state / "vault" / "objects" / "vaults").rglob("*") if path.is_file()
        ]
        stored += [path.read_bytes() for path in (world.state / "logs").glob("*.log")]
        for (_, u), key in voting_keys.items():
            needles = [key.encode(), bytes.fromhex(key), base64.b64encode(bytes.fromhex(key))]
            for data in [*relayed, *world.answers, *stored, *sealed_files]:
                assert not any(needle in data for needle in needles), u
        for user, pin in pins.items():
            for needle in (f'"pin": "{pin}"'.encode(), f'"pin":"{pin}"'.encode()):
                assert not any(needle in data for data in [*relayed, *world.answers, *stored]), user
    finally:
        for client in clients.values():
            await client.__aexit__(None, None, None)


async def test_operator_cli_signs_and_lists_proposals_and_refuses_bad_ones(world: World) -> None:
    def run() -> list[tuple[int, Any]]:
        return [
            _cli(
                world,
                "proposal",
                "create",
                "--id",
                "cli-one",
                "--title",
                "Open the garden?",
                "--choice",
                "yes",
                "--choice",
                "no",
                "--opens",
                "2030-01-01T00:00:00",
                "--closes",
                "2030-01-08T00:00:00+00:00",
            ),
            _cli(
                world,
                "proposal",
                "create",
                "--title",
                "One choice",
                "--choice",
                "only",
                "--opens",
                "now",
                "--closes",
                str(int(time.time()) + 60),
            ),
            _cli(
                world,
                "proposal",
                "create",
                "--title",
                "Bad time",
                "--choice",
                "a",
                "--choice",
                "b",
                "--opens",
                "tomorrow",
                "--closes",
                "later",
            ),
            _cli(world, "proposal", "list"),
            _cli(world, "vote", "results", "cli-one"),
            _cli(world, "vote", "results", "no-such-proposal"),
        ]

    created, one_choice, bad_time, listed, not_ready, unknown = await asyncio.to_thread(run)
    assert created[0] == 0, created
    assert created[1]["proposal"]["opens_at"] == 1893456000 and created[1]["proposal"]["choices"] == ["yes", "no"]
    assert one_choice[0] == 1 and one_choice[1]["error"]["code"] == "proposal_invalid"
    assert bad_time[0] == 1 and bad_time[1]["error"]["code"] == "bad_time"
    assert listed[0] == 0
    assert {"id": "cli-one", "status": "upcoming"}.items() <= next(
        p for p in listed[1]["proposals"] if p["id"] == "cli-one"
    ).items()
    assert not_ready[0] == 1 and not_ready[1]["error"]["code"] == "results_not_ready"
    assert unknown[0] == 1 and unknown[1]["error"]["code"] == "proposal_invalid"
    async with world.client("alice") as alice:  # operator-signed, so the vault gets to the window: not yet open
        assert await _code(alice.cast_vote(created[1], "yes", pin="975310")) == "voting_closed"
