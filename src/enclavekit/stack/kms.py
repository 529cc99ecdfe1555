"""The local stack's KMS emulator, over HTTPS: one per stack, shared by every enclave that talks to KMS.

It serves a certificate from a local CA made once in ``STATE/kms/tls/`` (the same code that makes notify's
capture-provider CA: :func:`enclavekit.stack.tls.ensure_provider_tls`), on a port chosen once and
kept in ``STATE/kms/ports.json`` — the URL and the CA are part of each enclave's measured configuration, so both
stay the same across restarts of the whole stack. Host-side clients (boto3) verify the same CA
(:func:`boto3_kms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from enclavekit.kms.measured import MeasuredKmsEndpoint
from enclavekit.stack.ports import stable_port
from enclavekit.stack.tls import ProviderTls, ensure_provider_tls
from enclavekit.stack.up import ServiceSpec, Stack, python_command

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = ["LocalKms", "boto3_kms", "ensure_local_kms", "local_kms_tls"]


@dataclass(frozen=True, slots=True)
class LocalKms:
    """Where the local KMS emulator listens and the CA its certificate chains to."""

    url: str
    ca_file: Path
    ca_pem: str

    def measured(self, region: str = "us-east-1") -> MeasuredKmsEndpoint:
        """The endpoint an enclave's measured configuration names: this URL, this CA pinned."""
        return MeasuredKmsEndpoint(self.url, region, self.ca_pem)


def local_kms_tls(state: Path, host: str) -> tuple[ProviderTls, int]:
    """The emulator's TLS files (made once) and its port (chosen once)."""
    folder = state / "kms"
    folder.mkdir(parents=True, exist_ok=True)
    return ensure_provider_tls(folder / "tls", host), stable_port(folder / "ports.json", "kms", host)


async def ensure_local_kms(stack: Stack) -> LocalKms:
    """The stack's KMS emulator, started over HTTPS unless it runs already."""
    from enclavekit.nsm.ca import SimulatorCA

    state, host = stack.state.root, stack.host
    tls, port = local_kms_tls(state, host)
    ca_file = state / "kms" / "tls" / "ca.pem"
    url = stack.services.get("kms", {}).get("url")
    if url is None:
        SimulatorCA(state).root(now=datetime.now(UTC))  # the emulator trusts this simulator's root: make it first
        argv = ("--state", str(state), "--trust-sim-root", str(state))
        url = await stack.start_service(
            ServiceSpec(
                "kms",
                lambda s, _port: python_command(
                    "kms",
                    "serve",
                    *("--host", host, "--port", str(port), *argv),
                    *("--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)),
                ),
                url=lambda h, _p: f"https://{h}:{port}",
            )
        )
    return LocalKms(url, ca_file, tls.ca_pem)


def boto3_kms(url: str, ca_file: Path | str, region: str = "us-east-1") -> KMSClient:
    """A boto3 KMS client for the emulator at ``url`` that verifies its certificate against ``ca_file``."""
    import boto3

    return boto3.client(  # the emulator takes any credentials; these name no secret
        "kms",
        endpoint_url=url,
        region_name=region,
        verify=str(ca_file),
        aws_access_key_id="enclavekit",
        aws_secret_access_key="enclavekit",  # noqa: S106
    )
