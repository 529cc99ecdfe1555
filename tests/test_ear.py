"""EAR (EAT Attestation Results) claims sets made from real verification reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest

from enclavekit.attestation import dstack, ear, tdx
from enclavekit.attestation.collateral import load_collateral
from enclavekit.attestation.ear import EAR_PROFILE, TrustTier, TrustVector, ear_from_report, tier_of
from enclavekit.attestation.errors import TcbStatusRejected
from enclavekit.attestation.quote import Quote, decode_quote_text
from enclavekit.attestation.report import Check, Report
from enclavekit.attestation.tdx import MeasurementSet, TdxPolicy
from tests.conftest import fixtures_dir

TDX_AT = datetime.fromtimestamp(1750377600, UTC)
ISSUED = datetime(2026, 6, 1, tzinfo=UTC)
ANY = TdxPolicy(unsafe_any_measurements=True)


def _tdx_report(**options: Any) -> Report[Any]:
    quote = decode_quote_text(fixtures_dir("tdx", "dcap-qvl", "tdx_quote").read_bytes())
    collateral = load_collateral(fixtures_dir("tdx", "dcap-qvl", "tdx_quote_collateral.json"))
    return tdx.report(
        quote, options.pop("policy", ANY), now=options.pop("now", TDX_AT), collateral=collateral, **options
    )


def _bundle_report(name: str) -> Report[Any]:
    data = fixtures_dir("tdx", "trust-center", name).read_bytes()
    return dstack.report(data, ANY, now=ISSUED, unsafe_no_collateral=True)


def _pinned() -> TdxPolicy:
    td = Quote.parse(fixtures_dir("tdx", "dcap-qvl", "tdx_quote").read_bytes()).td
    assert td is not None
    return TdxPolicy(measurements=[MeasurementSet(td.mr_td, td.rtmrs[0], td.rtmrs[1], td.rtmrs[2])])


def test_verified_tdx_quote_is_affirming_with_genuine_hardware() -> None:
    claims = ear_from_report(_tdx_report(policy=_pinned()), issued_at=ISSUED).to_json()
    assert claims["eat_profile"] == EAR_PROFILE
    assert claims["iat"] == int(ISSUED.timestamp())
    assert claims["ear_verifier_id"]["build"].startswith("enclavekit ")
    assert claims["ear_status"] == "affirming"
    submod = claims["submods"]["tdx"]
    assert submod["ear_status"] == "affirming"
    vector = submod["ear_trustworthiness_vector"]
    assert vector["hardware"] == 2
    assert vector["executables"] == 3  # the OS: a bare quote says nothing about the app
    assert vector["configuration"] == 2
    assert vector["runtime-opaque"] == 2
    assert submod["ear_attester_claims"]["measurements"]["mrtd"].startswith("91eb2b44")
    assert submod["ear_verifier_claims"]["tcb_status"] == "UpToDate"
    json.dumps(claims)  # serialisable as is


def test_authenticity_alone_is_not_an_approval_of_the_code() -> None:
    appraisal = ear.appraise(_tdx_report())  # unsafe_any_measurements
    assert appraisal.trust_vector["hardware"] == 2
    assert appraisal.trust_vector["executables"] == 0
    assert appraisal.status is TrustTier.WARNING


def test_expired_collateral_is_contraindicated_and_makes_no_hardware_claim() -> None:
    appraisal = ear.appraise(_tdx_report(now=datetime(2026, 1, 1, tzinfo=UTC)))
    assert appraisal.status is TrustTier.CONTRAINDICATED
    assert appraisal.trust_vector["hardware"] == 0
    assert appraisal.verifier_claims["error"]["code"] == "collateral_expired"


def test_rejected_tcb_status_contraindicates_the_hardware() -> None:
    report = _tdx_report(policy=TdxPolicy(unsafe_any_measurements=True, allowed_tcb_statuses=frozenset({"OutOfDate"})))
    assert isinstance(report.error, TcbStatusRejected)
    appraisal = ear.appraise(report)
    assert appraisal.trust_vector["hardware"] == 96
    assert appraisal.status is TrustTier.CONTRAINDICATED


def test_forged_quote_is_a_cryptographic_validation_failure() -> None:
    quote = bytearray(decode_quote_text(fixtures_dir("tdx", "dcap-qvl", "tdx_quote").read_bytes()))
    quote[200] ^= 1
    collateral = load_collateral(fixtures_dir("tdx", "dcap-qvl", "tdx_quote_collateral.json"))
    appraisal = ear.appraise(tdx.report(bytes(quote), ANY, now=TDX_AT, collateral=collateral))
    assert appraisal.trust_vector["hardware"] == 99
    assert appraisal.status is TrustTier.CONTRAINDICATED


def test_dstack_bundle_without_verified_hardware_is_at_best_a_warning() -> None:
    data = fixtures_dir("tdx", "trust-center", "debugData2_gateway_bundle.json").read_bytes()
    bundle = dstack.DstackBundle.from_json(data)
    td = bundle.quote.td
    assert td is not None
    compose = dstack.app_info(bundle.event_log).compose_hash
    policy = TdxPolicy(
        measurements=[MeasurementSet(td.mr_td, td.rtmrs[0], td.rtmrs[1], td.rtmrs[2])],
        compose_hashes=frozenset({compose}),
    )
    appraisal = ear.appraise(dstack.report(data, policy, now=ISSUED, unsafe_no_collateral=True))
    assert appraisal.trust_vector["hardware"] == 0
    assert appraisal.trust_vector["executables"] == 2  # OS and app both pinned
    assert appraisal.trust_vector["file-system"] == 2  # an allowed compose hash
    assert appraisal.status is TrustTier.WARNING
    assert appraisal.verifier_claims["hardware_verified"] is False
    assert appraisal.verifier_claims["app"]["compose_verified"] is True


def test_compose_file_that_merely_matches_is_not_an_approved_file() -> None:
    appraisal = ear.appraise(_bundle_report("debugData2_gateway_bundle.json"))
    assert appraisal.trust_vector["file-system"] == 0
    assert appraisal.trust_vector["executables"] == 0


def test_placeholder_compose_contraindicates_the_file_system_claim() -> None:
    appraisal = ear.appraise(_bundle_report("debugData_kms_bundle.json"))
    assert appraisal.trust_vector["file-system"] == 96
    assert appraisal.status is TrustTier.CONTRAINDICATED


def _synthetic(checks: list[Check], facts: dict[str, Any]) -> Report[Any]:
    from enclavekit.attestation.report import VerifiedAttestation

    attestation = VerifiedAttestation(tee="tdx", timestamp=None, debug=False, measurements=MappingProxyType({}))
    return Report("tdx", tuple(checks), attestation, None, MappingProxyType(facts))


def test_allowed_but_outdated_tcb_is_unsafe_hardware_and_a_warning() -> None:
    report = _synthetic([Check("hardware.quote", True, "ok", "hardware")], {"tcb_status": "OutOfDate"})
    appraisal = ear.appraise(report)
    assert appraisal.trust_vector["hardware"] == 32
    assert appraisal.status is TrustTier.WARNING


def test_advisories_alone_make_the_hardware_a_warning() -> None:
    facts = {"tcb_status": "UpToDate", "advisory_ids": ["INTEL-SA-00615"]}
    appraisal = ear.appraise(_synthetic([Check("hardware.quote", True, "ok", "hardware")], facts))
    assert appraisal.trust_vector["hardware"] == 32


def test_status_is_never_better_than_the_worst_claim() -> None:
    vector = TrustVector({"hardware": 2, "executables": 33})
    assert vector.tier is TrustTier.WARNING
    assert TrustVector({}).tier is TrustTier.NONE


@pytest.mark.parametrize(
    ("value", "tier"),
    [(-1, "none"), (0, "none"), (1, "none"), (2, "affirming"), (31, "affirming"), (32, "warning"), (95, "warning"),
     (96, "contraindicated"), (99, "contraindicated"), (127, "contraindicated"), (-2, "affirming"),
     (-33, "warning"), (-97, "contraindicated")],
)  # fmt: skip
def test_claim_values_fall_in_the_ar4si_tiers(value: int, tier: str) -> None:
    assert tier_of(value) == tier


@pytest.mark.parametrize("value", [128, -129])
def test_out_of_range_claims_are_refused(value: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        tier_of(value)


def test_unknown_trust_vector_claims_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        TrustVector({"firmware": 2})


def test_no_claim_entries_are_left_out_of_the_json() -> None:
    assert TrustVector({"hardware": 0, "executables": 3}).to_json() == {"executables": 3}


def test_submodule_name_policy_and_nonce_are_carried() -> None:
    claims = ear_from_report(
        _tdx_report(), issued_at=ISSUED, name="gateway", policy_id="policy:sha256:abcd", nonce="bm9uY2U"
    ).to_json()
    assert list(claims["submods"]) == ["gateway"]
    assert claims["submods"]["gateway"]["ear_appraisal_policy_ids"] == ["policy:sha256:abcd"]
    assert claims["eat_nonce"] == "bm9uY2U"


def test_naive_issue_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        ear_from_report(_tdx_report(), issued_at=datetime(2026, 1, 1))


def test_refusals_that_are_not_forgery_never_read_as_cryptographic_failure() -> None:
    for code, claim, value in [
        ("debug_mode", "configuration", 96),
        ("td_attributes_rejected", "configuration", 96),
        ("quote_unclassified", "hardware", 96),
        ("certificate_not_yet_valid", "hardware", 96),
        ("unsupported_evidence", "hardware", 1),
    ]:
        check = Check("hardware.quote", False, "refused", "hardware", code)
        report: Report[Any] = Report("tdx", (check,), None, TcbStatusRejected("refused"))
        appraisal = ear.appraise(report)
        assert appraisal.trust_vector[claim] == value, code
        assert appraisal.trust_vector["hardware"] != 99, code


def test_unusable_collateral_makes_no_hardware_claim_rather_than_a_verdict_against_it() -> None:
    check = Check("hardware.quote", False, "collateral lacks its CRLs", "hardware", "collateral_invalid")
    report: Report[Any] = Report("tdx", (check,), None, TcbStatusRejected("refused"))
    assert "hardware" not in ear.appraise(report).trust_vector.to_json()
