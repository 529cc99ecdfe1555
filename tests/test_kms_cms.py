"""CiphertextForRecipient: the real AWS sample parses as documented; local envelopes round-trip; tampering fails."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.errors import Error
from enclavekit.kms.cms import (
    CONTENT_ENCRYPTION,
    KEY_ENCRYPTION,
    MAX_ENVELOPE_SIZE,
    Envelope,
    open_envelope,
    seal_envelope,
    subject_key_identifier,
)
from enclavekit.kms.errors import (
    EnvelopeDecryptionFailed,
    EnvelopeError,
    EnvelopeMalformed,
    EnvelopeUnsupported,
    RecipientMismatch,
)
from tests.conftest import fixtures_dir

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def aws_sample() -> bytes:
    return fixtures_dir("nitro", "kms", "kms_CiphertextForRecipient_sample_from_aws-sdk-c.ber").read_bytes()


def _seal(plaintext: bytes, **options: object) -> bytes:
    return seal_envelope(plaintext, _KEY.public_key(), **options)  # type: ignore[arg-type]


# --- the real AWS sample -----------------------------------------------------------------------------------------


def test_real_aws_envelope_parses_with_the_documented_facts(aws_sample: bytes) -> None:
    envelope = Envelope.from_bytes(aws_sample)
    assert len(envelope.recipient_ski) == 32
    assert len(envelope.encrypted_key) == 256  # RSA-2048
    assert envelope.key_encryption_algorithm == KEY_ENCRYPTION == "RSAES_OAEP_SHA_256"
    assert envelope.content_encryption_algorithm == CONTENT_ENCRYPTION == "AES_256_CBC"
    assert len(envelope.iv) == 16
    assert len(envelope.ciphertext) == 48  # a 32-byte secret plus a full block of PKCS#7 padding
    assert envelope.recipient_ski.hex().startswith("7087b55df94ba325")


def test_real_aws_envelope_is_ber_with_indefinite_lengths(aws_sample: bytes) -> None:
    assert aws_sample[:2] == b"\x30\x80"  # ContentInfo, indefinite length
    assert aws_sample.endswith(b"\x00\x00" * 5)  # five end-of-contents: chunks, ECI, EnvelopedData, [0], ContentInfo


def test_our_encoder_writes_the_aws_sample_byte_for_byte(aws_sample: bytes) -> None:
    """seal_envelope's shape is KMS's shape: re-encoding the parsed sample gives the same bytes."""
    assert Envelope.from_bytes(aws_sample).to_bytes() == aws_sample


def test_aws_sample_is_refused_by_a_key_it_does_not_name(aws_sample: bytes) -> None:
    with pytest.raises(RecipientMismatch) as caught:
        open_envelope(aws_sample, _KEY)
    assert caught.value.code == "cms_recipient_mismatch"


# --- local envelopes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 1024, 4096])
def test_locally_sealed_envelopes_round_trip(size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert open_envelope(_seal(plaintext), _KEY) == plaintext


def test_multi_chunk_content_round_trips_and_parses_like_kms() -> None:
    plaintext = b"k" * 5000
    sealed = _seal(plaintext, chunk_size=100)
    envelope = Envelope.from_bytes(sealed)
    assert len(envelope.ciphertext) == 5008
    assert envelope.to_bytes(chunk_size=100) == sealed
    assert envelope.open(_KEY) == plaintext


def test_recipient_is_named_by_sha256_of_its_subject_public_key_info() -> None:
    der = _KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert subject_key_identifier(_KEY.public_key()) == hashlib.sha256(der).digest()
    assert Envelope.from_bytes(_seal(b"x")).recipient_ski == hashlib.sha256(der).digest()


def test_seal_accepts_the_public_key_as_it_travels_in_an_attestation_document() -> None:
    der = _KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert open_envelope(seal_envelope(b"secret", der), _KEY) == b"secret"


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
    ],
    ids=["ec", "rsa1024"],
)
def test_sealing_to_a_weak_or_non_rsa_key_is_refused(key: object) -> None:
    with pytest.raises(ValueError, match=r"RSA|bits"):
        seal_envelope(b"x", key)  # type: ignore[arg-type]


def test_anyone_with_the_public_key_can_seal_so_authenticity_comes_from_the_channel() -> None:
    """Documents a property of KMS's format: the envelope has no sender authentication (see docs/kms.md)."""
    forged = seal_envelope(b"attacker-chosen key", _KEY.public_key())
    assert open_envelope(forged, _KEY) == b"attacker-chosen key"


# --- tampering -----------------------------------------------------------------------------------------------------


def test_envelope_for_another_key_is_refused_before_decryption() -> None:
    with pytest.raises(RecipientMismatch):
        open_envelope(_seal(b"secret"), _OTHER_KEY)


def test_altered_encrypted_key_fails_oaep() -> None:
    envelope = Envelope.from_bytes(_seal(b"secret"))
    altered = bytearray(envelope.encrypted_key)
    altered[100] ^= 0x01
    forged = Envelope(envelope.recipient_ski, bytes(altered), envelope.iv, envelope.ciphertext)
    with pytest.raises(EnvelopeDecryptionFailed):
        open_envelope(forged.to_bytes(), _KEY)


def test_altered_padding_block_is_refused_by_strict_unpadding() -> None:
    envelope = Envelope.from_bytes(_seal(b"0123456789abcdef"))  # one data block, one full padding block
    ciphertext = bytearray(envelope.ciphertext)
    ciphertext[15] ^= 0x01  # flips the last byte of the padding block once decrypted: 0x10 -> 0x11
    forged = Envelope(envelope.recipient_ski, envelope.encrypted_key, envelope.iv, bytes(ciphertext))
    with pytest.raises(EnvelopeDecryptionFailed, match="padding"):
        forged.open(_KEY)


def test_padding_with_inconsistent_bytes_is_refused() -> None:
    envelope = Envelope.from_bytes(_seal(b"0123456789abcde"))  # 15 bytes + one 0x01 padding byte
    ciphertext = bytearray(envelope.ciphertext)
    iv = bytearray(envelope.iv)
    iv[15] ^= 0x01 ^ 0x02  # last byte becomes 0x02 while byte 14 stays 'e': not valid PKCS#7
    forged = Envelope(envelope.recipient_ski, envelope.encrypted_key, bytes(iv), bytes(ciphertext))
    with pytest.raises(EnvelopeDecryptionFailed):
        forged.open(_KEY)


def test_encrypted_key_of_the_wrong_length_is_refused() -> None:
    envelope = Envelope.from_bytes(_seal(b"secret"))
    forged = Envelope(envelope.recipient_ski, envelope.encrypted_key[:-1], envelope.iv, envelope.ciphertext)
    with pytest.raises(EnvelopeDecryptionFailed, match="needs 256"):
        forged.open(_KEY)


@pytest.mark.parametrize("cut", [1, 2, 10, 100, 400])
def test_truncated_envelope_is_malformed(cut: int) -> None:
    sealed = _seal(b"secret")
    with pytest.raises(EnvelopeMalformed):
        Envelope.from_bytes(sealed[:-cut])


def test_trailing_bytes_after_the_envelope_are_refused() -> None:
    with pytest.raises(EnvelopeMalformed):
        Envelope.from_bytes(_seal(b"secret") + b"\x00")


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(EnvelopeMalformed, match="allowed"):
        Envelope.from_bytes(b"\x30\x80" + b"\x00" * MAX_ENVELOPE_SIZE)


def test_deeply_nested_ber_is_malformed_not_a_crash() -> None:
    with pytest.raises(EnvelopeMalformed):
        Envelope.from_bytes(b"\x30\x80" * 20000)


# --- other shapes of CMS ------------------------------------------------------------------------------------------


def _custom(
    *,
    version: str = "v2",
    oaep: dict[str, object] | None = None,
    content_algorithm: str = "aes256_cbc",
    iv: bytes = b"\x00" * 16,
    recipients: int = 1,
    rid: str = "subject_key_identifier",
) -> bytes:
    """A definite-length DER EnvelopedData built by asn1crypto, with one property changed."""
    params = (
        oaep
        if oaep is not None
        else {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        }
    )
    rid_value = (
        asn1_cms.RecipientIdentifier({"subject_key_identifier": b"\x01" * 32})
        if rid == "subject_key_identifier"
        else asn1_cms.RecipientIdentifier(
            {"issuer_and_serial_number": {"issuer": asn1_cms.Name.build({"common_name": "x"}), "serial_number": 1}}
        )
    )
    info = asn1_cms.RecipientInfo(
        {
            "ktri": {
                "version": "v2" if rid == "subject_key_identifier" else "v0",
                "rid": rid_value,
                "key_encryption_algorithm": {
                    "algorithm": "rsaes_oaep",
                    "parameters": algos.RSAESOAEPParams(params) if params else algos.RSAESOAEPParams.load(b"\x30\x00"),
                },
                "encrypted_key": b"\x02" * 256,
            }
        }
    )
    enveloped = asn1_cms.EnvelopedData(
        {
            "version": version,
            "recipient_infos": [info] * recipients,
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": content_algorithm, "parameters": core.OctetString(iv)},
                "encrypted_content": b"\x03" * 32,
            },
        }
    )
    return asn1_cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def test_definite_length_der_of_the_same_shape_is_accepted() -> None:
    envelope = Envelope.from_bytes(_custom())
    assert envelope.recipient_ski == b"\x01" * 32


def test_oaep_with_sha1_is_unsupported() -> None:
    sha1 = {
        "hash_algorithm": {"algorithm": "sha1"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha1"}},
    }
    with pytest.raises(EnvelopeUnsupported, match="SHA-256"):
        Envelope.from_bytes(_custom(oaep=sha1))


def test_oaep_with_default_parameters_means_sha1_and_is_unsupported() -> None:
    with pytest.raises(EnvelopeUnsupported):
        Envelope.from_bytes(_custom(oaep={}))


def test_oaep_with_a_label_is_unsupported() -> None:
    labelled = {
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        "p_source_algorithm": {"algorithm": "p_specified", "parameters": b"label"},
    }
    with pytest.raises(EnvelopeUnsupported, match="label"):
        Envelope.from_bytes(_custom(oaep=labelled))


def test_aes128_content_is_unsupported() -> None:
    with pytest.raises(EnvelopeUnsupported, match="AES-256-CBC"):
        Envelope.from_bytes(_custom(content_algorithm="aes128_cbc"))


def test_two_recipients_are_unsupported() -> None:
    with pytest.raises(EnvelopeUnsupported, match="exactly one"):
        Envelope.from_bytes(_custom(recipients=2))


def test_recipient_named_by_issuer_and_serial_is_unsupported() -> None:
    with pytest.raises(EnvelopeUnsupported):
        Envelope.from_bytes(_custom(rid="issuer_and_serial_number"))


def test_short_iv_is_malformed() -> None:
    with pytest.raises(EnvelopeMalformed, match="IV"):
        Envelope.from_bytes(_custom(iv=b"\x00" * 8))


def test_signed_data_is_not_an_envelope() -> None:
    signed = asn1_cms.ContentInfo({"content_type": "data", "content": core.OctetString(b"hello")}).dump()
    with pytest.raises(EnvelopeUnsupported, match="EnvelopedData"):
        Envelope.from_bytes(signed)


# --- fuzzing -------------------------------------------------------------------------------------------------------

_VALID = _seal(b"fuzz me", chunk_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_envelope_errors(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        Envelope.from_bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6), st.data())
def test_mutated_envelopes_raise_only_enclavekit_errors(edits: list[tuple[int, int]], data: st.DataObject) -> None:
    mutated = bytearray(_VALID)
    for position, value in edits:
        mutated[position] = value
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(mutated)))
        mutated = mutated[:cut]
    with contextlib.suppress(Error):
        Envelope.from_bytes(bytes(mutated)).open(_KEY)
