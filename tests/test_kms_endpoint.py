"""The enclave's stdlib KMS endpoint: SigV4 as AWS specifies it, and hostile or broken answers refused.

The signature is checked against AWS's published SigV4 test vector (``get-vanilla`` of the AWS SigV4 test
suite) and against botocore's own signer for a KMS request, byte for byte; the endpoint runs against real HTTP
servers on loopback that answer what a broken or hostile KMS (or a host in the middle) could.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from enclavekit.errors import ConfigurationError
from enclavekit.kms._sigv4 import authorization
from enclavekit.kms.endpoint import MAX_RESPONSE_SIZE, Credentials, KmsEndpoint
from enclavekit.kms.errors import AccessDenied, KmsRejected, KmsUnavailable

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FIXED = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)


def test_signature_matches_the_aws_sigv4_test_suite_get_vanilla_vector() -> None:
    header = authorization(
        method="GET",
        path="/",
        query="",
        headers={"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"},
        body=b"",
        service="service",
        region="us-east-1",
        access_key_id=AKID,
        secret_access_key=SECRET,
    )
    assert header == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLETOKEN=="])
def test_kms_request_signature_equals_botocores(token: str | None) -> None:
    body = b'{"CiphertextBlob":"AQID","Recipient":{"KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}'
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "Host": "kms.eu-west-1.amazonaws.com",
        "X-Amz-Date": "20261204T101500Z",
        "X-Amz-Target": "TrentService.Decrypt",
    }
    if token:
        headers["X-Amz-Security-Token"] = token
    ours = authorization(
        method="POST",
        path="/",
        query="",
        headers=headers,
        body=body,
        service="kms",
        region="eu-west-1",
        access_key_id=AKID,
        secret_access_key=SECRET,
    )
    request = AWSRequest(method="POST", url="https://kms.eu-west-1.amazonaws.com/", data=body, headers=headers)
    request.context["timestamp"] = "20261204T101500Z"
    signer = SigV4Auth(BotoCredentials(AKID, SECRET, token), "kms", "eu-west-1")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    assert ours.endswith(f"Signature={signature}")
    assert f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}," in ours


Answer = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _reply(status: int, body: bytes) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def _endpoint(url: str, attempts: int = 1) -> KmsEndpoint:
    return KmsEndpoint(
        url, region="us-east-1", credentials=Credentials(AKID, SECRET), attempts=attempts, timeout=5, now=lambda: FIXED
    )


def test_request_is_signed_for_kms_with_the_injected_time(serve: Callable[[Answer], str]) -> None:
    seen: dict[str, str] = {}

    def answer(handler: BaseHTTPRequestHandler) -> None:
        seen.update({k.lower(): v for k, v in handler.headers.items()})
        _reply(200, b'{"Plaintext":null}')(handler)

    assert _endpoint(serve(answer)).call("GenerateRandom", {"NumberOfBytes": 8}) == {"Plaintext": None}
    assert seen["x-amz-target"] == "TrentService.GenerateRandom"
    assert seen["x-amz-date"] == "20150830T123600Z"
    assert seen["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/kms/aws4_request")


def test_kms_error_type_with_namespace_maps_to_its_class(serve: Callable[[Answer], str]) -> None:
    body = json.dumps({"__type": "com.amazonaws.kms#AccessDeniedException", "Message": "no"}).encode()
    with pytest.raises(AccessDenied, match="no"):
        _endpoint(serve(_reply(400, body))).call("Decrypt", {})


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"not json"), (200, b"[1, 2]"), (200, b"\xff\xfe"), (403, b"<html>denied</html>")],
)
def test_garbage_answer_is_rejected_not_a_crash(serve: Callable[[Answer], str], status: int, body: bytes) -> None:
    with pytest.raises(KmsRejected):
        _endpoint(serve(_reply(status, body))).call("Decrypt", {})


def test_oversized_answer_is_rejected(serve: Callable[[Answer], str]) -> None:
    with pytest.raises(KmsRejected, match="more than"):
        _endpoint(serve(_reply(200, b" " * (MAX_RESPONSE_SIZE + 10)))).call("Decrypt", {})


def test_server_errors_are_retried_then_unavailable(serve: Callable[[Answer], str]) -> None:
    calls = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        _reply(503, b"")(handler)

    with pytest.raises(KmsUnavailable) as caught:
        _endpoint(serve(answer), attempts=3).call("Decrypt", {})
    assert caught.value.retryable
    assert len(calls) == 3


def test_a_transient_failure_then_success_returns_the_answer(serve: Callable[[Answer], str]) -> None:
    answers = iter([_reply(500, b'{"__type":"KMSInternalException"}'), _reply(200, b'{"KeyId":"k"}')])
    assert _endpoint(serve(lambda h: next(answers)(h)), attempts=2).call("Decrypt", {}) == {"KeyId": "k"}


@pytest.mark.parametrize(
    "url",
    ["ftp://kms.example", "https://", "https://kms.example/path", "https://kms.example?x=1", "http://h:99999", "kms"],
)
def test_endpoint_url_other_than_scheme_host_port_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        _endpoint(url)


def test_missing_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="AWS_ACCESS_KEY_ID"):
        Credentials.from_environment({})
    assert "secret" not in repr(Credentials("AKID", "secret", "token"))
