"""The trust service under ``enclavekit up``: its web app (with its dispatcher and workers), started last.

It is told every enclave started before it (with its relay's attestation URL) and registers them at once, and
every enclave of ``stack.json`` when that file appears: so it starts after the enclaves and relays of every
other service.
"""

from __future__ import annotations

import json

from enclavekit.stack.parts import StackPart
from enclavekit.stack.up import ServiceSpec, Stack, python_command

__all__ = ["STACK_PART", "TRUST_WEB", "start_trust"]


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


async def start_trust(stack: Stack) -> None:
    await stack.start_service(TRUST_WEB)


STACK_PART = StackPart("trust", order=90, start=start_trust)
"""For ``enclavekit up``: last, after every other service's enclaves and relays (it registers them)."""
