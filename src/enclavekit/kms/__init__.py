"""Key release: AWS KMS with a ``Recipient``, the CMS envelope it answers with, and a local KMS emulator.

* :class:`KmsClient` — the enclave side: attested Decrypt / GenerateDataKey / GenerateRandom via boto3;
* :func:`open_envelope`, :func:`seal_envelope`, :class:`Envelope` — ``CiphertextForRecipient`` (CMS);
* :class:`KmsService`, :class:`KmsEmulator`, :func:`running_emulator`, :class:`EmulatorThread` — the emulator
  (``enclavekit kms serve``), with key policies (:class:`KeyPolicy`) that name attestation PCRs.

See ``docs/kms.md``.
"""

from __future__ import annotations

from enclavekit.kms.client import Attester, DataKey, KmsClient
from enclavekit.kms.cms import Envelope, open_envelope, seal_envelope, subject_key_identifier
from enclavekit.kms.emulator import EmulatorThread, KmsEmulator, RunningEmulator, open_service, running_emulator
from enclavekit.kms.errors import (
    AccessDenied,
    EnvelopeDecryptionFailed,
    EnvelopeError,
    EnvelopeMalformed,
    EnvelopeUnsupported,
    IncorrectKey,
    InvalidCiphertext,
    KmsRejected,
    KmsUnavailable,
    NotFound,
    PlaintextReturned,
    RecipientMismatch,
    ValidationError,
)
from enclavekit.kms.keystore import KeyStore
from enclavekit.kms.policy import KeyPolicy, RequestContext
from enclavekit.kms.recipient import RecipientVerifier
from enclavekit.kms.service import KmsService

__all__ = [
    "AccessDenied",
    "Attester",
    "DataKey",
    "EmulatorThread",
    "Envelope",
    "EnvelopeDecryptionFailed",
    "EnvelopeError",
    "EnvelopeMalformed",
    "EnvelopeUnsupported",
    "IncorrectKey",
    "InvalidCiphertext",
    "KeyPolicy",
    "KeyStore",
    "KmsClient",
    "KmsEmulator",
    "KmsRejected",
    "KmsService",
    "KmsUnavailable",
    "NotFound",
    "PlaintextReturned",
    "RecipientMismatch",
    "RecipientVerifier",
    "RequestContext",
    "RunningEmulator",
    "ValidationError",
    "open_envelope",
    "open_service",
    "running_emulator",
    "seal_envelope",
    "subject_key_identifier",
]
