"""The key schedule is RFC 9180 HPKE: checked against the RFC's published test vectors.

RFC 9180, Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base mode. The values
below are copied from the RFC text. If any of these fail, the session keys are not what the wire format
document says they are, and no other implementation could interoperate.
"""

from __future__ import annotations

import pytest
from pyhpke import AEADId, KDFId, KEMId
from pyhpke.consts import Mode

from enclavekit.channel.schedule import SUITE, expand, initiator_secrets, responder_secrets

H = bytes.fromhex

# RFC 9180 A.2.1 (mode_base, kem_id 32, kdf_id 1, aead_id 3)
INFO = H("4f6465206f6e2061204772656369616e2055726e")
IKM_E = H("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b")
PK_EM = H("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")
SK_EM = H("f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600")
IKM_R = H("1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df")
PK_RM = H("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a")
SK_RM = H("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb")
ENC = PK_EM
SHARED_SECRET = H("0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7")
KEY = H("ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91")
BASE_NONCE = H("5c4d98150661b848853b547f")
EXPORTER_SECRET = H("a3b010d4994890e2c6968a36f64470d3c824c8f5029942feb11e7a74b2921922")
PT = H("4265617574792069732074727574682c20747275746820626561757479")
ENCRYPTIONS = [  # (sequence number, aad, ciphertext)
    (
        0,
        H("436f756e742d30"),
        H("1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"),
    ),
    (
        1,
        H("436f756e742d31"),
        H("6b53c051e4199c518de79594e1c4ab18b96f081549d45ce015be002090bb119e85285337cc95ba5f59992dc98c"),
    ),
    (
        2,
        H("436f756e742d32"),
        H("71146bd6795ccc9c49ce25dda112a48f202ad220559502cef1f34271e0cb4b02b4f10ecac6f48c32f878fae86b"),
    ),
    (
        4,
        H("436f756e742d34"),
        H("63357a2aa291f5a4e5f27db6baa2af8cf77427c7c1a909e0b37214dd47db122bb153495ff0b02e9e54a50dbe16"),
    ),
    (
        255,
        H("436f756e742d323535"),
        H("18ab939d63ddec9f6ac2b60d61d36a7375d2070c9b683861110757062c52b8880a5f6b3936da9cd6c23ef2a95c"),
    ),
    (
        256,
        H("436f756e742d323536"),
        H("7a4a13e9ef23978e2c520fd4d2e757514ae160cd0cd05e556ef692370ca53076214c0c40d4c728d6ed9e727a5b"),
    ),
]
EXPORTS = [  # (exporter context, 32-byte exported value)
    (b"", H("4bbd6243b8bb54cec311fac9df81841b6fd61f56538a775e7c80a9f40160606e")),
    (H("00"), H("8c1df14732580e5501b00f82b10a1647b40713191b7c1240ac80e2b68808ba69")),
    (H("54657374436f6e74657874"), H("5acb09211139c43b3090489a9da433e8a30ee7188ba8b0a9a1ccf0c229283e53")),
]


def test_suite_is_x25519_hkdf_sha256_chacha20poly1305() -> None:
    assert SUITE.kem.id == KEMId.DHKEM_X25519_HKDF_SHA256
    assert SUITE.kdf.id == KDFId.HKDF_SHA256
    assert SUITE.aead.id == AEADId.CHACHA20_POLY1305


def test_derive_key_pair_matches_rfc9180_a21() -> None:
    ephemeral = SUITE.kem.derive_key_pair(IKM_E)
    assert ephemeral.public_key.to_public_bytes() == PK_EM
    assert ephemeral.private_key.to_private_bytes() == SK_EM
    recipient = SUITE.kem.derive_key_pair(IKM_R)
    assert recipient.public_key.to_public_bytes() == PK_RM
    assert recipient.private_key.to_private_bytes() == SK_RM


def test_encap_and_decap_give_rfc9180_a21_shared_secret() -> None:
    recipient = SUITE.kem.derive_key_pair(IKM_R)
    shared, enc = SUITE.kem.encap(recipient.public_key, eks=SUITE.kem.derive_key_pair(IKM_E))
    assert (shared, enc) == (SHARED_SECRET, ENC)
    assert SUITE.kem.decap(ENC, recipient.private_key) == SHARED_SECRET


def test_key_schedule_matches_rfc9180_a21() -> None:
    _, params = SUITE._key_schedule(  # the RFC publishes the schedule's intermediate values; check them too
        mode=Mode.BASE,
        shared_secret=SHARED_SECRET,
        info=INFO,
        psk=b"",
        psk_id=b"",
    )
    assert (params.key, params.base_nonce, params.exporter_secret) == (KEY, BASE_NONCE, EXPORTER_SECRET)


@pytest.mark.parametrize(("sequence", "aad", "ciphertext"), ENCRYPTIONS)
def test_sender_and_recipient_encryptions_match_rfc9180_a21(sequence: int, aad: bytes, ciphertext: bytes) -> None:
    recipient = SUITE.kem.derive_key_pair(IKM_R)
    enc, sender = SUITE.create_sender_context(
        SUITE.kem.deserialize_public_key(PK_RM), INFO, eks=SUITE.kem.derive_key_pair(IKM_E)
    )
    receiver = SUITE.create_recipient_context(enc, recipient.private_key, INFO)
    for _ in range(sequence):  # advance both contexts to the vector's sequence number
        receiver.open(sender.seal(b"", b""), b"")
    assert sender.seal(PT, aad) == ciphertext
    assert receiver.open(ciphertext, aad) == PT


@pytest.mark.parametrize(("context", "value"), EXPORTS)
def test_exporter_matches_rfc9180_a21(context: bytes, value: bytes) -> None:
    recipient = SUITE.kem.derive_key_pair(IKM_R)
    enc, sender = SUITE.create_sender_context(recipient.public_key, INFO, eks=SUITE.kem.derive_key_pair(IKM_E))
    receiver = SUITE.create_recipient_context(enc, recipient.private_key, INFO)
    assert sender.export(context, 32) == value
    assert receiver.export(context, 32) == value


def test_session_secrets_come_from_the_rfc_exporter_on_both_sides() -> None:
    """initiator_secrets/responder_secrets are HPKE SetupBaseS/R + Export: with the RFC's inputs they agree."""
    recipient = SUITE.kem.derive_key_pair(IKM_R)
    enc, mine = initiator_secrets(PK_RM, INFO, IKM_E)
    theirs = responder_secrets(enc, recipient.private_key, INFO)
    assert enc == ENC
    assert mine == theirs
    _, sender = SUITE.create_sender_context(recipient.public_key, INFO, eks=SUITE.kem.derive_key_pair(IKM_E))
    assert mine.c2s == sender.export(b"enclavekit c2s", 32)
    assert mine.s2c == sender.export(b"enclavekit s2c", 32)
    assert mine.session_id == sender.export(b"enclavekit session id", 16)
    assert len({mine.c2s, mine.s2c, mine.finished}) == 3


def test_traffic_key_expansion_is_rfc5869_hkdf_expand() -> None:
    """RFC 5869 A.1: HKDF-Expand(PRK, info, 42); our single-block expand is its first 32 bytes."""
    prk = H("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
    okm = H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    assert expand(prk, H("f0f1f2f3f4f5f6f7f8f9"), 32) == okm[:32]
    assert expand(prk, H("f0f1f2f3f4f5f6f7f8f9"), 12) == okm[:12]
