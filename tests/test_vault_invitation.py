"""Invitation codes, checked as the vault enclave checks them: the operator's signature under the measured keys,
the expiry by the enclave's clock, the user binding, and the single use recorded in the guess ledger's replicas
(which the host can neither roll back nor write to). Real Ed25519, real measured configuration, real ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.services.vault.enclave_config import VaultEnclaveConfig, vault_config_document
from enclavekit.services.vault.errors import AlreadyEnrolled
from enclavekit.services.vault.guesses import GuessEntry, GuessLedger, GuessReplica, MemoryReplica
from enclavekit.services.vault.invitation import (
    Invitation,
    InvitationExpired,
    InvitationInvalid,
    InvitationUsed,
    admit,
    issue,
    parse_code,
)
from enclavekit.services.vault.wire import LedgerMerge
from tests.vault_support import VaultWorld, join, members, vault_world

NOW = 1_800_000_000.0
WEEK = 7 * 86400.0


@pytest.fixture(scope="module")
def operator() -> ClientIdentityKey:
    return ClientIdentityKey.generate()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, operator: ClientIdentityKey) -> VaultEnclaveConfig:
    state = tmp_path_factory.mktemp("invite-sim")
    NsmSimulator(state, app={"vault.py": b"x"})
    document = vault_config_document(kms_key_id="k", roots_der=[load_root(state)], operator_keys=(operator.public_key,))
    return VaultEnclaveConfig.from_bytes(document)


def _ledger(replicas: list[MemoryReplica] | None = None) -> GuessLedger:
    return GuessLedger(replicas or [MemoryReplica() for _ in range(3)])


async def _admit(
    code: object, config: VaultEnclaveConfig, ledger: GuessLedger, user: str = "alice", now: float = NOW
) -> Invitation:
    return await admit(code, user=user, now=now, require_signature=config.require_operator_signature, ledger=ledger)


def test_code_is_copy_pasteable_base32_of_stated_length(operator: ClientIdentityKey) -> None:
    invitation, code = issue(operator, ttl=WEEK, now=NOW)
    assert len(code) == 141 and code.isalnum() and code.isupper()
    bound, bound_code = issue(operator, ttl=WEEK, now=NOW, user="alice")
    assert len(bound_code) == 149
    assert parse_code(bound_code)[0] == bound
    grouped = " ".join(code[i : i + 5] for i in range(0, len(code), 5)).lower()  # pasted with spaces, lower case
    assert parse_code(grouped)[0] == invitation
    assert invitation.expires_at == int(NOW + WEEK) and invitation.user is None and invitation.vault == "vault"


async def test_invited_user_is_admitted_and_the_use_is_recorded_at_a_majority(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    replicas = [MemoryReplica() for _ in range(3)]
    invitation, code = issue(operator, ttl=WEEK, now=NOW)
    assert await _admit(code, config, _ledger(replicas)) == invitation
    holding = [r for r in replicas if r.replica.entries.get(invitation.ledger_key, GuessEntry()).claims == {"alice"}]
    assert len(holding) >= 2


async def test_forged_code_signed_by_a_stranger_is_refused(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    _, forged = issue(ClientIdentityKey.generate(), ttl=WEEK, now=NOW)
    with pytest.raises(InvitationInvalid):
        await _admit(forged, config, _ledger())


async def test_code_with_an_altered_expiry_or_user_does_not_verify(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    invitation, code = issue(operator, ttl=60, now=NOW, user="alice")
    _, message, signature = parse_code(code)
    for changed in (
        Invitation(invitation.id, invitation.expires_at + 10 * 365 * 86400, user="alice"),
        Invitation(invitation.id, invitation.expires_at, user="mallory"),
    ):
        import base64

        tampered = base64.b32encode(changed.body() + signature).decode().rstrip("=")
        with pytest.raises(InvitationInvalid):
            await _admit(tampered, config, _ledger(), user=changed.user or "alice")
    assert message.endswith(invitation.body())


async def test_expired_code_is_refused_by_the_enclave_clock(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    invitation, code = issue(operator, ttl=3600, now=NOW)
    ledger = _ledger()
    with pytest.raises(InvitationExpired) as caught:
        await _admit(code, config, ledger, now=NOW + 3601)
    assert caught.value.code == "invitation_expired"
    assert await ledger.read(invitation.ledger_key) == GuessEntry()  # refused before any use was recorded
    await _admit(code, config, ledger, now=NOW + 3599)


async def test_code_bound_to_a_user_does_not_admit_another(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    _, code = issue(operator, ttl=WEEK, now=NOW, user="alice")
    ledger = _ledger()
    with pytest.raises(InvitationInvalid):
        await _admit(code, config, ledger, user="mallory")
    await _admit(code, config, ledger, user="alice")


async def test_used_code_does_not_admit_a_second_user_but_the_same_user_may_retry(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    replicas = [MemoryReplica() for _ in range(3)]
    _, code = issue(operator, ttl=WEEK, now=NOW)
    await _admit(code, config, _ledger(replicas), user="alice")
    with pytest.raises(InvitationUsed) as caught:
        await _admit(code, config, _ledger(replicas), user="bob")  # another enclave (coordinator), same replicas
    assert caught.value.code == "invitation_used"
    await _admit(code, config, _ledger(replicas), user="alice")  # the answer was lost: a retry is not a 2nd use
    with pytest.raises(InvitationUsed):  # and bob's failed claim has not freed it for anyone
        await _admit(code, config, _ledger(replicas), user="carol")


async def test_racing_claims_through_several_enclaves_admit_at_most_one_user(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    for _ in range(20):
        replicas = [MemoryReplica() for _ in range(3)]
        _, code = issue(operator, ttl=WEEK, now=NOW)
        users = ["u1", "u2", "u3", "u4"]
        results = await asyncio.gather(
            *(_admit(code, config, _ledger(replicas), user=user) for user in users), return_exceptions=True
        )
        admitted = [u for u, r in zip(users, results, strict=True) if isinstance(r, Invitation)]
        assert len(admitted) <= 1
        assert all(isinstance(r, Invitation | InvitationUsed) for r in results)


async def test_a_use_survives_the_host_restarting_a_replica_that_held_it(
    operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    a, b, c = members()
    _, code = issue(operator, ttl=WEEK, now=NOW)
    down = MemoryReplica(GuessReplica(ready=False))  # c cut off: the use is written to a and b only
    await _admit(code, config, _ledger([a, b, down]), user="alice")
    restarted = MemoryReplica(GuessReplica())  # the host restarts b: it must join through a and c before it counts
    assert join(restarted, [a, c])
    with pytest.raises(InvitationUsed):
        await _admit(code, config, _ledger([restarted, c, down]), user="mallory")


def test_only_invitation_entries_carry_claims_and_user_entries_keep_their_wire_form() -> None:
    entry = GuessEntry(generation=1)
    assert "claims" not in entry.to_json()
    claimed = GuessEntry(claims=frozenset({"alice"}))
    assert GuessEntry.from_json(claimed.to_json()) == claimed
    many = GuessEntry()
    for n in range(20):
        many = many.merge(GuessEntry(claims=frozenset({f"user{n:02d}"})))
    assert len(many.claims) == 8 and "user00" in many.claims  # bounded, still a join (the least 8)
    with pytest.raises(ValueError, match="claims"):
        GuessEntry.from_json({**claimed.to_json(), "claims": "alice"})
    LedgerMerge(user="invite:" + "ab" * 12, entry=claimed.to_json(), document="")
    with pytest.raises(ValueError, match="pattern"):
        LedgerMerge(user="invite:../x", entry=claimed.to_json(), document="")


@pytest.mark.parametrize("code", [None, 7, "", "not base32!", "A" * 600, "AAAAAAAA", "MZXW6YTBOI"])
async def test_missing_or_malformed_code_is_a_specific_error(code: object, config: VaultEnclaveConfig) -> None:
    with pytest.raises(InvitationInvalid) as caught:
        await _admit(code, config, _ledger())
    assert caught.value.code == "invitation_invalid"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[VaultWorld]:
    with vault_world(tmp_path) as built:
        yield built


async def test_refused_enrollment_does_not_use_up_the_code(
    world: VaultWorld, operator: ClientIdentityKey, config: VaultEnclaveConfig
) -> None:
    core = world.enclave()
    _, first = issue(operator, ttl=WEEK, now=time.time())
    _, second = issue(operator, ttl=WEEK, now=time.time())

    def gate(code: str, user: str) -> object:
        return lambda: _admit(code, config, core.ledger, user=user, now=time.time())

    await core.enroll("alice", "2468", admit=gate(first, "alice"))
    with pytest.raises(AlreadyEnrolled):  # alice again: refused before the code is looked at
        await core.enroll("alice", "1357", admit=gate(second, "alice"))
    await core.enroll("bob", "1357", admit=gate(second, "bob"))  # so bob can still use it
    with pytest.raises(InvitationUsed):
        await core.enroll("carol", "1357", admit=gate(first, "carol"))
    assert not await world.enclave().objects.list("vaults/carol/")
