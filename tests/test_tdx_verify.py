"""The TDX verifier against real quotes and Intel collateral, and the policy decisions dcap-qvl leaves to us."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dcap_qvl
import pytest

from enclavekit.attestation import tdx
from enclavekit.attestation._debug_td import shadow_verdict
from enclavekit.attestation.collateral import Collateral, load_collateral
from enclavekit.attestation.errors import (
    CertificateNotYetValid,
    CertificateRevoked,
    CollateralExpired,
    CollateralInvalid,
    CollateralMismatch,
    CollateralMissing,
    ComposeHashMismatch,
    DebugMode,
    MeasurementMismatch,
    PlatformRejected,
    PolicyInvalid,
    QuoteSignatureInvalid,
    ReportDataMismatch,
    TcbStatusRejected,
    TdAttributesRejected,
    TeeMismatch,
)
from enclavekit.attestation.evidence import VerifyOptions, verify_evidence
from enclavekit.attestation.nitro import UnsafePolicyWarning
from enclavekit.attestation.policy_file import PolicyFile
from enclavekit.attestation.quote import Quote, decode_quote_text
from enclavekit.attestation.tdx import (
    ExactReportData,
    HashedReportData,
    KeyNonceReportData,
    MeasurementSet,
    TdxPolicy,
    key_nonce_report_data,
)
from enclavekit.attestation.verification_time import At
from tests.conftest import fixtures_dir
from tests.dcap_forge import DcapPki

TDX_AT = datetime.fromtimestamp(1750377600, UTC)  # 2025-06-20, inside the collateral's validity
EXPIRED_AT = datetime.fromtimestamp(1767225600, UTC)  # 2026-01-01
NEAR_AT = datetime.fromtimestamp(1757462400, UTC)  # 2025-09-10
OUTDATED_AT = datetime(2026, 3, 1, tzinfo=UTC)  # inside the outdated quote's collateral window
SGX_AT = datetime(2025, 7, 1, tzinfo=UTC)
ANY = TdxPolicy(unsafe_any_measurements=True)
MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
# offsets in a v4 TDX quote: header 48, then the TD report
TD_ATTRIBUTES = 48 + 16 + 48 + 48 + 8
MR_SIGNER_SEAM = 48 + 16 + 48
MR_TD = TD_ATTRIBUTES + 8 + 8
REPORT_DATA = 48 + 520


def _quote(name: str) -> bytes:
    return decode_quote_text(fixtures_dir("tdx", "dcap-qvl", name).read_bytes())


def _collateral(name: str) -> Collateral:
    return load_collateral(fixtures_dir("tdx", "dcap-qvl", name))


def _tdx() -> tuple[bytes, Collateral]:
    return _quote("tdx_quote"), _collateral("tdx_quote_collateral.json")


def _patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


def _flip(raw: bytes, offset: int, mask: int = 1) -> bytes:
    return _patched(raw, offset, bytes([raw[offset] ^ mask]))


def _pinned(quote: bytes, **changes: bytes) -> MeasurementSet:
    td = Quote.parse(quote).td
    assert td is not None
    values = {"mrtd": td.mr_td, "rtmr0": td.rtmrs[0], "rtmr1": td.rtmrs[1], "rtmr2": td.rtmrs[2], **changes}
    return MeasurementSet(name="fixture", **values)


def _check(report: tdx.Report[tdx.TdxAttestation], name: str) -> tdx.Check:  # type: ignore[name-defined]
    return next(c for c in report.checks if c.name == name)


# --- the proof: real quotes with real collateral ------------------------------------------------------


def test_tdx_quote_is_up_to_date_at_its_collateral_date() -> None:
    quote, collateral = _tdx()
    attestation = tdx.verify(quote, ANY, now=TDX_AT, collateral=collateral)
    assert attestation.tee == "tdx"
    assert attestation.tcb_status == "UpToDate"
    assert attestation.advisory_ids == ()
    assert attestation.fmspc == "B0C06F000000"
    assert attestation.hardware_verified
    assert attestation.measurements["mrtd"].hex() == MRTD
    assert attestation.measurements["rtmr3"] == bytes(48)
    assert not attestation.debug


def test_tdx_quote_with_expired_collateral_is_rejected_on_new_years_day_2026() -> None:
    quote, collateral = _tdx()
    report = tdx.report(quote, ANY, now=EXPIRED_AT, collateral=collateral)
    assert isinstance(report.error, CollateralExpired)
    check = _check(report, "hardware.collateral")
    assert check.expected == "2025-06-19T10:32:27+00:00 .. 2025-07-19T10:00:35+00:00"


def test_collateral_expiry_is_also_what_dcap_qvl_itself_says() -> None:
    quote, collateral = _tdx()
    with pytest.raises(ValueError, match="expired"):
        dcap_qvl.verify(quote, collateral.qvl, int(EXPIRED_AT.timestamp()))


def test_strict_platform_policy_rejects_the_dynamic_platform_like_dcap_qvl_strict() -> None:
    quote, collateral = _tdx()
    with pytest.raises(ValueError, match="Dynamic platform"):
        dcap_qvl.QuoteVerifier().verify_with_policy(
            quote, collateral.qvl, int(TDX_AT.timestamp()), dcap_qvl.QuotePolicy.strict(int(TDX_AT.timestamp()))
        )
    strict = TdxPolicy(unsafe_any_measurements=True, allow_dynamic_platform=False)
    report = tdx.report(quote, strict, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, PlatformRejected)
    check = _check(report, "hardware.platform")
    assert check.actual == "dynamic_platform=yes, cached_keys=yes, smt=yes"


@pytest.mark.parametrize("flag", ["allow_cached_keys", "allow_smt"])
def test_each_platform_restriction_is_a_visible_policy_choice(flag: str) -> None:
    quote, collateral = _tdx()
    report = tdx.report(
        quote, TdxPolicy(unsafe_any_measurements=True, **{flag: False}), now=TDX_AT, collateral=collateral
    )
    assert isinstance(report.error, PlatformRejected)
    assert flag.removeprefix("allow_") in _check(report, "hardware.platform").detail


def test_default_policy_says_the_platform_configuration_was_not_restricted() -> None:
    quote, collateral = _tdx()
    detail = _check(tdx.report(quote, ANY, now=TDX_AT, collateral=collateral), "hardware.platform").detail
    assert "not restricted by policy" in detail


def test_near_quote_is_up_to_date_at_its_date() -> None:
    attestation = tdx.verify(
        _quote("near_quote_hex.txt"), ANY, now=NEAR_AT, collateral=_collateral("near_quote_collateral.json")
    )
    assert attestation.tcb_status == "UpToDate"


@pytest.mark.parametrize(
    "policy",
    [ANY, TdxPolicy(unsafe_any_measurements=True, allowed_tcb_statuses=tdx.TCB_STATUSES)],
    ids=["default", "every-status-allowed"],
)
def test_outdated_td15_quote_does_not_pass(policy: TdxPolicy) -> None:
    report = tdx.report(
        _quote("tdx_quote_outdated"),
        policy,
        now=OUTDATED_AT,
        collateral=_collateral("tdx_quote_outdated_collateral.json"),
    )
    assert not report.valid
    assert isinstance(report.error, TcbStatusRejected)
    assert "No matching TCB level" in report.error.message


def test_sgx_quote_is_reported_as_sgx_and_refused_by_a_tdx_policy() -> None:
    report = tdx.report(_quote("sgx_quote"), ANY, now=SGX_AT, collateral=_collateral("sgx_quote_collateral.json"))
    assert report.tee == "sgx"
    assert report.facts["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert report.facts["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert "mr_enclave" in report.facts["measurements"]
    assert isinstance(report.error, TcbStatusRejected)
    assert not _check(report, "quote.tee").ok
    lenient = TdxPolicy(
        unsafe_any_measurements=True,
        allowed_tcb_statuses=frozenset({"ConfigurationAndSWHardeningNeeded"}),
        allowed_advisory_ids=frozenset({"INTEL-SA-00289", "INTEL-SA-00615"}),
    )
    report = tdx.report(_quote("sgx_quote"), lenient, now=SGX_AT, collateral=_collateral("sgx_quote_collateral.json"))
    assert isinstance(report.error, TeeMismatch)


def test_one_flipped_bit_of_mrtd_breaks_the_signature() -> None:
    quote, collateral = _tdx()
    forged = _flip(quote, MR_TD)
    assert Quote.parse(forged).td.mr_td.hex() != MRTD  # type: ignore[union-attr]
    report = tdx.report(forged, ANY, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, QuoteSignatureInvalid)
    assert [c.name for c in report.checks] == ["quote.parse", "hardware.quote"]  # nothing forged is described


@pytest.mark.parametrize("offset", [4, MR_SIGNER_SEAM, TD_ATTRIBUTES, REPORT_DATA + 63, 48 + 584 + 10, 48 + 584 + 130])
def test_any_tampered_byte_of_the_signed_quote_or_its_signature_is_refused(offset: int) -> None:
    quote, collateral = _tdx()
    report = tdx.report(_flip(quote, offset, 0x80), ANY, now=TDX_AT, collateral=collateral)
    assert not report.valid


def test_collateral_of_another_tee_is_a_mismatch() -> None:
    report = tdx.report(_quote("tdx_quote"), ANY, now=SGX_AT, collateral=_collateral("sgx_quote_collateral.json"))
    assert isinstance(report.error, CollateralMismatch)


def test_collateral_of_another_platform_is_a_mismatch() -> None:
    report = tdx.report(_quote("tdx_quote"), ANY, now=NEAR_AT, collateral=_collateral("near_quote_collateral.json"))
    assert isinstance(report.error, CollateralMismatch)
    assert "Fmspc mismatch" in report.error.message


def test_missing_collateral_makes_the_result_invalid() -> None:
    report = tdx.report(_quote("tdx_quote"), ANY, now=TDX_AT)
    assert isinstance(report.error, CollateralMissing)
    assert report.facts["hardware_verified"] is False
    names = [c.name for c in report.checks]
    assert "td.debug" in names and "policy.measurements" in names  # everything else is still shown


def test_unsafe_no_collateral_checks_the_rest_and_says_the_hardware_was_not_verified() -> None:
    attestation = tdx.verify(_quote("tdx_quote"), ANY, now=TDX_AT, unsafe_no_collateral=True)
    assert attestation.hardware_verified is False
    assert attestation.tcb_status is None
    report = tdx.report(_quote("tdx_quote"), ANY, now=TDX_AT, unsafe_no_collateral=True)
    assert "NOT VERIFIED" in _check(report, "hardware.quote").detail


def test_tcb_status_outside_the_policy_is_rejected_even_if_dcap_qvl_calls_it_valid() -> None:
    quote, collateral = _tdx()
    policy = TdxPolicy(unsafe_any_measurements=True, allowed_tcb_statuses=frozenset({"SWHardeningNeeded"}))
    report = tdx.report(quote, policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, TcbStatusRejected)
    check = _check(report, "hardware.tcb_status")
    assert (check.expected, check.actual) == ("SWHardeningNeeded", "UpToDate")


# --- the TD's own facts (the signature is not what stops these: the policy is) ---------------------------------


def test_debug_td_is_rejected_by_default() -> None:
    debug_quote = _flip(_quote("tdx_quote"), TD_ATTRIBUTES)
    assert Quote.parse(debug_quote).td.debug  # type: ignore[union-attr]
    report = tdx.report(debug_quote, ANY, now=TDX_AT, unsafe_no_collateral=True)
    assert isinstance(report.error, DebugMode)


def test_debug_td_passes_only_when_explicitly_allowed_with_a_warning() -> None:
    debug_quote = _flip(_quote("tdx_quote"), TD_ATTRIBUTES)
    with pytest.warns(UnsafePolicyWarning):
        allow = TdxPolicy(unsafe_any_measurements=True, allow_debug=True)
    assert tdx.verify(debug_quote, allow, now=TDX_AT, unsafe_no_collateral=True).debug


def test_non_intel_tdx_module_signer_is_rejected() -> None:
    forged = _flip(_quote("tdx_quote"), MR_SIGNER_SEAM)
    report = tdx.report(forged, ANY, now=TDX_AT, unsafe_no_collateral=True)
    assert isinstance(report.error, MeasurementMismatch)
    assert not _check(report, "td.mr_signer_seam").ok


def test_policy_pinning_the_quotes_os_measurements_accepts_it() -> None:
    quote, collateral = _tdx()
    policy = TdxPolicy(measurements=[_pinned(quote)])
    attestation = tdx.verify(quote, policy, now=TDX_AT, collateral=collateral)
    assert attestation.measurements["mrtd"].hex() == MRTD


@pytest.mark.parametrize("register", ["mrtd", "rtmr0", "rtmr1", "rtmr2"])
def test_changing_any_pinned_register_rejects_the_quote(register: str) -> None:
    quote, collateral = _tdx()
    policy = TdxPolicy(measurements=[_pinned(quote, **{register: bytes(48)})])
    report = tdx.report(quote, policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, MeasurementMismatch)
    check = _check(report, "policy.measurements")
    assert check.expected is not None and check.actual is not None


def test_any_of_several_measurement_sets_may_match_during_an_upgrade() -> None:
    quote, collateral = _tdx()
    policy = TdxPolicy(measurements=[_pinned(quote, mrtd=bytes(48)), _pinned(quote)])
    report = tdx.report(quote, policy, now=TDX_AT, collateral=collateral)
    assert report.valid
    assert "set 2" in _check(report, "policy.measurements").detail


def test_policy_pinning_the_app_cannot_be_met_by_a_bare_quote() -> None:
    quote, collateral = _tdx()
    policy = TdxPolicy(unsafe_any_measurements=True, compose_hashes=frozenset({bytes(32)}))
    report = tdx.report(quote, policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, ComposeHashMismatch)


# --- REPORTDATA binding ----------------------------------------------------------------------------------------


def test_exact_report_data_matches_the_real_quote() -> None:
    quote, collateral = _tdx()
    td = Quote.parse(quote).td
    assert td is not None
    policy = TdxPolicy(unsafe_any_measurements=True, report_data=ExactReportData(td.report_data))
    assert tdx.verify(quote, policy, now=TDX_AT, collateral=collateral).td.report_data == td.report_data
    wrong = TdxPolicy(unsafe_any_measurements=True, report_data=ExactReportData(bytes(64)))
    assert isinstance(tdx.report(quote, wrong, now=TDX_AT, collateral=collateral).error, ReportDataMismatch)


def test_gateway_style_hash_of_acme_account_binds_report_data() -> None:
    preimage = b"acme-account:https://acme-v02.api.letsencrypt.org/acme/acct/123456"
    bound = _patched(_quote("tdx_quote"), REPORT_DATA, hashlib.sha512(preimage).digest())
    policy = TdxPolicy(unsafe_any_measurements=True, report_data=HashedReportData(preimage))
    assert tdx.report(bound, policy, now=TDX_AT, unsafe_no_collateral=True).valid
    other = TdxPolicy(unsafe_any_measurements=True, report_data=HashedReportData(preimage + b"7"))
    assert isinstance(tdx.report(bound, other, now=TDX_AT, unsafe_no_collateral=True).error, ReportDataMismatch)


def test_short_hash_is_zero_padded_to_64_bytes() -> None:
    assert HashedReportData(b"x", "sha256").expected() == hashlib.sha256(b"x").digest() + bytes(32)


def test_key_and_nonce_commitment_has_a_stable_test_vector() -> None:
    value = key_nonce_report_data(bytes(range(32)), b"nonce-0001")
    assert (
        value.hex()
        == hashlib.sha512(b"enclavekit.report-data.v1\x00\x00\x20" + bytes(range(32)) + b"nonce-0001").hexdigest()
    )
    # a key/nonce boundary cannot be moved: (k, n1 || n2) and (k || n1, n2) commit differently
    assert key_nonce_report_data(b"ab", b"c") != key_nonce_report_data(b"a", b"bc")


def test_key_and_nonce_commitment_rejects_a_replayed_quote_for_another_nonce() -> None:
    key = bytes(range(65))
    bound = _patched(_quote("tdx_quote"), REPORT_DATA, key_nonce_report_data(key, b"fresh-nonce"))
    fresh = TdxPolicy(unsafe_any_measurements=True, report_data=KeyNonceReportData(key, b"fresh-nonce"))
    assert tdx.report(bound, fresh, now=TDX_AT, unsafe_no_collateral=True).valid
    replayed = TdxPolicy(unsafe_any_measurements=True, report_data=KeyNonceReportData(key, b"later-nonce"))
    assert isinstance(tdx.report(bound, replayed, now=TDX_AT, unsafe_no_collateral=True).error, ReportDataMismatch)


# --- policies fail closed --------------------------------------------------------------------------------------


def test_empty_policy_is_an_error_not_accept_all() -> None:
    with pytest.raises(PolicyInvalid, match="pins no TDX measurements"):
        TdxPolicy()


@pytest.mark.parametrize(
    "options",
    [
        {"allowed_tcb_statuses": frozenset()},
        {"allowed_tcb_statuses": frozenset({"Revoked"})},
        {"allowed_tcb_statuses": frozenset({"uptodate"})},
        {"allowed_tcb_statuses": "UpToDate"},
        {"compose_hashes": frozenset({b"short"})},
        {"key_providers": frozenset({"kms:nothex"})},
        {"report_data": "00" * 64},
    ],
    ids=["no-status", "revoked", "typo", "string-not-list", "short-compose-hash", "bad-provider-id", "raw-report-data"],
)
def test_unusable_policy_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(PolicyInvalid):
        TdxPolicy(unsafe_any_measurements=True, **options)  # type: ignore[arg-type]


def test_policy_cannot_both_pin_and_accept_any_measurements() -> None:
    quote, _ = _tdx()
    with pytest.raises(PolicyInvalid):
        TdxPolicy(measurements=[_pinned(quote)], unsafe_any_measurements=True)


def test_measurement_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(PolicyInvalid, match="48 bytes"):
        MeasurementSet(mrtd=bytes(32), rtmr0=bytes(48), rtmr1=bytes(48), rtmr2=bytes(48))


def test_exact_report_data_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(PolicyInvalid):
        ExactReportData(bytes(32))


def test_naive_now_is_a_programming_error() -> None:
    quote, collateral = _tdx()
    with pytest.raises(ValueError, match="timezone"):
        tdx.report(quote, ANY, now=datetime(2025, 6, 20), collateral=collateral)


# --- dcap-qvl's messages, named ---------------------------------------------------------------------------------


# Every refusal dcap-qvl 0.7 can give (the messages of its verifier, and of webpki underneath, as its compiled
# module holds them), with the code that names its reason. A genuine quote refused for a policy reason must
# never read "forged" (quote_signature_invalid): a user acts on the code.
DCAP_QVL_REFUSALS = [
    ("Verification failed: Debug mode is enabled", "debug_mode"),
    ("Verification failed: TD profiling is enabled", "td_attributes_rejected"),
    ("Verification failed: SERVTD_EXT is enabled", "td_attributes_rejected"),
    ("Verification failed: SEPT_VE_DISABLE is not enabled", "td_attributes_rejected"),
    ("Verification failed: TD migration is enabled", "td_attributes_rejected"),
    ("Verification failed: Reserved bits in TD attributes are set", "td_attributes_rejected"),
    ("Verification failed: Invalid MR service TD", "td_attributes_rejected"),
    ("Verification failed: Dynamic platform is not allowed by policy", "platform_policy"),
    ("Verification failed: Cached keys are not allowed by policy", "platform_policy"),
    ("Verification failed: SMT (hyperthreading) is not allowed by policy", "platform_policy"),
    ("Verification failed: TCB status is invalid: Revoked", "tcb_status"),
    ("Verification failed: No matching TCB level found", "tcb_status"),
    (
        "Verification failed: TCB level mismatch: Platform's current TCB (cpusvn=[..], pcesvn=11) is not registered "
        "with Intel PCS. Intel matched to a lower TCB level",
        "tcb_status",
    ),
    ("Verification failed: Platform TCB too old: tcb_date_tag 1710288000 + grace 0", "tcb_status"),
    ("Verification failed: QE TCB too old: tcb_date_tag 1710288000 + grace 0", "tcb_status"),
    ("Verification failed: TEE_TCB_SVN[0] 5 is below minimum required from TDX module TCB levels", "tcb_status"),
    ("Verification failed: Failed to evaluate the current TDX TCB (TEE_TCB_SVN2)", "tcb_status"),
    ("Verification failed: TCB status OutOfDate is not acceptable by policy", "tcb_status"),
    ("Verification failed: Advisory ID INTEL-SA-00837 is rejected by policy", "tcb_status"),
    ("Verification failed: TCBInfo expired", "collateral_expired"),
    ("Verification failed: TCBInfo issue date is in the future", "collateral_expired"),
    ("Verification failed: QE Identity expired", "collateral_expired"),
    ("Verification failed: QE Identity issue date is in the future", "collateral_expired"),
    (
        "certificate revocation list expired: verification time 1767225600 (UNIX), but CRL is not valid after "
        "1752919235 (UNIX)",
        "collateral_expired",
    ),
    ("Failed to verify certificate chain: CrlExpired", "collateral_expired"),
    ("Verification failed: Collateral expired: earliest_expiration 1752919235", "collateral_expired"),
    (
        "certificate not valid yet: verification time 1500000000 (UNIX), but certificate is not valid before "
        "1526899510 (UNIX)",
        "certificate_not_yet_valid",
    ),
    ("Failed to verify certificate chain: CertNotValidYet", "certificate_not_yet_valid"),
    (
        "certificate expired: verification time 2000000000 (UNIX), but certificate is not valid after 1900000000 "
        "(UNIX) (100 seconds ago)",
        "certificate_expired",
    ),
    ("Failed to verify certificate chain: CertExpired", "certificate_expired"),
    ("Failed to verify certificate chain: CertRevoked", "certificate_revoked"),
    ("certificate revoked", "certificate_revoked"),
    ("Verification failed: Fmspc mismatch", "collateral_mismatch"),
    ("Unsupported QE Identity id/version for the quote TEE type: QE version 2", "collateral_mismatch"),
    ("Verification failed: TDX component count mismatch: expected 16", "collateral_mismatch"),
    ("Verification failed: SGX component count mismatch: expected 16", "collateral_mismatch"),
    ("Verification failed: TDX module MRSIGNER mismatch: expected 00, got 11", "collateral_mismatch"),
    ("Verification failed: QE ISVPRODID mismatch: expected 2, got 1", "collateral_mismatch"),
    ("Verification failed: QE MISCSELECT mismatch: expected 0 (masked), got 1 (masked)", "collateral_mismatch"),
    (
        "Verification failed: QE ATTRIBUTES mismatch at byte 0: expected 11 (masked), got 15 (masked)",
        "collateral_mismatch",
    ),
    (
        "Verification failed: TDX module SEAMATTRIBUTES mismatch at byte 0: expected 0 (masked), got 1 (masked)",
        "collateral_mismatch",
    ),
    ("Verification failed: SGX quote with non-SGX TCB info in the collateral", "collateral_mismatch"),
    ("Verification failed: TDX quote with non-TDX TCB info in the collateral", "collateral_mismatch"),
    ("Failed to verify certificate chain: UnknownRevocationStatus", "collateral_mismatch"),
    ("Verification failed: No TCB levels found in QE Identity", "collateral_mismatch"),
    ("Verification failed: Signature is invalid for tcb_info in quote_collateral", "collateral_invalid"),
    ("Verification failed: Signature is invalid for qe_identity in quote_collateral", "collateral_invalid"),
    ("Verification failed: Failed to decode TcbInfo", "collateral_invalid"),
    ("Verification failed: Certificate chain is too short for TCB Info", "collateral_invalid"),
    ("Verification failed: Failed to parse QE Identity next update", "collateral_invalid"),
    ("Verification failed: TDX TCB Info is missing tdxModule field", "collateral_invalid"),
    ("Verification failed: Failed to parse PCK CRL", "collateral_invalid"),
    ("Failed to verify certificate chain: InvalidCrlSignatureForPublicKey", "collateral_invalid"),
    ("Verification failed: Failed to extract PCK certificates from collateral", "collateral_invalid"),
    ("Verification failed: ISV enclave report signature is invalid", "quote_signature_invalid"),
    ("Verification failed: Signature is invalid for qe_report in quote", "quote_signature_invalid"),
    ("Verification failed: QE report hash mismatch", "quote_signature_invalid"),
    ("Verification failed: Invalid QE auth data length", "quote_signature_invalid"),
    ("Failed to verify certificate chain: UnknownIssuer", "quote_signature_invalid"),
    ("Failed to verify certificate chain: InvalidSignatureForPublicKey", "quote_signature_invalid"),
    ("Verification failed: Failed to decode quote", "malformed"),
    ("Verification failed: Unsupported DCAP quote version", "malformed"),
    ("Verification failed: TDX TEE quote must have version 4 or 5", "malformed"),
    ("Verification failed: Unsupported DCAP attestation key type", "malformed"),
    ("Verification failed: Unknown QE vendor ID", "malformed"),
    ("Verification failed: Unsupported certification data type: 2", "malformed"),
    ("Verification failed: Certificate chain is too short in quote", "malformed"),
    ("Verification failed: Failed to parse PCK certificate", "malformed"),
]


@pytest.mark.parametrize(("message", "code"), DCAP_QVL_REFUSALS, ids=[m[:60] for m, _ in DCAP_QVL_REFUSALS])
def test_each_dcap_qvl_refusal_gets_the_code_of_its_reason_and_keeps_the_message(message: str, code: str) -> None:
    error = tdx._classify(message)
    assert error.code == code
    assert message.removeprefix("Verification failed: ") in error.message  # dcap-qvl's own words stay


def test_an_unknown_dcap_qvl_refusal_is_unclassified_not_a_forged_signature() -> None:
    error = tdx._classify("Verification failed: something a later dcap-qvl says")
    assert error.code == "quote_unclassified"
    assert "something a later dcap-qvl says" in error.message


def test_every_code_dcap_qvl_refusals_map_to_is_documented() -> None:
    documented = (Path(__file__).resolve().parents[1] / "docs" / "verdicts.md").read_text()
    for code in {code for _, code in DCAP_QVL_REFUSALS} | {"quote_unclassified"}:
        assert f"`{code}`" in documented, code


# --- debug TDs with collateral ----------------------------------------------------------------------------------


def test_altered_debug_td_with_collateral_is_forged_not_debug_mode() -> None:
    # dcap-qvl checks the signatures before the TD attributes: its "Debug mode is enabled" is only ever said of
    # an authentic quote, and a debug bit set by a forger is a signature failure, with or without --allow-debug
    quote, collateral = _tdx()
    debug_quote = _flip(quote, TD_ATTRIBUTES)
    for policy in (ANY, _allow_debug()):
        report = tdx.report(debug_quote, policy, now=TDX_AT, collateral=collateral)
        assert isinstance(report.error, QuoteSignatureInvalid), report.error


def _allow_debug() -> TdxPolicy:
    with pytest.warns(UnsafePolicyWarning):
        return TdxPolicy(unsafe_any_measurements=True, allow_debug=True)


# Genuine quotes of other kinds than the fixtures (a debug TD, other TD attributes, a PCK certificate not yet
# valid or revoked) signed by a stand-in for Intel's PKI (tests/dcap_forge.py): dcap-qvl's refusals are its own.


def _pki(**options: datetime) -> DcapPki:
    return DcapPki(TDX_AT - timedelta(days=30), TDX_AT + timedelta(days=365), **options)


def _stand_in(pki: DcapPki, *, allow_debug: bool = False, **collateral: bool) -> tuple[TdxPolicy, Collateral]:
    if allow_debug:
        with pytest.warns(UnsafePolicyWarning):
            policy = TdxPolicy(unsafe_any_measurements=True, allow_debug=True, intel_root=pki.root_der)
    else:
        policy = TdxPolicy(unsafe_any_measurements=True, intel_root=pki.root_der)
    return policy, Collateral.from_json(pki.collateral_json(**collateral))


def test_the_stand_in_pki_makes_quotes_dcap_qvl_verifies() -> None:
    pki = _pki()
    policy, collateral = _stand_in(pki)
    attestation = tdx.verify(pki.quote(), policy, now=TDX_AT, collateral=collateral)
    assert (attestation.tcb_status, attestation.hardware_verified, attestation.debug) == ("UpToDate", True, False)
    with pytest.raises(CollateralInvalid):  # and only under its own root: under Intel's its CRLs do not verify
        tdx.verify(pki.quote(), ANY, now=TDX_AT, collateral=collateral)


def test_debug_td_with_collateral_is_debug_mode_not_forged() -> None:
    pki = _pki()
    policy, collateral = _stand_in(pki)
    report = tdx.report(pki.quote(debug=True), policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, DebugMode), report.error
    assert "Debug mode is enabled" in report.error.message
    same_without_collateral = tdx.report(pki.quote(debug=True), policy, now=TDX_AT, unsafe_no_collateral=True)
    assert isinstance(same_without_collateral.error, DebugMode)


def test_allow_debug_accepts_a_genuine_debug_td_with_collateral_and_its_tcb_status() -> None:
    pki = _pki()
    policy, collateral = _stand_in(pki, allow_debug=True)
    report = tdx.report(pki.quote(debug=True), policy, now=TDX_AT, collateral=collateral)
    attestation = report.verified()
    assert (attestation.debug, attestation.hardware_verified, attestation.tcb_status) == (True, True, "UpToDate")
    assert "debug TD" in _check(report, "hardware.quote").detail
    assert _check(report, "td.debug").detail == "debug TD (allowed by policy)"


def test_allow_debug_does_not_let_a_forged_debug_td_through() -> None:
    pki = _pki()
    policy, collateral = _stand_in(pki, allow_debug=True)
    forged = _flip(pki.quote(debug=True), TD_ATTRIBUTES + 16)  # XFAM changed after signing
    report = tdx.report(forged, policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, QuoteSignatureInvalid)


@pytest.mark.parametrize(
    ("attributes", "said"),
    [
        ("0000000000000000", "SEPT_VE_DISABLE is not enabled"),
        ("0000003000000000", "TD migration is enabled"),
        ("0200001000000000", "Reserved bits in TD attributes are set"),
    ],
)
@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug-allowed"])
def test_genuine_td_with_weakening_attributes_is_td_attributes_rejected_not_forged(
    attributes: str, said: str, debug: bool
) -> None:
    # a debug TD allowed by policy gets the same attribute checks: dcap-qvl stops at "Debug mode", the shadow not
    pki = _pki()
    policy, collateral = _stand_in(pki, allow_debug=debug)
    quote = pki.quote(td_attributes=bytes.fromhex(attributes), debug=debug)
    report = tdx.report(quote, policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, TdAttributesRejected), report.error
    assert said in report.error.message


def test_pck_certificate_not_yet_valid_is_certificate_not_yet_valid_not_forged() -> None:
    pki = _pki(pck_not_before=TDX_AT + timedelta(days=1))
    policy, collateral = _stand_in(pki)
    report = tdx.report(pki.quote(), policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, CertificateNotYetValid), report.error
    assert "CertNotValidYet" in report.error.message and "\n" not in report.error.message


@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug-allowed"])
def test_revoked_pck_certificate_is_certificate_revoked_even_for_an_allowed_debug_td(debug: bool) -> None:
    pki = _pki()
    policy, collateral = _stand_in(pki, allow_debug=debug, revoke_pck=True)
    report = tdx.report(pki.quote(debug=debug), policy, now=TDX_AT, collateral=collateral)
    assert isinstance(report.error, CertificateRevoked), report.error


@pytest.mark.parametrize(
    ("quote", "collateral", "at"),
    [
        ("tdx_quote", "tdx_quote_collateral.json", TDX_AT),
        ("near_quote_hex.txt", "near_quote_collateral.json", NEAR_AT),
        ("tdx_quote_outdated", "tdx_quote_outdated_collateral.json", OUTDATED_AT),
    ],
)
def test_the_debug_shadow_gets_dcap_qvls_own_verdict_on_real_quotes(quote: str, collateral: str, at: datetime) -> None:
    # the shadow carries a quote's platform values through dcap-qvl under a throwaway root: on real (production)
    # quotes under Intel's root it must say exactly what dcap-qvl says of the quote itself
    parsed, loaded = Quote.parse(_quote(quote)), _collateral(collateral)
    seconds = int(at.timestamp())
    try:
        real: object = dcap_qvl.verify(parsed.raw, loaded.qvl, seconds)
    except ValueError as exc:
        real = str(exc)
    try:
        shadow: object = shadow_verdict(parsed, loaded, at)
    except ValueError as exc:
        shadow = str(exc)
    if isinstance(real, str):
        assert shadow == real
    else:
        assert not isinstance(shadow, str), shadow
        assert (shadow.status, shadow.advisory_ids) == (real.status, real.advisory_ids)  # type: ignore[attr-defined]


@pytest.mark.parametrize("with_collateral", [True, False], ids=["collateral", "unsafe-no-collateral"])
def test_allow_debug_means_the_same_with_and_without_collateral(with_collateral: bool) -> None:
    pki = _pki()
    policy = PolicyFile(tdx=TdxPolicy(unsafe_any_measurements=True, intel_root=pki.root_der), source="test")
    collateral = (Collateral.from_json(pki.collateral_json()),) if with_collateral else ()
    options = VerifyOptions(
        policy=policy, at=At.fixed(TDX_AT), collateral=collateral, unsafe_no_collateral=not with_collateral
    )
    debug_td = pki.quote(debug=True)
    refused = verify_evidence(debug_td, options)
    assert refused.error is not None and refused.error.code == "debug_mode"
    with pytest.warns(UnsafePolicyWarning):
        allowed = verify_evidence(debug_td, replace(options, allow_debug=True))
    assert allowed.valid, allowed.error
    assert allowed.to_json()["debug"] is True
    assert allowed.to_json()["hardware_verified"] is with_collateral
