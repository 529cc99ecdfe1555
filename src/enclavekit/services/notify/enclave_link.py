"""How the host parts reach the notify enclave: the attested client, pinned to the enclave's PCR0.

The host holds no key: every call runs over a session whose handshake verified the enclave's attestation
document against this policy, so the batches sent by the dispatcher are readable only inside an enclave running
exactly the pinned code (and so the pinned, measured provider configuration). The host sends no provider
configuration and no API key: ``initialize`` only asks whether the enclave loaded its measured one.
"""

from __future__ import annotations

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.attestation.roots import aws_nitro_root
from enclavekit.client import AttestedClient
from enclavekit.errors import ConfigurationError
from enclavekit.rpc import ClientOptions
from enclavekit.services.notify.errors import NotInitialized
from enclavekit.services.notify.settings import NotifySettings
from enclavekit.services.notify.wire import INITIALIZE, Initialize, Initialized

__all__ = ["enclave_client", "enclave_policy", "initialize_enclave"]


def enclave_policy(settings: NotifySettings) -> NitroPolicy:
    if not settings.enclave_pcr0:
        raise ConfigurationError("pin the notify enclave's PCR0 (enclave_pcr0 / --enclave-pcr0)")
    roots = [aws_nitro_root()]
    if settings.simulator_roots:
        from enclavekit.nsm import load_root

        roots.extend(load_root(folder) for folder in settings.simulator_roots)
    return NitroPolicy(measurements=[{0: bytes.fromhex(p)} for p in settings.enclave_pcr0], roots=tuple(roots))


def enclave_client(
    settings: NotifySettings, *, endpoint: str | None = None, connect_attempts: int = 3
) -> AttestedClient:
    address = endpoint or settings.enclave
    if not address:
        raise ConfigurationError("no notify enclave address (enclave / --enclave)")
    options = ClientOptions(connect_timeout=5, default_timeout=settings.enclave_timeout, max_in_flight=256)
    return AttestedClient.nitro(address, enclave_policy(settings), options=options, connect_attempts=connect_attempts)


async def initialize_enclave(client: AttestedClient, settings: NotifySettings) -> Initialized:
    """Check that the enclave loaded its measured provider configuration; raise :class:`NotInitialized` if not."""
    answer = await client.call(INITIALIZE, Initialize(), timeout=30)
    if not answer.initialized:
        raise NotInitialized(f"the notify enclave at {client.endpoint} has no measured provider configuration")
    return answer
