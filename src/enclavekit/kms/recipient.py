"""The ``Recipient`` of a KMS request: verify its attestation document before anything is released to it.

KMS (and the emulator) accept a recipient only when its Nitro attestation document verifies — chain to a trusted
root, ES384 signature, not older than :data:`MAX_AGE`, not a debug enclave — and carries an RSA public key of
2048..8192 bits. The verified PCRs then feed the key policy's ``kms:RecipientAttestation:*`` conditions, and the
answer is sealed to that public key. Pure: ``now`` is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from cryptography.hazmat.primitives.asymmetric import rsa

from enclavekit.attestation import nitro
from enclavekit.attestation.errors import AttestationError, Malformed
from enclavekit.attestation.roots import aws_nitro_root
from enclavekit.kms.cms import load_recipient_key
from enclavekit.kms.errors import AccessDenied, ValidationError
from enclavekit.kms.protocol import RecipientRequest

__all__ = ["MAX_AGE", "MAX_DOCUMENT_SIZE", "RecipientVerifier", "VerifiedRecipient"]

MAX_AGE: Final = timedelta(minutes=5)
"""How old an attestation document may be when it reaches KMS."""
MAX_DOCUMENT_SIZE: Final = nitro.MAX_DOCUMENT_SIZE


@dataclass(frozen=True, slots=True)
class VerifiedRecipient:
    """A recipient whose attestation document verified: its attestation, and the key to seal answers to."""

    attestation: nitro.NitroAttestation
    public_key: rsa.RSAPublicKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class RecipientVerifier:
    """Verifies recipients against ``roots`` (DER). The AWS Nitro root is always among them."""

    roots: tuple[bytes, ...] = ()
    max_age: timedelta = MAX_AGE
    policy: nitro.NitroPolicy = field(init=False, repr=False, compare=False)
    """The Nitro policy recipients are verified against: any code (the key policy judges PCRs), no debug."""

    def __post_init__(self) -> None:
        roots = tuple(dict.fromkeys((aws_nitro_root(), *self.roots)))
        object.__setattr__(self, "roots", roots)
        policy = nitro.NitroPolicy(unsafe_any_measurements=True, roots=roots, max_age=self.max_age)
        object.__setattr__(self, "policy", policy)

    def verify(self, recipient: RecipientRequest, *, now: datetime) -> VerifiedRecipient:
        """The verified recipient, or :class:`ValidationError` (unusable) / :class:`AccessDenied` (refused)."""
        try:
            attestation = nitro.verify(recipient.attestation_document, self.policy, now=now)
        except Malformed as exc:
            raise ValidationError(f"the recipient's attestation document is malformed: {exc.message}") from exc
        except AttestationError as exc:
            raise AccessDenied(f"the recipient's attestation document is refused ({exc.code}): {exc.message}") from exc
        if attestation.public_key is None:
            raise ValidationError("the recipient's attestation document carries no public_key")
        try:
            public_key = load_recipient_key(attestation.public_key)
        except ValueError as exc:
            raise ValidationError(f"the recipient's public_key is unusable: {exc}") from exc
        return VerifiedRecipient(attestation, public_key)
