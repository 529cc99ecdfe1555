"""The emulator's ciphertext blob: the documented test vector, and blobs that are not blobs."""

from __future__ import annotations

import pytest

from enclavekit.kms import ciphertext
from enclavekit.kms.errors import InvalidCiphertext

KEY = bytes(range(32))
KEY_ID = "00000000-0000-4000-8000-000000000000"
CONTEXT = {"purpose": "test", "app": "docs"}
VECTOR = bytes.fromhex(  # docs/kms.md, "Ciphertext blobs"
    "0124"
    "30303030303030302d303030302d343030302d383030302d303030303030303030303030"
    "000000000000000000000000"
    "6bd2d6b2d45ae6d661dc00a6342c39e8a0192377b3a95d87ae26"
)


def test_blob_matches_the_documented_test_vector() -> None:
    assert ciphertext.seal(KEY, KEY_ID, b"enclavekit", CONTEXT, random=bytes) == VECTOR
    blob = ciphertext.CiphertextBlob.from_bytes(VECTOR)
    assert blob.key_id == KEY_ID
    assert ciphertext.unseal(KEY, blob, CONTEXT) == b"enclavekit"


def test_context_encoding_is_independent_of_insertion_order() -> None:
    assert ciphertext.encode_context({"b": "2", "a": "1"}) == ciphertext.encode_context({"a": "1", "b": "2"})
    assert ciphertext.encode_context(CONTEXT).hex() == "00036170700004646f63730007707572706f7365000474657374"


def test_context_pairs_cannot_be_shifted_into_each_other() -> None:
    """Length prefixes: {"ab": "c"} and {"a": "bc"} bind different associated data."""
    assert ciphertext.encode_context({"ab": "c"}) != ciphertext.encode_context({"a": "bc"})
    blob = ciphertext.CiphertextBlob.from_bytes(ciphertext.seal(KEY, KEY_ID, b"x", {"ab": "c"}))
    with pytest.raises(InvalidCiphertext):
        ciphertext.unseal(KEY, blob, {"a": "bc"})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        VECTOR[:30],
        b"\x02" + VECTOR[1:],  # another version
        b"\x01\x00" + VECTOR[2:],  # empty key id
        b"\x01\xff" + VECTOR[2:],  # key id longer than the blob allows
        VECTOR[:2] + b"\xff" * 36 + VECTOR[38:],  # key id not ASCII
        b"\x01" * 7000,  # longer than AWS's 6144-byte limit
    ],
)
def test_bytes_that_are_not_a_blob_are_invalid_ciphertext(data: bytes) -> None:
    with pytest.raises(InvalidCiphertext) as caught:
        ciphertext.CiphertextBlob.from_bytes(data)
    assert caught.value.aws_type == "InvalidCiphertextException"


def test_a_blob_under_another_key_does_not_decrypt() -> None:
    blob = ciphertext.CiphertextBlob.from_bytes(VECTOR)
    with pytest.raises(InvalidCiphertext):
        ciphertext.unseal(bytes(32), blob, CONTEXT)
