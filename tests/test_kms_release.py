"""Attested key release: a Recipient gets a CMS envelope only if its verified attestation satisfies the policy."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from enclavekit.kms import (
    AccessDenied,
    KmsClient,
    KmsService,
    KmsUnavailable,
    PlaintextReturned,
    RunningEmulator,
    ValidationError,
    open_envelope,
)
from enclavekit.kms.client import DataKey
from enclavekit.kms.recipient import VerifiedRecipient
from enclavekit.nsm import NsmSimulator
from tests.test_kms_fixtures import (
    OTHER_APP,
    boto3_kms,
    emulator_for,
    enclave_only_policy,
    kms_endpoint,
    policy,
    simulated_enclave,
    statement,
)

_RECIPIENT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RECIPIENT_DER = _RECIPIENT_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.fixture
def sim_state(tmp_path: Path) -> Path:
    return tmp_path / "sim"


@pytest.fixture
def enclave(sim_state: Path) -> NsmSimulator:
    return simulated_enclave(sim_state)


@pytest.fixture
def emulator(tmp_path: Path, sim_state: Path, enclave: NsmSimulator) -> Iterator[RunningEmulator]:
    with emulator_for(tmp_path / "kms-state", trust=[sim_state]) as running:
        yield running


@pytest.fixture
def kms(emulator: RunningEmulator) -> Any:
    return boto3_kms(emulator.url)


def _recipient(simulator: NsmSimulator, public_key: bytes | None = _RECIPIENT_DER) -> dict[str, Any]:
    document = simulator.client().attestation(public_key=public_key)
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": document}


def _code(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


def _protected_key(kms: Any, enclave: NsmSimulator) -> tuple[str, bytes]:
    key_id = kms.create_key(Policy=enclave_only_policy(enclave.pcr(0).hex()))["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"the track key", EncryptionContext={"track": "t1"})
    return key_id, blob["CiphertextBlob"]


# --- the policy decides on the verified document -------------------------------------------------------------------


def test_enclave_with_the_policy_pcr0_gets_an_envelope_and_no_plaintext(kms: Any, enclave: NsmSimulator) -> None:
    _, blob = _protected_key(kms, enclave)
    answer = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"track": "t1"}, Recipient=_recipient(enclave))
    assert "Plaintext" not in answer
    assert open_envelope(answer["CiphertextForRecipient"], _RECIPIENT_KEY) == b"the track key"


def test_enclave_with_another_pcr0_is_access_denied(kms: Any, enclave: NsmSimulator, sim_state: Path) -> None:
    _, blob = _protected_key(kms, enclave)
    impostor = simulated_enclave(sim_state, app=OTHER_APP)  # same trusted CA, different code
    assert impostor.pcr(0) != enclave.pcr(0)
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"track": "t1"}, Recipient=_recipient(impostor))
    assert _code(caught) == "AccessDeniedException"
    assert "ImageSha384" in caught.value.response["Error"]["Message"].replace("imagesha384", "ImageSha384")


def test_attestation_condition_without_recipient_is_access_denied(kms: Any, enclave: NsmSimulator) -> None:
    """Fail closed: the host, asking without a Recipient, gets nothing from a key gated on attestation."""
    key_id, blob = _protected_key(kms, enclave)
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"track": "t1"})
    assert _code(caught) == "AccessDeniedException"
    with pytest.raises(ClientError) as caught:
        kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert _code(caught) == "AccessDeniedException"


def test_other_pcrs_can_be_pinned(kms: Any, enclave: NsmSimulator, sim_state: Path) -> None:
    condition = {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:PCR1": enclave.pcr(1).hex(),
            "kms:RecipientAttestation:PCR4": enclave.pcr(4).hex(),
        }
    }
    key_id = kms.create_key(Policy=policy(statement("Allow", "kms:GenerateDataKey", condition)))["KeyMetadata"]["KeyId"]
    answer = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=_recipient(enclave))
    assert len(open_envelope(answer["CiphertextForRecipient"], _RECIPIENT_KEY)) == 32
    assert "Plaintext" not in answer
    other_parent = simulated_enclave(sim_state / "other-instance")  # same code, another parent: PCR4 differs
    with emulator_for(sim_state.parent / "kms2", trust=[sim_state, sim_state / "other-instance"]) as running:
        kms2 = boto3_kms(running.url)
        key_id = kms2.create_key(Policy=policy(statement("Allow", "kms:GenerateDataKey", condition)))
        with pytest.raises(ClientError) as caught:
            kms2.generate_data_key(
                KeyId=key_id["KeyMetadata"]["KeyId"], KeySpec="AES_256", Recipient=_recipient(other_parent)
            )
    assert _code(caught) == "AccessDeniedException"


def test_deny_statement_outside_the_enclave_still_lets_the_enclave_in(kms: Any, enclave: NsmSimulator) -> None:
    document = policy(
        statement("Allow", "kms:*"),
        statement(
            "Deny",
            "kms:Decrypt",
            {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": enclave.pcr(0).hex()}},
        ),
    )
    key_id = kms.create_key(Policy=document)["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"s")["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=blob)
    assert _code(caught) == "AccessDeniedException"
    answer = kms.decrypt(CiphertextBlob=blob, Recipient=_recipient(enclave))
    assert open_envelope(answer["CiphertextForRecipient"], _RECIPIENT_KEY) == b"s"


def test_generate_random_for_a_recipient(kms: Any, enclave: NsmSimulator) -> None:
    answer = kms.generate_random(NumberOfBytes=48, Recipient=_recipient(enclave))
    assert "Plaintext" not in answer
    assert len(open_envelope(answer["CiphertextForRecipient"], _RECIPIENT_KEY)) == 48


# --- documents that do not verify ----------------------------------------------------------------------------------


def test_document_from_an_untrusted_root_is_access_denied(kms: Any, enclave: NsmSimulator, tmp_path: Path) -> None:
    _, blob = _protected_key(kms, enclave)
    foreign = simulated_enclave(tmp_path / "foreign-ca")  # the same code, under a CA the emulator does not trust
    assert foreign.pcr(0) == enclave.pcr(0)
    with pytest.raises(ClientError) as caught:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"track": "t1"}, Recipient=_recipient(foreign))
    assert _code(caught) == "AccessDeniedException"
    assert "chain_untrusted" in caught.value.response["Error"]["Message"]


def test_simulated_enclaves_are_not_trusted_unless_configured(tmp_path: Path, enclave: NsmSimulator) -> None:
    with emulator_for(tmp_path / "strict") as running:  # no trusted simulator root: AWS's only
        kms = boto3_kms(running.url)
        with pytest.raises(ClientError) as caught:
            kms.generate_random(NumberOfBytes=8, Recipient=_recipient(enclave))
    assert _code(caught) == "AccessDeniedException"
    assert "chain_untrusted" in caught.value.response["Error"]["Message"]


def test_stale_document_is_access_denied(kms: Any, sim_state: Path) -> None:
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    old = simulated_enclave(sim_state, now=lambda: ten_minutes_ago)
    with pytest.raises(ClientError) as caught:
        kms.generate_random(NumberOfBytes=8, Recipient=_recipient(old))
    assert _code(caught) == "AccessDeniedException"
    assert "stale" in caught.value.response["Error"]["Message"]


def test_expired_document_is_access_denied(tmp_path: Path, sim_state: Path, enclave: NsmSimulator) -> None:
    document = _recipient(enclave)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    with emulator_for(tmp_path / "later", trust=[sim_state], clock=lambda: tomorrow) as running:
        kms = boto3_kms(running.url)
        with pytest.raises(ClientError) as caught:
            kms.generate_random(NumberOfBytes=8, Recipient=document)
    assert _code(caught) == "AccessDeniedException"
    assert "certificate_expired" in caught.value.response["Error"]["Message"]


def test_tampered_document_is_refused(kms: Any, enclave: NsmSimulator) -> None:
    recipient = _recipient(enclave)
    document = bytearray(recipient["AttestationDocument"])
    document[-10] ^= 0x01  # inside the signature
    recipient["AttestationDocument"] = bytes(document)
    with pytest.raises(ClientError) as caught:
        kms.generate_random(NumberOfBytes=8, Recipient=recipient)
    assert _code(caught) == "AccessDeniedException"


def test_garbage_document_is_a_validation_error(kms: Any) -> None:
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": b"\x84garbage"}
    with pytest.raises(ClientError) as caught:
        kms.generate_random(NumberOfBytes=8, Recipient=recipient)
    assert _code(caught) == "ValidationException"


@pytest.mark.parametrize(
    "public_key",
    [
        None,
        b"not a key",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
    ids=["absent", "garbage", "ec"],
)
def test_document_without_a_usable_rsa_key_is_a_validation_error(
    kms: Any, enclave: NsmSimulator, public_key: bytes | None
) -> None:
    with pytest.raises(ClientError) as caught:
        kms.generate_random(NumberOfBytes=8, Recipient=_recipient(enclave, public_key))
    assert _code(caught) == "ValidationException"


def test_unknown_key_encryption_algorithm_is_a_validation_error(kms: Any, enclave: NsmSimulator) -> None:
    recipient = _recipient(enclave) | {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_1"}
    with pytest.raises(ClientError) as caught:
        kms.generate_random(NumberOfBytes=8, Recipient=recipient)
    assert _code(caught) == "ValidationException"


# --- the enclave's client ------------------------------------------------------------------------------------------


def test_client_round_trip_decrypt_data_key_and_random(emulator: RunningEmulator, enclave: NsmSimulator) -> None:
    host = boto3_kms(emulator.url)
    key_id, blob = _protected_key(host, enclave)
    client = KmsClient.connect(
        enclave.client().attestation,
        endpoint_url=emulator.url,
        region_name="us-east-1",
        aws_access_key_id="enclave",
        aws_secret_access_key="enclave",
    )
    assert client.decrypt(blob, encryption_context={"track": "t1"}) == b"the track key"
    data_key = client.generate_data_key(key_id, encryption_context={"purpose": "files"})
    assert isinstance(data_key, DataKey)
    assert len(data_key.plaintext) == 32
    assert "plaintext" not in repr(data_key)
    assert client.decrypt(data_key.ciphertext_blob, encryption_context={"purpose": "files"}) == data_key.plaintext
    assert len(client.generate_random(32)) == 32


def test_client_refuses_when_the_policy_refuses(
    emulator: RunningEmulator, enclave: NsmSimulator, sim_state: Path
) -> None:
    host = boto3_kms(emulator.url)
    _, blob = _protected_key(host, enclave)
    impostor = simulated_enclave(sim_state, app=OTHER_APP)
    client = KmsClient(kms_endpoint(emulator.url), impostor.client().attestation)
    with pytest.raises(AccessDenied) as caught:
        client.decrypt(blob, encryption_context={"track": "t1"})
    assert caught.value.code == "kms_access_denied"
    assert not caught.value.retryable


def test_client_validation_errors_are_typed(emulator: RunningEmulator, enclave: NsmSimulator) -> None:
    client = KmsClient(kms_endpoint(emulator.url), lambda **_: b"\x84not a document")
    with pytest.raises(ValidationError):
        client.generate_random(16)


class _LeakyService(KmsService):
    """A KMS that answers a Recipient with plaintext as well: what a compromised endpoint could do."""

    def _release(self, secret: bytes, recipient: VerifiedRecipient | None) -> dict[str, str]:
        answer = super()._release(secret, recipient)
        answer["Plaintext"] = base64.b64encode(secret).decode()
        return answer


def _leaky(service: KmsService) -> KmsService:
    return _LeakyService(service.keystore, verifier=service.verifier, region=service.region, account=service.account)


def test_client_fails_closed_when_plaintext_comes_back(tmp_path: Path, sim_state: Path, enclave: NsmSimulator) -> None:
    with emulator_for(tmp_path / "leaky", trust=[sim_state], service_factory=_leaky) as running:
        client = KmsClient(kms_endpoint(running.url), enclave.client().attestation)
        with pytest.raises(PlaintextReturned) as caught:
            client.generate_random(32)
    assert caught.value.code == "kms_plaintext_returned"


def test_client_reports_an_unreachable_kms_as_retryable(enclave: NsmSimulator) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = KmsClient(kms_endpoint(f"http://127.0.0.1:{port}"), enclave.client().attestation)
    with pytest.raises(KmsUnavailable) as caught:
        client.generate_random(8)
    assert caught.value.retryable
