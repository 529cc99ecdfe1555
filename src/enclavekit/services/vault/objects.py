"""The object store the host keeps for vaults: a folder locally (``STATE/vault/objects/``), S3 at scale.

These run on the host, in the object service (:mod:`~enclavekit.services.vault.object_service`); the enclave
reaches them through it (:class:`~enclavekit.services.vault.remote_objects.RemoteObjectStore`) and never imports
boto3.

Everything stored is either ciphertext (state objects under the vault's ``state`` key, KMS blobs) or public
(PIN verifiers are HMACs under a key the host cannot derive). Keys are ``vaults/{user}/...``; a user id is
checked (:func:`check_user`) before it becomes part of a path, and every object has a size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

from enclavekit.errors import ConfigurationError
from enclavekit.services.vault.errors import VaultRejected, VaultUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "MAX_OBJECT",
    "OBJECT_KEY",
    "RESERVED_PREFIX",
    "DirectoryObjectStore",
    "InvalidUser",
    "ObjectStore",
    "S3ObjectStore",
    "check_key",
    "check_user",
    "object_store",
]

MAX_OBJECT: Final = 1024 * 1024
_USER: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
OBJECT_KEY: Final = re.compile(r"(vaults|ballots)/[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9._-]{1,128}){1,3}")
"""An object key: ``vaults/{user}/...`` (a user's encrypted state) or ``ballots/{proposal}/...`` (public ballot
boxes); ``..`` is refused separately, by :func:`check_key`."""
RESERVED_PREFIX: Final = "--"
"""Ledger entries of the vault's own (a proposal's ballot counter), never a user's."""


class InvalidUser(VaultRejected):
    """A user id is 1..64 of ``A-Z a-z 0-9 _ -`` (it names NATS subjects and object keys)."""

    code = "invalid_user"


def check_user(user: str) -> str:
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise InvalidUser("a user id is 1..64 characters of A-Z a-z 0-9 _ -")
    if user.startswith(RESERVED_PREFIX):
        raise InvalidUser(f"user ids starting with {RESERVED_PREFIX} are the vault's own (ballot counters)")
    return user


def check_key(key: str) -> str:
    """``key`` if it is a vault object key (``vaults/{user}/...``, no ``..``); ``ValueError`` otherwise."""
    if not isinstance(key, str) or not OBJECT_KEY.fullmatch(key) or ".." in key.split("/"):
        raise ValueError(f"not a vault object key: {key!r}")
    return key


class ObjectStore(Protocol):
    """Get, put (atomic: a reader sees the old or the new object, never half), delete, list under a prefix."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, data: bytes) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def list(self, prefix: str) -> list[str]: ...


@dataclass
class DirectoryObjectStore:
    """Objects as files under ``root``; a put writes a temporary file, fsyncs and renames it into place."""

    root: Path

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
            if size > MAX_OBJECT:
                raise VaultUnavailable(f"stored object {key} is {size} bytes, over the limit")
            return path.read_bytes()
        except FileNotFoundError:
            return None

    async def put(self, key: str, data: bytes) -> None:
        if len(data) > MAX_OBJECT:
            raise ValueError("object too large")
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with temporary.open("wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
        temporary.replace(path)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    async def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )


@dataclass
class S3ObjectStore:
    """The same interface over S3 (boto3; any S3-compatible endpoint). Calls run in a thread.

    S3's PUT is atomic (a reader sees the old or the new object). A stored object over ``MAX_OBJECT`` is refused
    before its body is read (``vault_unavailable``), and a listing keeps only vault object keys under the prefix."""

    client: S3Client
    bucket: str

    @classmethod
    def connect(cls, bucket: str, **boto3_kwargs: Any) -> S3ObjectStore:
        import boto3

        return cls(boto3.client("s3", **boto3_kwargs), bucket)

    async def get(self, key: str) -> bytes | None:
        def fetch() -> bytes | None:
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=check_key(key))
            except self.client.exceptions.NoSuchKey:
                return None
            if int(answer.get("ContentLength", 0)) > MAX_OBJECT:
                answer["Body"].close()
                raise VaultUnavailable(f"stored object {key} is over the limit")
            data = answer["Body"].read(MAX_OBJECT + 1)
            if len(data) > MAX_OBJECT:
                raise VaultUnavailable(f"stored object {key} is over the limit")
            return data

        return await asyncio.to_thread(fetch)

    async def put(self, key: str, data: bytes) -> None:
        if len(data) > MAX_OBJECT:
            raise ValueError("object too large")
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=check_key(key), Body=data)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=check_key(key))

    async def list(self, prefix: str) -> list[str]:
        def listing() -> list[str]:
            keys: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys += [str(item["Key"]) for item in page.get("Contents", [])]
            return sorted(k for k in keys if OBJECT_KEY.fullmatch(k))

        return await asyncio.to_thread(listing)


def object_store(url: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None) -> ObjectStore:
    """Where the host keeps vault objects, by URL: ``file:///path`` (or a plain path) → a folder; ``s3://bucket``
    → S3 with boto3's usual credentials, at ``s3_endpoint_url`` for an S3-compatible server. Same code after."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc or parts.path.strip("/") or parts.query:
            raise ConfigurationError(f"{url!r}: the vault's S3 store is s3://BUCKET (its keys start with vaults/)")
        options: dict[str, Any] = {}
        if s3_endpoint_url:
            options["endpoint_url"] = s3_endpoint_url
        if s3_region:
            options["region_name"] = s3_region
        return S3ObjectStore.connect(parts.netloc, **options)
    if parts.scheme == "file":
        return DirectoryObjectStore(Path(parts.path))
    if parts.scheme:
        raise ConfigurationError(f"{url!r}: vault objects go to a folder, a file:// or an s3:// URL")
    return DirectoryObjectStore(Path(url))
