"""Provisioning the notify enclave's measured configuration (the operator's side, run by ``enclavekit up``).

Once per state folder: a local CA and the capture provider's TLS certificate, the provider's API key, a KMS key,
the API key encrypted under it, and the configuration file that names all of it. Everything is recorded, so the
configuration — and so PCR0, and so the persisted push key — is the same after a restart of the whole stack.

The KMS key's policy lets the operator Encrypt and manage the key, and releases (Decrypt, GenerateDataKey) only
to a Recipient whose attested PCR0 is one of the bound measurements: the host cannot decrypt the API key or the
wrapped push key itself, and an enclave running other code or another configuration gets nothing. The policy is
bound after the configuration exists (:func:`bind_key`), because PCR0 covers the configuration that names the key.
In the local stack the host is also the operator (it may rewrite the policy); on AWS the key's administrator is
an operator principal that the parent instance's role is not.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclavekit.kms.measured import MeasuredKmsEndpoint
from enclavekit.services.notify.enclave_config import (
    API_KEY_CONTEXT,
    CONFIG_FORMAT,
    CONFIG_VERSION,
    NotifyEnclaveConfig,
    canonical,
)
from enclavekit.stack.files import write_private

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = [
    "bind_key",
    "enclave_key_policy",
    "ensure_api_key",
    "provision_config",
]


def ensure_api_key(path: Path) -> Path:
    """The (stand-in) provider's API key file, made once (0600). Only the provider and KMS Encrypt read it."""
    if not path.exists():
        write_private(path, secrets.token_hex(16).encode())
    return path


def enclave_key_policy(pcr0s: Sequence[bytes], *, account: str = "111122223333") -> str:
    """A key policy: the operator may Encrypt and manage; Decrypt/GenerateDataKey only for these PCR0s."""
    operator = {
        "Sid": "Operator",
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
        "Resource": "*",
    }
    statements: list[dict[str, Any]] = [operator]
    if pcr0s:
        statements.append(
            {
                "Sid": "MeasuredNotifyEnclaveOnly",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": "*",
                "Condition": {
                    "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": [p.hex() for p in pcr0s]}
                },
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=2)


def bind_key(kms: KMSClient, key_id: str, pcr0s: Sequence[bytes]) -> None:
    """Release the key only to enclaves measured as one of ``pcr0s`` (replaces the key's policy)."""
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=enclave_key_policy(pcr0s))


def provision_config(
    path: Path,
    *,
    kms: KMSClient,
    provider_url: str,
    ca_pem: str,
    api_key: bytes,
    region: str = "us-east-1",
    operator_keys: Sequence[bytes] = (),
    kms_endpoint: MeasuredKmsEndpoint | None = None,
) -> NotifyEnclaveConfig:
    """The configuration at ``path``; made once (a new KMS key, the API key encrypted under it) and then reused
    as long as it names the same provider and CA and the same KMS endpoint (``kms_endpoint``: the KMS ``kms``
    talks to and its pinned CA; default AWS in ``region``) — so PCR0 stays the same across restarts."""
    endpoint = kms_endpoint or MeasuredKmsEndpoint.for_region(region)
    if path.exists():
        existing = NotifyEnclaveConfig.from_bytes(path.read_bytes())
        same_provider = existing.provider.url == provider_url.rstrip("/") and existing.provider.ca_pem == ca_pem
        if same_provider and existing.kms.endpoint == endpoint:
            return existing
    created = kms.create_key(
        Description="enclavekit notify: provider API key and push key (measured enclave only)",
        Policy=enclave_key_policy(()),
    )
    key_id = created["KeyMetadata"]["KeyId"]
    encrypted = kms.encrypt(KeyId=key_id, Plaintext=api_key, EncryptionContext=dict(API_KEY_CONTEXT))
    document = {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "provider": {"url": provider_url, "ca_pem": ca_pem},
        "kms": {
            "key_id": key_id,
            "region": region,
            "api_key_ciphertext": base64.b64encode(encrypted["CiphertextBlob"]).decode(),
            "endpoint": endpoint.to_document(),
        },
        "operator_keys": [key.hex() for key in operator_keys],
    }
    config = NotifyEnclaveConfig.from_bytes(canonical(document))
    write_private(path, config.raw)
    return config
