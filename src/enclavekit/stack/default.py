"""What ``enclavekit up`` runs with embedded defaults. Services add themselves here as they are built."""

from __future__ import annotations

from enclavekit.stack.up import EnclaveSpec, Stack

__all__ = ["ENCLAVES", "start_default"]

ENCLAVES: tuple[EnclaveSpec, ...] = (EnclaveSpec("demo", "enclavekit.enclave.demo:app"),)
"""Enclave apps of the local stack, each behind its own host relay."""


async def start_default(stack: Stack) -> None:
    await stack.start_nats()
    for spec in ENCLAVES:
        enclave = await stack.start_enclave(spec)
        await stack.start_relay(spec.name, enclave["address"])
