"""The KMS operations, sans I/O: a JSON-shaped request in, a JSON-shaped answer (or a KMS error) out.

:class:`KmsService` implements CreateKey, DescribeKey, ListKeys, Encrypt, Decrypt, GenerateDataKey,
GenerateRandom, Sign, GetPublicKey, GetKeyPolicy and PutKeyPolicy as AWS KMS documents them, over a
:class:`KeyStore`. The HTTP server (:mod:`enclavekit.kms.emulator`) only moves bytes; the clock (``now``) and
randomness are injected.

Attested release: Decrypt, GenerateDataKey and GenerateRandom accept a ``Recipient``. Its attestation document is
verified first (:mod:`enclavekit.kms.recipient`); the key policy is then evaluated with the document's verified
PCRs as ``kms:RecipientAttestation:*`` condition keys; the answer is a ``CiphertextForRecipient`` sealed to the
document's public key, and the response carries no plaintext.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from enclavekit.kms import ciphertext
from enclavekit.kms.cms import seal_envelope
from enclavekit.kms.errors import (
    IncorrectKey,
    InvalidCiphertext,
    InvalidKeyUsage,
    NotFound,
    UnknownOperation,
    UnsupportedOperation,
    ValidationError,
)
from enclavekit.kms.keystore import (
    ECC_NIST_P256,
    ENCRYPT_DECRYPT,
    SIGN_VERIFY,
    SYMMETRIC_DEFAULT,
    KeyMetadata,
    KeyStore,
    StoredKey,
)
from enclavekit.kms.policy import MAX_POLICY_SIZE, KeyPolicy, RequestContext
from enclavekit.kms.protocol import Fields, b64
from enclavekit.kms.recipient import MAX_DOCUMENT_SIZE, RecipientVerifier, VerifiedRecipient

__all__ = ["DEFAULT_ACCOUNT", "DEFAULT_REGION", "KmsService"]

DEFAULT_REGION: Final = "us-east-1"
DEFAULT_ACCOUNT: Final = "111122223333"
MAX_PLAINTEXT: Final = 4096
MAX_RANDOM: Final = 1024
MAX_SIGN_MESSAGE: Final = 4096
MAX_DESCRIPTION: Final = 8192
ECDSA_SHA_256: Final = "ECDSA_SHA_256"
_AWS_KEY_SPECS: Final = frozenset(
    {
        "SYMMETRIC_DEFAULT",
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "HMAC_224",
        "HMAC_256",
        "HMAC_384",
        "HMAC_512",
        "SM2",
        "ML_DSA_44",
        "ML_DSA_65",
        "ML_DSA_87",
    }
)
_AWS_KEY_USAGES: Final = frozenset({"ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"})
_DATA_KEY_SPECS: Final = {"AES_256": 32, "AES_128": 16}
_SIGNING_ALGORITHMS: Final = frozenset(
    {
        "RSASSA_PSS_SHA_256",
        "RSASSA_PSS_SHA_384",
        "RSASSA_PSS_SHA_512",
        "RSASSA_PKCS1_V1_5_SHA_256",
        "RSASSA_PKCS1_V1_5_SHA_384",
        "RSASSA_PKCS1_V1_5_SHA_512",
        "ECDSA_SHA_256",
        "ECDSA_SHA_384",
        "ECDSA_SHA_512",
        "SM2DSA",
        "ML_DSA_SHAKE_256",
    }
)
_ENCRYPTION_ALGORITHMS: Final = frozenset({"SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"})

Handler = Callable[[Fields, datetime], dict[str, Any]]


class KmsService:
    """The emulated KMS of one account and region, over ``keystore``; recipients checked by ``verifier``."""

    def __init__(
        self,
        keystore: KeyStore,
        *,
        verifier: RecipientVerifier | None = None,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.keystore = keystore
        self.verifier = verifier or RecipientVerifier()
        self.region = region
        self.account = account
        self._random = random
        self._handlers: dict[str, Handler] = {
            "CreateKey": self._create_key,
            "DescribeKey": self._describe_key,
            "ListKeys": self._list_keys,
            "Encrypt": self._encrypt,
            "Decrypt": self._decrypt,
            "GenerateDataKey": self._generate_data_key,
            "GenerateRandom": self._generate_random,
            "Sign": self._sign,
            "GetPublicKey": self._get_public_key,
            "GetKeyPolicy": self._get_key_policy,
            "PutKeyPolicy": self._put_key_policy,
        }

    @property
    def operations(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def handle(self, operation: str, body: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
        """Run ``operation`` on a parsed JSON body at time ``now``; raise a KMS error on refusal."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        handler = self._handlers.get(operation)
        if handler is None:
            raise UnknownOperation(f"operation {operation[:64]!r} is not supported by the emulator")
        return handler(Fields(body), now)

    # --- helpers ------------------------------------------------------------------------------------------------

    def arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"

    def _resolve(self, key_id: str) -> StoredKey:
        if key_id.startswith("alias/") or ":alias/" in key_id:
            raise NotFound(f"Alias '{key_id[:256]}' is not found (the emulator does not support aliases)")
        bare = key_id
        if key_id.startswith("arn:"):
            prefix = self.arn("")
            if not key_id.startswith(prefix):
                raise NotFound(f"Invalid arn {key_id[:256]} (this KMS is {self.region}, account {self.account})")
            bare = key_id[len(prefix) :]
        key = self.keystore.get(bare)
        if key is None:
            raise NotFound(f"Key '{self.arn(bare)[:300]}' does not exist")
        return key

    def _key(self, fields: Fields) -> StoredKey:
        return self._resolve(fields.required_string("KeyId", max_length=2048))

    def _authorize(self, key: StoredKey, action: str, context: RequestContext) -> None:
        key.policy.authorize(action, context, resource=key.metadata.arn)

    def _recipient(self, fields: Fields, now: datetime) -> VerifiedRecipient | None:
        request = fields.recipient(max_document=MAX_DOCUMENT_SIZE)
        return None if request is None else self.verifier.verify(request, now=now)

    def _release(self, secret: bytes, recipient: VerifiedRecipient | None) -> dict[str, str]:
        """``Plaintext``, or, for a recipient, only ``CiphertextForRecipient`` sealed to its key."""
        if recipient is None:
            return {"Plaintext": b64(secret)}
        return {"CiphertextForRecipient": b64(seal_envelope(secret, recipient.public_key, random=self._random))}

    def _metadata(self, key: StoredKey) -> dict[str, Any]:
        meta = key.metadata
        out: dict[str, Any] = {
            "AWSAccountId": meta.account,
            "KeyId": meta.key_id,
            "Arn": meta.arn,
            "CreationDate": meta.created.timestamp(),
            "Enabled": meta.enabled,
            "Description": meta.description,
            "KeyUsage": meta.key_usage,
            "KeyState": "Enabled" if meta.enabled else "Disabled",
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": meta.key_spec,
            "KeySpec": meta.key_spec,
            "MultiRegion": False,
        }
        if meta.key_spec == SYMMETRIC_DEFAULT:
            out["EncryptionAlgorithms"] = ["SYMMETRIC_DEFAULT"]
        else:
            out["SigningAlgorithms"] = [ECDSA_SHA_256]
        return out

    @staticmethod
    def _symmetric(key: StoredKey, operation: str) -> None:
        if key.metadata.key_spec != SYMMETRIC_DEFAULT:
            raise InvalidKeyUsage(
                f"{key.metadata.arn} key usage is {key.metadata.key_usage} which is not valid for {operation}"
            )

    # --- operations ---------------------------------------------------------------------------------------------

    def _create_key(self, fields: Fields, now: datetime) -> dict[str, Any]:
        spec = fields.string("KeySpec") or fields.string("CustomerMasterKeySpec") or SYMMETRIC_DEFAULT
        if spec not in _AWS_KEY_SPECS:
            raise ValidationError(f"Value '{spec[:64]}' at 'keySpec' failed to satisfy constraint")
        if spec not in (SYMMETRIC_DEFAULT, ECC_NIST_P256):
            raise UnsupportedOperation(f"KeySpec {spec} is not supported by the emulator")
        usage = fields.string("KeyUsage", default=ENCRYPT_DECRYPT)
        if usage not in _AWS_KEY_USAGES:
            raise ValidationError(f"Value '{str(usage)[:64]}' at 'keyUsage' failed to satisfy constraint")
        wanted = ENCRYPT_DECRYPT if spec == SYMMETRIC_DEFAULT else SIGN_VERIFY
        if usage != wanted:
            raise ValidationError(f"KeyUsage {usage} is not compatible with KeySpec {spec} (use {wanted})")
        origin = fields.string("Origin", default="AWS_KMS")
        if origin != "AWS_KMS":
            raise UnsupportedOperation(f"Origin {origin} is not supported by the emulator")
        if fields.boolean("MultiRegion"):
            raise UnsupportedOperation("multi-Region keys are not supported by the emulator")
        description = fields.description("Description", max_length=MAX_DESCRIPTION)
        policy_text = fields.string("Policy", max_length=MAX_POLICY_SIZE)
        policy = KeyPolicy.default(self.account) if policy_text is None else KeyPolicy.from_json(policy_text)

        key_id = str(uuid.UUID(bytes=self._random(16), version=4))
        if spec == SYMMETRIC_DEFAULT:
            material = self._random(32)
            signing_key = None
        else:
            signing_key = ec.generate_private_key(ec.SECP256R1())
            material = signing_key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        metadata = KeyMetadata(
            key_id=key_id,
            arn=self.arn(key_id),
            account=self.account,
            created=now,
            key_spec=spec,
            key_usage=wanted,
            description=description,
        )
        key = StoredKey(metadata, policy, material, signing_key)
        self.keystore.add(key)
        return {"KeyMetadata": self._metadata(key)}

    def _describe_key(self, fields: Fields, now: datetime) -> dict[str, Any]:
        key = self._key(fields)
        self._authorize(key, "kms:DescribeKey", RequestContext.build())
        return {"KeyMetadata": self._metadata(key)}

    def _list_keys(self, fields: Fields, now: datetime) -> dict[str, Any]:
        limit = fields.integer("Limit", minimum=1, maximum=1000) or 100
        marker = fields.string("Marker", max_length=1024)
        keys = list(self.keystore)
        start = 0
        if marker is not None:
            positions = [i for i, key in enumerate(keys) if key.key_id == marker]
            if not positions:
                raise ValidationError("Invalid marker")
            start = positions[0]
        page = keys[start : start + limit]
        out: dict[str, Any] = {
            "Keys": [{"KeyId": key.key_id, "KeyArn": key.metadata.arn} for key in page],
            "Truncated": start + limit < len(keys),
        }
        if out["Truncated"]:
            out["NextMarker"] = keys[start + limit].key_id
        return out

    def _encrypt(self, fields: Fields, now: datetime) -> dict[str, Any]:
        key = self._key(fields)
        plaintext = fields.required_blob("Plaintext", maximum=MAX_PLAINTEXT)
        context = fields.encryption_context()
        algorithm = fields.string("EncryptionAlgorithm", default="SYMMETRIC_DEFAULT", choices=_ENCRYPTION_ALGORITHMS)
        self._authorize(key, "kms:Encrypt", RequestContext.build(encryption_context=context))
        self._symmetric(key, "Encrypt")
        if algorithm != "SYMMETRIC_DEFAULT":
            raise InvalidKeyUsage(f"{algorithm} is not valid for a SYMMETRIC_DEFAULT key")
        blob = ciphertext.seal(key.material, key.key_id, plaintext, context, random=self._random)
        return {"CiphertextBlob": b64(blob), "KeyId": key.metadata.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def _decrypt(self, fields: Fields, now: datetime) -> dict[str, Any]:
        raw = fields.required_blob("CiphertextBlob", maximum=ciphertext.MAX_BLOB_SIZE)
        context = fields.encryption_context()
        requested = fields.string("KeyId", max_length=2048)
        algorithm = fields.string("EncryptionAlgorithm", default="SYMMETRIC_DEFAULT", choices=_ENCRYPTION_ALGORITHMS)
        recipient = self._recipient(fields, now)
        blob = ciphertext.CiphertextBlob.from_bytes(raw)
        if requested is not None and self._resolve(requested).key_id != blob.key_id:
            raise IncorrectKey("The key ID in the request does not identify a CMK that can perform this operation.")
        key = self.keystore.get(blob.key_id)
        if key is None or key.metadata.key_spec != SYMMETRIC_DEFAULT:
            raise InvalidCiphertext("the ciphertext refers to a key that does not exist here")
        if algorithm != "SYMMETRIC_DEFAULT":
            raise InvalidKeyUsage(f"{algorithm} is not valid for a SYMMETRIC_DEFAULT key")
        pcrs = None if recipient is None else recipient.attestation.pcrs
        self._authorize(key, "kms:Decrypt", RequestContext.build(pcrs=pcrs, encryption_context=context))
        plaintext = ciphertext.unseal(key.material, blob, context)
        answer = {"KeyId": key.metadata.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
        return answer | self._release(plaintext, recipient)

    def _generate_data_key(self, fields: Fields, now: datetime) -> dict[str, Any]:
        key = self._key(fields)
        context = fields.encryption_context()
        spec = fields.string("KeySpec", choices=frozenset(_DATA_KEY_SPECS))
        count = fields.integer("NumberOfBytes", minimum=1, maximum=MAX_RANDOM)
        if (spec is None) == (count is None):
            raise ValidationError("Please specify either number of bytes or key spec (exactly one).")
        size = _DATA_KEY_SPECS[spec] if spec is not None else count
        assert size is not None
        recipient = self._recipient(fields, now)
        pcrs = None if recipient is None else recipient.attestation.pcrs
        self._authorize(key, "kms:GenerateDataKey", RequestContext.build(pcrs=pcrs, encryption_context=context))
        self._symmetric(key, "GenerateDataKey")
        data_key = self._random(size)
        blob = ciphertext.seal(key.material, key.key_id, data_key, context, random=self._random)
        return {"CiphertextBlob": b64(blob), "KeyId": key.metadata.arn, **self._release(data_key, recipient)}

    def _generate_random(self, fields: Fields, now: datetime) -> dict[str, Any]:
        count = fields.integer("NumberOfBytes", minimum=1, maximum=MAX_RANDOM, required=True)
        assert count is not None
        if fields.string("CustomKeyStoreId") is not None:
            raise UnsupportedOperation("custom key stores are not supported by the emulator")
        recipient = self._recipient(fields, now)
        return self._release(self._random(count), recipient)

    def _sign(self, fields: Fields, now: datetime) -> dict[str, Any]:
        key = self._key(fields)
        message = fields.required_blob("Message", maximum=MAX_SIGN_MESSAGE)
        message_type = fields.string("MessageType", default="RAW", choices=frozenset({"RAW", "DIGEST"}))
        algorithm = fields.required_string("SigningAlgorithm", choices=_SIGNING_ALGORITHMS)
        self._authorize(key, "kms:Sign", RequestContext.build())
        if key.signing_key is None:
            raise InvalidKeyUsage(f"{key.metadata.arn} key usage is ENCRYPT_DECRYPT which is not valid for Sign")
        if algorithm != ECDSA_SHA_256:
            raise InvalidKeyUsage(f"Algorithm {algorithm} is incompatible with key spec {key.metadata.key_spec}")
        if message_type == "DIGEST":
            if len(message) != 32:
                raise ValidationError("Digest is invalid length for algorithm ECDSA_SHA_256 (32 bytes)")
            signature = key.signing_key.sign(message, ec.ECDSA(Prehashed(hashes.SHA256())))
        else:
            signature = key.signing_key.sign(message, ec.ECDSA(hashes.SHA256()))
        return {"KeyId": key.metadata.arn, "Signature": b64(signature), "SigningAlgorithm": ECDSA_SHA_256}

    def _get_public_key(self, fields: Fields, now: datetime) -> dict[str, Any]:
        key = self._key(fields)
        self._authorize(key, "kms:GetPublicKey", RequestContext.build())
        if key.signing_key is None:
            raise UnsupportedOperation(f"{key.metadata.arn} is a symmetric key: it has no public key")
        public = key.signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "KeyId": key.metadata.arn,
            "PublicKey": b64(public),
            "CustomerMasterKeySpec": ECC_NIST_P256,
            "KeySpec": ECC_NIST_P256,
            "KeyUsage": SIGN_VERIFY,
            "SigningAlgorithms": [ECDSA_SHA_256],
        }

    def _get_key_policy(self, fields: Fields, now: datetime) -> dict[str, Any]:
        key = self._key(fields)
        name = fields.string("PolicyName", default="default", max_length=128)
        if name != "default":
            raise NotFound(f"policy {str(name)[:64]!r} does not exist (a key has only the policy named 'default')")
        self._authorize(key, "kms:GetKeyPolicy", RequestContext.build())
        return {"Policy": key.policy.text, "PolicyName": "default"}

    def _put_key_policy(self, fields: Fields, now: datetime) -> dict[str, Any]:
        """Replace a key's policy, if its current policy allows ``kms:PutKeyPolicy`` (no lockout check)."""
        key = self._key(fields)
        name = fields.string("PolicyName", default="default", max_length=128)
        if name != "default":
            raise ValidationError(f"PolicyName {str(name)[:64]!r}: a key has only the policy named 'default'")
        text = fields.required_string("Policy", max_length=MAX_POLICY_SIZE)
        policy = KeyPolicy.from_json(text)
        self._authorize(key, "kms:PutKeyPolicy", RequestContext.build())
        self.keystore.replace_policy(key.key_id, policy)
        return {}
