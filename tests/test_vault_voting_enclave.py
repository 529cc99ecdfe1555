"""The vault enclave's voting operations in process, with the enclave's clock injected: a real KMS emulator and
key policy, the simulated NSM, real ledger replicas in memory, real object storage in a folder. Votes count only
while the proposal is open by the enclave's clock, one per user; the seed survives a PIN change; a restarted
enclave opens the ballots an earlier boot sealed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.channel.handshake import Responder
from enclavekit.channel.keys import SessionKeys
from enclavekit.enclave.runtime import EnclaveContext
from enclavekit.errors import Error
from enclavekit.nsm import load_root
from enclavekit.services.vault.ballot import ballot_counter
from enclavekit.services.vault.enclave_app import VaultEnclave
from enclavekit.services.vault.enclave_config import VaultEnclaveConfig, vault_config_document
from enclavekit.services.vault.objects import InvalidUser
from enclavekit.services.vault.operations import Request
from enclavekit.services.vault.operations import pin as pin_operations
from enclavekit.services.vault.proposal import Proposal, sign_proposal
from tests.test_kms_fixtures import simulated_enclave
from tests.test_vault_voting import independent_verify
from tests.vault_support import VAULT_APP, VaultWorld, vault_world

OPENS, CLOSES = 1_000_000, 1_000_600


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[VaultWorld, Ed25519PrivateKey]]:
    with vault_world(tmp_path) as built:
        yield built, Ed25519PrivateKey.generate()


def _enclave(world: VaultWorld, operator: Ed25519PrivateKey) -> VaultEnclave:
    """A (re)started vault enclave: new memory, endorser and keys; same KMS key, replicas and host storage."""
    simulator = simulated_enclave(world.sim_state, VAULT_APP)
    nsm, keys = simulator.client(), SessionKeys.generate()
    context = EnclaveContext(
        "vault", nsm, keys, Responder(keys, attester=nsm), "nitro-simulated", simulator.pcr(0), world.sim_state
    )
    raw = operator.public_key().public_bytes_raw()
    config = VaultEnclaveConfig.from_bytes(
        vault_config_document(kms_key_id=world.key_id, roots_der=[load_root(world.sim_state)], operator_keys=(raw,))
    )
    vault = VaultEnclave(core=world.enclave(), config=config, roots=config.roots)
    vault._context = context
    return vault


async def _call(vault: VaultEnclave, op: str, user: str, now: float, **payload: Any) -> dict[str, Any]:
    handler = vault.operations[op]
    return await handler(vault, Request(user, op, payload, now))


async def _code(vault: VaultEnclave, op: str, user: str, now: float, **payload: Any) -> str:
    with pytest.raises(Error) as caught:
        await _call(vault, op, user, now, **payload)
    return caught.value.code


async def test_votes_count_only_while_open_by_the_enclave_clock_once_per_user_and_survive_a_pin_change(
    world: tuple[VaultWorld, Ed25519PrivateKey],
) -> None:
    storage, operator = world
    vault = _enclave(storage, operator)
    proposal = sign_proposal(Proposal("p1", "Yes or no?", ("yes", "no"), OPENS, CLOSES), operator.sign).to_json()
    for user, pin in (("ann", "1234"), ("ben", "5678")):
        await vault.require_core().enroll(user, pin)
    assert await _code(vault, "vote.cast", "ann", OPENS - 1, pin="1234", proposal=proposal, choice="yes") == (
        "voting_closed"
    )
    await _call(vault, "vote.cast", "ann", OPENS, pin="1234", proposal=proposal, choice="yes")
    await _call(vault, "vote.cast", "ben", CLOSES - 0.5, pin="5678", proposal=proposal, choice="no")
    assert await _code(vault, "vote.cast", "ann", OPENS + 1, pin="1234", proposal=proposal, choice="no") == (
        "already_voted"
    )
    assert await _code(vault, "vote.cast", "ben", CLOSES, pin="5678", proposal=proposal, choice="no") == (
        "voting_closed"
    )
    assert await _code(vault, "vote.proof", "ann", CLOSES - 1, pin="1234", proposal=proposal) == "results_not_ready"
    await pin_operations.OPERATIONS["pin.change"](
        vault, Request("ann", "pin.change", {"pin": "1234", "new_pin": "4321"}, CLOSES - 1)
    )

    restarted = _enclave(storage, operator)  # another boot: it must open what the first one sealed, through KMS
    objects = restarted.require_core().objects
    sealed = [name for name in await objects.list("ballots/p1/") if "/sealed-" in name]
    assert len(sealed) == 2
    withheld = await objects.get(sealed[0])
    assert withheld is not None
    await objects.delete(sealed[0])  # the host shows the vault one sealed ballot of two, to unmix it
    assert await _code(restarted, "vote.results", "anyone", CLOSES, proposal=proposal) == "box_incomplete"
    assert not [name for name in await objects.list("ballots/p1/") if "/ballot-" in name]  # nothing opened
    await objects.put(sealed[0], withheld)
    results = await _call(restarted, "vote.results", "anyone", CLOSES, proposal=proposal)
    assert results["counts"] == {"yes": 1, "no": 1}
    for user, pin in (("ann", "4321"), ("ben", "5678")):
        proof = (await _call(restarted, "vote.proof", user, CLOSES + 5, pin=pin, proposal=proposal))["proof"]
        assert independent_verify(proof, results["root"])
    assert await _code(restarted, "vote.proof", "ann", CLOSES, pin="1234", proposal=proposal) == "pin_invalid"
    clear = [name for name in await objects.list("ballots/p1/") if "/ballot-" in name]
    assert len(clear) == 2
    await objects.put(clear[0], b"replaced by the host")  # the sealed original is still there: it is put back
    await objects.delete(clear[1])
    assert await _call(restarted, "vote.results", "anyone", CLOSES + 9, proposal=proposal) == results


async def test_a_user_cannot_take_the_name_of_a_ballot_counter(world: tuple[VaultWorld, Ed25519PrivateKey]) -> None:
    storage, operator = world
    vault = _enclave(storage, operator)
    counter = ballot_counter("p1")
    with pytest.raises(InvalidUser):
        await vault.require_core().enroll(counter, "1234")


async def test_an_enclave_without_the_operators_signature_or_with_a_bad_payload_refuses_to_vote(
    world: tuple[VaultWorld, Ed25519PrivateKey],
) -> None:
    storage, operator = world
    vault = _enclave(storage, operator)
    await vault.require_core().enroll("cid", "2468")
    good = sign_proposal(Proposal("p2", "Which?", ("a", "b"), OPENS, CLOSES), operator.sign).to_json()
    forged = sign_proposal(Proposal("p2", "Which?", ("a", "b"), OPENS, CLOSES), Ed25519PrivateKey.generate().sign)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"proposal": forged.to_json(), "choice": "a"}, "not_an_operator"),
        ({"proposal": good, "choice": "c"}, "unknown_choice"),
        ({"proposal": good, "choice": ["a"]}, "unknown_choice"),
        ({"choice": "a"}, "bad_payload"),
        ({"proposal": {"proposal": good["proposal"]}, "choice": "a"}, "proposal_invalid"),
    ]
    for payload, code in cases:
        assert await _code(vault, "vote.cast", "cid", OPENS + 1, pin="2468", **payload) == code
    assert await _code(vault, "vote.proof", "cid", CLOSES, pin="2468", proposal=good) == "not_voted"
    assert not [name for name in await storage.enclave().objects.list("ballots/") if "/sealed-" in name]
