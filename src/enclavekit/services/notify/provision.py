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
import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclavekit.kms.measured import MeasuredKmsEndpoint
from enclavekit.services.notify.enclave_config import (
    API_KEY_CONTEXT,
    CONFIG_FORMAT,
    CONFIG_VERSION,
    NotifyEnclaveConfig,
    canonical,
)

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = [
    "ProviderTls",
    "bind_key",
    "enclave_key_policy",
    "ensure_api_key",
    "ensure_provider_tls",
    "provision_config",
]

_TEN_YEARS = datetime.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class ProviderTls:
    """The local CA (its PEM goes into the measured configuration) and the provider's certificate and key files."""

    ca_pem: str
    cert_file: Path
    key_file: Path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())
    temporary.replace(path)


def ensure_provider_tls(directory: Path, host: str) -> ProviderTls:
    """A local CA and a certificate for ``host`` signed by it, made once in ``directory`` and reused.

    The one local-CA helper of the stack: notify's capture provider (``STATE/notify/provider``) and the KMS
    emulator (``STATE/kms/tls``, :mod:`enclavekit.stack.kms`) each get theirs from it; enclaves pin the CA."""
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "provider.pem", directory / "provider.key"
    if ca_file.exists() and cert_file.exists() and key_file.exists():
        return ProviderTls(ca_file.read_text(), cert_file, key_file)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclavekit local provider CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _TEN_YEARS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _TEN_YEARS)
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    _write_private(
        key_file,
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    _write_private(cert_file, leaf.public_bytes(pem) + ca_pem)
    _write_private(ca_file, ca_pem)  # last: its presence means the set is complete
    return ProviderTls(ca_pem.decode(), cert_file, key_file)


def ensure_api_key(path: Path) -> Path:
    """The (stand-in) provider's API key file, made once (0600). Only the provider and KMS Encrypt read it."""
    if not path.exists():
        _write_private(path, secrets.token_hex(16).encode())
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
    _write_private(path, config.raw)
    return config
