"""The enclave runtime: apps (:class:`EnclaveApp`), boot, attestation refresh, serving, shutdown."""

from enclavekit.enclave.app import ATTESTATION, HEALTH, AttestationRequest, AttestationResponse, EnclaveApp, Health
from enclavekit.enclave.runtime import EnclaveContext, RuntimeOptions, load_app, serve_app

__all__ = [
    "ATTESTATION",
    "HEALTH",
    "AttestationRequest",
    "AttestationResponse",
    "EnclaveApp",
    "EnclaveContext",
    "Health",
    "RuntimeOptions",
    "load_app",
    "serve_app",
]
