"""Object storage for evidence and reports: a local folder by default, S3 (or anything S3-compatible) by URL.

Both implement :class:`ObjectStore`. Keys are ``/``-separated ASCII paths the service chooses itself
(``evidence/<sha256>``, ``reports/<task id>.json``); a key from anywhere else is refused, so no key can climb
out of the folder. Writes are atomic: an object is either absent or whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from enclavekit.services.trust.errors import ObjectStoreError

__all__ = ["FolderObjectStore", "ObjectStore", "S3ObjectStore", "open_object_store"]

_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
MAX_OBJECT_SIZE = 64 * 1024 * 1024


def check_key(key: str) -> str:
    if len(key) > 200 or not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"object key {key!r} is not one the trust service makes")
    return key


class ObjectStore(Protocol):
    """Where the service keeps blobs. ``bucket`` names the store in task rows (``result_bucket``)."""

    @property
    def bucket(self) -> str: ...

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


class FolderObjectStore:
    """Objects as files below ``root`` (created on first write, mode 0700)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def bucket(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                Path(temporary).replace(path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ObjectStoreError(f"cannot write {key}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_OBJECT_SIZE + 1)
        except FileNotFoundError as exc:
            raise ObjectStoreError(f"object {key} is missing from {self.root}") from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot read {key}: {exc.strerror or exc}") from exc
        if len(data) > MAX_OBJECT_SIZE:
            raise ObjectStoreError(f"object {key} is over {MAX_OBJECT_SIZE} bytes")
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


class S3ObjectStore:
    """Objects in an S3 bucket below ``prefix``, through boto3 (AWS, or an S3-compatible ``endpoint_url``)."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any | None = None, endpoint_url: str | None = None):
        import boto3

        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client or boto3.client("s3", endpoint_url=endpoint_url)

    @property
    def bucket(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}"

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(Bucket=self._bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise ObjectStoreError(f"cannot write s3://{self._bucket}/{self._key(key)}: {exc}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self._bucket, Key=self._key(key))
            body = response["Body"]
            data: bytes = body.read(MAX_OBJECT_SIZE + 1)
            body.close()
        except (BotoCoreError, ClientError) as exc:
            raise ObjectStoreError(f"cannot read s3://{self._bucket}/{self._key(key)}: {exc}") from exc
        if len(data) > MAX_OBJECT_SIZE:
            raise ObjectStoreError(f"object {key} is over {MAX_OBJECT_SIZE} bytes")
        return data

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_object(Bucket=self._bucket, Key=self._key(key))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ObjectStoreError(f"cannot look up s3://{self._bucket}/{self._key(key)}: {exc}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"cannot look up s3://{self._bucket}/{self._key(key)}: {exc}") from exc
        return True

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise ObjectStoreError(f"cannot delete s3://{self._bucket}/{self._key(key)}: {exc}") from exc


def open_object_store(url: str, *, s3_endpoint_url: str | None = None) -> ObjectStore:
    """``s3://bucket/prefix`` → :class:`S3ObjectStore`; a path or ``file://`` URL → :class:`FolderObjectStore`."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{url!r}: an s3:// URL needs a bucket")
        return S3ObjectStore(parts.netloc, parts.path, endpoint_url=s3_endpoint_url)
    if parts.scheme == "file":
        return FolderObjectStore(Path(parts.path))
    if parts.scheme:
        raise ValueError(f"{url!r}: object storage must be a folder, file:// or s3:// URL")
    return FolderObjectStore(Path(url))
