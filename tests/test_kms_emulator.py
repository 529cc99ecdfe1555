"""boto3, unchanged, against the KMS emulator on a real loopback port: every operation, and its refusals."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from enclavekit.kms import KeyStore
from enclavekit.kms.keystore import KeyStoreError
from tests.test_kms_fixtures import boto3_kms, emulator_for, policy, statement


@pytest.fixture
def kms_state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def kms(kms_state: Path) -> Iterator[Any]:
    with emulator_for(kms_state) as running:
        yield boto3_kms(running.url)


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def _key(kms: Any, **options: Any) -> str:
    return str(kms.create_key(**options)["KeyMetadata"]["KeyId"])


# --- operations ----------------------------------------------------------------------------------------------------


def test_create_and_describe_a_symmetric_key(kms: Any) -> None:
    created = kms.create_key(Description="vault master key")["KeyMetadata"]
    assert created["KeySpec"] == created["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT"
    assert created["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert created["Arn"] == f"arn:aws:kms:us-east-1:111122223333:key/{created['KeyId']}"
    assert created["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    described = kms.describe_key(KeyId=created["Arn"])["KeyMetadata"]
    assert described["KeyId"] == created["KeyId"]
    assert described["Description"] == "vault master key"
    assert described["KeyState"] == "Enabled"
    assert described["CreationDate"] == created["CreationDate"]  # boto3 parsed both as datetimes


def test_list_keys_pages_through_every_key(kms: Any) -> None:
    made = {_key(kms) for _ in range(5)}
    seen: list[str] = []
    page = kms.list_keys(Limit=2)
    while True:
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            break
        page = kms.list_keys(Limit=2, Marker=page["NextMarker"])
    assert set(seen) == made
    assert len(seen) == 5
    assert {k["KeyId"] for k in kms.get_paginator("list_keys").paginate().build_full_result()["Keys"]} == made


def test_encrypt_decrypt_round_trip_without_key_id(kms: Any) -> None:
    key_id = _key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"top secret", EncryptionContext={"tenant": "acme"})
    assert blob["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert b"top secret" not in blob["CiphertextBlob"]
    answer = kms.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext={"tenant": "acme"})
    assert answer["Plaintext"] == b"top secret"
    assert answer["KeyId"].endswith(key_id)


def test_decrypt_with_the_right_key_id_or_arn(kms: Any) -> None:
    key_id = _key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    assert kms.decrypt(CiphertextBlob=blob, KeyId=key_id)["Plaintext"] == b"x"
    assert kms.decrypt(CiphertextBlob=blob, KeyId=arn)["Plaintext"] == b"x"


def test_generate_data_key_by_spec_or_size(kms: Any) -> None:
    key_id = _key(kms)
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext={"purpose": "files"})
    assert len(data_key["Plaintext"]) == 32
    opened = kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext={"purpose": "files"})
    assert opened["Plaintext"] == data_key["Plaintext"]
    assert len(kms.generate_data_key(KeyId=key_id, NumberOfBytes=7)["Plaintext"]) == 7
    assert len(kms.generate_data_key(KeyId=key_id, KeySpec="AES_128")["Plaintext"]) == 16


def test_generate_random(kms: Any) -> None:
    first = kms.generate_random(NumberOfBytes=32)["Plaintext"]
    assert len(first) == 32
    assert first != kms.generate_random(NumberOfBytes=32)["Plaintext"]


def test_sign_with_p256_verifies_with_get_public_key(kms: Any) -> None:
    key_id = _key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    public = kms.get_public_key(KeyId=key_id)
    assert public["KeySpec"] == "ECC_NIST_P256"
    assert public["KeyUsage"] == "SIGN_VERIFY"
    assert public["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    verifier = serialization.load_der_public_key(public["PublicKey"])
    assert isinstance(verifier, ec.EllipticCurvePublicKey)

    message = b"header.payload"  # what an ES256 JWT signs
    signed = kms.sign(KeyId=key_id, Message=message, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")
    assert signed["SigningAlgorithm"] == "ECDSA_SHA_256"
    assert signed["Signature"][0] == 0x30  # DER, as AWS returns it
    verifier.verify(signed["Signature"], message, ec.ECDSA(hashes.SHA256()))

    digest = hashlib.sha256(message).digest()
    signed = kms.sign(KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")
    verifier.verify(signed["Signature"], digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_get_key_policy_returns_the_document_as_given(kms: Any) -> None:
    document = policy(statement("Allow", "kms:*", sid="Everything"))
    key_id = _key(kms, Policy=document)
    assert kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"] == document


# --- refusals ------------------------------------------------------------------------------------------------------


def test_encryption_context_mismatch_is_invalid_ciphertext(kms: Any) -> None:
    key_id = _key(kms)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext={"tenant": "acme"})["CiphertextBlob"]
    for context in ({"tenant": "evil"}, {}, {"tenant": "acme", "extra": "1"}):
        with pytest.raises(ClientError) as caught:
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
        assert _error(caught) == ("InvalidCiphertextException", 400)


def test_decrypt_naming_another_key_is_incorrect_key(kms: Any) -> None:
    """AWS answers a KeyId that did not make the ciphertext with IncorrectKeyException."""
    blob = kms.encrypt(KeyId=_key(kms), Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=blob, KeyId=_key(kms))
    assert _error(caught) == ("IncorrectKeyException", 400)


def test_ciphertext_relabelled_to_another_key_is_invalid_ciphertext(kms: Any) -> None:
    first, second = _key(kms), _key(kms)
    blob = kms.encrypt(KeyId=first, Plaintext=b"x")["CiphertextBlob"]
    relabelled = blob.replace(first.encode(), second.encode())
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=relabelled)
    assert _error(caught) == ("InvalidCiphertextException", 400)


@pytest.mark.parametrize("position", [0, 1, 20, 40, -1])
def test_tampered_ciphertext_is_invalid_ciphertext(kms: Any, position: int) -> None:
    blob = bytearray(kms.encrypt(KeyId=_key(kms), Plaintext=b"payload")["CiphertextBlob"])
    blob[position] ^= 0x40
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=bytes(blob))
    assert _error(caught) == ("InvalidCiphertextException", 400)


def test_ciphertext_from_another_kms_is_invalid_ciphertext(kms: Any, tmp_path: Path) -> None:
    with emulator_for(tmp_path / "elsewhere") as other:
        foreign = boto3_kms(other.url)
        blob = foreign.encrypt(KeyId=_key(foreign), Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=blob)
    assert _error(caught) == ("InvalidCiphertextException", 400)


@pytest.mark.parametrize(
    "key_id",
    [
        "00000000-0000-4000-8000-000000000000",
        "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000",
        "arn:aws:kms:eu-west-1:999999999999:key/00000000-0000-4000-8000-000000000000",
        "alias/my-key",
    ],
)
def test_unknown_key_is_not_found(kms: Any, key_id: str) -> None:
    with pytest.raises(ClientError) as caught:
        kms.describe_key(KeyId=key_id)
    assert _error(caught) == ("NotFoundException", 400)


def test_encrypt_with_a_signing_key_is_invalid_key_usage(kms: Any) -> None:
    key_id = _key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    with pytest.raises(ClientError) as caught:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert _error(caught) == ("InvalidKeyUsageException", 400)


def test_sign_with_a_symmetric_key_is_invalid_key_usage(kms: Any) -> None:
    with pytest.raises(ClientError) as caught:
        kms.sign(KeyId=_key(kms), Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert _error(caught) == ("InvalidKeyUsageException", 400)


def test_sign_with_an_algorithm_the_key_cannot_use_is_invalid_key_usage(kms: Any) -> None:
    key_id = _key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    with pytest.raises(ClientError) as caught:
        kms.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_384")
    assert _error(caught) == ("InvalidKeyUsageException", 400)


def test_digest_of_the_wrong_length_is_a_validation_error(kms: Any) -> None:
    key_id = _key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    with pytest.raises(ClientError) as caught:
        kms.sign(KeyId=key_id, Message=b"short", MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")
    assert _error(caught) == ("ValidationException", 400)


def test_symmetric_key_has_no_public_key(kms: Any) -> None:
    with pytest.raises(ClientError) as caught:
        kms.get_public_key(KeyId=_key(kms))
    assert _error(caught) == ("UnsupportedOperationException", 400)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"}, "UnsupportedOperationException"),
        ({"KeySpec": "ECC_NIST_P256"}, "ValidationException"),  # AWS: ENCRYPT_DECRYPT is not valid for ECC
        ({"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "SIGN_VERIFY"}, "ValidationException"),
        ({"Policy": "{not json"}, "MalformedPolicyDocumentException"),
        (
            {"Policy": policy(statement("Allow", "kms:*", {"StringEquals": {"aws:SourceIp": "1.2.3.4"}}))},
            "MalformedPolicyDocumentException",
        ),
    ],
)
def test_create_key_refusals(kms: Any, options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ClientError) as caught:
        kms.create_key(**options)
    assert _error(caught) == (expected, 400)


def test_generate_data_key_needs_exactly_one_size(kms: Any) -> None:
    key_id = _key(kms)
    for options in ({}, {"KeySpec": "AES_256", "NumberOfBytes": 32}):
        with pytest.raises(ClientError) as caught:
            kms.generate_data_key(KeyId=key_id, **options)
        assert _error(caught) == ("ValidationException", 400)


def test_policy_denying_encrypt_is_access_denied(kms: Any) -> None:
    key_id = _key(kms, Policy=policy(statement("Allow", "kms:DescribeKey")))
    with pytest.raises(ClientError) as caught:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    code, status = _error(caught)
    assert (code, status) == ("AccessDeniedException", 400)
    assert "kms:Encrypt" in caught.value.response["Error"]["Message"]


def test_oversized_plaintext_is_a_validation_error(kms: Any) -> None:
    with pytest.raises(ClientError) as caught:
        kms.encrypt(KeyId=_key(kms), Plaintext=b"x" * 4097)
    assert _error(caught) == ("ValidationException", 400)


# --- keys at rest --------------------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_nothing_plaintext_in_the_emulators_files(kms_state: Path) -> None:
    secrets: list[bytes] = [b"the plaintext of an Encrypt call"]
    with emulator_for(kms_state) as running:
        kms = boto3_kms(running.url)
        symmetric = _key(kms)
        signing = _key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        kms.encrypt(KeyId=symmetric, Plaintext=secrets[0])
        secrets.append(kms.generate_data_key(KeyId=symmetric, KeySpec="AES_256")["Plaintext"])
        store = running.service.keystore
        secrets.append(store.get(symmetric).material)  # type: ignore[union-attr]
        signing_key = store.get(signing).signing_key  # type: ignore[union-attr]
        assert signing_key is not None
        secrets.append(signing_key.private_numbers().private_value.to_bytes(32, "big"))
        secrets.append(store.get(signing).material)  # type: ignore[union-attr]
    files = _files(kms_state / "kms")
    assert kms_state / "kms" / "master.key" in files
    assert len([p for p in files if p.suffix == ".json"]) == 2
    for secret in secrets:
        forms = {secret, secret.hex().encode(), base64.b64encode(secret), secret[:16]}
        for path, content in files.items():
            if path.name == "master.key":
                continue
            for form in forms:
                assert form not in content, f"{path.name} holds a secret"


def test_key_files_and_master_key_are_private(kms_state: Path) -> None:
    with emulator_for(kms_state) as running:
        _key(boto3_kms(running.url))
    folder = kms_state / "kms"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "master.key").stat().st_mode) == 0o600
    for path in (folder / "keys").glob("*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keys_survive_a_restart(kms_state: Path) -> None:
    with emulator_for(kms_state) as running:
        kms = boto3_kms(running.url)
        key_id = _key(kms, Policy=policy(statement("Allow", "kms:*")))
        signer = _key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"persisted", EncryptionContext={"a": "b"})["CiphertextBlob"]
        public = kms.get_public_key(KeyId=signer)["PublicKey"]
    with emulator_for(kms_state) as running:
        kms = boto3_kms(running.url)
        assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"persisted"
        assert kms.get_public_key(KeyId=signer)["PublicKey"] == public


def test_key_file_with_a_loosened_policy_does_not_load(kms_state: Path) -> None:
    with emulator_for(kms_state) as running:
        key_id = _key(boto3_kms(running.url), Policy=policy(statement("Allow", "kms:Encrypt")))
    path = kms_state / "kms" / "keys" / f"{key_id}.json"
    document = json.loads(path.read_text())
    document["policy"] = policy(statement("Allow", "kms:*"))
    path.write_text(json.dumps(document))
    with pytest.raises(KeyStoreError, match="altered"):
        KeyStore(kms_state / "kms")


def test_key_files_under_another_master_key_do_not_load(kms_state: Path) -> None:
    with emulator_for(kms_state) as running:
        _key(boto3_kms(running.url))
    master = kms_state / "kms" / "master.key"
    master.write_bytes(os.urandom(32))
    with pytest.raises(KeyStoreError, match="another master key"):
        KeyStore(kms_state / "kms")


def test_world_readable_master_key_is_refused(kms_state: Path) -> None:
    KeyStore(kms_state / "kms").close()
    (kms_state / "kms" / "master.key").chmod(0o644)
    with pytest.raises(KeyStoreError, match="readable by others"):
        KeyStore(kms_state / "kms")


def test_two_emulators_cannot_share_a_state_folder(kms_state: Path) -> None:
    with KeyStore(kms_state / "kms"), pytest.raises(KeyStoreError, match="in use"):
        KeyStore(kms_state / "kms")
