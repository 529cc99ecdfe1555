"""What ``enclavekit up`` runs with embedded defaults. Services add themselves here as they are built."""

from __future__ import annotations

import json

from enclavekit.services.inference.stack import start_inference
from enclavekit.services.notify.stack import start_notify
from enclavekit.services.vault.stack import prepare_vault, start_vault
from enclavekit.stack.kms import ensure_local_kms
from enclavekit.stack.up import EnclaveSpec, ServiceSpec, Stack, python_command

__all__ = ["ENCLAVES", "start_default"]

ENCLAVES: tuple[EnclaveSpec, ...] = (EnclaveSpec("demo", "enclavekit.enclave.demo:app"),)
"""Enclave apps of the local stack, each behind its own host relay."""


def _trust_web(stack: Stack, port: int) -> list[str]:
    """The trust service (web app, dispatcher, workers), told about every enclave and its attestation URL."""
    enclaves = [
        {**enclave, "attestation_url": stack.services.get(f"relay_{enclave['name']}", {}).get("attestation_url")}
        for enclave in stack.enclaves
    ]
    return python_command(
        "trust",
        "serve",
        "--state",
        str(stack.state.root),
        "--host",
        stack.host,
        "--port",
        str(port),
        "--nats",
        stack.services["nats"]["url"],
        "--trust-sim-root",
        str(stack.state.root),
        "--stack-enclaves",
        json.dumps(enclaves),
        "--stack-file",
        str(stack.state.stack_file),
    )


TRUST_WEB = ServiceSpec("trust_web", _trust_web)
"""The trust service's web app (with its dispatcher and workers). It registers the enclaves started before it at
once, and every enclave of ``stack.json`` when that appears."""


async def start_default(stack: Stack) -> None:
    prepare_vault(stack)  # before NATS: per-user authorization for the vault's subjects
    await stack.start_nats()
    for spec in ENCLAVES:
        enclave = await stack.start_enclave(spec)
        await stack.start_relay(spec.name, enclave["address"])
    await ensure_local_kms(stack)  # HTTPS, its CA pinned by every enclave's measured config (after the enclaves)
    await start_vault(stack)  # the vault enclaves (KMS key bound to their PCR0) and their NATS bridge
    await start_notify(stack)  # stand-ins, egress proxy, notify enclave and relay, API, ingest, dispatcher
    await start_inference(stack)  # model packaged once into the state folder, enclave, relay, gateway
    await stack.start_service(TRUST_WEB)  # after the enclaves and their relays: it registers them
