"""The notify HTTP API against hostile and sloppy clients: every refusal has the reference's error shape and
code, never a 500; the push-ID rotation rules; tokens; media uploads; and schemathesis over the OpenAPI schema.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.nsm import load_root
from enclavekit.services.notify.client import ApiError, NotifyClient
from enclavekit.services.notify.pushid import seal_push_id
from enclavekit.services.notify.store import DAY, NotifyStore, create_engine
from enclavekit.services.notify.testing import Harness
from enclavekit.services.notify.tokens import TokenIssuer, b64url
from enclavekit.services.notify.worldid import load_stand_in_secret, mint_proof

APP_ID, ACTION = "app_enclavekit_notify", "notify-authorize"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("notify-api")
    running = Harness(root, f"sqlite:///{root / 'notify.db'}", "http://127.0.0.1:9", "unused")
    try:
        running.start_core()
        running.start_enclave("notify-api")
        running.start_s3()
        running.start_api()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def push_key(harness: Harness) -> bytes:
    return _client(harness).enclave_public_key()


def _client(harness: Harness) -> NotifyClient:
    policy = NitroPolicy(measurements=[{0: bytes.fromhex(harness.pcr0)}], roots=(load_root(harness.state),))
    return NotifyClient(harness.api_url, policy)


def _proof(harness: Harness, signal: str, identity: str, **kwargs: Any) -> dict[str, str]:
    secret = load_stand_in_secret(harness.state)
    return mint_proof(secret, signal=signal, app_id=APP_ID, action=ACTION, identity=identity, **kwargs).to_json()


def _authorize_body(harness: Harness, sealed: str, identity: str, *, timestamp: int | None = None) -> dict[str, Any]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"encrypted_push_id": sealed, "timestamp": timestamp, **_proof(harness, f"{sealed}:{timestamp}", identity)}


def _error_of(answer: httpx.Response) -> tuple[int, str, bool]:
    body = answer.json()
    assert set(body) >= {"allowRetry", "error"} and set(body["error"]) == {"code", "message"}, body
    return answer.status_code, body["error"]["code"], body["allowRetry"]


def _post(harness: Harness, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{harness.api_url}{path}", timeout=15, **kwargs)


def _token(harness: Harness, push_key: bytes, identity: str | None = None) -> tuple[str, str]:
    sealed = seal_push_id(f"device-{uuid.uuid4().hex}", push_key)
    answer = _post(harness, "/v1/authorize", json=_authorize_body(harness, sealed, identity or uuid.uuid4().hex))
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"], sealed


# --- public routes --------------------------------------------------------------------------------------------


def test_health_config_and_attestation_document(harness: Harness, push_key: bytes) -> None:
    health = httpx.get(f"{harness.api_url}/health", timeout=10).json()
    assert set(health) == {"status", "semver", "rev"} and health["status"] == "ok"
    config = httpx.get(f"{harness.api_url}/v1/config", timeout=10).json()
    assert config["max_assets_per_message"] == 10
    assert config["max_image_size_bytes"] == 5 * 1024 * 1024
    assert config["max_video_size_bytes"] == 15 * 1024 * 1024
    assert {"trusted_cdn_url", "notification_server_version"} <= set(config)
    assert len(push_key) == 32  # NotifyClient verified the document against the pinned PCR0 to get it


def test_unknown_routes_and_methods_answer_in_the_error_shape(harness: Harness) -> None:
    assert _error_of(httpx.get(f"{harness.api_url}/v1/nothing", timeout=10))[:2] == (404, "not_found")
    assert _error_of(httpx.put(f"{harness.api_url}/v1/authorize", timeout=10))[:2] == (405, "method_not_allowed")


# --- authorize ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("age", [301, 3600, -5])
def test_stale_or_future_timestamps_are_refused(harness: Harness, push_key: bytes, age: int) -> None:
    sealed = seal_push_id("device-stale", push_key)
    body = _authorize_body(harness, sealed, "stale", timestamp=int(time.time()) - age)
    assert _error_of(_post(harness, "/v1/authorize", json=body)) == (400, "invalid_timestamp", False)


@pytest.mark.parametrize(
    "push_id",
    ["zz" * 60, "abc", "ab" * 48, "", "ab" * 600, "AB" * 40 + "g0"],
    ids=["not-hex", "odd", "short", "empty", "long", "bad-char"],
)
def test_malformed_push_ids_are_refused_before_anything_is_stored(harness: Harness, push_id: str) -> None:
    body = _authorize_body(harness, push_id, f"malformed-{push_id[:4]}")
    status, code, _ = _error_of(_post(harness, "/v1/authorize", json=body))
    assert (status, code) in ((400, "invalid_push_id"), (400, "bad_request"))


def test_a_well_formed_box_not_sealed_to_the_enclave_is_not_stored(harness: Harness) -> None:
    foreign = seal_push_id("device-foreign", os.urandom(32))
    body = _authorize_body(harness, foreign, "foreign")
    assert _error_of(_post(harness, "/v1/authorize", json=body))[:2] == (400, "invalid_push_id")
    store = NotifyStore(create_engine(harness.database_url))
    assert not [r for r in store.dump() if r.get("encrypted_push_id") == foreign]
    store.engine.dispose()


def test_a_proof_for_another_signal_is_invalid(harness: Harness, push_key: bytes) -> None:
    sealed = seal_push_id("device-x", push_key)
    timestamp = int(time.time())
    body = {"encrypted_push_id": sealed, "timestamp": timestamp, **_proof(harness, f"{sealed}:{timestamp - 1}", "x")}
    assert _error_of(_post(harness, "/v1/authorize", json=body)) == (401, "invalid_proof", False)


def test_unknown_and_too_old_merkle_roots_are_invalid_roots(harness: Harness, push_key: bytes) -> None:
    sealed = seal_push_id("device-root", push_key)
    old = _authorize_body(harness, sealed, "root")
    timestamp = old["timestamp"]
    old.update(_proof(harness, f"{sealed}:{timestamp}", "root", root="old"))
    assert _error_of(_post(harness, "/v1/authorize", json=old))[:2] == (400, "invalid_root")
    unknown = {**old, "merkle_root": "0x" + os.urandom(32).hex()}
    assert _error_of(_post(harness, "/v1/authorize", json=unknown))[:2] == (400, "invalid_root")


def test_unknown_fields_and_bad_credential_types_are_bad_requests(harness: Harness, push_key: bytes) -> None:
    body = _authorize_body(harness, seal_push_id("device-f", push_key), "fields")
    assert _error_of(_post(harness, "/v1/authorize", json={**body, "admin": True}))[:2] == (400, "bad_request")
    assert _error_of(_post(harness, "/v1/authorize", json={**body, "credential_type": "passport"}))[:2] == (
        400,
        "bad_request",
    )
    assert _error_of(_post(harness, "/v1/authorize", content=b"{not json"))[:2] == (400, "bad_request")


def test_a_bad_request_names_the_offending_field(harness: Harness, push_key: bytes) -> None:
    """A 400 says which field is wrong (a dotted path into the body), in the reference's error envelope."""
    token, _ = _token(harness, push_key)
    auth = {"Authorization": f"Bearer {token}"}
    item = {"topic": "/xmtp/mls/1/g-fields", "hmac_key": os.urandom(42).hex(), "ttl": int(time.time()) + 3600}
    body = _authorize_body(harness, seal_push_id("device-n", push_key), "named")
    json_type = {"content-type": "application/json"}
    cases = [
        (_post(harness, "/v1/subscriptions", json=[{**item, "hmac_key": "ab" * 41}], headers=auth), "0.hmac_key: "),
        (_post(harness, "/v1/subscriptions", json=[item, {**item, "ttl": "soon"}], headers=auth), "1.ttl: "),
        (_post(harness, "/v1/authorize", json={**body, "admin": True}), "admin: Extra inputs are not permitted"),
        (_post(harness, "/v1/authorize", json={**body, "credential_type": "passport"}), "credential_type: "),
        (_post(harness, "/v1/authorize", json={k: v for k, v in body.items() if k != "proof"}), "proof: "),
        (_post(harness, "/v1/authorize", content=b"{not json", headers=json_type), "body: not valid JSON"),
        (
            httpx.delete(f"{harness.api_url}/v1/subscriptions", params={"topic": "t", "hmac_key": "zz"}, headers=auth),
            "hmac_key: ",
        ),
    ]
    for answer, named in cases:
        assert _error_of(answer) == (400, "bad_request", False), answer.text
        assert set(answer.json()) == {"allowRetry", "error"}, answer.text
        assert answer.json()["error"]["message"].startswith(named), (named, answer.text)


def test_rotation_keeps_the_stored_push_id_for_the_same_device_and_refuses_impersonation(
    harness: Harness, push_key: bytes
) -> None:
    identity = f"rot-{uuid.uuid4().hex}"
    first = seal_push_id("device-rotating", push_key)
    answer = _post(harness, "/v1/authorize", json=_authorize_body(harness, first, identity))
    assert answer.status_code == 200
    # The same device, sealed again (a new ciphertext): the enclave says same plaintext, the stored one is kept.
    again = seal_push_id("device-rotating", push_key)
    assert again != first
    token = _post(harness, "/v1/authorize", json=_authorize_body(harness, again, identity)).json()["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == first
    # Another device for the same World ID within 180 days: refused.
    other = seal_push_id("device-attacker", push_key)
    assert _error_of(_post(harness, "/v1/authorize", json=_authorize_body(harness, other, identity))) == (
        403,
        "push_ids_mismatch",
        False,
    )
    # After the cooldown it rotates.
    nullifier = _proof(harness, "x", identity)["nullifier_hash"]
    store = NotifyStore(create_engine(harness.database_url))
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE notify_auth_proofs SET push_id_rotated_at = push_id_rotated_at - ? WHERE nullifier_hash = ?",
            (181 * DAY, nullifier),
        )
    token = _post(harness, "/v1/authorize", json=_authorize_body(harness, other, identity)).json()["access_token"]
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["sub"] == other
    store.engine.dispose()


def test_authorize_refreshes_the_auth_proof_ttl(harness: Harness, push_key: bytes) -> None:
    identity = f"ttl-{uuid.uuid4().hex}"
    sealed = seal_push_id("device-ttl", push_key)
    assert _post(harness, "/v1/authorize", json=_authorize_body(harness, sealed, identity)).status_code == 200
    nullifier = _proof(harness, "x", identity)["nullifier_hash"]
    store = NotifyStore(create_engine(harness.database_url))
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE notify_auth_proofs SET ttl = ? WHERE nullifier_hash = ?", (int(time.time()) + 60, nullifier)
        )
    assert _post(harness, "/v1/authorize", json=_authorize_body(harness, sealed, identity)).status_code == 200
    proof = store.auth_proof(nullifier, now=int(time.time()))
    assert proof is not None and proof.ttl > time.time() + 179 * DAY
    store.engine.dispose()


# --- tokens ---------------------------------------------------------------------------------------------------


def _kms_issuer(harness: Harness, *, kid: str | None = None) -> TokenIssuer:
    kms = harness.kms()
    key_id = kid or (harness.state / "notify" / "jwt-key-id").read_text().strip()
    return TokenIssuer(kms, key_id, issuer="enclavekit-notify", enclave_track="notify")


def test_bad_tokens_are_unauthorized(harness: Harness, push_key: bytes) -> None:
    token, _ = _token(harness, push_key)
    header, claims, signature = token.split(".")
    forged_claims = json.loads(base64.urlsafe_b64decode(claims + "=="))
    forged_claims["sub"] = "ab" * 60
    none_header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    expired, _ = _kms_issuer(harness).issue("ab" * 60, now=int(time.time()) - 8 * DAY)
    future, _ = _kms_issuer(harness).issue("ab" * 60, now=int(time.time()) + 3600)
    other_key = _kms_issuer(
        harness,
        kid=harness.kms().create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"],
    ).issue("ab" * 60, now=int(time.time()))[0]
    cases = {
        "missing": None,
        "garbage": "Bearer not.a.token",
        "no-bearer": token,
        "tampered": f"Bearer {header}.{b64url(json.dumps(forged_claims).encode())}.{signature}",
        "alg-none": f"Bearer {none_header}.{claims}.",
        "expired": f"Bearer {expired}",
        "not-yet-valid": f"Bearer {future}",
        "other-key": f"Bearer {other_key}",
        "huge": "Bearer " + "a" * 5000,
    }
    body = [{"topic": "/xmtp/mls/1/g-t", "hmac_key": "ab" * 42, "ttl": int(time.time()) + 3600}]
    for name, value in cases.items():
        headers = {} if value is None else {"Authorization": value}
        answer = _post(harness, "/v1/subscriptions", json=body, headers=headers)
        assert _error_of(answer) == (401, "unauthorized", False), name
    ok = _post(harness, "/v1/subscriptions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 201


def test_tokens_are_es256_with_the_kms_key_id(harness: Harness, push_key: bytes) -> None:
    token, sealed = _token(harness, push_key)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert header == {
        "alg": "ES256",
        "typ": "JWT",
        "kid": (harness.state / "notify" / "jwt-key-id").read_text().strip(),
    }
    assert claims["sub"] == sealed and claims["exp"] - claims["iat"] == 7 * DAY
    assert {"iss", "nbf", "enclave_track"} <= set(claims)
    assert _kms_issuer(harness).verify(token, now=int(time.time())).sub == sealed


# --- subscriptions --------------------------------------------------------------------------------------------


def test_subscription_bounds(harness: Harness, push_key: bytes) -> None:
    token, _ = _token(harness, push_key)
    auth = {"Authorization": f"Bearer {token}"}
    now = int(time.time())

    def item(**over: Any) -> dict[str, Any]:
        return {"topic": "/xmtp/mls/1/g-bounds", "hmac_key": os.urandom(42).hex(), "ttl": now + 3600, **over}

    for bad in (
        [item(ttl=now)],
        [item(ttl=now + 41 * DAY)],
        [item(hmac_key="ab" * 41)],
        [item(hmac_key="zz" * 42)],
        [item(extra=1)],
        [item(topic="")],
        [item() for _ in range(101)],
        {"topic": "x"},
    ):
        assert _error_of(_post(harness, "/v1/subscriptions", json=bad, headers=auth))[:2] == (400, "bad_request")
    assert _post(harness, "/v1/subscriptions", json=[item(), item()], headers=auth).status_code == 201


def test_oversized_bodies_are_refused_with_413(harness: Harness) -> None:
    big = b"[" + b'"a",' * 100_000 + b'"a"]'
    assert _error_of(_post(harness, "/v1/subscriptions", content=big, headers={"Content-Type": "application/json"}))[
        :2
    ] == (413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(100):
            yield b" " * 8192

    answer = _post(harness, "/v1/authorize", content=chunks(), headers={"Content-Type": "application/json"})
    assert _error_of(answer)[:2] == (413, "payload_too_large")


def test_batch_delete_reports_what_it_did(harness: Harness, push_key: bytes) -> None:
    owner, _ = _token(harness, push_key)
    other, _ = _token(harness, push_key)
    key_a, key_b = os.urandom(42).hex(), os.urandom(42).hex()
    topic = f"/xmtp/mls/1/g-{uuid.uuid4().hex}"
    body = [{"topic": topic, "hmac_key": k, "ttl": int(time.time()) + 3600} for k in (key_a, key_b)]
    assert (
        _post(harness, "/v1/subscriptions", json=body, headers={"Authorization": f"Bearer {owner}"}).status_code == 201
    )
    keys = [{"topic": topic, "hmac_key": k} for k in (key_a, key_b, os.urandom(42).hex())]
    result = _post(harness, "/v1/subscriptions/delete", json=keys[1:], headers={"Authorization": f"Bearer {other}"})
    assert result.json() == {"deleted": 0, "tombstoned": 1, "not_found": 1}
    result = _post(harness, "/v1/subscriptions/delete", json=keys, headers={"Authorization": f"Bearer {owner}"})
    assert result.json() == {"deleted": 2, "tombstoned": 0, "not_found": 1}


# --- media ----------------------------------------------------------------------------------------------------


def test_media_upload_is_content_addressed_and_pinned(harness: Harness, push_key: bytes) -> None:
    client = _client(harness)
    client.authorize(seal_push_id("device-media", push_key), lambda s: _proof(harness, s, f"media-{uuid.uuid4().hex}"))
    data = os.urandom(2048)
    digest = hashlib.sha256(data).hexdigest()
    url = client.upload_media(data, "image/jpeg")
    assert url.endswith(f"media/{digest[:2]}/{digest[2:4]}/{digest}")
    assert httpx.get(url, timeout=10).content == data
    with pytest.raises(ApiError) as exists:
        client.upload_media(data, "image/jpeg")
    assert exists.value.status == 409 and exists.value.api_code == "asset_already_exists"
    # The presigned request pins length, type and checksum: another body is refused by the store.
    other = os.urandom(2048)
    answer = client._request(
        "POST",
        "/v1/media/presigned-urls",
        json={
            "content_digest_sha256": hashlib.sha256(other).hexdigest(),
            "content_length": 2048,
            "content_type": "video/mp4",
        },
    ).json()
    assert "x-amz-checksum-sha256" in answer["presigned_url"].lower() or "x-amz-checksum-sha256" in answer["headers"]
    signed = answer["presigned_url"].split("X-Amz-SignedHeaders=")[1].split("&")[0]
    assert {"content-length", "content-type", "x-amz-checksum-sha256"} <= set(signed.split("%3B"))
    assert "X-Amz-Expires=180" in answer["presigned_url"]
    tampered = httpx.put(answer["presigned_url"], content=data, headers=answer["headers"], timeout=10)
    assert tampered.status_code == 400


@pytest.mark.parametrize(
    ("digest", "length", "content_type"),
    [
        ("x" + "a" * 63, 10, "image/png"),
        ("a" * 64 + "b", 10, "image/png"),
        ("A" * 64, 10, "image/png"),
        ("a" * 64, 0, "image/png"),
        ("a" * 64, 15 * 1024 * 1024 + 1, "video/mp4"),
        ("a" * 64, 6 * 1024 * 1024, "image/png"),
        ("a" * 64, 10, "image/svg+xml"),
        ("a" * 64, 10, "text/html"),
    ],
)
def test_media_requests_out_of_bounds_are_bad_requests(
    harness: Harness, push_key: bytes, digest: str, length: int, content_type: str
) -> None:
    token, _ = _token(harness, push_key)
    body = {"content_digest_sha256": digest, "content_length": length, "content_type": content_type}
    answer = _post(harness, "/v1/media/presigned-urls", json=body, headers={"Authorization": f"Bearer {token}"})
    assert _error_of(answer)[:2] == (400, "bad_request")


# --- schemathesis ---------------------------------------------------------------------------------------------


def _fuzz(operation: Any, base_url: str, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=[not_a_server_error])

    check()


def test_no_generated_request_makes_the_api_fail(harness: Harness, push_key: bytes) -> None:
    """Every operation of the OpenAPI schema, with generated (valid and invalid) requests: never a 5xx."""
    token, _ = _token(harness, push_key)
    schema = schemathesis.openapi.from_url(f"{harness.api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        protected = operation.path.startswith(("/v1/subscriptions", "/v1/media"))
        _fuzz(operation, harness.api_url, {"Authorization": f"Bearer {token}"} if protected else {})
