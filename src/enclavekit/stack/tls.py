"""The local stack's certificate authority: a CA and a server certificate, made once in a folder and reused.

Every local HTTPS endpoint that an enclave pins by CA gets its certificate from here: notify's capture provider
(``STATE/notify/provider``) and the KMS emulator (``STATE/kms/tls``, :mod:`enclavekit.stack.kms`). The CA's PEM
goes into the enclave's measured configuration, so it is made once and kept: PCR0 stays the same across restarts.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclavekit.stack.files import write_private

__all__ = ["ProviderTls", "ensure_provider_tls"]

_TEN_YEARS = datetime.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class ProviderTls:
    """The local CA (its PEM goes into the measured configuration) and the server's certificate and key files."""

    ca_pem: str
    cert_file: Path
    key_file: Path


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
    write_private(
        key_file,
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_private(cert_file, leaf.public_bytes(pem) + ca_pem)
    write_private(ca_file, ca_pem)  # last: its presence means the set is complete
    return ProviderTls(ca_pem.decode(), cert_file, key_file)
