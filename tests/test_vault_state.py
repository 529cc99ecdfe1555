"""Vault state at rest: encrypted per item, versioned index, rollback refused, incremental writes, PIN change
re-encrypts crash-safely."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enclavekit.services.vault.errors import StateCorrupt, StateRolledBack
from enclavekit.services.vault.state import item_key
from tests.vault_support import VaultWorld, vault_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[VaultWorld]:
    with vault_world(tmp_path) as built:
        yield built


async def _store(world: VaultWorld, pin: str = "2468"):  # type: ignore[no-untyped-def]
    core = world.enclave()
    return core, core.store(await core.unlock("alice", pin))


def _files(world: VaultWorld) -> dict[str, int]:
    return {
        p.relative_to(world.objects_dir).as_posix(): p.stat().st_ino
        for p in world.objects_dir.rglob("*")
        if p.is_file()
    }


async def test_state_survives_a_cold_enclave_and_is_ciphertext_on_disk(world: VaultWorld) -> None:
    await world.enclave().enroll("alice", "2468")
    _, store = await _store(world)
    await store.commit({"a": b"the plaintext value 1"}, {"names": ["a"]})
    _, fresh = await _store(world)  # another enclave, cold
    assert await fresh.read_item("a") == b"the plaintext value 1"
    assert (await fresh.load()).meta == {"names": ["a"]}
    for path in world.objects_dir.rglob("*"):
        assert not path.is_file() or b"plaintext value" not in path.read_bytes()


async def test_each_change_writes_only_what_changed(world: VaultWorld) -> None:
    await world.enclave().enroll("alice", "2468")
    _, store = await _store(world)
    await store.commit({f"item{i}": b"x" * 10 for i in range(20)}, {})
    before = _files(world)
    await store.commit({"item3": b"changed"}, {})
    after = _files(world)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {item_key("alice", "item3", 2), "vaults/alice/index.1.2"}
    assert set(before) - set(after) == {item_key("alice", "item3", 1), "vaults/alice/index.1.1"}


async def test_restoring_older_state_is_refused_not_served(world: VaultWorld, tmp_path: Path) -> None:
    await world.enclave().enroll("alice", "2468")
    _, store = await _store(world)
    await store.commit({"balance": b"100"}, {})
    world.snapshot(tmp_path / "snap")
    await store.commit({"balance": b"5"}, {})
    world.restore(tmp_path / "snap")
    _, fresh = await _store(world)
    with pytest.raises(StateRolledBack):
        await fresh.load()


async def test_item_object_replayed_under_another_name_does_not_open(world: VaultWorld) -> None:
    await world.enclave().enroll("alice", "2468")
    _, store = await _store(world)
    await store.commit({"a": b"secret a", "b": b"secret b"}, {})
    a = world.objects_dir / item_key("alice", "a", 1)
    b = world.objects_dir / item_key("alice", "b", 1)
    b.write_bytes(a.read_bytes())  # the host swaps ciphertexts
    _, fresh = await _store(world)
    with pytest.raises(StateRolledBack):  # the digest in the index catches it first
        await fresh.read_item("b")


async def test_forged_newer_index_is_ignored(world: VaultWorld) -> None:
    await world.enclave().enroll("alice", "2468")
    _, store = await _store(world)
    await store.commit({"a": b"1"}, {})
    (world.objects_dir / "vaults/alice/index.1.99").write_bytes(b"\x01" + bytes(60))
    _, fresh = await _store(world)
    assert (await fresh.load()).version == 1


async def test_garbage_object_is_a_specific_error(world: VaultWorld) -> None:
    from enclavekit.services.vault.state import open_object

    for data in (b"", b"\x02" + bytes(60), b"\x01" + bytes(60)):
        with pytest.raises(StateCorrupt):
            open_object(bytes(32), b"ad", data)


async def test_pin_change_re_encrypts_state_and_a_crash_before_the_switch_keeps_the_old(world: VaultWorld) -> None:
    core = world.enclave()
    await core.enroll("alice", "2468")
    _, store = await _store(world)
    await store.commit({"a": b"kept across PIN changes"}, {"n": 1})
    # a crash after the new objects were written, before the ledger switched
    unlocked = await core.unlock("alice", "2468")
    keys = await core._write_header("alice", "1357", (await core.ledger.read("alice")), 2)
    await core.store(unlocked).rekey(keys.state, 2)
    _, old = await _store(world, "2468")
    assert await old.read_item("a") == b"kept across PIN changes"
    await world.enclave().change_pin("alice", "2468", "1357")
    _, new = await _store(world, "1357")
    assert await new.read_item("a") == b"kept across PIN changes"
    assert (await new.load()).meta == {"n": 1}
    assert not list(world.objects_dir.rglob("index.1.*"))
