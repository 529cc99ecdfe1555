"""The vault's key schedule: PIN × sealed material → one root key → one subkey per purpose.

::

    stretched = Argon2id(PIN, salt = SHA-256("enclavekit vault salt v1" ‖ user ‖ material), params)
    root      = HKDF-SHA256(ikm = stretched ‖ material, salt = "enclavekit vault root v1",
                            info = user ‖ 0x00 ‖ generation ‖ 0x00 ‖ epoch)
    subkey(p) = HKDF-SHA256(ikm = root, salt = "enclavekit vault subkey v1", info = p)

Purposes (:data:`PURPOSES`): ``state`` (XChaCha20-Poly1305 over stored objects) and ``pin-check`` (HMAC-SHA256
verifier of the PIN). One key per algorithm and purpose, never one key for several (the reference reused its DEK
for AES-GCM, XChaCha20 and HMAC); a new purpose gets a new label.

Neither input alone opens anything: the material is random (32 bytes), unsealed only inside the attested
enclave, so the host holding every stored object cannot test PIN guesses offline; the PIN is only ever tried
inside the enclave, after the guess is counted (:mod:`~enclavekit.services.vault.guesses`). The Argon2id cost
(:data:`ARGON2`) is chosen in ``docs/adr/0010-vault-argon2id-parameters.md``; :data:`UNSAFE_TEST_ARGON2` exists
for tests only and is refused by every entry point an operator can reach.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import pwhash

from enclavekit.services.vault.errors import InvalidPinFormat

__all__ = [
    "ARGON2",
    "MATERIAL_SIZE",
    "PURPOSES",
    "UNSAFE_TEST_ARGON2",
    "Argon2Params",
    "VaultKeys",
    "check_pin_format",
    "derive_keys",
    "pin_salt",
    "stretch_pin",
]

MATERIAL_SIZE: Final = 32
KEY_SIZE: Final = 32
PURPOSES: Final = ("state", "pin-check")
_PIN = re.compile(r"[0-9]{4,8}")


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost: ``opslimit`` passes over ``memlimit`` bytes (libsodium: one lane)."""

    opslimit: int
    memlimit: int
    name: str

    def __post_init__(self) -> None:
        if self.opslimit < 1 or self.memlimit < 8 * 1024:
            raise ValueError("Argon2id parameters out of range")

    @property
    def unsafe(self) -> bool:
        return self.name.startswith("unsafe")


ARGON2: Final = Argon2Params(opslimit=3, memlimit=64 * 1024 * 1024, name="argon2id-t3-m64MiB")
"""The production cost: 3 passes over 64 MiB (≈0.45 s p50 on the 2-core dev machine under load; ADR 0010)."""

UNSAFE_TEST_ARGON2: Final = Argon2Params(opslimit=1, memlimit=64 * 1024, name="unsafe-test-argon2id-t1-m64KiB")
"""A cost for tests only (≈1 ms): makes brute force cheap. Never reachable from the CLI or ``enclavekit up``."""


def check_pin_format(pin: str) -> bytes:
    """The PIN as bytes if it is 4 to 8 ASCII digits; raises :class:`InvalidPinFormat` (not a counted guess)."""
    if not isinstance(pin, str) or not _PIN.fullmatch(pin):
        raise InvalidPinFormat("a PIN is 4 to 8 digits")
    return pin.encode("ascii")


def pin_salt(user: str, material: bytes) -> bytes:
    """Argon2id's salt: bound to the user and to the sealed material, so nothing can be precomputed."""
    return hashlib.sha256(b"enclavekit vault salt v1\x00" + user.encode() + b"\x00" + material).digest()[:16]


def stretch_pin(pin: str, user: str, material: bytes, params: Argon2Params = ARGON2) -> bytes:
    """Argon2id(PIN) — the slow part of an unlock, done only inside the enclave after the guess is counted."""
    secret = check_pin_format(pin)
    return pwhash.argon2id.kdf(
        KEY_SIZE, secret, pin_salt(user, material), opslimit=params.opslimit, memlimit=params.memlimit
    )


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True, slots=True)
class VaultKeys:
    """The subkeys of one vault generation. Enclave memory only; ``repr`` shows nothing."""

    state: bytes = field(repr=False)
    pin_check: bytes = field(repr=False)

    def pin_verifier(self, user: str, generation: int) -> bytes:
        """What the vault stores to recognise the right PIN: an HMAC, useless without the sealed material."""
        message = b"enclavekit vault pin verifier v1\x00" + user.encode() + b"\x00" + str(generation).encode()
        return hmac.new(self.pin_check, message, hashlib.sha256).digest()

    def pin_matches(self, user: str, generation: int, verifier: bytes) -> bool:
        return hmac.compare_digest(self.pin_verifier(user, generation), verifier)


def derive_keys(stretched: bytes, material: bytes, user: str, generation: int, *, epoch: str) -> VaultKeys:
    """The subkeys from the stretched PIN and the unsealed material (generation: which PIN setting; epoch: which
    enrollment, as the guess ledger names it — a header from another enrollment yields other keys, so its verifier
    never matches and it can test no PIN)."""
    if len(stretched) != KEY_SIZE or len(material) != MATERIAL_SIZE:
        raise ValueError("stretched PIN and material must be 32 bytes each")
    info = b"\x00".join((user.encode(), str(generation).encode(), epoch.encode()))
    root = _hkdf(stretched + material, b"enclavekit vault root v1", info)
    subkeys = {purpose: _hkdf(root, b"enclavekit vault subkey v1", purpose.encode()) for purpose in PURPOSES}
    return VaultKeys(state=subkeys["state"], pin_check=subkeys["pin-check"])
