"""What ``enclavekit up`` runs with embedded defaults. Services add themselves here as they are built."""

from __future__ import annotations

from enclavekit.stack.up import EnclaveSpec, ServiceSpec, Stack, python_command

__all__ = ["ENCLAVES", "start_default"]

ENCLAVES: tuple[EnclaveSpec, ...] = (EnclaveSpec("demo", "enclavekit.enclave.demo:app"),)
"""Enclave apps of the local stack, each behind its own host relay."""


KMS = ServiceSpec(
    "kms",
    lambda stack, port: python_command(
        "kms",
        "serve",
        "--host",
        stack.host,
        "--port",
        str(port),
        "--state",
        str(stack.state.root),
        "--trust-sim-root",
        str(stack.state.root),
    ),
)
"""The local KMS emulator (AWS KMS JSON protocol), trusting this stack's simulated NSM for Recipient requests."""


async def start_default(stack: Stack) -> None:
    await stack.start_nats()
    for spec in ENCLAVES:
        enclave = await stack.start_enclave(spec)
        await stack.start_relay(spec.name, enclave["address"])
    await stack.start_service(KMS)  # after the enclaves: the simulator's root exists by now
