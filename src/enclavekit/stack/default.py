"""What ``enclavekit up`` runs with embedded defaults: the demo enclave, NATS, the KMS emulator, and the services.

The services are not imported here: each declares its ``STACK_PART`` in its own ``stack.py``, and
:func:`~enclavekit.stack.parts.discover` loads the modules :data:`SERVICE_MODULES` names (and any other
installed package's ``enclavekit.stack`` entry points). See ADR 0020.
"""

from __future__ import annotations

from enclavekit.stack.kms import ensure_local_kms
from enclavekit.stack.parts import discover
from enclavekit.stack.up import EnclaveSpec, Stack

__all__ = ["ENCLAVES", "SERVICE_MODULES", "start_default"]

ENCLAVES: tuple[EnclaveSpec, ...] = (EnclaveSpec("demo", "enclavekit.enclave.demo:app"),)
"""Enclave apps of the local stack, each behind its own host relay."""

SERVICE_MODULES: tuple[str, ...] = (
    "enclavekit.services.vault.stack",
    "enclavekit.services.notify.stack",
    "enclavekit.services.inference.stack",
    "enclavekit.services.trust.stack",
)
"""The project's own services, by the dotted name of the module holding each one's ``STACK_PART``; the order
they start in is each part's own ``order``, not their place here."""


async def start_default(stack: Stack) -> None:
    parts = discover(SERVICE_MODULES)
    for part in parts:
        if part.prepare is not None:
            part.prepare(stack)  # before NATS: a part may add to its configuration (the vault's authorization)
    await stack.start_nats()
    for spec in ENCLAVES:
        enclave = await stack.start_enclave(spec)
        await stack.start_relay(spec.name, enclave["address"])
    await ensure_local_kms(stack)  # HTTPS, its CA pinned by every enclave's measured config (after the enclaves)
    for part in parts:
        await part.start(stack)
