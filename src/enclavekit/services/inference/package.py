"""``enclavekit inference package``: the publisher's side. Encrypt a model for one enclave configuration.

A fresh data key from KMS ``GenerateDataKey`` (encryption context ``{model_id, version}``) encrypts the weights
in EKMC chunks (:mod:`~enclavekit.services.inference.chunks`); the tokenizer and config travel in the clear
(they are public in this model) and, like the weights, are pinned by hash in the manifest, which the publisher
key signs. Only the KMS key's policy decides who may decrypt the data key again: for an enclave, an attested
Recipient whose PCR0 the policy names. The plaintext data key is dropped once the weights are sealed.

Package folder: ``manifest.json``, ``weights.ekmc``, ``tokenizer.json``, ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.errors import ConfigurationError
from enclavekit.services.inference.chunks import DEFAULT_CHUNK_SIZE, seal_stream
from enclavekit.services.inference.loader import CONFIG_FILE, MANIFEST_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from enclavekit.services.inference.manifest import Manifest, encryption_context
from enclavekit.services.inference.model_files import ModelFiles
from enclavekit.stack.files import write_private

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = ["PackageResult", "enclave_key_policy", "load_publisher_key", "package_model", "write_publisher_key"]


@dataclass(frozen=True, slots=True)
class PackageResult:
    manifest: Manifest
    folder: Path


class _Hashing:
    """A reader that hashes what it reads (one pass over the weights: encrypt and hash together)."""

    def __init__(self, source: BinaryIO, digest: hashlib._Hash) -> None:
        self._source = source
        self._digest = digest

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._digest.update(data)
        return data


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.digest()


def package_model(
    files: ModelFiles,
    out: Path,
    *,
    model_id: str,
    version: str,
    kms: KMSClient,
    key_id: str,
    publisher: Ed25519PrivateKey,
    now: datetime,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PackageResult:
    """Write the encrypted package of ``files`` to ``out`` (created; existing package files are replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    context = encryption_context(model_id, version)
    response = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=context)
    key = bytes(response["Plaintext"])
    size = files.weights.stat().st_size
    partial = out / (WEIGHTS_FILE + ".partial")
    weights_digest = hashlib.sha256()
    try:
        with files.weights.open("rb") as source, partial.open("wb") as sink:
            for piece in seal_stream(key, _Hashing(source, weights_digest), size, chunk_size=chunk_size):
                sink.write(piece)
    finally:
        del key
    partial.replace(out / WEIGHTS_FILE)
    shutil.copyfile(files.tokenizer, out / TOKENIZER_FILE)
    shutil.copyfile(files.config, out / CONFIG_FILE)
    manifest = Manifest(
        model_id=model_id,
        version=version,
        weights_sha256=weights_digest.digest(),
        weights_size=size,
        tokenizer_sha256=_sha256_file(files.tokenizer),
        config_sha256=_sha256_file(files.config),
        chunk_size=chunk_size,
        key_id=str(response["KeyId"]).rsplit("/", 1)[-1],
        encrypted_data_key=bytes(response["CiphertextBlob"]),
        created_at=int(now.timestamp()),
    )
    (out / MANIFEST_FILE).write_bytes(manifest.sign(publisher))
    return PackageResult(manifest, out)


def enclave_key_policy(
    pcr0_hex: str | Sequence[str], publisher_principal: str = "arn:aws:iam::111122223333:root"
) -> str:
    """A KMS key policy: the publisher may make data keys (and bind the key to the measured PCR0 once the
    configuration that names the key exists); only an enclave with this PCR0 (or one of these) may decrypt them."""
    pcr0s = pcr0_hex if isinstance(pcr0_hex, str) else list(pcr0_hex)
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Publisher",
                    "Effect": "Allow",
                    "Principal": {"AWS": publisher_principal},
                    "Action": ["kms:GenerateDataKey", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
                    "Resource": "*",
                },
                {
                    "Sid": "Enclave",
                    "Effect": "Allow",
                    "Principal": {"AWS": publisher_principal},
                    "Action": ["kms:Decrypt"],
                    "Resource": "*",
                    "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0s}},
                },
            ],
        }
    )


def write_publisher_key(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 publisher key, written PKCS#8 PEM with mode 0600."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem)
    return key


def load_publisher_key(path: Path) -> Ed25519PrivateKey:
    try:
        key: Any = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the publisher key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 private key")
    return key
