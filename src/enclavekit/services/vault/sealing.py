"""Sealed material: 32 random bytes per user and PIN generation, released by KMS only to the attested vault.

The material is a KMS data key made with ``GenerateDataKey`` and a ``Recipient`` (the plaintext arrives only as a
CMS envelope to a key inside the enclave); the host stores the ``CiphertextBlob``. The KMS key's policy names the
vault's measurement (``kms:RecipientAttestation:ImageSha384``), so nothing else — the host, another enclave image
— can decrypt it. The encryption context names the user and the generation: a blob moved to another user's
record, or an old generation's blob put back, does not decrypt (the reference's sealer trusted the owner id a
worker claimed; here the enclave itself says whose material it asks for).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from enclavekit.kms.client import KmsClient
from enclavekit.services.vault.keys import MATERIAL_SIZE

__all__ = ["KmsSealer", "Sealer", "encryption_context"]


def encryption_context(user: str, generation: int, purpose: str | None = None) -> dict[str, str]:
    """The KMS encryption context of one user's material of one generation (or, with ``purpose``, of another key
    of that user: ``backup``, which does not depend on the PIN — :mod:`~enclavekit.services.vault.backup`)."""
    context = {"enclavekit:service": "vault", "enclavekit:vault-user": user, "enclavekit:generation": str(generation)}
    if purpose is not None:
        context["enclavekit:purpose"] = purpose
    return context


class Sealer(Protocol):
    """Makes and opens sealed material. ``seal`` returns (material, sealed blob for the host)."""

    async def seal(self, user: str, generation: int) -> tuple[bytes, bytes]: ...

    async def unseal(self, user: str, generation: int, sealed: bytes) -> bytes: ...


@dataclass
class KmsSealer:
    """A :class:`Sealer` over the attested KMS client (AWS KMS, or the local emulator)."""

    kms: KmsClient
    key_id: str
    purpose: str | None = None
    """None for the PIN material; ``backup`` for the backup key (another encryption context: one blob never
    stands for the other)."""

    async def seal(self, user: str, generation: int) -> tuple[bytes, bytes]:
        key = await asyncio.to_thread(
            self.kms.generate_data_key,
            self.key_id,
            key_spec=None,
            number_of_bytes=MATERIAL_SIZE,
            encryption_context=encryption_context(user, generation, self.purpose),
        )
        return key.plaintext, key.ciphertext_blob

    async def unseal(self, user: str, generation: int, sealed: bytes) -> bytes:
        material = await asyncio.to_thread(
            self.kms.decrypt,
            sealed,
            encryption_context=encryption_context(user, generation, self.purpose),
            key_id=self.key_id,
        )
        if len(material) != MATERIAL_SIZE:
            raise ValueError("unsealed material has the wrong size")
        return material
