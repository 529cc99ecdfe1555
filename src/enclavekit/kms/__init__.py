"""Key release: AWS KMS with a ``Recipient``, the CMS envelope it answers with, and a local KMS emulator.

* :class:`KmsClient` — the enclave side: attested Decrypt / GenerateDataKey / GenerateRandom via boto3;
* :func:`open_envelope`, :func:`seal_envelope`, :class:`Envelope` — ``CiphertextForRecipient`` (CMS);
* :class:`KmsService`, :class:`KmsEmulator`, :func:`running_emulator`, :class:`EmulatorThread` — the emulator
  (``enclavekit kms serve``), with key policies (:class:`KeyPolicy`) that name attestation PCRs.

See ``docs/kms.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_LAZY: dict[str, str] = {
    "AccessDenied": "enclavekit.kms.errors",
    "Attester": "enclavekit.kms.client",
    "DataKey": "enclavekit.kms.client",
    "EmulatorThread": "enclavekit.kms.emulator",
    "Envelope": "enclavekit.kms.cms",
    "EnvelopeDecryptionFailed": "enclavekit.kms.errors",
    "EnvelopeError": "enclavekit.kms.errors",
    "EnvelopeMalformed": "enclavekit.kms.errors",
    "EnvelopeUnsupported": "enclavekit.kms.errors",
    "IncorrectKey": "enclavekit.kms.errors",
    "InvalidCiphertext": "enclavekit.kms.errors",
    "KeyPolicy": "enclavekit.kms.policy",
    "KeyStore": "enclavekit.kms.keystore",
    "KmsClient": "enclavekit.kms.client",
    "KmsEmulator": "enclavekit.kms.emulator",
    "KmsRejected": "enclavekit.kms.errors",
    "KmsService": "enclavekit.kms.service",
    "KmsUnavailable": "enclavekit.kms.errors",
    "NotFound": "enclavekit.kms.errors",
    "PlaintextReturned": "enclavekit.kms.errors",
    "RecipientMismatch": "enclavekit.kms.errors",
    "RecipientVerifier": "enclavekit.kms.recipient",
    "RequestContext": "enclavekit.kms.policy",
    "RunningEmulator": "enclavekit.kms.emulator",
    "ValidationError": "enclavekit.kms.errors",
    "open_envelope": "enclavekit.kms.cms",
    "open_service": "enclavekit.kms.emulator",
    "running_emulator": "enclavekit.kms.emulator",
    "seal_envelope": "enclavekit.kms.cms",
    "subject_key_identifier": "enclavekit.kms.cms",
}
"""Where each public name lives; imported on first use, so importing this package loads nothing heavy."""

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
