"""A local stand-in for S3 for media uploads in ``enclavekit up`` and tests: HEAD, GET and presigned PUT.

It keeps objects under a folder and enforces what the presigned PUT pins: the body's length must equal
``Content-Length``, ``Content-Type`` must be present, and the SHA-256 of the body must equal
``x-amz-checksum-sha256`` (as S3 checks a checksum header). It does not verify SigV4 signatures or expiry:
that is S3's job, and the presigned URLs it is given are made by the real boto3 signer.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["LocalS3"]

_KEY = re.compile(r"^[A-Za-z0-9._\-]{3,63}/[A-Za-z0-9/._\-]{1,512}$")
MAX_OBJECT = 16 * 1024 * 1024


def _error(status: int, code: str) -> Response:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
    return Response(body, status_code=status, media_type="application/xml")


class LocalS3:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, request: Request) -> Path | None:
        key = str(request.path_params["path"])
        if not _KEY.fullmatch(key) or ".." in key.split("/"):
            return None
        return self.root / key

    async def handle(self, request: Request) -> Response:
        path = self._path(request)
        if path is None:
            return _error(400, "InvalidArgument")
        if request.method in ("GET", "HEAD"):
            if not path.is_file():
                return _error(404, "NoSuchKey") if request.method == "GET" else Response(status_code=404)
            data = path.read_bytes()
            if request.method == "HEAD":
                return Response(status_code=200, headers={"Content-Length": str(len(data))})
            return Response(data, media_type="application/octet-stream")
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit() or int(declared) > MAX_OBJECT:
            return _error(400, "MissingContentLength")
        if not request.headers.get("content-type"):
            return _error(400, "InvalidArgument")
        data = await request.body()
        if len(data) != int(declared):
            return _error(400, "IncompleteBody")
        checksum = request.headers.get("x-amz-checksum-sha256")
        if checksum is None or base64.b64encode(hashlib.sha256(data).digest()).decode() != checksum:
            return _error(400, "BadDigest")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return Response(status_code=200, headers={"x-amz-checksum-sha256": checksum})

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "HEAD", "PUT"])])
