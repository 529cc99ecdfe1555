"""The web app and JSON API over real HTTP: ``enclavekit trust serve`` as a process, with its own nats-server.

Bad input is the theme: garbage and oversized uploads are refused with their reason, before being read whole,
and leave nothing behind; unknown ids are 404s; no request a client can send makes it answer 500.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.services.trust.signing import verify_token
from tests.test_trust_helpers import NatsServer, TrustProcess, nitro_sample, serve_argv, tdx, upload, wait_task

TOKEN = "s3cret-admin-token"
PARTNER = "https://partner.example"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrustProcess]:
    root = tmp_path_factory.mktemp("trust-api")
    nats = NatsServer(root / "nats")
    nats.start()
    process = TrustProcess(
        serve_argv(root / "state", nats.url, "--frame-ancestor", PARTNER),
        env={"ENCLAVEKIT_TRUST_ADMIN_TOKEN": TOKEN},
        log=root / "serve.log",
    )
    process.state = root / "state"  # type: ignore[attr-defined]
    try:
        yield process.start()
    finally:
        process.stop()
        nats.stop()


def objects_in(service: TrustProcess) -> set[str]:
    root = service.state / "trust" / "objects"  # type: ignore[attr-defined]
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def total_apps(base: str) -> int:
    return int(httpx.get(f"{base}/api/apps").json()["total"])


def submitted(base: str, path: Path, **fields: str) -> dict[str, Any]:
    answer = upload(base, path.read_bytes(), **fields)
    assert answer.status_code == 202, answer.text
    return wait_task(base, answer.json()["task_id"])


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"this is not attestation evidence", "malformed"),
        (b"\x84\x40\xa0\x40\x40", "unsupported_algorithm"),  # COSE-shaped, no algorithm
        (b'{"quote": "zz", "event_log": "[]"}', "malformed"),
        (b"0400" + b"00" * 10, "malformed"),  # a quote header, truncated
        (b"", "upload_invalid"),
    ],
)
def test_garbage_upload_is_refused_with_its_reason_and_nothing_is_stored(
    service: TrustProcess, payload: bytes, code: str
) -> None:
    before_apps, before_objects = total_apps(service.url), objects_in(service)
    answer = upload(service.url, payload)
    assert answer.status_code in (400, 422)
    assert answer.json()["error"]["code"] == code
    assert total_apps(service.url) == before_apps
    assert objects_in(service) == before_objects


def test_collateral_that_is_not_collateral_is_refused_before_anything_is_stored(service: TrustProcess) -> None:
    before = objects_in(service)
    answer = upload(service.url, tdx("dcap-qvl", "tdx_quote").read_bytes(), collateral='{"tcb_info": 1}')
    assert answer.status_code == 422
    assert answer.json()["error"]["message"].startswith("collateral:")
    assert objects_in(service) == before


def _raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_huge_upload_is_refused_before_its_body_is_read(service: TrustProcess) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    head = (
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 2000000000\r\n\r\n"
    )
    answer = _raw_request(port, head)  # no body sent at all: the answer cannot have waited for it
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"upload_too_large" in answer


def test_streamed_upload_is_cut_off_at_the_limit(service: TrustProcess) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(20):  # 20 MiB, chunked, no Content-Length
            yield b"\x84" + b"\x00" * (1024 * 1024 - 1)

    answer = httpx.post(
        f"{service.url}/api/tasks", content=body(), headers={"Content-Type": "application/octet-stream"}, timeout=30
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "upload_too_large"


def test_oversized_evidence_file_in_the_form_is_refused(service: TrustProcess) -> None:
    big = b"\x84" + b"\x00" * (5 * 1024 * 1024)
    answer = upload(service.url, big)
    assert answer.status_code == 413
    assert "over the limit" in answer.json()["error"]["message"]


def test_the_upload_form_shows_why_a_file_was_refused(service: TrustProcess) -> None:
    answer = httpx.post(
        f"{service.url}/submit", files={"evidence": ("x.txt", b"hello", "text/plain")}, data={"at": "now"}
    )
    assert answer.status_code == 422
    assert "not recognised as attestation evidence" in answer.text
    assert 'id="upload-error"' in answer.text
    bad_at = httpx.post(
        f"{service.url}/submit",
        files={"evidence": ("x", nitro_sample("base_2024-11-30_nondebug.cbor").read_bytes())},
        data={"at": "yesterday"},
    )
    assert bad_at.status_code == 400 and "expected now, doc" in bad_at.text


def test_quote_at_doc_is_refused_since_quotes_carry_no_time(service: TrustProcess) -> None:
    answer = upload(service.url, tdx("dcap-qvl", "tdx_quote").read_bytes(), at="doc")
    assert answer.status_code == 400
    assert "no timestamp" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/apps/nope",
        "/tasks/nope",
        "/api/app/nope",
        "/api/task/nope",
        "/api/task/nope/ear",
        "/api/task/nope/report",
        "/no/such/page",
        "/static/../../etc/passwd",
    ],
)
def test_unknown_ids_are_404_not_500(service: TrustProcess, path: str) -> None:
    answer = httpx.get(service.url + path)
    assert answer.status_code == 404
    if path.startswith("/api/"):
        assert answer.json()["error"]["code"] == "not_found"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/", "/api/apps", "/submit", "/api/tasks", "/apps/", "/api/app/", "/badge/", "/widget/"]),
    suffix=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40),
    query=st.dictionaries(
        st.sampled_from(["q", "status", "tee", "kind", "sort", "page", "os", "at", "name"]),
        st.text(max_size=30),
        max_size=4,
    ),
    method=st.sampled_from(["GET", "POST"]),
)
def test_no_request_makes_it_answer_500(
    service: TrustProcess, path: str, suffix: str, query: dict[str, str], method: str
) -> None:
    url = service.url + path + httpx.URL(suffix.replace("?", "").replace("#", "")).raw_path.decode("ascii")
    answer = httpx.request(method, url, params=query, timeout=10)
    assert answer.status_code < 500, (method, url, query, answer.text[:300])


@pytest.mark.parametrize("path", ["/", "/api/apps"])
@pytest.mark.parametrize(
    "page", ["99999999999999999999", "100001", "0", "-1", "abc", "1.5", "4796\u00b9", "\u0663", "9" * 5000]
)
def test_page_number_out_of_range_is_a_400_not_an_overflow_500(service: TrustProcess, path: str, page: str) -> None:
    """``?page=99999999999999999999`` overflowed SQLite's 64-bit OFFSET and answered 500."""
    answer = httpx.get(service.url + path, params={"page": page})
    assert answer.status_code == 400, answer.text[:300]
    if path.startswith("/api/"):
        error = answer.json()["error"]
        assert error["code"] == "bad_request" and "page" in error["message"]
    else:
        assert "page must be a whole number" in answer.text


@pytest.mark.parametrize("path", ["/", "/api/apps"])
def test_a_nul_in_a_query_parameter_is_a_400(service: TrustProcess, path: str) -> None:
    answer = httpx.get(service.url + path, params={"q": "a\x00b"})
    assert answer.status_code == 400


def test_valid_page_numbers_still_list(service: TrustProcess) -> None:
    for page in ("", "1", "100000"):
        answer = httpx.get(f"{service.url}/api/apps", params={"page": page})
        assert answer.status_code == 200, (page, answer.text[:300])
    assert httpx.get(f"{service.url}/api/apps", params={"page": "100000"}).json()["offset"] == 99_999 * 50


def test_embed_snippets_do_not_copy_the_request_host_header(service: TrustProcess) -> None:
    """With no PUBLIC_URL the app page's badge/widget snippets used whatever ``Host`` the request named."""
    task = submitted(service.url, nitro_sample("base_2026-01-03_nondebug_indefinite_repaired.cbor"), at="doc")
    hostile = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    for path in (f"/apps/{task['app_id']}", f"/widget/{task['app_id']}"):
        page = httpx.get(service.url + path, headers=hostile)
        assert page.status_code == 200, page.text[:300]
        assert "evil.example" not in page.text
        assert f"{service.url}/apps/{task['app_id']}" in page.text


# --- the API and the pages on real evidence ---------------------------------------------------------------------


def test_json_api_follows_the_reference_shape(service: TrustProcess) -> None:
    task = submitted(service.url, nitro_sample("base_2024-11-30_nondebug.cbor"), at="doc")
    assert task["status"] == "completed" and task["verdict"] == "verified" and task["valid"] is True
    report = task["report"]
    assert {p["id"] for p in report["phases"]} == {"hardware", "os", "source", "binding"}
    assert all({"name", "ok", "status", "detail", "phase"} <= set(c) for c in report["checks"])
    assert report["graph"]["objects"] and report["graph"]["relationships"]
    assert report["core"]["module_id"] == "i-0de38b2b6853cc9e8-enc0193685e7fee7d85"
    app = httpx.get(f"{service.url}/api/app/{task['app_id']}").json()
    assert app["verdict"] == "verified" and app["latest"]["id"] == task["id"]
    assert [t["id"] for t in app["history"]] == [task["id"]]
    assert app["next_check_at"] is not None
    assert {"bucket", "key"} == set(task["result"])


def test_unpinned_code_reads_not_checked_in_the_api_and_grey_on_the_page_never_passed(service: TrustProcess) -> None:
    task = submitted(service.url, nitro_sample("base_2024-11-30_nondebug.cbor"), at="doc")
    source = next(p for p in task["report"]["phases"] if p["id"] == "source")
    assert source["status"] == "not_checked"
    assert httpx.get(f"{service.url}/api/app/{task['app_id']}").json()["summary"]["phases"]["source"] == "not_checked"
    page = httpx.get(f"{service.url}/tasks/{task['id']}").text
    section = page[page.index('data-phase="source"') :]
    section = section[: section.index("</section>")]
    assert 'data-status="not_checked"' in section and "Not checked (not pinned)" in section
    assert "Passed" not in section and "✓" not in section
    assert 'class="node node-not_checked" data-id="nitro-app"' in page
    assert "CODE · not pinned" in page and "CODE · verified" not in page


def test_ear_token_verifies_against_the_published_key(service: TrustProcess) -> None:
    task = submitted(service.url, nitro_sample("blocky_2024-09-07_debug.cbor"), at="doc")
    answer = httpx.get(f"{service.url}/api/task/{task['id']}/ear")
    assert answer.headers["content-type"].startswith("application/eat-ear+jwt")
    claims = verify_token(answer.text, httpx.get(f"{service.url}/.well-known/jwks.json").json())
    assert claims["ear_status"] == "contraindicated"
    assert claims["submods"]["nitro"]["ear_verifier_claims"]["error"]["code"] == "debug_mode"


def test_same_evidence_twice_is_one_app_with_two_verifications(service: TrustProcess) -> None:
    first = submitted(service.url, nitro_sample("evervault_2022-10-13_nondebug.cbor"), at="doc")
    second = submitted(service.url, nitro_sample("evervault_2022-10-13_nondebug.cbor"), at="doc")
    assert first["app_id"] == second["app_id"] and first["id"] != second["id"]
    history = httpx.get(f"{service.url}/api/app/{first['app_id']}").json()["history"]
    assert len(history) == 2


def test_reverify_now_queues_one_task(service: TrustProcess) -> None:
    task = submitted(service.url, nitro_sample("evervault_2023-01-18_nondebug_fromSAN.cbor"), at="doc")
    answer = httpx.post(f"{service.url}/api/app/{task['app_id']}/verify")
    assert answer.status_code == 202
    again = wait_task(service.url, answer.json()["task_id"])
    assert again["job_name"] == "manual" and again["verdict"] == "verified"
    page = httpx.post(f"{service.url}/apps/{task['app_id']}/verify", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/tasks/")


def test_pages_render_every_kind_of_result(service: TrustProcess) -> None:
    results = [
        submitted(service.url, tdx("trust-center", "debugData_kms_bundle.json"), kind="kms", name="KMS <debug>"),
        submitted(
            service.url,
            tdx("dcap-qvl", "tdx_quote"),
            collateral=tdx("dcap-qvl", "tdx_quote_collateral.json").read_text(),
            at="1750377600",
        ),
        submitted(service.url, tdx("trust-center", "debugData2_gateway_bundle.json"), kind="gateway"),
    ]
    for task in results:
        for path in (f"/apps/{task['app_id']}", f"/tasks/{task['id']}", f"/widget/{task['app_id']}"):
            page = httpx.get(service.url + path)
            assert page.status_code == 200, (path, page.text[:500])
            assert "<script>" not in page.text.replace('<script src="/static/trust.js" defer></script>', "")
        badge = httpx.get(f"{service.url}/badge/{task['app_id']}.svg")
        assert badge.status_code == 200 and badge.headers["content-type"].startswith("image/svg+xml")
    kms = httpx.get(f"{service.url}/apps/{results[0]['app_id']}").text
    assert "KMS &lt;debug&gt;" in kms  # names are escaped
    assert 'data-check="dstack.compose_file" data-check-status="failed"' in kms
    assert "<svg" in kms and 'class="trust-graph"' in kms
    quote = httpx.get(f"{service.url}/apps/{results[1]['app_id']}").text
    assert 'data-check="hardware.tcb_status" data-check-status="passed"' in quote
    assert "Not a known OS" in quote
    listing = httpx.get(service.url + "/", params={"kind": "gateway"}).text
    assert results[2]["app_id"] in listing and results[0]["app_id"] not in listing


def test_api_is_open_to_other_origins(service: TrustProcess) -> None:
    answer = httpx.get(f"{service.url}/api/apps", headers={"Origin": "https://elsewhere.example"})
    assert answer.headers["access-control-allow-origin"] == "*"
    preflight = httpx.options(
        f"{service.url}/api/tasks",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200


def test_widget_may_be_framed_only_by_the_allowlist(service: TrustProcess) -> None:
    task = submitted(service.url, nitro_sample("base_2026-01-03_nondebug_indefinite_repaired.cbor"), at="doc")
    widget = httpx.get(f"{service.url}/widget/{task['app_id']}")
    assert f"frame-ancestors {PARTNER}" in widget.headers["content-security-policy"]
    assert "x-frame-options" not in widget.headers
    page = httpx.get(f"{service.url}/apps/{task['app_id']}")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_registering_endpoints_needs_the_admin_token(service: TrustProcess) -> None:
    body = {"url": "http://127.0.0.1:9/attestation", "name": "somewhere", "kind": "enclave"}
    assert httpx.post(f"{service.url}/api/apps", json=body).status_code == 401
    wrong = httpx.post(f"{service.url}/api/apps", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    bad_scheme = httpx.post(
        f"{service.url}/api/apps",
        json={**body, "url": "file:///etc/passwd"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert bad_scheme.status_code == 422 and bad_scheme.json()["error"]["code"] == "endpoint_unsupported"
    answer = httpx.post(f"{service.url}/api/apps", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 202 and answer.json()["app_id"].startswith("e-")


def test_cancelling_a_task_needs_the_admin_token(service: TrustProcess) -> None:
    answer = httpx.post(
        f"{service.url}/api/apps",
        json={"url": "http://127.0.0.1:9/attestation", "name": "never answers"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    task_id = answer.json()["task_id"]
    assert httpx.post(f"{service.url}/api/task/{task_id}/cancel").status_code == 401
    cancelled = httpx.post(f"{service.url}/api/task/{task_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] in ("cancelled", "failed", "completed")
    assert wait_task(service.url, task_id)["status"] in ("cancelled", "failed")


def test_health_and_metrics(service: TrustProcess) -> None:
    health = httpx.get(f"{service.url}/healthz").json()
    assert health["ok"] is True
    metrics = httpx.get(f"{service.url}/metrics").text
    assert "trust_http_requests_total" in metrics and "trust_tasks" in metrics


def test_openapi_document_is_served_without_a_cdn_page(service: TrustProcess) -> None:
    assert httpx.get(f"{service.url}/api/openapi.json").status_code == 200
    assert httpx.get(f"{service.url}/docs").status_code == 404
    assert json.loads(httpx.get(f"{service.url}/api/openapi.json").text)["info"]["title"] == "enclavekit trust"


def test_bundle_whose_event_log_lies_is_stored_whole_with_a_clear_failure(service: TrustProcess) -> None:
    document = json.loads(tdx("trust-center", "debugData_gateway_bundle.json").read_text())
    events = json.loads(document["event_log"])
    for event in events:
        if event.get("event") == "compose-hash":
            event["event_payload"] = "00" * 32  # the log claims another compose file than the one measured
    lying = json.dumps({**document, "event_log": json.dumps(events)}).encode()
    answer = upload(service.url, lying)
    assert answer.status_code == 202  # well-formed: accepted, then judged
    task = wait_task(service.url, answer.json()["task_id"])
    assert (task["status"], task["verdict"], task["valid"]) == ("completed", "failed", False)
    checks = {c["name"]: c for c in task["report"]["checks"]}
    assert checks["event_log.digests"]["code"] == "event_digest_mismatch"
    assert "compose-hash" in checks["event_log.digests"]["detail"]
    page = httpx.get(f"{service.url}/apps/{task['app_id']}").text
    assert 'data-check="event_log.digests" data-check-status="failed"' in page


def test_python_client_submits_waits_and_checks_the_ear_against_a_pinned_key(service: TrustProcess) -> None:
    from enclavekit.services.trust.client import TrustApiError, TrustClient
    from enclavekit.services.trust.errors import EndpointUnavailable
    from enclavekit.services.trust.signing import EarSigner, TokenInvalid

    with TrustClient(service.url) as client:
        pinned = client.jwks()
        accepted = client.submit(nitro_sample("blocky_2024-09-07_nondebug.cbor").read_bytes(), at="doc")
        task = client.wait(accepted["task_id"])
        assert task["verdict"] == "verified"
        assert client.app(task["app_id"])["latest"]["id"] == task["id"]
        assert client.ear(task["id"], jwks=pinned)["ear_status"] in ("affirming", "warning")
        with pytest.raises(TokenInvalid):  # a key the service does not hold is not fooled into passing
            client.ear(task["id"], jwks=EarSigner.load_or_create(Path(service.state) / "other.pem").jwks())  # type: ignore[attr-defined]
        with pytest.raises(TrustApiError) as refused:
            client.submit(b"garbage")
        assert refused.value.service_code == "malformed" and refused.value.status == 422
    with TrustClient("http://127.0.0.1:9") as nowhere, pytest.raises(EndpointUnavailable):
        nowhere.task("x")
