"""inference: confidential sentence embeddings with signed receipts (the EphemeralML service).

The model's weights are the provider's secret, the client's text is the client's: both are decrypted only inside
the attested enclave. The parts, as in every service: :mod:`~enclavekit.services.inference.enclave_app` (the only
code that sees plaintext text or weights), :mod:`~enclavekit.services.inference.gateway` (the untrusted host side:
it forwards ciphertext frames and protects the enclave), :mod:`~enclavekit.services.inference.package` (the
publisher's tool) and :mod:`~enclavekit.services.inference.client`. Nothing is imported here, so the enclave loads
only what it uses. See ``docs/inference.md``.
"""

__all__: list[str] = []
