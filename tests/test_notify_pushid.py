"""Sealed push IDs: libsodium's ``crypto_box_seal`` layout, strict parsing on the host, opening in the enclave."""

from __future__ import annotations

import hashlib

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey, SealedBox

from enclavekit.services.notify.errors import InvalidPushId
from enclavekit.services.notify.pushid import (
    SEAL_OVERHEAD,
    EncryptedPushId,
    GeneratedPushKeys,
    StaticPushKeys,
    TrackPushKeys,
    seal_push_id,
)


def test_a_box_sealed_by_libsodium_directly_opens_in_the_enclave() -> None:
    keys = GeneratedPushKeys()
    box = nacl.bindings.crypto_box_seal(b"braze-alias-1", keys.public_key())  # what World Chat clients call
    assert keys.open_sealed(box) == b"braze-alias-1"


def test_the_wire_layout_is_epk_mac_ciphertext_with_the_blake2b_nonce() -> None:
    """``epk(32) ‖ mac(16) ‖ ct``, nonce = BLAKE2b-24(epk ‖ pk): the libsodium construction, byte for byte."""
    recipient = PrivateKey.generate()
    box = bytes.fromhex(seal_push_id("device-42", bytes(recipient.public_key)))
    assert len(box) == SEAL_OVERHEAD + len(b"device-42")
    epk = box[:32]
    nonce = hashlib.blake2b(epk + bytes(recipient.public_key), digest_size=24).digest()
    opened = nacl.bindings.crypto_box_open(box[32:], nonce, epk, bytes(recipient))
    assert opened == b"device-42"
    assert SealedBox(recipient).decrypt(box) == b"device-42"


def test_a_tampered_box_does_not_open() -> None:
    keys = GeneratedPushKeys()
    box = bytearray.fromhex(seal_push_id("device", keys.public_key()))
    box[-1] ^= 1
    with pytest.raises(InvalidPushId):
        keys.open_sealed(bytes(box))


def test_a_box_for_another_key_does_not_open() -> None:
    with pytest.raises(InvalidPushId):
        GeneratedPushKeys().open_sealed(bytes.fromhex(seal_push_id("device", GeneratedPushKeys().public_key())))


@pytest.mark.parametrize("text", ["", "0", "zz" * 60, "ab" * 48, "ab" * 561, "ab" * 50 + " ", "é" * 100])
def test_malformed_push_ids_are_refused_by_the_host_parser(text: str) -> None:
    with pytest.raises(InvalidPushId):
        EncryptedPushId.parse(text)


def test_the_host_canonicalises_hex_to_lower_case() -> None:
    sealed = seal_push_id("device", GeneratedPushKeys().public_key())
    assert EncryptedPushId.parse(sealed.upper()).hex == sealed


@given(st.text(max_size=1200))
def test_the_host_parser_never_fails_otherwise(text: str) -> None:
    try:
        parsed = EncryptedPushId.parse(text)
    except InvalidPushId:
        return
    assert len(parsed.raw) > SEAL_OVERHEAD


@given(st.binary(max_size=700))
def test_opening_arbitrary_bytes_never_fails_otherwise(data: bytes) -> None:
    keys = StaticPushKeys(b"\x01" * 32)
    with pytest.raises(InvalidPushId):
        keys.open_sealed(data)


def test_members_of_one_track_derive_the_same_push_key() -> None:
    class Secret:
        def __init__(self, value: bytes) -> None:
            self.value = value

        def derive(self, label: bytes, length: int = 32) -> bytes:
            return hashlib.sha256(self.value + label).digest()[:length]

    first, second = TrackPushKeys(Secret(b"s" * 32)), TrackPushKeys(Secret(b"s" * 32))
    assert first.public_key() == second.public_key()
    assert second.open_sealed(bytes.fromhex(seal_push_id("device", first.public_key()))) == b"device"
    assert first.derive(b"x") == second.derive(b"x") != TrackPushKeys(Secret(b"t" * 32)).derive(b"x")
