"""Hostile HTTP against the emulator: garbage gets an AWS-style 4xx error, never a 500 and never a crash."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.kms import RunningEmulator, open_service, running_emulator
from enclavekit.kms.protocol import MAX_BODY_SIZE
from tests.test_kms_fixtures import emulator_for

HEADERS = {"Content-Type": "application/x-amz-json-1.1"}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    with emulator_for(tmp_path_factory.mktemp("http") / "state") as running:
        yield running


@pytest.fixture(scope="module")
def http(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def key_id(http: httpx.Client) -> str:
    answer = _call(http, "CreateKey", {})
    assert answer.status_code == 200
    return str(answer.json()["KeyMetadata"]["KeyId"])


def _call(http: httpx.Client, operation: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post("/", content=content, headers={**HEADERS, "X-Amz-Target": f"TrentService.{operation}", **headers})


def _aws_error(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/x-amz-json-1.1"
    assert "x-amzn-requestid" in response.headers
    body = response.json()
    assert isinstance(body["message"], str)
    return str(body["__type"])


# --- the envelope of a request -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"a string"', b"\xff\xfe\x00garbage", b"[" * 50000 + b"]" * 50000, b"null"],
    ids=["broken", "array", "string", "not-utf8", "nested", "null"],
)
def test_bodies_that_are_not_a_json_object_are_serialization_errors(http: httpx.Client, body: bytes) -> None:
    response = _call(http, "Encrypt", body)
    assert response.status_code == 400
    assert _aws_error(response) == "SerializationException"


def test_missing_target_is_an_unknown_operation(http: httpx.Client) -> None:
    response = http.post("/", content=b"{}", headers=HEADERS)
    assert (response.status_code, _aws_error(response)) == (400, "UnknownOperationException")


@pytest.mark.parametrize(
    "target", ["TrentService.ScheduleKeyDeletion", "Other.Decrypt", "TrentService.", "TrentService.A/B"]
)
def test_unsupported_targets_are_unknown_operations(http: httpx.Client, target: str) -> None:
    response = http.post("/", content=b"{}", headers={**HEADERS, "X-Amz-Target": target})
    assert (response.status_code, _aws_error(response)) == (400, "UnknownOperationException")


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("PUT", "/"), ("POST", "/admin")])
def test_other_methods_and_paths_are_refused(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path, headers={**HEADERS, "X-Amz-Target": "TrentService.ListKeys"})
    assert (response.status_code, _aws_error(response)) == (400, "UnknownOperationException")


def test_body_over_the_limit_is_refused_from_its_content_length(http: httpx.Client) -> None:
    response = _call(http, "Encrypt", b"{" + b" " * MAX_BODY_SIZE + b"}")
    assert (response.status_code, _aws_error(response)) == (413, "RequestEntityTooLargeException")


def test_chunked_body_over_the_limit_is_refused_while_streaming(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 8192

    response = http.post("/", content=chunks(), headers={**HEADERS, "X-Amz-Target": "TrentService.Encrypt"})
    assert (response.status_code, _aws_error(response)) == (413, "RequestEntityTooLargeException")


def test_empty_body_is_an_empty_request(http: httpx.Client) -> None:
    response = _call(http, "ListKeys", b"")
    assert response.status_code == 200
    assert "Keys" in response.json()


def test_a_sigv4_authorization_is_accepted_without_being_checked(http: httpx.Client) -> None:
    response = _call(
        http,
        "GenerateRandom",
        {"NumberOfBytes": 4},
        Authorization="AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kms/aws4_request, Signature=00",
    )
    assert response.status_code == 200
    assert len(base64.b64decode(response.json()["Plaintext"])) == 4


def test_non_http_bytes_do_not_disturb_the_server(http: httpx.Client, emulator: RunningEmulator) -> None:
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n")
        raw.recv(1024)
    assert _call(http, "ListKeys", {}).status_code == 200


# --- fields -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "body"),
    [
        ("Encrypt", {"KeyId": 5, "Plaintext": "eA=="}),
        ("Encrypt", {"KeyId": "KEY", "Plaintext": "!!not base64!!"}),
        ("Encrypt", {"KeyId": "KEY", "Plaintext": ""}),
        ("Encrypt", {"KeyId": "KEY"}),
        ("Encrypt", {"KeyId": "KEY", "Plaintext": "eA==", "EncryptionContext": {"a": 1}}),
        ("Encrypt", {"KeyId": "KEY", "Plaintext": "eA==", "EncryptionContext": ["a"]}),
        ("Encrypt", {"KeyId": "KEY", "Plaintext": "eA==", "EncryptionContext": {"": "x"}}),
        ("Encrypt", {"KeyId": "KEY", "Plaintext": "eA==", "EncryptionContext": {"a": "\ud800"}}),
        ("Encrypt", {"KeyId": "KEY", "Plaintext": "eA==", "EncryptionAlgorithm": "ROT13"}),
        ("Encrypt", {"KeyId": "x" * 3000, "Plaintext": "eA=="}),
        ("Decrypt", {"CiphertextBlob": {"nested": True}}),
        ("GenerateRandom", {"NumberOfBytes": 10**12}),
        ("GenerateRandom", {"NumberOfBytes": True}),
        ("GenerateRandom", {"NumberOfBytes": 1.5}),
        ("GenerateRandom", {"NumberOfBytes": 0}),
        ("GenerateRandom", {}),
        ("GenerateRandom", {"NumberOfBytes": 8, "Recipient": "x"}),
        ("GenerateRandom", {"NumberOfBytes": 8, "Recipient": {"AttestationDocument": 5}}),
        ("GenerateRandom", {"NumberOfBytes": 8, "Recipient": {}}),
        ("GenerateDataKey", {"KeyId": "KEY", "KeySpec": "AES_512"}),
        ("ListKeys", {"Limit": 0}),
        ("ListKeys", {"Marker": "nonexistent"}),
        ("CreateKey", {"Description": ["x"]}),
        ("CreateKey", {"KeySpec": "NOT_A_SPEC"}),
        ("CreateKey", {"MultiRegion": "yes"}),
        ("Sign", {"KeyId": "KEY", "Message": "eA==", "SigningAlgorithm": "NONE"}),
    ],
)
def test_malformed_fields_are_validation_errors(
    http: httpx.Client, key_id: str, operation: str, body: dict[str, Any]
) -> None:
    body = json.loads(json.dumps(body).replace('"KEY"', json.dumps(key_id)))
    response = _call(http, operation, body)
    assert response.status_code == 400
    assert _aws_error(response) in ("ValidationException", "SerializationException")


_NAMES = st.sampled_from(
    [
        "KeyId",
        "Plaintext",
        "CiphertextBlob",
        "EncryptionContext",
        "NumberOfBytes",
        "KeySpec",
        "KeyUsage",
        "Policy",
        "Recipient",
        "AttestationDocument",
        "KeyEncryptionAlgorithm",
        "Message",
        "MessageType",
        "SigningAlgorithm",
        "Limit",
        "Marker",
        "Description",
        "PolicyName",
        "EncryptionAlgorithm",
        "MultiRegion",
        "Origin",
        "CustomKeyStoreId",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["eA==", "AAAA", "SYMMETRIC_DEFAULT", "ECC_NIST_P256", "AES_256", "RAW", "ECDSA_SHA_256"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.one_of(_NAMES, st.text(max_size=8)), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    operation=st.sampled_from(
        [
            "CreateKey",
            "DescribeKey",
            "ListKeys",
            "Encrypt",
            "Decrypt",
            "GenerateDataKey",
            "GenerateRandom",
            "Sign",
            "GetPublicKey",
            "GetKeyPolicy",
        ]
    ),
    body=st.dictionaries(_NAMES, _VALUES, max_size=6),
    use_key=st.booleans(),
)
def test_random_requests_never_cause_a_server_error(
    http: httpx.Client, key_id: str, operation: str, body: dict[str, Any], use_key: bool
) -> None:
    if use_key:
        body["KeyId"] = key_id
    response = _call(http, operation, body)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        _aws_error(response)


# --- in the caller's own event loop --------------------------------------------------------------------------------


async def test_running_emulator_serves_in_the_current_event_loop(tmp_path: Path) -> None:
    service = open_service(tmp_path / "state")
    try:
        async with running_emulator(service) as running, httpx.AsyncClient(base_url=running.url) as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/",
                        content=b'{"NumberOfBytes": 16}',
                        headers={**HEADERS, "X-Amz-Target": "TrentService.GenerateRandom"},
                    )
                    for _ in range(20)
                )
            )
        assert {a.status_code for a in answers} == {200}
        assert len({a.json()["Plaintext"] for a in answers}) == 20
    finally:
        service.keystore.close()


def test_answers_are_not_held_back_by_delayed_acks(http: httpx.Client) -> None:
    """Without TCP_NODELAY on accepted sockets each answer waited ~40 ms for the client's delayed ACK."""
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        assert _call(http, "GenerateRandom", {"NumberOfBytes": 8}).status_code == 200
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.02
