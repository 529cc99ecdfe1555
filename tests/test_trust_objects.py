"""Object storage for evidence and reports: a local folder and S3 behave the same through one interface.

S3 is exercised with boto3 against a small S3-compatible server on loopback (path-style PUT/GET/HEAD/DELETE of
objects, errors as S3 answers them), so the real client code runs unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from enclavekit.errors import InfrastructureError
from enclavekit.services.trust.errors import ObjectStoreError
from enclavekit.services.trust.objects import FolderObjectStore, ObjectStore, S3ObjectStore, open_object_store
from enclavekit.services.trust.service import TrustService
from enclavekit.services.trust.settings import TrustSettings
from tests.test_trust_helpers import nitro_sample

_NO_SUCH_KEY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message></Error>"
)


class S3Server:
    """Objects in memory behind S3's REST API (path style); ``buckets`` must exist, as on S3."""

    def __init__(self, buckets: tuple[str, ...] = ("trust",)) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.buckets = set(buckets)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _target(self) -> tuple[str, str] | None:
                path = urlsplit(self.path).path.lstrip("/")
                bucket, _, key = path.partition("/")
                if bucket not in outer.buckets:
                    self._answer(404, b"<Error><Code>NoSuchBucket</Code></Error>")
                    return None
                return bucket, key

            def _answer(self, status: int, body: bytes = b"", content_type: str = "application/xml") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_PUT(self) -> None:
                target = self._target()
                if target is None:
                    return
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
                    body = _unchunk(body)
                outer.objects[target] = (body, self.headers.get("Content-Type", "application/octet-stream"))
                self.send_response(200)
                self.send_header("ETag", '"etag"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                target = self._target()
                if target is None:
                    return
                if target not in outer.objects:
                    self._answer(404, _NO_SUCH_KEY)
                    return
                body, content_type = outer.objects[target]
                self._answer(200, body, content_type)

            def do_HEAD(self) -> None:
                target = self._target()
                if target is None:
                    return
                if target not in outer.objects:
                    self._answer(404)
                    return
                body, content_type = outer.objects[target]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()

            def do_DELETE(self) -> None:
                target = self._target()
                if target is None:
                    return
                outer.objects.pop(target, None)
                self._answer(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _unchunk(body: bytes) -> bytes:
    """aws-chunked bodies: ``size;chunk-signature=...\\r\\ndata\\r\\n`` ... ``0;...\\r\\n\\r\\n``."""
    out, rest = b"", body
    while rest:
        header, _, rest = rest.partition(b"\r\n")
        size = int(header.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.close()


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server) -> ObjectStore:
    if request.param == "folder":
        return FolderObjectStore(tmp_path / "objects")
    return S3ObjectStore("trust", "prefix/here", client=s3.client())


def test_objects_round_trip_whole(store: ObjectStore) -> None:
    assert not store.exists("reports/a/b.json")
    store.put("reports/a/b.json", b'{"verdict": "verified"}', content_type="application/json")
    assert store.exists("reports/a/b.json")
    assert store.get("reports/a/b.json") == b'{"verdict": "verified"}'
    store.put("reports/a/b.json", b"replaced")
    assert store.get("reports/a/b.json") == b"replaced"
    store.delete("reports/a/b.json")
    assert not store.exists("reports/a/b.json")
    store.delete("reports/a/b.json")  # deleting twice is fine


def test_missing_object_is_an_infrastructure_error_not_a_crash(store: ObjectStore) -> None:
    with pytest.raises(ObjectStoreError) as raised:
        store.get("evidence/absent")
    assert isinstance(raised.value, InfrastructureError)


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "evidence/../../x", "a//b", "Evidence/X", "", "a/"])
def test_keys_cannot_climb_out_of_the_store(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="not one the trust service makes"):
        store.put(key, b"x")


def test_folder_writes_leave_no_partial_file(tmp_path: Path) -> None:
    store = FolderObjectStore(tmp_path)
    store.put("evidence/one", b"x" * 100_000)
    assert sorted(p.name for p in (tmp_path / "evidence").iterdir()) == ["one"]  # no temporary left behind


def test_s3_down_is_an_infrastructure_error(s3: S3Server) -> None:
    client = s3.client()
    s3.close()
    store = S3ObjectStore("trust", client=client)
    for call in (lambda: store.put("evidence/x", b"x"), lambda: store.get("evidence/x"), lambda: store.exists("x")):
        with pytest.raises(ObjectStoreError):
            call()


def test_object_store_is_chosen_by_url(tmp_path: Path) -> None:
    assert isinstance(open_object_store(str(tmp_path)), FolderObjectStore)
    assert isinstance(open_object_store(f"file://{tmp_path}"), FolderObjectStore)
    assert isinstance(open_object_store("s3://bucket/prefix", s3_endpoint_url="http://127.0.0.1:9"), S3ObjectStore)
    for bad in ("ftp://x/y", "s3:///nobucket"):
        with pytest.raises(ValueError, match="s3"):
            open_object_store(bad)


def test_uploads_land_in_s3_through_the_same_interface(tmp_path: Path, s3: S3Server) -> None:
    objects = S3ObjectStore("trust", "tc", client=s3.client())
    service = TrustService(TrustSettings(state_dir=tmp_path), objects=objects)
    try:
        accepted = service.submit(nitro_sample("base_2024-11-30_nondebug.cbor").read_bytes())
        assert accepted.app.evidence_key is not None
        assert ("trust", "tc/" + accepted.app.evidence_key) in s3.objects
        assert objects.bucket == "s3://trust/tc/"
    finally:
        service.close()
