"""The emulator's keys at rest: one file per key in ``STATE/kms/keys/``, key material encrypted (emulator-grade).

Layout of ``STATE/kms/``:

* ``master.key`` — 32 random bytes, mode 0600, made on first start; refused if group or others may read it;
* ``keys/<key-id>.json`` — ``{"format", "version", "metadata", "policy", "material"}``, where ``material`` is
  base64 of ``nonce(12) ‖ AES-256-GCM(master, key material)`` with the canonical JSON of the format, metadata
  and policy as associated data, so a file edited by hand (a loosened policy, material swapped between keys)
  no longer loads;
* ``lock`` — held (``flock``) while an emulator uses the folder, so two never write it at once.

What this protects, honestly: key material never sits in plaintext on disk, in backups of ``keys/`` or in logs.
It does not protect against someone who can read the whole folder (the master key is beside the keys) — a real
KMS keeps its keys in HSMs that never export them. Use the emulator for development and tests, not production.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclavekit.errors import ConfigurationError, Error
from enclavekit.kms.policy import KeyPolicy

__all__ = [
    "ECC_NIST_P256",
    "ENCRYPT_DECRYPT",
    "SIGN_VERIFY",
    "SYMMETRIC_DEFAULT",
    "KeyMetadata",
    "KeyStore",
    "KeyStoreError",
    "StoredKey",
]

logger = logging.getLogger(__name__)

SYMMETRIC_DEFAULT: Final = "SYMMETRIC_DEFAULT"
ECC_NIST_P256: Final = "ECC_NIST_P256"
ENCRYPT_DECRYPT: Final = "ENCRYPT_DECRYPT"
SIGN_VERIFY: Final = "SIGN_VERIFY"
MASTER_KEY_SIZE: Final = 32
MAX_KEY_FILE: Final = 256 * 1024
FORMAT: Final = "enclavekit-kms-key"
VERSION: Final = 1


class KeyStoreError(ConfigurationError):
    """The state folder's KMS keys cannot be used (unreadable, altered, wrong master key, or in use)."""

    code = "kms_keystore"


@dataclass(frozen=True, slots=True)
class KeyMetadata:
    """What KMS says about a key (DescribeKey); nothing secret."""

    key_id: str
    arn: str
    account: str
    created: datetime
    key_spec: str
    key_usage: str
    description: str = ""
    enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "KeyId": self.key_id,
            "Arn": self.arn,
            "AWSAccountId": self.account,
            "CreationDate": self.created.isoformat(),
            "KeySpec": self.key_spec,
            "KeyUsage": self.key_usage,
            "Description": self.description,
            "Enabled": self.enabled,
        }

    @classmethod
    def from_json(cls, data: Any) -> KeyMetadata:
        if not isinstance(data, dict):
            raise ValueError("metadata is not an object")
        created = datetime.fromisoformat(str(data["CreationDate"]))
        if created.tzinfo is None:
            raise ValueError("CreationDate has no time zone")
        fields = ("KeyId", "Arn", "AWSAccountId", "KeySpec", "KeyUsage", "Description")
        if not all(isinstance(data[name], str) for name in fields) or not isinstance(data["Enabled"], bool):
            raise ValueError("metadata fields have the wrong types")
        return cls(
            key_id=data["KeyId"],
            arn=data["Arn"],
            account=data["AWSAccountId"],
            created=created.astimezone(UTC),
            key_spec=data["KeySpec"],
            key_usage=data["KeyUsage"],
            description=data["Description"],
            enabled=data["Enabled"],
        )


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key with its policy and material. ``material`` is the AES-256 key, or the P-256 key's PKCS#8 DER."""

    metadata: KeyMetadata
    policy: KeyPolicy
    material: bytes = field(repr=False)
    signing_key: ec.EllipticCurvePrivateKey | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.metadata.key_spec
        if spec == SYMMETRIC_DEFAULT:
            if len(self.material) != 32:
                raise ValueError("a SYMMETRIC_DEFAULT key is 32 bytes")
        elif spec == ECC_NIST_P256:
            if self.signing_key is None:
                key = serialization.load_der_private_key(self.material, password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
                    raise ValueError("an ECC_NIST_P256 key is a P-256 private key")
                object.__setattr__(self, "signing_key", key)
        else:
            raise ValueError(f"unsupported key spec {spec}")

    @property
    def key_id(self) -> str:
        return self.metadata.key_id


def _aad(metadata: KeyMetadata, policy_text: str) -> bytes:
    canonical = {"format": FORMAT, "version": VERSION, "metadata": metadata.to_json(), "policy": policy_text}
    return json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()


class KeyStore:
    """The keys of one state folder, loaded into memory at open and written through on every change.

    Thread-safe. Use as a context manager, or call :meth:`close` to release the folder's lock.
    """

    def __init__(self, directory: str | os.PathLike[str], *, random: Callable[[int], bytes] = os.urandom) -> None:
        self.directory = Path(directory)
        self._random = random
        self._mutex = threading.Lock()
        self._keys: dict[str, StoredKey] = {}
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keys_dir.mkdir(exist_ok=True, mode=0o700)
        self._lock_file: IO[bytes] | None = self._take_lock()
        try:
            self._master = AESGCM(self._master_key())
            for path in sorted(self.keys_dir.glob("*.json")):
                key = self._load(path)
                self._keys[key.key_id] = key
        except BaseException:
            self.close()
            raise
        logger.debug("KMS key store %s: %d key(s)", self.directory, len(self._keys))

    @property
    def keys_dir(self) -> Path:
        return self.directory / "keys"

    @property
    def master_key_file(self) -> Path:
        return self.directory / "master.key"

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        lock, self._lock_file = self._lock_file, None
        if lock is not None:
            lock.close()

    # --- keys ---------------------------------------------------------------------------------------------------

    def get(self, key_id: str) -> StoredKey | None:
        return self._keys.get(key_id)

    def __iter__(self) -> Iterator[StoredKey]:
        with self._mutex:
            keys = list(self._keys.values())
        return iter(sorted(keys, key=lambda k: (k.metadata.created, k.key_id)))

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: StoredKey) -> None:
        """Persist ``key`` (encrypted), then make it usable. Never overwrites an existing key."""
        with self._mutex:
            if key.key_id in self._keys:
                raise ValueError(f"key {key.key_id} exists")
            self._write(key)

    def replace_policy(self, key_id: str, policy: KeyPolicy) -> StoredKey:
        """Persist ``policy`` as the policy of the existing key ``key_id`` (material unchanged), then use it."""
        with self._mutex:
            current = self._keys.get(key_id)
            if current is None:
                raise KeyError(key_id)
            updated = StoredKey(current.metadata, policy, current.material, current.signing_key)
            self._write(updated)
            return updated

    def _write(self, key: StoredKey) -> None:
        """Seal and write ``key`` (the caller holds the mutex), then make it current."""
        nonce = self._random(12)
        sealed = nonce + self._master.encrypt(nonce, key.material, _aad(key.metadata, key.policy.text))
        document = {
            "format": FORMAT,
            "version": VERSION,
            "metadata": key.metadata.to_json(),
            "policy": key.policy.text,
            "material": base64.b64encode(sealed).decode(),
        }
        _write_private(self.keys_dir / f"{key.key_id}.json", json.dumps(document, indent=2).encode())
        self._keys[key.key_id] = key

    # --- files --------------------------------------------------------------------------------------------------

    def _take_lock(self) -> IO[bytes]:
        handle = (self.directory / "lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise KeyStoreError(f"{self.directory} is in use by another KMS emulator") from exc
            raise KeyStoreError(f"cannot lock {self.directory}: {exc}") from exc
        return handle

    def _master_key(self) -> bytes:
        path = self.master_key_file
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(self._random(MASTER_KEY_SIZE))
                out.flush()
                os.fsync(out.fileno())
            logger.info("KMS emulator: new master key in %s", path)
        info = path.stat()
        if info.st_mode & 0o077:
            raise KeyStoreError(f"{path} is readable by others (mode {stat.filemode(info.st_mode)}); chmod 600 it")
        data = path.read_bytes()
        if len(data) != MASTER_KEY_SIZE:
            raise KeyStoreError(f"{path} is {len(data)} bytes, not {MASTER_KEY_SIZE}")
        return data

    def _load(self, path: Path) -> StoredKey:
        try:
            if path.stat().st_size > MAX_KEY_FILE:
                raise ValueError("file too large")
            document = json.loads(path.read_bytes())
            if document.get("format") != FORMAT or document.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} version {VERSION} file")
            metadata = KeyMetadata.from_json(document["metadata"])
            policy_text = document["policy"]
            if not isinstance(policy_text, str) or metadata.key_id + ".json" != path.name:
                raise ValueError("policy or file name does not match")
            sealed = base64.b64decode(document["material"], validate=True)
            material = self._master.decrypt(sealed[:12], sealed[12:], _aad(metadata, policy_text))
            return StoredKey(metadata, KeyPolicy.from_json(policy_text), material)
        except InvalidTag as exc:
            raise KeyStoreError(f"{path}: altered, or sealed under another master key") from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyStoreError(f"{path}: unreadable key file ({exc})") from exc
        except Error as exc:
            raise KeyStoreError(f"{path}: {exc.message}") from exc


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
