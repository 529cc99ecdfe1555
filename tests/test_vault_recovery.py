"""Delayed, cancellable recovery with a real KMS emulator, real ledger replicas and an injected clock: the host
can neither shorten the delay, nor resurrect a cancelled recovery, nor reuse a token; a locked vault and a vault
whose ledger entry was lost come back with their secrets, and only through the delay."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.kms import KmsRejected
from enclavekit.services.vault.backup import Backup, backup_key_name
from enclavekit.services.vault.core import Unlocked, VaultCore, header_key
from enclavekit.services.vault.errors import (
    AlreadyEnrolled,
    LedgerUnavailable,
    NotEnrolled,
    PinInvalid,
    VaultLocked,
)
from enclavekit.services.vault.guesses import GuessEntry, MemoryReplica
from enclavekit.services.vault.recovery import (
    MAX_DEVICES,
    DeviceNotEnrolled,
    NoRecovery,
    RecoveryClaimInvalid,
    RecoveryDesk,
    RecoveryNotDue,
    RecoveryPending,
    RecoveryTokenInvalid,
    add_device,
    cancel_message,
)
from enclavekit.services.vault.sealing import KmsSealer
from enclavekit.services.vault.secret_store import SecretStore
from tests.test_kms_fixtures import OTHER_APP
from tests.vault_support import VaultWorld, vault_world

DELAY = 24 * 3600
T0 = 1_800_000_000.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[VaultWorld]:
    with vault_world(tmp_path) as built:
        yield built


def _core(world: VaultWorld) -> VaultCore:
    """A (re)started vault enclave that keeps a backup (as the real one does)."""
    core = world.enclave()
    core.backup = Backup(core.objects, KmsSealer(world.kms_client(), world.key_id, purpose="backup"))
    return core


async def _enrolled(core: VaultCore, device: ClientIdentityKey, *, limit: int = 10) -> Unlocked:
    unlocked = await core.enroll("alice", "2468", limit)
    store = core.store(unlocked)
    await SecretStore(store).put("seed", b"abandon ability able", critical=True, now=T0)
    await add_device(store, device.public_key)
    return unlocked


async def _secret(core: VaultCore, pin: str) -> bytes:
    value, _, _ = await SecretStore(core.store(await core.unlock("alice", pin))).get("seed", None, now=T0)
    return value


async def _lock(core: VaultCore, limit: int) -> None:
    for guess in range(limit):
        with pytest.raises((PinInvalid, VaultLocked)):
            await core.unlock("alice", f"{guess:04d}")


async def test_locked_vault_comes_back_with_its_secrets_only_after_the_delay(world: VaultWorld) -> None:
    core = _core(world)
    await _enrolled(core, ClientIdentityKey.generate(), limit=2)
    await _lock(core, 2)
    assert not (world.objects_dir / header_key("alice", 1)).exists()  # the sealed PIN material is destroyed
    desk = RecoveryDesk(core, delay=DELAY)
    status, claim = await desk.start("alice", now=T0)
    assert (status.pending, status.number, status.due) == (True, 1, int(T0) + DELAY)
    with pytest.raises(RecoveryNotDue):
        await desk.token("alice", claim, now=T0 + DELAY - 1)
    token, expires = await desk.token("alice", claim, now=T0 + DELAY)
    assert expires == T0 + DELAY + 600
    unlocked = await desk.complete("alice", token, "975310", now=T0 + DELAY + 1)
    assert unlocked.entry.generation == 2 and unlocked.entry.attempts_left == 2 and not unlocked.entry.locked
    assert await _secret(_core(world), "975310") == b"abandon ability able"  # a cold enclave, the new PIN
    with pytest.raises(PinInvalid):
        await core.unlock("alice", "2468")
    assert not (await desk.status("alice")).pending


async def test_host_replaying_start_cannot_move_the_due_time(world: VaultWorld) -> None:
    core = _core(world)
    await _enrolled(core, ClientIdentityKey.generate())
    desk = RecoveryDesk(core, delay=DELAY)
    first, claim = await desk.start("alice", now=T0)
    before = await core.ledger.read("alice")
    with pytest.raises(RecoveryPending):
        await desk.start("alice", now=T0 + 3600)  # a new start (or a replayed one) while pending
    for replica in world.replicas:  # replayed ledger messages: from before the start, and the start itself
        await replica.merge("alice", GuessEntry(generation=1))
        await replica.merge("alice", before)
    assert (await desk.status("alice")).due == first.due
    assert (await core.ledger.read("alice")).recovery == before.recovery
    assert (await desk.token("alice", claim, now=first.due))[0]


async def test_cancel_by_an_enrolled_device_kills_the_recovery_for_good(world: VaultWorld, tmp_path: Path) -> None:
    core = _core(world)
    device, stranger = ClientIdentityKey.generate(), ClientIdentityKey.generate()
    await _enrolled(core, device)
    desk = RecoveryDesk(core, delay=DELAY)
    world.snapshot(tmp_path / "before")
    status, claim = await desk.start("alice", now=T0)
    pending = await core.ledger.read("alice")
    message = cancel_message("alice", status.number)
    with pytest.raises(DeviceNotEnrolled):
        await desk.cancel("alice", device=stranger.public_key, signature=stranger.sign(message))
    with pytest.raises(DeviceNotEnrolled):  # an enrolled device's signature over another recovery
        await desk.cancel("alice", device=device.public_key, signature=device.sign(cancel_message("alice", 2)))
    assert (await desk.status("alice")).pending
    assert not (await desk.cancel("alice", device=device.public_key, signature=device.sign(message))).pending
    world.restore(tmp_path / "before")  # the host puts old objects back and replays the pending ledger entry
    for replica in world.replicas:
        await replica.merge("alice", pending)
    with pytest.raises(NoRecovery):
        await desk.token("alice", claim, now=T0 + DELAY)
    again, _ = await desk.start("alice", now=T0 + 10)  # a new start is a new number with a full delay
    assert (again.number, again.due) == (2, int(T0) + 10 + DELAY)


async def test_the_right_pin_during_the_delay_kills_the_recovery(world: VaultWorld) -> None:
    core = _core(world)
    await _enrolled(core, ClientIdentityKey.generate())
    desk = RecoveryDesk(core, delay=DELAY)
    _, claim = await desk.start("alice", now=T0)  # the operator's, while alice still has her PIN
    with pytest.raises(RecoveryClaimInvalid):
        await desk.token("alice", "00" * 32, now=T0 + DELAY)
    with pytest.raises(PinInvalid):
        await core.unlock("alice", "0000")
    assert (await desk.status("alice")).pending  # a wrong PIN cancels nothing
    await core.unlock("alice", "2468")
    assert not (await desk.status("alice")).pending
    with pytest.raises(NoRecovery):
        await desk.token("alice", claim, now=T0 + DELAY)
    with pytest.raises(NoRecovery):
        await desk.cancel("alice")


async def test_a_token_is_single_use_short_lived_and_only_for_its_recovery(world: VaultWorld) -> None:
    core = _core(world)
    device = ClientIdentityKey.generate()
    await _enrolled(core, device)
    desk = RecoveryDesk(core, delay=DELAY)
    _, claim = await desk.start("alice", now=T0)
    due = T0 + DELAY
    expired, _ = await desk.token("alice", claim, now=due)
    with pytest.raises(RecoveryTokenInvalid):
        await desk.complete("alice", expired, "975310", now=due + 601)
    with pytest.raises(RecoveryTokenInvalid):  # spent by the expired try: never reusable
        await desk.complete("alice", expired, "975310", now=due + 1)
    other_user, _ = await desk.token("alice", claim, now=due)
    with pytest.raises(RecoveryTokenInvalid):
        await desk.complete("bob", other_user, "975310", now=due + 1)
    stale, _ = await desk.token("alice", claim, now=due)
    signature = device.sign(cancel_message("alice", 1))
    await desk.cancel("alice", device=device.public_key, signature=signature)  # cancelled after the token
    with pytest.raises(NoRecovery):
        await desk.complete("alice", stale, "975310", now=due + 1)
    assert await _secret(core, "2468") == b"abandon ability able"  # nothing changed
    _, claim = await desk.start("alice", now=due)
    token, _ = await desk.token("alice", claim, now=due + DELAY)
    await desk.complete("alice", token, "975310", now=due + DELAY)
    with pytest.raises(RecoveryTokenInvalid):
        await desk.complete("alice", token, "111111", now=due + DELAY)
    assert await _secret(core, "975310") == b"abandon ability able"


async def test_a_vault_whose_ledger_entry_was_lost_is_recovered_not_re_enrolled(world: VaultWorld) -> None:
    core = _core(world)
    await _enrolled(core, ClientIdentityKey.generate())
    world.replicas[:] = [MemoryReplica() for _ in world.replicas]  # every replica restarted at once: genesis
    core = _core(world)
    with pytest.raises(LedgerUnavailable):
        await core.unlock("alice", "2468")
    with pytest.raises(AlreadyEnrolled):
        await core.enroll("alice", "1111")
    desk = RecoveryDesk(core, delay=DELAY, limit=5)
    _, claim = await desk.start("alice", now=T0)
    with pytest.raises(LedgerUnavailable):  # pending is not enrolled: the vault still fails closed meanwhile
        await core.unlock("alice", "2468")
    token, _ = await desk.token("alice", claim, now=T0 + DELAY)
    unlocked = await desk.complete("alice", token, "975310", now=T0 + DELAY)
    assert unlocked.entry.limit == 5 and unlocked.entry.generation == 2
    assert await _secret(_core(world), "975310") == b"abandon ability able"


async def test_a_vault_enrolls_at_most_sixteen_devices_each_once(world: VaultWorld) -> None:
    core = _core(world)
    unlocked = await core.enroll("alice", "2468")
    store = core.store(unlocked)
    devices = [ClientIdentityKey.generate().public_key for _ in range(MAX_DEVICES)]
    for device in devices:
        await add_device(store, device)
    assert len(await add_device(store, devices[0])) == MAX_DEVICES  # the same key again: nothing new
    with pytest.raises(DeviceNotEnrolled):
        await add_device(store, ClientIdentityKey.generate().public_key)
    with pytest.raises(DeviceNotEnrolled):
        await add_device(store, b"\x01" * 31)


async def test_nothing_to_recover_for_a_user_without_a_vault(world: VaultWorld) -> None:
    desk = RecoveryDesk(_core(world), delay=DELAY)
    with pytest.raises(NotEnrolled):
        await desk.start("nobody", now=T0)
    assert not (await desk.status("nobody")).pending


async def test_only_the_vault_image_opens_the_backup_key_and_never_as_pin_material(world: VaultWorld) -> None:
    core = _core(world)
    await _enrolled(core, ClientIdentityKey.generate())
    sealed = (world.objects_dir / backup_key_name("alice")).read_bytes()
    with pytest.raises(KmsRejected):  # another image (another PCR0)
        await KmsSealer(world.kms_client(OTHER_APP), world.key_id, purpose="backup").unseal("alice", 0, sealed)
    with pytest.raises(KmsRejected):  # the vault image, but asked for PIN material: another encryption context
        await KmsSealer(world.kms_client(), world.key_id).unseal("alice", 0, sealed)
    header = json.loads((world.objects_dir / header_key("alice", 1)).read_bytes())
    with pytest.raises(KmsRejected):  # and the PIN material's blob does not open as the backup key
        await KmsSealer(world.kms_client(), world.key_id, purpose="backup").unseal(
            "alice", 1, base64.b64decode(header["sealed"])
        )


def test_recovery_fields_merge_so_the_first_start_and_every_cancel_stay() -> None:
    start = GuessEntry(generation=1, recovery=(1, 100, "aa"))
    later = GuessEntry(generation=1, recovery=(1, 200, "bb"))
    cancelled = start.merge(GuessEntry(recovery_closed=1))
    assert start.recovery_pending and not cancelled.recovery_pending
    assert cancelled.merge(start) == cancelled and start.merge(later) == later.merge(start)
    assert start.merge(later).recovery[1] == 200  # a concurrent start can only push the due time later
    locked = GuessEntry(generation=3, locked_at=3)
    assert locked.locked and not locked.merge(GuessEntry(generation=4)).locked
    assert locked.merge(GuessEntry(generation=2, locked_at=2)).locked
    assert GuessEntry.from_json(cancelled.to_json()) == cancelled
    for bad in ({**start.to_json(), "recovery": [1, 2]}, {**start.to_json(), "recovery": [1, "2", "a"]}):
        with pytest.raises(ValueError, match="malformed"):
            GuessEntry.from_json(bad)
