"""Media uploads: content-addressed keys and presigned S3 PUTs that pin length, type and checksum.

A client uploads an (already end-to-end encrypted) attachment straight to S3 with a URL valid for 180 s. The
key is ``media/{d[0:2]}/{d[2:4]}/{d}`` for the SHA-256 digest ``d`` of the content, so an object that exists is
the same content: the API answers 409 with its CDN URL instead of a second upload. The presigned request signs
``content-length``, ``content-type`` and ``x-amz-checksum-sha256``, so S3 refuses any other body.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
from botocore.config import Config

from enclavekit.services.notify.errors import BadRequest, NotifyUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "MAX_IMAGE_SIZE",
    "MAX_VIDEO_SIZE",
    "PRESIGN_SECONDS",
    "MediaStore",
    "PresignedUpload",
    "check_content_type",
    "media_key",
]

MAX_IMAGE_SIZE = 5 * 1024 * 1024
MAX_VIDEO_SIZE = 15 * 1024 * 1024
MAX_ASSETS_PER_MESSAGE = 10
PRESIGN_SECONDS = 180
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_TYPE = re.compile(r"^(image|video)/[a-z0-9][a-z0-9.+\-]{0,63}$|^application/octet-stream$")


def media_key(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise BadRequest("content_digest_sha256 must be 64 lower-case hex digits")
    return f"media/{digest[0:2]}/{digest[2:4]}/{digest}"


def check_content_type(content_type: str, content_length: int) -> None:
    if content_type == "image/svg+xml" or not _TYPE.fullmatch(content_type):
        raise BadRequest("content_type must be image/*, video/* or application/octet-stream (never SVG)")
    limit = MAX_IMAGE_SIZE if content_type.startswith("image/") else MAX_VIDEO_SIZE
    if not 1 <= content_length <= limit:
        raise BadRequest(f"content_length must be 1..{limit} for {content_type}")


@dataclass(frozen=True, slots=True)
class PresignedUpload:
    url: str
    headers: dict[str, str]
    expires_in: int


class MediaStore:
    """S3 (or any S3-compatible endpoint) behind the two calls the API needs."""

    def __init__(self, bucket: str, *, endpoint_url: str | None, cdn_url: str, region: str = "us-east-1") -> None:
        self.bucket = bucket
        self.cdn_url = cdn_url.rstrip("/")
        self._s3: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def asset_url(self, key: str) -> str:
        return f"{self.cdn_url}/{key}"

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise NotifyUnavailable(f"the media store failed ({status})") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise NotifyUnavailable(f"the media store is unreachable ({type(exc).__name__})") from exc
        return True

    def presign_put(self, key: str, *, digest: str, content_type: str, content_length: int) -> PresignedUpload:
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": content_type,
            "ContentLength": content_length,
            "ChecksumSHA256": checksum,
        }
        try:
            url = self._s3.generate_presigned_url("put_object", Params=params, ExpiresIn=PRESIGN_SECONDS)
        except botocore.exceptions.BotoCoreError as exc:  # credentials missing, bad endpoint
            raise NotifyUnavailable(f"cannot presign the upload ({type(exc).__name__})") from exc
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(content_length),
            "x-amz-checksum-sha256": checksum,
        }
        return PresignedUpload(url, headers, PRESIGN_SECONDS)
