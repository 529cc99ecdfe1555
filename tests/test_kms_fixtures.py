"""Shared pieces of the KMS tests (this module holds no tests): simulated enclaves, policies, boto3 clients."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from enclavekit.kms import EmulatorThread, KmsService, RunningEmulator, open_service
from enclavekit.kms.endpoint import Credentials, KmsEndpoint
from enclavekit.nsm import NsmSimulator, load_root

REGION = "us-east-1"
APP = {"main.py": b"print('the enclave app')\n"}
OTHER_APP = {"main.py": b"print('another enclave app')\n"}


def simulated_enclave(state: Path, app: dict[str, bytes] = APP, **options: Any) -> NsmSimulator:
    """A simulated enclave whose CA lives in ``state/nsm``."""
    return NsmSimulator(state, app=app, **options)


def boto3_kms(url: str) -> Any:
    """boto3 exactly as an application would create it, pointed at ``url``; no retries, so tests see errors."""
    return boto3.client(
        "kms",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="AKIDLOCALTEST",
        aws_secret_access_key="local-secret",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def kms_endpoint(url: str) -> KmsEndpoint:
    """The enclave's stdlib KMS endpoint pointed at ``url``, one attempt only, so tests see errors."""
    return KmsEndpoint(url, region=REGION, credentials=Credentials("AKIDLOCALTEST", "local-secret"), attempts=1)


@contextlib.contextmanager
def emulator_for(
    kms_state: Path,
    *,
    trust: Sequence[Path] = (),
    clock: Callable[[], datetime] | None = None,
    service_factory: Callable[..., KmsService] | None = None,
) -> Iterator[RunningEmulator]:
    """An emulator over ``kms_state`` on a loopback port, trusting the simulator roots of the ``trust`` folders."""
    roots = [load_root(folder) for folder in trust]
    service = open_service(kms_state, trusted_roots=roots, region=REGION)
    if service_factory is not None:
        service = service_factory(service)
    try:
        with EmulatorThread(service, clock=clock or (lambda: datetime.now(UTC))) as running:
            yield running
    finally:
        service.keystore.close()


def statement(
    effect: str, actions: str | list[str], condition: dict[str, Any] | None = None, sid: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Effect": effect,
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/enclave"},
        "Action": actions,
        "Resource": "*",
    }
    if condition is not None:
        out["Condition"] = condition
    if sid is not None:
        out["Sid"] = sid
    return out


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def enclave_only_policy(pcr0_hex: str, *, operator: str = "StringEqualsIgnoreCase") -> str:
    """Admin may encrypt and describe; only an enclave with this PCR0 may decrypt or get data keys."""
    return policy(
        statement("Allow", ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy"], sid="Admin"),
        statement(
            "Allow",
            ["kms:Decrypt", "kms:GenerateDataKey"],
            {operator: {"kms:RecipientAttestation:ImageSha384": pcr0_hex}},
            sid="Enclave",
        ),
    )
