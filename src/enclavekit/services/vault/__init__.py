"""vault: personal vaults in enclaves that an operator can neither open nor brute-force (VettID, part 1).

Each user's data is encrypted under a key that needs both the user's PIN (stretched with Argon2id) and material
that only the attested vault enclave can unseal through KMS; wrong PINs are counted, before anything is
released, in a ledger replicated across the vault enclaves that the host cannot roll back. See ``docs/vault.md``.

The parts: :mod:`~enclavekit.services.vault.keys` (key schedule), :mod:`~enclavekit.services.vault.guesses` (the
guess ledger), :mod:`~enclavekit.services.vault.sealing` (KMS-sealed material),
:mod:`~enclavekit.services.vault.objects` (the object store the host keeps: a folder or S3),
:mod:`~enclavekit.services.vault.state` (encrypted, versioned per-user state) and
:mod:`~enclavekit.services.vault.core` (what the enclave does: enroll, unlock, secrets). Nothing is imported
here, so the enclave loads only what it uses.
"""

__all__: list[str] = []
