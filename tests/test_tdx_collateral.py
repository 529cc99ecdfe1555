"""Collateral: parsing Intel's documents once, their validity window, and fetching them from a PCCS (a real HTTP
server on loopback that answers like Intel's PCCS API v4) with an on-disk cache."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from enclavekit.attestation import tdx
from enclavekit.attestation.collateral import MAX_COLLATERAL_SIZE, Collateral, fetch_collateral, load_collateral
from enclavekit.attestation.errors import (
    CollateralInvalid,
    CollateralMismatch,
    CollateralUnavailable,
    Malformed,
    QuoteSignatureInvalid,
)
from enclavekit.attestation.quote import Quote
from tests.conftest import fixtures_dir

TDX_AT = datetime.fromtimestamp(1750377600, UTC)
ANY = tdx.TdxPolicy(unsafe_any_measurements=True)


def _document(name: str = "tdx_quote_collateral.json") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(fixtures_dir("tdx", "dcap-qvl", name).read_text())
    return loaded


def _quote(name: str = "tdx_quote") -> Quote:
    return Quote.parse(fixtures_dir("tdx", "dcap-qvl", name).read_bytes())


@pytest.mark.parametrize(
    ("name", "tee", "fmspc", "ca", "window"),
    [
        (
            "tdx_quote_collateral.json",
            "tdx",
            "B0C06F000000",
            "platform",
            "2025-06-19T10:32:27+00:00 .. 2025-07-19T10:00:35+00:00",
        ),
        (
            "near_quote_collateral.json",
            "tdx",
            "20A06F000000",
            "platform",
            "2025-09-02T07:41:59+00:00 .. 2025-10-02T07:03:51+00:00",
        ),
        (
            "sgx_quote_collateral.json",
            "sgx",
            "00A067110000",
            "processor",
            "2025-06-19T10:56:11+00:00 .. 2025-07-19T10:01:18+00:00",
        ),
    ],
)
def test_collateral_validity_window_is_where_every_part_is_current(
    name: str, tee: str, fmspc: str, ca: str, window: str
) -> None:
    collateral = load_collateral(fixtures_dir("tdx", "dcap-qvl", name))
    assert (collateral.tee, collateral.fmspc, collateral.ca) == (tee, fmspc, ca)
    assert collateral.describe_validity() == window
    assert collateral.valid_at(collateral.not_before)
    assert not collateral.valid_at(collateral.not_after + timedelta(seconds=1))
    assert not collateral.valid_at(collateral.not_before - timedelta(seconds=1))


def _mutated(**changes: Any) -> str:
    document = _document()
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    return json.dumps(document)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        (_mutated(tcb_info=None), "lacks tcb_info"),
        (_mutated(extra="x"), "unknown field"),
        (_mutated(pck_crl="zz"), "DER CRL"),
        (_mutated(root_ca_crl="3082"), "DER CRL"),
        (_mutated(tcb_info="{}"), "tcb_info id"),
        (_mutated(tcb_info_signature=7), "must be a string"),
        ('{"tcb_info": "a", "tcb_info": "b"}', "repeats the key"),
    ],
    ids=["not-json", "array", "missing", "unknown", "bad-crl", "truncated-crl", "no-tcb-id", "wrong-type", "dup-key"],
)
def test_unusable_collateral_is_rejected(text: str, match: str) -> None:
    with pytest.raises(Malformed, match=match):
        Collateral.from_json(text)


def test_qe_identity_of_the_other_tee_is_a_mismatch() -> None:
    sgx_identity = _document("sgx_quote_collateral.json")["qe_identity"]
    with pytest.raises(CollateralMismatch, match="QE identity"):
        Collateral.from_json(_mutated(qe_identity=sgx_identity))


def test_oversized_collateral_is_rejected_before_parsing() -> None:
    with pytest.raises(Malformed, match="over the limit"):
        Collateral.from_json(" " * (MAX_COLLATERAL_SIZE + 1))


def test_missing_collateral_file_is_reported_not_crashed(tmp_path: Path) -> None:
    with pytest.raises(Malformed, match="cannot read"):
        load_collateral(tmp_path / "absent.json")


def test_tampered_tcb_info_is_refused_as_collateral_not_signed_by_intel_not_as_a_forged_quote() -> None:
    document = _document()
    document["tcb_info"] = document["tcb_info"].replace('"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"', 1)
    assert document["tcb_info"] != _document()["tcb_info"]
    collateral = Collateral.from_json(json.dumps(document))
    report = tdx.report(_quote().raw, ANY, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, CollateralInvalid) and not isinstance(report.error, QuoteSignatureInvalid)
    assert report.error.code == "collateral_invalid"
    assert "Signature is invalid for tcb_info" in report.error.message


@pytest.mark.parametrize("key", ["pck_crl", "root_ca_crl"])
@pytest.mark.parametrize("absent", ["drop", "null", "empty"])
def test_collateral_without_crls_is_collateral_invalid_naming_the_crl(key: str, absent: str) -> None:
    document = _document()
    if absent == "drop":
        del document[key]
    else:
        document[key] = None if absent == "null" else ""
    with pytest.raises(CollateralInvalid, match=f"lacks its CRL.*{key}") as caught:
        Collateral.from_json(json.dumps(document))
    assert caught.value.code == "collateral_invalid"


# --- a PCCS on loopback ------------------------------------------------------------------------------------------


@dataclass
class FakePccs:
    """Serves one platform's collateral the way Intel's PCCS v4 API does (signed JSON bodies, issuer chains in
    URL-encoded headers, DER CRLs)."""

    document: dict[str, Any]
    fmspc: str
    requests: list[str] = field(default_factory=list)
    fail: bool = False
    url: str = ""

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        self.requests.append(path)
        if self.fail:
            return 500, {}, b"internal error"
        doc = self.document
        quote = urllib.parse.quote
        parsed = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parsed.query)
        if parsed.path == "/tdx/certification/v4/tcb" and query.get("fmspc") == [self.fmspc]:
            body = '{"tcbInfo":' + doc["tcb_info"] + ',"signature":"' + doc["tcb_info_signature"] + '"}'
            return 200, {"TCB-Info-Issuer-Chain": quote(doc["tcb_info_issuer_chain"])}, body.encode()
        if parsed.path == "/tdx/certification/v4/qe/identity":
            body = '{"enclaveIdentity":' + doc["qe_identity"] + ', "signature": "' + doc["qe_identity_signature"] + '"}'
            headers = {"SGX-Enclave-Identity-Issuer-Chain": quote(doc["qe_identity_issuer_chain"])}
            return 200, headers, body.encode()
        if parsed.path == "/sgx/certification/v4/pckcrl" and query.get("ca") == ["platform"]:
            headers = {"SGX-PCK-CRL-Issuer-Chain": quote(doc["pck_crl_issuer_chain"])}
            return 200, headers, bytes.fromhex(doc["pck_crl"])
        if parsed.path == "/sgx/certification/v4/rootcacrl":
            return 200, {}, doc["root_ca_crl"].encode()
        return 404, {}, b"not found"


@pytest.fixture
def pccs() -> Iterator[FakePccs]:
    fake = FakePccs(_document(), "B0C06F000000")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = fake.answer(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_collateral_fetched_from_a_pccs_verifies_the_quote(pccs: FakePccs) -> None:
    collateral = fetch_collateral(_quote(), pccs_url=pccs.url, now=TDX_AT)
    fixture = Collateral.from_json(json.dumps(_document()))
    assert collateral.qvl.tcb_info == fixture.qvl.tcb_info  # Intel's signed bytes, exactly
    assert collateral.describe_validity() == fixture.describe_validity()
    assert tdx.verify(_quote().raw, ANY, now=TDX_AT, collateral=collateral).tcb_status == "UpToDate"
    assert len(pccs.requests) == 4


def test_pccs_url_with_the_api_path_is_accepted(pccs: FakePccs) -> None:
    collateral = fetch_collateral(_quote(), pccs_url=pccs.url + "/sgx/certification/v4/", now=TDX_AT)
    assert collateral.fmspc == "B0C06F000000"


def test_cached_collateral_is_reused_until_its_next_update(pccs: FakePccs, tmp_path: Path) -> None:
    first = fetch_collateral(_quote(), pccs_url=pccs.url, now=TDX_AT, cache_dir=tmp_path)
    assert (tmp_path / "tdx-B0C06F000000-platform.json").is_file()
    again = fetch_collateral(_quote(), pccs_url=pccs.url, now=first.not_after, cache_dir=tmp_path)
    assert len(pccs.requests) == 4  # the cache answered
    assert again.describe_validity() == first.describe_validity()
    fetch_collateral(_quote(), pccs_url=pccs.url, now=first.not_after + timedelta(seconds=1), cache_dir=tmp_path)
    assert len(pccs.requests) == 8  # past nextUpdate: asked again


def test_corrupt_cache_file_is_ignored_and_replaced(pccs: FakePccs, tmp_path: Path) -> None:
    (tmp_path / "tdx-B0C06F000000-platform.json").write_text("{ not json")
    collateral = fetch_collateral(_quote(), pccs_url=pccs.url, now=TDX_AT, cache_dir=tmp_path)
    assert len(pccs.requests) == 4
    assert load_collateral(tmp_path / "tdx-B0C06F000000-platform.json").fmspc == collateral.fmspc


def test_tampered_cache_cannot_make_a_quote_pass(pccs: FakePccs, tmp_path: Path) -> None:
    document = _document()
    document["qe_identity_signature"] = "00" * 64
    (tmp_path / "tdx-B0C06F000000-platform.json").write_text(json.dumps(document))
    collateral = fetch_collateral(_quote(), pccs_url=pccs.url, now=TDX_AT, cache_dir=tmp_path)
    assert pccs.requests == []  # the cache was current, so it was used...
    assert not tdx.report(_quote().raw, ANY, now=TDX_AT, collateral=collateral).valid  # ...and refused


def test_pccs_failure_is_a_retryable_infrastructure_error(pccs: FakePccs) -> None:
    pccs.fail = True
    with pytest.raises(CollateralUnavailable) as raised:
        fetch_collateral(_quote(), pccs_url=pccs.url, now=TDX_AT)
    assert raised.value.retryable


def test_pccs_without_this_platform_is_unavailable_not_a_crash(pccs: FakePccs) -> None:
    pccs.fmspc = "000000000000"
    with pytest.raises(CollateralUnavailable, match="HTTP 404"):
        fetch_collateral(_quote(), pccs_url=pccs.url, now=TDX_AT)


def test_unreachable_pccs_is_unavailable() -> None:
    with pytest.raises(CollateralUnavailable):
        fetch_collateral(_quote(), pccs_url="http://127.0.0.1:9", now=TDX_AT, timeout=2)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://pccs.example", "pccs.example"])
def test_only_http_pccs_urls_are_fetched(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        fetch_collateral(_quote(), pccs_url=url, now=TDX_AT)
