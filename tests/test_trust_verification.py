"""The trust service's verification, pure: real evidence in, verdicts by phase out, matching the fixtures' facts.

No I/O here: collateral is read from the fixture files and handed in, as the worker's edge would.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from enclavekit.attestation.collateral import Collateral
from enclavekit.attestation.evidence import Evidence
from enclavekit.attestation.verification_time import At
from enclavekit.services.trust.graph import TrustGraph, render_svg
from enclavekit.services.trust.model import Kind, TargetOptions, Verdict
from enclavekit.services.trust.registry import BUILTIN_SHA256, RegistryInvalid, load_registry, parse_registry
from enclavekit.services.trust.signing import EarSigner, TokenInvalid, verify_token
from enclavekit.services.trust.verification import CollateralOutcome, TrustReport, VerificationInput, verify_target
from tests.nitro_samples import Sample, samples
from tests.test_trust_helpers import simulator_documents, tdx

NOW = datetime(2026, 11, 27, tzinfo=UTC)
REGISTRY = load_registry()
TC_BUNDLES = [
    "debugData_app_bundle.json",
    "debugData_gateway_bundle.json",
    "debugData_kms_bundle.json",
    "debugData2_app_bundle.json",
    "debugData2_gateway_bundle.json",
    "debugData2_kms_bundle.json",
    "hardcoded_kms_info_bundle.json",
]


def verify(evidence: bytes, *, now: datetime = NOW, **options: Any) -> TrustReport:
    extra = {k: options.pop(k) for k in ("collateral", "compose", "nonce", "simulator_roots", "kind") if k in options}
    if "nonce" in extra:
        options["nonce"] = True
    if "at" in options:
        options["at"] = At.parse(options["at"])
    parsed = Evidence.from_bytes(evidence)
    return verify_target(
        VerificationInput(evidence=parsed, options=TargetOptions(**options), registry=REGISTRY, **extra), now=now
    )


def check(report: TrustReport, name: str) -> Any:
    return next(c for c in report.checks if c.name == name)


def collateral_of(name: str) -> CollateralOutcome:
    return CollateralOutcome(Collateral.from_json(tdx("dcap-qvl", name).read_bytes()), "uploaded with the evidence")


def phase(report: TrustReport, ident: str) -> str:
    return report.phase_status(ident)


# --- Nitro: the facts of samples.json ---------------------------------------------------------------------------


@pytest.mark.parametrize("sample", [s for s in samples() if s.valid], ids=lambda s: s.name)
def test_every_real_nitro_document_gets_the_verdict_its_facts_say(sample: Sample) -> None:
    report = verify(sample.data, at="doc")
    assert report.tee == "nitro"
    assert report.subject == sample.facts["module_id"]
    assert report.core["measurements"]["pcr0"] == sample.facts["pcrs"]["0"]
    if sample.facts["debug_mode"]:
        assert report.verdict is Verdict.FAILED
        assert report.error is not None and report.error["code"] == "debug_mode"
        assert phase(report, "os") == "failed" and phase(report, "hardware") == "passed"
    else:
        assert report.verdict is Verdict.VERIFIED, report.error
        assert all(c.status in ("passed", "not_checked", "skipped") for c in report.checks)
        assert phase(report, "source") == "not_checked"  # no PCRs pinned: not passed
    assert report.evidence_time == sample.at


def test_corrupt_nitro_document_is_rejected_as_malformed() -> None:
    corrupt = next(s for s in samples() if not s.valid)
    report = verify(corrupt.data, at="doc")
    assert report.verdict is Verdict.FAILED
    assert report.error is not None and report.error["code"] == "malformed"
    assert report.os_name is None


def test_archived_nitro_document_checked_today_has_expired() -> None:
    sample = next(s for s in samples() if s.valid and not s.facts["debug_mode"])
    report = verify(sample.data, at="now")
    assert report.verdict is Verdict.FAILED
    assert report.error is not None and report.error["code"] == "certificate_expired"


def test_nitro_document_of_other_code_fails_a_pinned_pcr0() -> None:
    sample = next(s for s in samples() if s.valid and not s.facts["debug_mode"])
    report = verify(sample.data, at="doc", pcrs={0: "ab" * 48})
    assert report.verdict is Verdict.FAILED
    assert check(report, "policy.measurements").status == "failed"
    assert phase(report, "source") == "failed"


def test_replayed_nitro_document_fails_the_freshness_nonce(tmp_path: Path) -> None:
    make, _ = simulator_documents(tmp_path)
    from enclavekit.nsm.simulator import load_root

    roots = (load_root(tmp_path),)
    old = make(b"\x01" * 32)
    fresh = verify(make(b"\x02" * 32), nonce=b"\x02" * 32, trust_simulator=True, simulator_roots=roots, now=_now())
    assert fresh.verdict is Verdict.VERIFIED, fresh.error
    replayed = verify(old, nonce=b"\x02" * 32, trust_simulator=True, simulator_roots=roots, now=_now())
    assert replayed.verdict is Verdict.FAILED
    assert check(replayed, "policy.nonce").status == "failed"
    assert phase(replayed, "binding") == "failed"


def _now() -> datetime:
    return datetime.now(UTC)


def test_simulated_enclave_is_refused_unless_its_root_is_trusted_and_then_marked_simulated(tmp_path: Path) -> None:
    make, pcr0 = simulator_documents(tmp_path)
    from enclavekit.nsm.simulator import load_root

    document = make(None)
    refused = verify(document, now=_now())
    assert refused.verdict is Verdict.FAILED and refused.error is not None
    assert refused.error["code"] == "chain_untrusted"
    trusted = verify(document, now=_now(), trust_simulator=True, simulator_roots=(load_root(tmp_path),), pcrs={0: pcr0})
    assert trusted.verdict is Verdict.VERIFIED, trusted.error
    assert trusted.simulated and check(trusted, "hardware.simulated").status == "passed"
    assert trusted.os_name == "AWS Nitro (simulated NSM)"
    assert trusted.summary()["simulated"] is True


# --- TDX quotes with collateral: the facts of tdx/README.md ---------------------------------------------------


def test_tdx_quote_with_current_collateral_is_genuine_and_up_to_date_but_its_os_is_unknown() -> None:
    report = verify(
        tdx("dcap-qvl", "tdx_quote").read_bytes(),
        collateral=collateral_of("tdx_quote_collateral.json"),
        at="2025-06-20T00:00:00+00:00",
    )
    assert phase(report, "hardware") == "passed"
    assert check(report, "hardware.quote").status == "passed"
    assert report.core["tcb_status"] == "UpToDate"
    assert report.core["fmspc"] == "B0C06F000000"
    assert report.core["measurements"]["mrtd"].startswith("91eb2b44d141d4ec")
    # no registry entry has this MRTD: the OS phase fails closed, and says why
    assert phase(report, "os") == "failed"
    assert check(report, "policy.measurements").code == "measurement_mismatch"
    assert report.os["matched"] is None
    assert report.verdict is Verdict.FAILED


def test_tdx_quote_with_expired_collateral_fails_the_hardware_phase() -> None:
    report = verify(
        tdx("dcap-qvl", "tdx_quote").read_bytes(),
        collateral=collateral_of("tdx_quote_collateral.json"),
        at="2026-01-01T00:00:00+00:00",
    )
    assert report.verdict is Verdict.FAILED
    assert check(report, "hardware.collateral").code == "collateral_expired"


def test_tdx_quote_with_one_flipped_mrtd_bit_fails_the_signature() -> None:
    quote = bytearray(tdx("dcap-qvl", "tdx_quote").read_bytes())
    body = quote.find(bytes.fromhex("91eb2b44d141d4ec"))
    quote[body] ^= 0x01
    report = verify(bytes(quote), collateral=collateral_of("tdx_quote_collateral.json"), at="2025-06-20T00:00:00Z")
    assert report.verdict is Verdict.FAILED
    assert check(report, "hardware.quote").code == "quote_signature_invalid"


def test_tdx_quote_of_an_outdated_platform_does_not_pass() -> None:
    report = verify(
        tdx("dcap-qvl", "tdx_quote_outdated").read_bytes(),
        collateral=collateral_of("tdx_quote_outdated_collateral.json"),
        at="2025-06-20T00:00:00Z",
    )
    assert report.verdict is Verdict.FAILED
    assert phase(report, "hardware") == "failed"


def test_near_quote_in_hex_verifies_up_to_date() -> None:
    report = verify(
        tdx("dcap-qvl", "near_quote_hex.txt").read_bytes(),
        collateral=collateral_of("near_quote_collateral.json"),
        at="2025-09-10T00:00:00Z",
    )
    assert phase(report, "hardware") == "passed", [c for c in report.checks if c.status != "passed"]
    assert report.core["tcb_status"] == "UpToDate"


def test_sgx_quote_is_reported_as_sgx_not_taken_for_tdx() -> None:
    report = verify(
        tdx("dcap-qvl", "sgx_quote").read_bytes(),
        collateral=collateral_of("sgx_quote_collateral.json"),
        at="2025-06-20T00:00:00Z",
    )
    assert report.verdict is Verdict.FAILED
    assert report.tee == "sgx"
    assert any(c.code == "tee_mismatch" for c in report.checks)


def test_pccs_down_without_cached_collateral_leaves_the_hardware_phase_in_error() -> None:
    outcome = CollateralOutcome(error_code="collateral_unavailable", error="the PCCS is unavailable: refused")
    report = verify(tdx("trust-center", "debugData_gateway_bundle.json").read_bytes(), collateral=outcome)
    source = check(report, "collateral.source")
    assert source.status == "error" and source.code == "collateral_unavailable"
    assert "PCCS is unavailable" in source.detail
    assert report.verdict is Verdict.INCOMPLETE
    assert phase(report, "hardware") == "error"


# --- dstack bundles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TC_BUNDLES)
def test_trust_center_bundles_get_the_verdicts_the_readme_states(name: str) -> None:
    document = json.loads(tdx("trust-center", name).read_text())
    report = verify(json.dumps(document).encode(), kind=Kind.GATEWAY if "gateway" in name else Kind.APP)
    assert check(report, "event_log.replay").status == "passed"
    assert check(report, "event_log.digests").status == "passed"
    # no collateral ships with these quotes: the hardware could not be checked, and the report says so
    assert check(report, "collateral.source").code == "collateral_missing"
    assert phase(report, "hardware") == "error"
    facts = document.get("compose_hash_check")
    if facts is not None:
        compose = check(report, "dstack.compose_file")
        assert compose.status == ("passed" if facts["match"] else "failed")
        if not facts["match"]:
            assert compose.code == "compose_hash_mismatch"
            assert compose.expected == facts["event_compose_hash"]
            assert compose.actual == facts["sha256_app_compose"]
    else:
        assert not any(c.name == "dstack.compose_file" for c in report.checks)
    if name == "debugData_kms_bundle.json" or name == "hardcoded_kms_info_bundle.json":
        assert report.verdict is Verdict.FAILED  # compose mismatch and/or an OS image not in the registry
    else:
        assert report.verdict is Verdict.INCOMPLETE, [c for c in report.checks if c.status == "failed"]
        matched = report.os["matched"]
        assert matched is not None and matched["provenance"]["method"] == "observed"
        assert report.os_name == matched["name"]
    assert check(report, "source.onchain").status == "skipped"


def test_debug_data_kms_fails_on_its_placeholder_compose_file() -> None:
    report = verify(tdx("trust-center", "debugData_kms_bundle.json").read_bytes())
    failed = {c.name for c in report.checks if c.status == "failed"}
    assert "dstack.compose_file" in failed
    assert report.summary()["phases"]["source"] == "failed"


def test_os_phase_compares_the_quote_not_what_the_vm_config_claims() -> None:
    document = json.loads(tdx("trust-center", "debugData_app_bundle.json").read_text())
    gateway = json.loads(json.loads(tdx("trust-center", "debugData_gateway_bundle.json").read_text())["vm_config"])
    # the host claims the gateway's VM shape: the registry expects that shape's RTMR0, the quote has another
    report = verify(json.dumps({**document, "vm_config": json.dumps(gateway)}).encode())
    assert check(report, "policy.measurements").status == "failed"
    assert report.os["candidates"] == ["dstack-2d24d302-4cpu-8g"]
    # a shape no entry has: every entry of the image is a candidate, and the quote picks the one it matches
    config = json.loads(document["vm_config"])
    config["cpu_count"] = 3
    report = verify(json.dumps({**document, "vm_config": json.dumps(config)}).encode())
    assert check(report, "policy.measurements").status == "passed"
    assert report.os["matched"]["id"] == "dstack-2d24d302-2cpu-4g"
    assert report.os["selection"].endswith("not on this VM shape")


def _lying(document: dict[str, Any], event: str, payload: str) -> bytes:
    events = json.loads(document["event_log"])
    for entry in events:
        if entry.get("event") == event:
            entry["event_payload"] = payload
    return json.dumps({**document, "event_log": json.dumps(events)}).encode()


def test_bundle_whose_event_log_lies_about_the_compose_hash_is_caught() -> None:
    document = json.loads(tdx("trust-center", "debugData_gateway_bundle.json").read_text())
    forged = hashlib.sha256(b"services: {evil: {image: attacker/backdoor}}").hexdigest()
    report = verify(_lying(document, "compose-hash", forged))
    assert report.verdict is Verdict.FAILED
    digest = check(report, "event_log.digests")
    assert digest.status == "failed" and digest.code == "event_digest_mismatch"


def test_bundle_whose_event_log_lies_about_a_boot_digest_fails_the_replay() -> None:
    document = json.loads(tdx("trust-center", "debugData_gateway_bundle.json").read_text())
    events = json.loads(document["event_log"])
    boot = next(e for e in events if e["imr"] == 1)
    boot["digest"] = "00" * 48
    boot["event_payload"] = ""
    report = verify(json.dumps({**document, "event_log": json.dumps(events)}).encode())
    assert report.verdict is Verdict.FAILED
    assert check(report, "event_log.replay").code == "rtmr_mismatch"


def test_gateway_domain_checks_are_shown_as_not_performed_offline() -> None:
    report = verify(tdx("trust-center", "debugData_gateway_bundle.json").read_bytes(), kind=Kind.GATEWAY)
    for name in ("domain.certificate", "domain.caa", "domain.ct"):
        assert check(report, name).status == "skipped"
    assert phase(report, "binding") == "skipped"


def test_wrong_report_data_fails_the_binding_phase() -> None:
    report = verify(tdx("dstack", "quote-report.json").read_bytes(), report_data="00" * 64)
    assert check(report, "policy.report_data").status == "failed"
    assert phase(report, "binding") == "failed"


def test_garbage_is_a_failed_report_not_a_crash() -> None:
    for garbage in (b"", b"\x00" * 10, b"{}", b'{"quote": 1, "event_log": []}', b"\x84\x01", "é".encode() * 100):
        report = verify(garbage)
        assert report.verdict is Verdict.FAILED
        assert report.error is not None
        json.dumps(report.to_json())


# --- registry, graph, EAR ---------------------------------------------------------------------------------------


def test_builtin_registry_is_pinned_and_every_entry_has_provenance() -> None:
    assert REGISTRY.sha256 == BUILTIN_SHA256
    assert REGISTRY.entries
    for entry in REGISTRY.entries:
        assert entry.provenance.method in ("observed", "reproduced")
        assert entry.provenance.source


def test_changed_registry_file_is_refused(tmp_path: Path) -> None:
    from importlib import resources

    text = resources.files("enclavekit.services.trust").joinpath("data/os-measurements.toml").read_text()
    changed = tmp_path / "registry.toml"
    changed.write_text(text.replace('method = "observed"', 'method = "reproduced"', 1))
    with pytest.raises(RegistryInvalid, match="pinned"):
        load_registry(changed, sha256=BUILTIN_SHA256)
    with pytest.raises(RegistryInvalid, match="must be pinned"):
        load_registry(changed)
    assert load_registry(changed, sha256=hashlib.sha256(changed.read_bytes()).hexdigest()).entries


@pytest.mark.parametrize(
    "text",
    [
        "version = 2",
        "version = 1\n[[tdx]]\nid = 'x'\nmrtd = 'ab'",
        "version = 1\nunknown = 1",
        "version = 1\n[[tdx]]\nid = 'x'\nmrtd = '"
        + "00" * 48
        + "'\nrtmr0 = '"
        + "00" * 48
        + "'\nrtmr1 = '"
        + "00" * 48
        + "'\nrtmr2 = '"
        + "00" * 48
        + "'",
        "not toml [",
    ],
)
def test_malformed_registry_is_a_configuration_error(text: str) -> None:
    with pytest.raises(RegistryInvalid):
        parse_registry(text.encode(), source="test", sha256="0" * 64)


def test_graph_draws_what_runs_on_what_and_who_provides_keys() -> None:
    report = verify(tdx("trust-center", "debugData_app_bundle.json").read_bytes())
    graph = TrustGraph.from_json(report.to_json()["graph"])
    kinds = {o.id: o.kind for o in graph.objects}
    assert kinds == {
        "tdx-main": "app",
        "tdx-code": "code",
        "tdx-os": "os",
        "tdx-platform": "hardware",
        "tdx-key-provider": "kms",
    }
    labels = {(r.source, r.target): r.label for r in graph.relationships}
    assert labels[("tdx-main", "tdx-key-provider")] == "gets keys from"
    assert labels[("tdx-code", "tdx-os")] == "runs on"
    os_object = next(o for o in graph.objects if o.id == "tdx-os")
    assert {m.field for m in os_object.measured_by} == {"MRTD", "RTMR0", "RTMR1", "RTMR2"}
    assert next(o for o in graph.objects if o.id == "tdx-platform").status == "error"
    svg = render_svg(graph)
    assert svg.startswith("<svg") and svg.count('class="node') == 5


def test_graph_text_cannot_inject_markup() -> None:
    from enclavekit.services.trust.graph import DataObject

    graph = TrustGraph(
        (DataObject("a", "<script>alert(1)</script>", "app", "passed", "</title><script>", {"x": "<img onerror=1>"}),),
        (),
    )
    svg = render_svg(graph)
    assert "<script>" not in svg and "<img" not in svg


def test_ear_token_is_signed_and_tampering_is_detected(tmp_path: Path) -> None:
    report = verify(next(s for s in samples() if s.valid and not s.facts["debug_mode"]).data, at="doc")
    signer = EarSigner.load_or_create(tmp_path / "key.pem")
    token = signer.sign(report.ear)
    claims = verify_token(token, signer.jwks())
    assert claims["ear_status"] == report.ear["ear_status"]
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert EarSigner.load_or_create(tmp_path / "key.pem").kid == signer.kid  # the same key next time
    head, body, signature = token.split(".")
    import base64

    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["ear_status"] = "affirming"
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenInvalid):
        verify_token(f"{head}.{forged_body}.{signature}", signer.jwks())
    other = EarSigner.load_or_create(tmp_path / "other.pem")
    with pytest.raises(TokenInvalid):
        verify_token(token, other.jwks())


def test_a_debug_document_contraindicates_in_the_ear() -> None:
    debug = next(s for s in samples() if s.valid and s.facts["debug_mode"])
    report = verify(debug.data, at="doc")
    assert report.ear["ear_status"] == "contraindicated"


def test_a_verdict_without_pinned_code_says_so() -> None:
    sample = next(s for s in samples() if s.valid and not s.facts["debug_mode"])
    unpinned = verify(sample.data, at="doc")
    assert unpinned.verdict is Verdict.VERIFIED and unpinned.summary()["code_pinned"] is False
    pinned = verify(sample.data, at="doc", pcrs={0: sample.facts["pcrs"]["0"]})
    assert pinned.verdict is Verdict.VERIFIED and pinned.summary()["code_pinned"] is True


def test_unpinned_code_is_not_shown_as_passed_in_the_api_or_as_verified_in_the_graph() -> None:
    sample = next(s for s in samples() if s.valid and not s.facts["debug_mode"])
    unpinned = verify(sample.data, at="doc").to_json()
    source = next(p for p in unpinned["phases"] if p["id"] == "source")
    assert source["status"] == "not_checked"
    assert [c["status"] for c in source["checks"]] == ["not_checked"]
    assert unpinned["verdict"] == "verified"  # authentic: not pinned is not a failure either
    app = next(o for o in TrustGraph.from_json(unpinned["graph"]).objects if o.id == "nitro-app")
    assert app.status == "not_checked"
    svg = render_svg(TrustGraph((app,), ()))
    assert "verified" not in svg and "not pinned" in svg and "#15803d" not in svg  # grey, not green
    pinned = verify(sample.data, at="doc", pcrs={0: sample.facts["pcrs"]["0"]}).to_json()
    assert next(p for p in pinned["phases"] if p["id"] == "source")["status"] == "passed"
    assert next(o for o in pinned["graph"]["objects"] if o["id"] == "nitro-app")["status"] == "passed"
