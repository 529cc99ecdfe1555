"""Property-based attacks on the AIR receipt parser and verifier: whatever the bytes, only ReceiptError comes out."""

from __future__ import annotations

import base64
import contextlib
from datetime import UTC, datetime

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.attestation.cose import sig_structure
from enclavekit.cli.receipt import read_receipt
from enclavekit.receipts import ReceiptPolicy, parse_receipt, report_receipt
from enclavekit.receipts.air import PROTECTED_HEADER
from enclavekit.receipts.errors import ReceiptError

KEY = Ed25519PrivateKey.from_private_bytes(bytes([0x2A] * 32))
PUBLIC = KEY.public_key().public_bytes_raw()
NOW = datetime(2025, 2, 25, 16, 15, tzinfo=UTC)
POLICY = ReceiptPolicy(nonce=b"\x01" * 8, model_hash=b"\xaa" * 32, max_age=3600)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOLDEN = bytes.fromhex(
    "d28446a2012703183da0590207b0016d63796e7472697365632e636f6d061a67bdec2007500102030405060708090a0b0c0d0e0f1019"
    "0109782168747470733a2f2f737065632e63796e7472697365632e636f6d2f6169722f76313a000100006c6d696e696c6d2d6c362d76"
    "323a0001000165312e302e303a000100025820aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa3a0001"
    "00035820bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb3a000100045820cccccccccccccccccccccc"
    "cccccccccccccccccccccccccccccccccccccccccc3a000100055820dddddddddddddddddddddddddddddddddddddddddddddddddddd"
    "dddddddddddd3a00010006a4647063723058300101010101010101010101010101010101010101010101010101010101010101010101"
    "010101010101010101010101016470637231583002020202020202020202020202020202020202020202020202020202020202020202"
    "020202020202020202020202020264706372325830030303030303030303030303030303030303030303030303030303030303030303"
    "030303030303030303030303030303706d6561737572656d656e745f74797065696e6974726f2d7063723a000100076e706f6c696379"
    "2d323032362e30323a00010008182a3a0001000918743a0001000a1902003a0001000b6a70726f64756374696f6e584031161eb04d05"
    "ce9a2329a84f046a035a9453d968fbf5346eb31a88216735122c8abc059fee86f54fa8221a11989f0b2d1f08b8f2abf12410b2b42868"
    "e732aa01"
)  # valid/v1-nitro-no-nonce.json, embedded so the fuzzers run without the fixtures


def _only_receipt_errors(data: bytes) -> None:
    with contextlib.suppress(ReceiptError):
        parse_receipt(data)
    report = report_receipt(data, public_key=PUBLIC, policy=POLICY, now=NOW)  # never raises for a bad receipt
    assert report.valid or report.error is not None


def test_embedded_golden_vector_is_valid() -> None:
    assert report_receipt(GOLDEN, public_key=PUBLIC, now=NOW).valid


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_receipt_errors(data: bytes) -> None:
    _only_receipt_errors(data)


@FUZZ
@given(st.data())
def test_mutated_golden_receipt_raises_only_receipt_errors(data: st.DataObject) -> None:
    real = bytearray(GOLDEN)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(real) - 1))
        real[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(real)))
    mutated = bytes(real[:cut]) if data.draw(st.booleans()) else bytes(real)
    report = report_receipt(mutated, public_key=PUBLIC, now=NOW)
    assert not report.valid or mutated == GOLDEN  # one changed byte anywhere breaks parse or signature


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.binary(max_size=64)
    | st.text(max_size=16)
    | st.floats(allow_nan=True),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(-65560, 300), children, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.integers(-65560, 300), cbor_values, max_size=20))
def test_signed_garbage_claims_raise_only_receipt_errors(claims: dict[int, object]) -> None:
    payload = cbor2.dumps(claims)
    signature = KEY.sign(sig_structure(PROTECTED_HEADER, payload))
    _only_receipt_errors(cbor2.dumps(cbor2.CBORTag(18, [PROTECTED_HEADER, {}, payload, signature])))


@FUZZ
@given(cbor_values, cbor_values)
def test_garbage_envelope_fields_raise_only_receipt_errors(unprotected: object, payload: object) -> None:
    _only_receipt_errors(cbor2.dumps(cbor2.CBORTag(18, [PROTECTED_HEADER, unprotected, payload, b"\x00" * 64])))


@FUZZ
@given(st.binary(max_size=512) | st.text(alphabet="0123456789abcdefABCDEF+/=_- \n", max_size=512).map(str.encode))
def test_receipt_file_decoding_never_crashes(data: bytes) -> None:
    _only_receipt_errors(read_receipt(data))


def test_receipt_file_forms_decode_to_the_same_bytes() -> None:
    for form in (GOLDEN, GOLDEN.hex().encode(), GOLDEN.hex().upper().encode() + b"\n", base64.b64encode(GOLDEN)):
        assert read_receipt(form) == GOLDEN
    assert read_receipt(base64.urlsafe_b64encode(GOLDEN).rstrip(b"=")) == GOLDEN
