"""The enclave's KMS client: attested key release from AWS KMS, or from any endpoint that speaks its protocol.

Inside an enclave, secrets come from KMS as ``CiphertextForRecipient``: the client makes a fresh RSA-2048 key
in memory (it never leaves the process), puts its public key in an attestation document made by the
injected *attester* (the NSM's ``attestation`` call: ``attest(*, public_key, nonce, user_data) -> bytes``), sends
the document as the ``Recipient`` of Decrypt, GenerateDataKey or GenerateRandom (through a :class:`KmsEndpoint`: the
standard library and a SigV4 signature, no AWS SDK inside the enclave — ADR 0013), and opens the CMS envelope
that comes back. If KMS answers such a request with plaintext, the client refuses it (:class:`PlaintextReturned`):
a secret that crossed the host in the clear must not be used as if it had not.

::

    nsm = Nsm(NsmDevice())                            # or NsmSimulator(...).client() outside an enclave
    kms = KmsClient.connect(nsm.attestation, region_name="eu-west-1")   # or endpoint_url=the emulator
    secret = kms.decrypt(blob, encryption_context={"service": "vault"})

The channel matters: the envelope is confidential but not authenticated (anyone can seal to the public key in
the document), so against AWS the TLS session to KMS must terminate inside the enclave.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclavekit.kms.cms import KEY_ENCRYPTION, open_envelope
from enclavekit.kms.endpoint import Credentials, KmsEndpoint
from enclavekit.kms.errors import KmsRejected, PlaintextReturned

__all__ = ["Attester", "DataKey", "KmsClient"]

RECIPIENT_KEY_BITS = 2048
_DATA_KEY_SIZES = {"AES_256": 32, "AES_128": 16}


class Attester(Protocol):
    """Makes an attestation document binding ``public_key`` (the NSM's ``attestation`` has this signature)."""

    def __call__(self, *, public_key: bytes | None, nonce: bytes | None, user_data: bytes | None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class DataKey:
    """A data key: ``plaintext`` (enclave memory only) and ``ciphertext_blob`` (safe to store on the host)."""

    plaintext: bytes = field(repr=False)
    ciphertext_blob: bytes
    key_id: str


class KmsClient:
    """Attested Decrypt, GenerateDataKey and GenerateRandom over a :class:`KmsEndpoint`.

    ``recipient_key`` is the enclave's RSA key for this client (default: a fresh RSA-2048 key, generated here,
    kept in memory only). Each call makes a new attestation document, so documents are always fresh.
    """

    def __init__(
        self, endpoint: KmsEndpoint, attester: Attester, *, recipient_key: rsa.RSAPrivateKey | None = None
    ) -> None:
        self.endpoint = endpoint
        self._attester = attester
        self._key = recipient_key or rsa.generate_private_key(public_exponent=65537, key_size=RECIPIENT_KEY_BITS)
        self.public_key_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def connect(
        cls,
        attester: Attester,
        *,
        region_name: str,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        timeout: float = 10.0,
        recipient_key: rsa.RSAPrivateKey | None = None,
    ) -> KmsClient:
        """A client for AWS KMS in ``region_name``, or for ``endpoint_url`` (tests, tools). An enclave app builds
        its client with :func:`enclavekit.enclave.tracks.enclave_kms_client` instead: the endpoint and its TLS
        trust anchor from the measured configuration, only the TCP route from the host.

        Credentials default to ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``.
        """
        if aws_access_key_id and aws_secret_access_key:
            credentials = Credentials(aws_access_key_id, aws_secret_access_key, aws_session_token)
        else:
            credentials = Credentials.from_environment()
        url = endpoint_url or f"https://kms.{region_name}.amazonaws.com"
        endpoint = KmsEndpoint(url, region=region_name, credentials=credentials, timeout=timeout)
        return cls(endpoint, attester, recipient_key=recipient_key)

    def recipient(self) -> dict[str, str]:
        """A fresh ``Recipient`` (JSON-ready): an attestation document binding this client's public key."""
        document = self._attester(public_key=self.public_key_der, nonce=None, user_data=None)
        return {"KeyEncryptionAlgorithm": KEY_ENCRYPTION, "AttestationDocument": _b64(document)}

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        encryption_context: Mapping[str, str] | None = None,
        key_id: str | None = None,
    ) -> bytes:
        """Decrypt a KMS ciphertext; the plaintext travels only inside the envelope to this enclave."""
        request: dict[str, Any] = {"CiphertextBlob": _b64(ciphertext_blob), "Recipient": self.recipient()}
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        if key_id is not None:
            request["KeyId"] = key_id
        response = self.endpoint.call("Decrypt", request)
        return self._open(response, "Decrypt")

    def generate_data_key(
        self,
        key_id: str,
        *,
        key_spec: str | None = "AES_256",
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKey:
        """A new data key under ``key_id``: its plaintext (opened here) and its ciphertext blob (for storage)."""
        request: dict[str, Any] = {"KeyId": key_id, "Recipient": self.recipient()}
        if number_of_bytes is not None:
            request["NumberOfBytes"] = number_of_bytes
        elif key_spec is not None:
            request["KeySpec"] = key_spec
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        response = self.endpoint.call("GenerateDataKey", request)
        plaintext = self._open(response, "GenerateDataKey")
        expected = number_of_bytes if number_of_bytes is not None else _DATA_KEY_SIZES.get(key_spec or "")
        if expected is not None and len(plaintext) != expected:
            raise KmsRejected(f"GenerateDataKey released {len(plaintext)} bytes, not the {expected} asked for")
        blob = _unb64(response.get("CiphertextBlob"), "GenerateDataKey", "CiphertextBlob")
        return DataKey(plaintext, blob, str(response.get("KeyId") or key_id))

    def generate_random(self, number_of_bytes: int) -> bytes:
        """``number_of_bytes`` random bytes from KMS, released only to this enclave."""
        response = self.endpoint.call(
            "GenerateRandom", {"NumberOfBytes": number_of_bytes, "Recipient": self.recipient()}
        )
        random = self._open(response, "GenerateRandom")
        if len(random) != number_of_bytes:
            raise KmsRejected(f"GenerateRandom released {len(random)} bytes, not the {number_of_bytes} asked for")
        return random

    def get_key_policy(self, key_id: str) -> str:
        """The key policy document of ``key_id`` (JSON text), for an enclave that checks what KMS would release."""
        response = self.endpoint.call("GetKeyPolicy", {"KeyId": key_id, "PolicyName": "default"})
        policy = response.get("Policy")
        if not isinstance(policy, str):
            raise KmsRejected("GetKeyPolicy answered without a Policy document")
        return policy

    def _open(self, response: Mapping[str, Any], operation: str) -> bytes:
        if response.get("Plaintext") is not None:
            raise PlaintextReturned(
                f"KMS answered {operation} with plaintext although a Recipient was given: refused and discarded"
            )
        envelope = _unb64(response.get("CiphertextForRecipient"), operation, "CiphertextForRecipient")
        return open_envelope(envelope, self._key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, operation: str, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise KmsRejected(f"KMS answered {operation} without {name}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KmsRejected(f"KMS answered {operation} with {name} that is not base64") from exc
