"""Why the inference service refused input or could not serve. Codes are stable.

:class:`InferenceRejected` is untrusted input refused (a request, a model package, a KMS answer);
:class:`ModelRefused` is the enclave refusing to serve a model that does not verify (it never serves another).
"""

from __future__ import annotations

from enclavekit.errors import InfrastructureError, Rejected

__all__ = [
    "BadInput",
    "ChunkInvalid",
    "EnclaveBusy",
    "EnclaveLinkOpen",
    "InferenceRejected",
    "InferenceUnavailable",
    "ManifestInvalid",
    "ModelRefused",
    "NotReady",
    "RateLimited",
    "TensorFileInvalid",
]


class InferenceRejected(Rejected):
    """Untrusted input to the inference service was refused."""

    code = "inference_rejected"


class BadInput(InferenceRejected):
    """An embed request is empty, too large, has too many texts, or a text that is not valid UTF-8."""

    code = "bad_input"


class ChunkInvalid(InferenceRejected):
    """A chunk of the encrypted model does not authenticate at its place (tampered, reordered, dropped, cut)."""

    code = "chunk_invalid"


class ManifestInvalid(InferenceRejected):
    """The model manifest is malformed, not signed by the pinned publisher key, or names another model."""

    code = "manifest_invalid"


class TensorFileInvalid(InferenceRejected):
    """The weights are not a well-formed safetensors file of the expected tensors (only safe formats load)."""

    code = "tensor_file_invalid"


class ModelRefused(InferenceRejected):
    """The enclave refused to load its model (a hash, a signature, the key release failed): it serves nothing."""

    code = "model_refused"


class InferenceUnavailable(InfrastructureError):
    """The inference service cannot answer now; retry later."""

    code = "inference_unavailable"


class NotReady(InferenceUnavailable):
    """The enclave has no verified model loaded."""

    code = "not_ready"


class RateLimited(InferenceUnavailable):
    """The host's token bucket is empty."""

    code = "rate_limited"


class EnclaveBusy(InferenceUnavailable):
    """The host's bound on requests in flight is reached."""

    code = "enclave_busy"


class EnclaveLinkOpen(InferenceUnavailable):
    """The host's circuit breaker on the enclave link is open after too many failures."""

    code = "circuit_open"
