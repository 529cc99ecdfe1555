"""The vault's key schedule: one key per purpose, both inputs needed, PIN format checked before any work."""

from __future__ import annotations

import pytest

from enclavekit.services.vault.errors import InvalidPinFormat
from enclavekit.services.vault.keys import (
    ARGON2,
    UNSAFE_TEST_ARGON2,
    derive_keys,
    pin_salt,
    stretch_pin,
)

MATERIAL = bytes(range(32))


def _keys(pin: str = "1234", material: bytes = MATERIAL, user: str = "alice", generation: int = 1):  # type: ignore[no-untyped-def]
    return derive_keys(
        stretch_pin(pin, user, material, UNSAFE_TEST_ARGON2), material, user, generation, epoch="ab" * 16
    )


def test_one_key_is_never_used_for_two_purposes() -> None:
    keys = _keys()
    assert keys.state != keys.pin_check


def test_pin_alone_or_material_alone_gives_other_keys() -> None:
    base = _keys()
    assert _keys(pin="1235").state != base.state
    assert _keys(material=bytes(32)).state != base.state
    assert _keys(user="bob").state != base.state
    assert _keys(generation=2).state != base.state


def test_verifier_of_one_generation_does_not_match_another() -> None:
    keys = _keys()
    assert keys.pin_matches("alice", 1, keys.pin_verifier("alice", 1))
    assert not keys.pin_matches("alice", 2, keys.pin_verifier("alice", 1))
    assert not _keys(pin="0000").pin_matches("alice", 1, keys.pin_verifier("alice", 1))


def test_salt_depends_on_the_sealed_material_so_nothing_is_precomputable() -> None:
    assert pin_salt("alice", MATERIAL) != pin_salt("alice", bytes(32))
    assert pin_salt("alice", MATERIAL) != pin_salt("bob", MATERIAL)


@pytest.mark.parametrize("pin", ["", "123", "123456789", "12a4", " 1234", "１２３４", "1234\n"])
def test_malformed_pin_is_refused_before_any_work(pin: str) -> None:
    with pytest.raises(InvalidPinFormat):
        stretch_pin(pin, "alice", MATERIAL, UNSAFE_TEST_ARGON2)


def test_production_cost_meets_the_adr_and_the_test_cost_says_unsafe() -> None:
    assert ARGON2.memlimit >= 64 * 1024 * 1024 and ARGON2.opslimit >= 3 and not ARGON2.unsafe
    assert UNSAFE_TEST_ARGON2.unsafe


def test_production_argon2id_matches_libsodium_reference_output() -> None:
    # A recorded regression vector: a silent change of parameters or salt derivation fails here.
    stretched = stretch_pin("2468", "alice", MATERIAL, ARGON2)
    assert stretched.hex() == VECTOR


VECTOR = "b5c7429274e0d31dfa91ebe00cf218b1192a0f289e52b2d73873f2c72ab5aec3"  # recorded from libsodium 1.0.18 (PyNaCl)
