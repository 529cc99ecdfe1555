"""The vault enclave's PIN handling with a real KMS emulator: counted before release, locked at the limit, and no
extra guess from restoring storage, restarting enclaves or moving sealed material."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclavekit.kms import KmsRejected
from enclavekit.services.vault.core import header_key
from enclavekit.services.vault.errors import (
    AlreadyEnrolled,
    LedgerUnavailable,
    NotEnrolled,
    PinInvalid,
    StateRolledBack,
    VaultLocked,
)
from enclavekit.services.vault.guesses import GuessReplica, MemoryReplica
from enclavekit.services.vault.sealing import KmsSealer
from tests.test_kms_fixtures import OTHER_APP
from tests.vault_support import VaultWorld, join, vault_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[VaultWorld]:
    with vault_world(tmp_path) as built:
        yield built


async def _wrong(core, user: str = "alice", pin: str = "0000") -> PinInvalid | VaultLocked:  # type: ignore[no-untyped-def]
    with pytest.raises((PinInvalid, VaultLocked)) as caught:
        await core.unlock(user, pin)
    return caught.value


async def test_right_pin_unlocks_and_only_the_measured_enclave_can_unseal(world: VaultWorld) -> None:
    core = world.enclave()
    enrolled = await core.enroll("alice", "2468")
    unlocked = await world.enclave().unlock("alice", "2468")  # a cold enclave: unseals through KMS
    assert unlocked.keys == enrolled.keys
    header = json.loads((world.objects_dir / header_key("alice", 1)).read_bytes())
    other = KmsSealer(world.kms_client(OTHER_APP), world.key_id)  # another image (another PCR0)
    with pytest.raises(KmsRejected):
        await other.unseal("alice", 1, base64.b64decode(header["sealed"]))


async def test_wrong_pin_never_opens_a_warm_vault(world: VaultWorld) -> None:
    core = world.enclave()
    await core.enroll("alice", "2468")
    await core.unlock("alice", "2468")  # warm: material in memory
    error = await _wrong(core, pin="2469")
    assert isinstance(error, PinInvalid) and error.attempts_left == 9
    assert (await core.unlock("alice", "2468")).entry.attempts_left == 10  # the right PIN clears the count


async def test_ten_wrong_guesses_lock_and_destroy_the_sealed_material(world: VaultWorld) -> None:
    core = world.enclave()
    await core.enroll("alice", "2468")
    lefts = [getattr(await _wrong(core, pin=f"{n:04d}"), "attempts_left", None) for n in range(10)]
    assert lefts == [9, 8, 7, 6, 5, 4, 3, 2, 1, None]
    assert not (world.objects_dir / header_key("alice", 1)).exists()
    with pytest.raises(VaultLocked):
        await core.unlock("alice", "2468")
    with pytest.raises(AlreadyEnrolled):
        await core.enroll("alice", "1357")


async def test_restoring_a_snapshot_of_the_objects_grants_no_extra_guess(world: VaultWorld, tmp_path: Path) -> None:
    core = world.enclave()
    await core.enroll("alice", "2468", limit=3)
    world.snapshot(tmp_path / "snap")
    for _ in range(3):
        await _wrong(core)
    world.restore(tmp_path / "snap")  # the sealed material is back on disk...
    with pytest.raises(VaultLocked):  # ...but the ledger says locked, even for the right PIN
        await world.enclave().unlock("alice", "2468")


async def test_restoring_the_header_from_before_a_pin_change_is_refused(world: VaultWorld, tmp_path: Path) -> None:
    core = world.enclave()
    await core.enroll("alice", "2468")
    world.snapshot(tmp_path / "snap")
    await core.change_pin("alice", "2468", "1357")
    world.restore(tmp_path / "snap")
    with pytest.raises(StateRolledBack):
        await world.enclave().unlock("alice", "2468")


async def test_restarting_the_enclave_grants_no_extra_guess(world: VaultWorld) -> None:
    await world.enclave().enroll("alice", "2468")
    for expected in (9, 8, 7):
        error = await _wrong(world.enclave())  # each guess on a freshly restarted enclave
        assert isinstance(error, PinInvalid) and error.attempts_left == expected


async def test_sealed_material_moved_to_another_user_does_not_unseal(world: VaultWorld) -> None:
    core = world.enclave()
    await core.enroll("alice", "2468")
    await core.enroll("bob", "1357")
    alice = json.loads((world.objects_dir / header_key("alice", 1)).read_bytes())
    bob = json.loads((world.objects_dir / header_key("bob", 1)).read_bytes())
    alice["sealed"] = bob["sealed"]  # the host swaps bob's material (whose PIN it might learn) into alice's vault
    (world.objects_dir / header_key("alice", 1)).write_text(json.dumps(alice))
    with pytest.raises(KmsRejected):
        await world.enclave().unlock("alice", "1357")


async def test_ledger_that_lost_every_replica_fails_closed(world: VaultWorld) -> None:
    await world.enclave().enroll("alice", "2468")
    world.replicas[:] = [MemoryReplica() for _ in range(3)]  # the host restarts every replica at once
    with pytest.raises(LedgerUnavailable):
        await world.enclave().unlock("alice", "2468")
    with pytest.raises(AlreadyEnrolled):  # nor can it start over with a PIN it chose
        await world.enclave().enroll("alice", "0000")


async def test_host_hiding_objects_after_a_ledger_loss_and_reenrolling_gets_no_guess_at_the_old_pin(
    world: VaultWorld, tmp_path: Path
) -> None:
    """Every replica restarts (the ledger forgets alice); the host hides alice's objects so that enrolling her name
    again succeeds with a PIN it chose, then puts her old header back under the new entry. Each such cycle used to
    give 10 guesses at her real PIN against the old header; now the keys depend on the enrollment's epoch, so the
    old header's verifier matches no PIN, the real one included."""
    await world.enclave().enroll("alice", "2468")
    world.snapshot(tmp_path / "alice")
    world.replicas[:] = [MemoryReplica() for _ in range(3)]  # the ledger forgets everything
    for item in world.objects_dir.rglob("*"):
        if item.is_file():
            item.unlink()  # the host hides alice's objects...
    await world.enclave().enroll("alice", "0000")  # ...so a new enrollment of her name goes through
    world.restore(tmp_path / "alice")  # and puts her old header (generation 1) back under the new entry
    for pin in ("2468", "1111"):  # her real PIN opens nothing: the old header belongs to another epoch
        error = await _wrong(world.enclave(), pin=pin)
        assert isinstance(error, PinInvalid)


async def test_host_forking_the_ledger_with_extra_enclaves_gets_no_extra_guess(
    world: VaultWorld, tmp_path: Path
) -> None:
    """The host boots more enclaves of the vault's image. D reaches A and B and joins in place of C; E reaches B and
    D and joins in place of A: the view is {B, D, E}. The host serves alice through D and E (B cut off): ten wrong
    guesses lock her at {D, E} only. It puts the deleted header back and boots a fresh pair that reaches A and B —
    which never saw a guess — to guess again. Before views, any boot of the image was a replica and this pair
    caught up from A and B and took ten more guesses; now A (still in the old view) and B (in the new one) are no
    quorum of one view, so nothing joins and the real PIN is never tried."""
    a, b, _ = world.replicas
    assert isinstance(a, MemoryReplica) and isinstance(b, MemoryReplica)
    await world.enclave().enroll("alice", "2468")
    world.snapshot(tmp_path / "alice")
    d, e = MemoryReplica(GuessReplica()), MemoryReplica(GuessReplica())
    assert join(d, [a, b]) and join(e, [b, d])
    world.replicas[:] = [d, e]
    for n in range(10):
        await _wrong(world.enclave(), pin=f"{n:04d}")  # ten wrong guesses: {D, E} lock alice, the header is gone
    world.restore(tmp_path / "alice")
    fresh = [MemoryReplica(GuessReplica()), MemoryReplica(GuessReplica())]
    for new in fresh:
        join(new, [a, b])
    for replicas in (fresh, [a, b]):
        world.replicas[:] = replicas
        with pytest.raises((VaultLocked, LedgerUnavailable)):
            await world.enclave().unlock("alice", "2468")  # the host's eleventh guess: the real PIN


async def test_host_guessing_between_the_users_unlocks_gets_only_the_lifetime_budget(world: VaultWorld) -> None:
    """A right PIN resets the consecutive count; without more, a host that takes ``limit - 1`` guesses between two of
    the user's own unlocks would get thousands over months (red-team finding 7). The lifetime budget (``LIFETIME_FACTOR
    × limit`` wrong guesses per enrollment) bounds it: here limit 2, so 20 wrong guesses in all, then the lock."""
    from enclavekit.services.vault.guesses import LIFETIME_FACTOR

    core = world.enclave()
    await core.enroll("alice", "2468", limit=2)
    host_guesses = 0
    for n in range(100):
        error = await _wrong(core, pin=f"{n:04d}" if f"{n:04d}" != "2468" else "9999")
        if isinstance(error, VaultLocked):
            break
        host_guesses += 1
        await core.unlock("alice", "2468")  # the user comes back: the consecutive count is cleared
    assert host_guesses == LIFETIME_FACTOR * 2 - 1  # the guess that reaches the budget locks instead
    with pytest.raises(VaultLocked):
        await core.unlock("alice", "2468")


async def test_pin_change_is_crash_safe_and_retires_the_old_pin(world: VaultWorld) -> None:
    core = world.enclave()
    await core.enroll("alice", "2468")
    entry = await core.ledger.read("alice")
    await core._write_header("alice", "1357", entry, 2)  # crash after writing the new header, before the switch
    assert (await world.enclave().unlock("alice", "2468")).entry.generation == 1  # the old PIN still works
    changed = await core.change_pin("alice", "2468", "1357")
    assert changed.entry.generation == 2
    assert not (world.objects_dir / header_key("alice", 1)).exists()
    await world.enclave().unlock("alice", "1357")
    error = await _wrong(world.enclave(), pin="2468")
    assert isinstance(error, PinInvalid)


async def test_unknown_user_is_not_enrolled(world: VaultWorld) -> None:
    with pytest.raises(NotEnrolled):
        await world.enclave().unlock("nobody", "1234")


async def test_trying_all_ten_thousand_four_digit_pins_recovers_nothing(world: VaultWorld) -> None:
    core = world.enclave()
    await core.enroll("alice", "0042")  # the right PIN comes 43rd: after the limit
    outcomes: dict[str, int] = {}
    for n in range(10_000):
        try:
            await core.unlock("alice", f"{n:04d}")
            outcomes["opened"] = outcomes.get("opened", 0) + 1
        except (PinInvalid, VaultLocked) as exc:
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
    assert outcomes == {"pin_invalid": 9, "vault_locked": 9_991}
    assert (await world.enclave().ledger.read("alice")).locked
