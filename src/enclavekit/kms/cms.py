"""``CiphertextForRecipient``: the CMS envelope in which KMS returns a secret to an attested enclave.

When a KMS request carries a ``Recipient`` (an attestation document holding the enclave's RSA public key), KMS
returns no plaintext but a CMS (RFC 5652) ContentInfo/EnvelopedData, BER-encoded with indefinite lengths:

* one KeyTransRecipientInfo (version 2) naming the recipient by a 32-byte subjectKeyIdentifier, which is the
  SHA-256 of the recipient's SubjectPublicKeyInfo DER (:func:`subject_key_identifier`);
* the content key (AES-256) encrypted with RSAES-OAEP, SHA-256 and MGF1-SHA-256, empty label;
* the content encrypted with AES-256-CBC under a 16-byte IV, PKCS#7 padding, the ciphertext chunked in
  OCTET STRINGs inside a constructed ``[0]``.

:meth:`Envelope.from_bytes` parses exactly that shape (and nothing looser) with explicit size limits;
:func:`open_envelope` checks that the envelope names the key before decrypting and unpads strictly;
:func:`seal_envelope` produces the same bytes KMS produces (the emulator's side).

The envelope gives confidentiality, not authenticity: anyone who knows the recipient's public key (it is in
the attestation document) can seal to it. Trust in *what* was released comes from the channel to KMS (TLS that
terminates inside the enclave), not from this format.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from asn1crypto import algos, core  # type: ignore[import-untyped]
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from enclavekit.kms.errors import (
    EnvelopeDecryptionFailed,
    EnvelopeMalformed,
    EnvelopeUnsupported,
    RecipientMismatch,
)

__all__ = [
    "CONTENT_ENCRYPTION",
    "KEY_ENCRYPTION",
    "MAX_CONTENT_SIZE",
    "MAX_ENVELOPE_SIZE",
    "Envelope",
    "open_envelope",
    "seal_envelope",
    "subject_key_identifier",
]

MAX_ENVELOPE_SIZE: Final = 64 * 1024
"""Largest envelope parsed. KMS returns at most 4 KiB of plaintext (about 4.7 KiB of envelope)."""
MAX_CONTENT_SIZE: Final = 48 * 1024
"""Largest encrypted content accepted (and plaintext sealed, minus the padding)."""
MAX_SKI_SIZE: Final = 64
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192
KEY_ENCRYPTION: Final = "RSAES_OAEP_SHA_256"
"""The key transport KMS uses (and the only ``KeyEncryptionAlgorithm`` its ``Recipient`` accepts)."""
CONTENT_ENCRYPTION: Final = "AES_256_CBC"
DEFAULT_CHUNK_SIZE: Final = 1024
_IV_SIZE: Final = 16
_CEK_SIZE: Final = 32
_BLOCK: Final = 16

_OID_ENVELOPED_DATA: Final = "1.2.840.113549.1.7.3"
_OID_DATA: Final = "1.2.840.113549.1.7.1"
_OID_RSAES_OAEP: Final = "1.2.840.113549.1.1.7"
_OID_AES256_CBC: Final = "2.16.840.1.101.3.4.1.42"
_OID_SHA256: Final = "2.16.840.1.101.3.4.2.1"
_OID_MGF1: Final = "1.2.840.113549.1.1.8"
_OID_P_SPECIFIED: Final = "1.2.840.113549.1.1.9"
_ASN1_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, RecursionError)
_OAEP: Final = asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def subject_key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """How KMS names the recipient: SHA-256 of the key's SubjectPublicKeyInfo DER (32 bytes)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed ``CiphertextForRecipient``: who it is for, how it is encrypted, and the encrypted parts.

    Invariants (checked by :meth:`from_bytes` and on construction): ``iv`` is 16 bytes, ``ciphertext`` a
    non-empty multiple of 16 bytes within :data:`MAX_CONTENT_SIZE`, ``encrypted_key`` and ``recipient_ski``
    within their limits; the algorithms are the only ones KMS uses.
    """

    recipient_ski: bytes
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes
    key_encryption_algorithm: str = KEY_ENCRYPTION
    content_encryption_algorithm: str = CONTENT_ENCRYPTION

    def __post_init__(self) -> None:
        if not 1 <= len(self.recipient_ski) <= MAX_SKI_SIZE:
            raise EnvelopeMalformed(f"subjectKeyIdentifier is {len(self.recipient_ski)} bytes; allowed 1..64")
        if not 1 <= len(self.encrypted_key) <= MAX_RSA_BITS // 8:
            raise EnvelopeMalformed(f"encrypted key is {len(self.encrypted_key)} bytes; allowed 1..{MAX_RSA_BITS // 8}")
        if len(self.iv) != _IV_SIZE:
            raise EnvelopeMalformed(f"AES-256-CBC IV is {len(self.iv)} bytes, not 16")
        size = len(self.ciphertext)
        if size == 0 or size % _BLOCK or size > MAX_CONTENT_SIZE:
            raise EnvelopeMalformed(f"encrypted content is {size} bytes: not a non-empty multiple of 16 within limits")
        if self.key_encryption_algorithm != KEY_ENCRYPTION or self.content_encryption_algorithm != CONTENT_ENCRYPTION:
            raise EnvelopeUnsupported("only RSAES-OAEP-SHA256 key transport and AES-256-CBC content are supported")

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse a KMS ``CiphertextForRecipient``; raise an :class:`~enclavekit.kms.errors.EnvelopeError`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeMalformed("an envelope is bytes")
        data = bytes(data)
        if not 0 < len(data) <= MAX_ENVELOPE_SIZE:
            raise EnvelopeMalformed(f"envelope is {len(data)} bytes; allowed 1..{MAX_ENVELOPE_SIZE}")
        try:
            return _parse(data)
        except (EnvelopeMalformed, EnvelopeUnsupported):
            raise
        except _ASN1_ERRORS as exc:
            raise EnvelopeMalformed(f"not a well-formed CMS EnvelopedData: {_reason(exc)}") from exc

    def to_bytes(self, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
        """BER as KMS writes it: indefinite lengths outside, DER recipient info, ciphertext in chunks."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        recipient = asn1_cms.KeyTransRecipientInfo(
            {
                "version": "v2",
                "rid": asn1_cms.RecipientIdentifier({"subject_key_identifier": self.recipient_ski}),
                "key_encryption_algorithm": asn1_cms.KeyEncryptionAlgorithm.load(_oaep_algorithm()),
                "encrypted_key": self.encrypted_key,
            }
        )
        recipients = asn1_cms.RecipientInfos([asn1_cms.RecipientInfo({"ktri": recipient})])
        algorithm = algos.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": core.OctetString(self.iv)})
        chunks = [
            core.OctetString(self.ciphertext[at : at + chunk_size]).dump()
            for at in range(0, len(self.ciphertext), chunk_size)
        ]
        encrypted_content_info = _indefinite(
            0x30, core.ObjectIdentifier(_OID_DATA).dump(), algorithm.dump(), _indefinite(0xA0, *chunks)
        )
        enveloped_data = _indefinite(0x30, core.Integer(2).dump(), recipients.dump(), encrypted_content_info)
        return _indefinite(0x30, core.ObjectIdentifier(_OID_ENVELOPED_DATA).dump(), _indefinite(0xA0, enveloped_data))

    def open(self, private_key: rsa.RSAPrivateKey) -> bytes:
        """Decrypt with the recipient's private key; raise unless the envelope names it and decrypts cleanly."""
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError("the recipient key is an RSA private key")
        if not hmac.compare_digest(self.recipient_ski, subject_key_identifier(private_key.public_key())):
            raise RecipientMismatch("the envelope is addressed to another key (subjectKeyIdentifier differs)")
        if len(self.encrypted_key) != (private_key.key_size + 7) // 8:
            raise EnvelopeDecryptionFailed(
                f"encrypted key is {len(self.encrypted_key)} bytes; a {private_key.key_size}-bit key needs "
                f"{(private_key.key_size + 7) // 8}"
            )
        try:
            content_key = private_key.decrypt(self.encrypted_key, _OAEP)
        except ValueError as exc:
            raise EnvelopeDecryptionFailed("the encrypted content key does not decrypt (RSAES-OAEP)") from exc
        if len(content_key) != _CEK_SIZE:
            raise EnvelopeDecryptionFailed(f"content key is {len(content_key)} bytes, not 32 (AES-256)")
        decryptor = Cipher(algorithms.AES(content_key), modes.CBC(self.iv)).decryptor()
        padded = decryptor.update(self.ciphertext) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError as exc:
            raise EnvelopeDecryptionFailed("content padding is invalid (altered ciphertext or wrong key)") from exc


def open_envelope(envelope: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Parse and open a ``CiphertextForRecipient`` with the enclave's private key; returns the plaintext."""
    return Envelope.from_bytes(envelope).open(private_key)


def seal_envelope(
    plaintext: bytes,
    recipient_public_key: rsa.RSAPublicKey | bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Encrypt ``plaintext`` to an RSA public key (object or SubjectPublicKeyInfo DER) in KMS's envelope shape."""
    public_key = load_recipient_key(recipient_public_key)
    if len(plaintext) > MAX_CONTENT_SIZE - _BLOCK:
        raise ValueError(f"plaintext of {len(plaintext)} bytes exceeds {MAX_CONTENT_SIZE - _BLOCK}")
    content_key, iv = random(_CEK_SIZE), random(_IV_SIZE)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    envelope = Envelope(
        recipient_ski=subject_key_identifier(public_key),
        encrypted_key=public_key.encrypt(content_key, _OAEP),
        iv=iv,
        ciphertext=encryptor.update(padded) + encryptor.finalize(),
    )
    return envelope.to_bytes(chunk_size=chunk_size)


def load_recipient_key(key: rsa.RSAPublicKey | bytes) -> rsa.RSAPublicKey:
    """An RSA public key of 2048..8192 bits from an object or SubjectPublicKeyInfo DER; ``ValueError`` if not."""
    if isinstance(key, bytes | bytearray | memoryview):
        try:
            loaded = serialization.load_der_public_key(bytes(key))
        except (ValueError, TypeError) as exc:
            raise ValueError("the recipient key is not a DER SubjectPublicKeyInfo") from exc
    else:
        loaded = key
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise ValueError(f"the recipient key is {type(loaded).__name__}, not RSA")
    if not MIN_RSA_BITS <= loaded.key_size <= MAX_RSA_BITS:
        raise ValueError(f"the recipient key has {loaded.key_size} bits; allowed {MIN_RSA_BITS}..{MAX_RSA_BITS}")
    return loaded


# --- parsing -------------------------------------------------------------------------------------------------------


@functools.cache
def _oaep_algorithm() -> bytes:
    """DER of KMS's key transport AlgorithmIdentifier (built once: asn1crypto takes ~0.4 ms to build it)."""
    params = algos.RSAESOAEPParams(
        {
            "hash_algorithm": {"algorithm": "sha256", "parameters": core.Null()},
            "mask_gen_algorithm": {
                "algorithm": "mgf1",
                "parameters": {"algorithm": "sha256", "parameters": core.Null()},
            },
        }
    )
    der: bytes = asn1_cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": params}).dump()
    return der


def _indefinite(tag: int, *parts: bytes) -> bytes:
    return bytes((tag, 0x80)) + b"".join(parts) + b"\x00\x00"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else type(exc).__name__) or type(exc).__name__


def _absent(value: Any) -> bool:
    return isinstance(value, core.Void)


def _parse(data: bytes) -> Envelope:
    info = asn1_cms.ContentInfo.load(data, strict=True)
    if info["content_type"].dotted != _OID_ENVELOPED_DATA:
        raise EnvelopeUnsupported(f"content type is {info['content_type'].dotted}, not EnvelopedData")
    enveloped = info["content"]
    if not isinstance(enveloped, asn1_cms.EnvelopedData):
        raise EnvelopeMalformed("EnvelopedData content is missing")
    version = enveloped["version"].native
    if version not in ("v0", "v2"):
        raise EnvelopeUnsupported(f"EnvelopedData version {version} (KMS writes v2)")
    if not _absent(enveloped["originator_info"]) or not _absent(enveloped["unprotected_attrs"]):
        raise EnvelopeUnsupported("originatorInfo and unprotectedAttrs are not used by KMS envelopes")

    recipients = enveloped["recipient_infos"]
    if len(recipients) != 1:
        raise EnvelopeUnsupported(f"{len(recipients)} recipient infos; a KMS envelope has exactly one")
    recipient = recipients[0]
    if recipient.name != "ktri":
        raise EnvelopeUnsupported(f"recipient info is {recipient.name}, not KeyTransRecipientInfo")
    transport = recipient.chosen
    if transport["version"].native != "v2":
        raise EnvelopeUnsupported("KeyTransRecipientInfo version must be 2 (subjectKeyIdentifier)")
    rid = transport["rid"]
    if rid.name != "subject_key_identifier":
        raise EnvelopeUnsupported("the recipient must be named by subjectKeyIdentifier")
    ski = rid.chosen.native
    _check_oaep(transport["key_encryption_algorithm"])
    encrypted_key = transport["encrypted_key"].native

    content_info = enveloped["encrypted_content_info"]
    if content_info["content_type"].dotted != _OID_DATA:
        raise EnvelopeUnsupported("encrypted content type must be id-data")
    algorithm = content_info["content_encryption_algorithm"]
    if algorithm["algorithm"].dotted != _OID_AES256_CBC:
        raise EnvelopeUnsupported(f"content encryption {algorithm['algorithm'].dotted} is not AES-256-CBC")
    iv = algorithm["parameters"].native
    encrypted = content_info["encrypted_content"]
    if _absent(encrypted):
        raise EnvelopeMalformed("encrypted content is absent (detached content is not used by KMS)")
    ciphertext = encrypted.native
    if not isinstance(ski, bytes) or not isinstance(encrypted_key, bytes):
        raise EnvelopeMalformed("recipient identifier and encrypted key must be OCTET STRINGs")
    if not isinstance(iv, bytes) or not isinstance(ciphertext, bytes):
        raise EnvelopeMalformed("IV and encrypted content must be OCTET STRINGs")
    return Envelope(recipient_ski=ski, encrypted_key=encrypted_key, iv=iv, ciphertext=ciphertext)


def _check_oaep(algorithm: Any) -> None:
    if algorithm["algorithm"].dotted != _OID_RSAES_OAEP:
        raise EnvelopeUnsupported(f"key transport {algorithm['algorithm'].dotted} is not RSAES-OAEP")
    params = algorithm["parameters"]
    if _absent(params) or not isinstance(params, algos.RSAESOAEPParams):
        raise EnvelopeUnsupported("RSAES-OAEP without parameters means SHA-1; KMS uses SHA-256")
    digest = params["hash_algorithm"]
    if digest["algorithm"].dotted != _OID_SHA256 or not _null_or_absent(digest["parameters"]):
        raise EnvelopeUnsupported("RSAES-OAEP hash must be SHA-256")
    mask = params["mask_gen_algorithm"]
    mask_hash = mask["parameters"]
    if mask["algorithm"].dotted != _OID_MGF1 or mask_hash["algorithm"].dotted != _OID_SHA256:
        raise EnvelopeUnsupported("RSAES-OAEP mask generation must be MGF1 with SHA-256")
    if not _null_or_absent(mask_hash["parameters"]):
        raise EnvelopeUnsupported("MGF1 hash parameters must be absent or NULL")
    source = params["p_source_algorithm"]
    if source["algorithm"].dotted != _OID_P_SPECIFIED or source["parameters"].native not in (b"", None):
        raise EnvelopeUnsupported("RSAES-OAEP label must be empty")


def _null_or_absent(value: Any) -> bool:
    return isinstance(value, core.Void | core.Null)
