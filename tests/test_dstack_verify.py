"""dstack bundles end to end: replay, app identity from RTMR3, compose hash, MRCONFIGID, and policy pins.

No collateral ships with these quotes, so the hardware phase is skipped on purpose (``unsafe_no_collateral``);
every other check is the real one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.attestation import dstack, tdx
from enclavekit.attestation.dstack import (
    AppInfo,
    DstackBundle,
    KeyProvider,
    MrConfigId,
    app_info,
    compose_hash,
    keccak256,
    mr_config_id_v1,
    mr_config_id_v2,
)
from enclavekit.attestation.errors import (
    CollateralMissing,
    ComposeHashMismatch,
    EventDigestMismatch,
    Malformed,
    MeasurementMismatch,
    ReportDataMismatch,
    RtmrMismatch,
)
from enclavekit.attestation.event_log import RUNTIME_EVENT_TYPE, EventLog
from enclavekit.attestation.quote import Quote
from enclavekit.attestation.tdx import MeasurementSet, TdxPolicy
from enclavekit.errors import Error
from tests.conftest import fixtures_dir

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ANY = TdxPolicy(unsafe_any_measurements=True)
BUNDLES = [
    "dstack/quote-report.json",
    "dstack/tdx-lite-getquote.json",
    "trust-center/debugData_app_bundle.json",
    "trust-center/debugData_gateway_bundle.json",
    "trust-center/debugData_kms_bundle.json",
    "trust-center/debugData2_app_bundle.json",
    "trust-center/debugData2_gateway_bundle.json",
    "trust-center/debugData2_kms_bundle.json",
    "trust-center/hardcoded_kms_info_bundle.json",
]
COMPOSE_HOLDS = [
    "trust-center/debugData_gateway_bundle.json",
    "trust-center/debugData2_kms_bundle.json",
    "trust-center/debugData2_gateway_bundle.json",
]
MR_CONFIG_ID = 48 + 16 + 48 + 48 + 8 + 8 + 8 + 48


def _document(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(fixtures_dir("tdx", *name.split("/")).read_text())
    return loaded


def _bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def _report(document: dict[str, Any], policy: TdxPolicy = ANY, **options: Any) -> tdx.Report[Any]:  # type: ignore[name-defined]
    return dstack.report(_bytes(document), policy, now=NOW, unsafe_no_collateral=True, **options)


def _check(report: Any, name: str) -> Any:
    return next(c for c in report.checks if c.name == name)


def _pins(document: dict[str, Any], **changes: bytes) -> MeasurementSet:
    td = Quote.parse(document["quote"].encode()).td
    assert td is not None
    values = {"mrtd": td.mr_td, "rtmr0": td.rtmrs[0], "rtmr1": td.rtmrs[1], "rtmr2": td.rtmrs[2], **changes}
    return MeasurementSet(**values)


def _event_index(document: dict[str, Any], name: str) -> int:
    return next(i for i, e in enumerate(json.loads(document["event_log"])) if e["event"] == name)


def _with_events(document: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    return {**document, "event_log": json.dumps(events)}


# --- the proof -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLES)
def test_every_bundle_replays_and_names_its_app(name: str) -> None:
    document = _document(name)
    report = _report(document)
    assert _check(report, "event_log.replay").ok
    assert _check(report, "event_log.digests").ok
    app = report.facts["app"]
    assert set(app) >= {"app_id", "compose_hash", "instance_id", "os_image_hash", "key_provider"}
    events = report.facts["events"]
    assert all(set(e) == {"name", "imr", "digest_ok"} for e in events)
    assert next(e["name"] for e in events if e["imr"] == 3) == "system-preparing"
    if "main_fields" in document and "compose_hash" in document["main_fields"]:
        assert app["compose_hash"] == document["main_fields"]["compose_hash"]


@pytest.mark.parametrize("name", COMPOSE_HOLDS)
def test_compose_file_hashes_to_the_measured_compose_hash(name: str) -> None:
    document = _document(name)
    attestation = dstack.verify(_bytes(document), ANY, now=NOW, unsafe_no_collateral=True)
    assert attestation.compose_verified
    assert attestation.app.compose_hash.hex() == document["compose_hash_check"]["event_compose_hash"]
    assert compose_hash(document["app_compose"].encode()) == attestation.app.compose_hash


def test_placeholder_compose_of_debugdata_kms_is_reported_as_a_mismatch() -> None:
    document = _document("trust-center/debugData_kms_bundle.json")
    report = _report(document)
    assert isinstance(report.error, ComposeHashMismatch)
    check = _check(report, "dstack.compose_file")
    assert check.expected == document["compose_hash_check"]["event_compose_hash"]
    assert check.actual == document["compose_hash_check"]["sha256_app_compose"]


def test_compose_file_given_separately_is_checked_for_a_bundle_without_one() -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    compose = document.pop("app_compose").encode()
    assert dstack.verify(_bytes(document), ANY, now=NOW, unsafe_no_collateral=True).compose_verified is False
    attestation = dstack.verify(_bytes(document), ANY, now=NOW, unsafe_no_collateral=True, app_compose=compose)
    assert attestation.compose_verified
    other = _document("trust-center/debugData_gateway_bundle.json")["app_compose"].encode()
    assert isinstance(_report(document, app_compose=other).error, ComposeHashMismatch)


@pytest.mark.parametrize("name", [*COMPOSE_HOLDS, "trust-center/debugData2_app_bundle.json"])
def test_policy_pinning_os_measurements_and_compose_hash_accepts_the_bundle(name: str) -> None:
    document = _document(name)
    app = _report(document).facts["app"]
    policy = TdxPolicy(measurements=[_pins(document)], compose_hashes=frozenset({bytes.fromhex(app["compose_hash"])}))
    attestation = dstack.verify(_bytes(document), policy, now=NOW, unsafe_no_collateral=True)
    assert attestation.app.compose_hash.hex() == app["compose_hash"]


@pytest.mark.parametrize("register", ["mrtd", "rtmr0", "rtmr1", "rtmr2"])
def test_changing_any_os_pin_rejects_the_bundle(register: str) -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    policy = TdxPolicy(measurements=[_pins(document, **{register: b"\x01" * 48})])
    assert isinstance(_report(document, policy).error, MeasurementMismatch)


def test_changing_the_compose_hash_pin_rejects_the_bundle() -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    policy = TdxPolicy(measurements=[_pins(document)], compose_hashes=frozenset({hashlib.sha256(b"other").digest()}))
    report = _report(document, policy)
    assert isinstance(report.error, ComposeHashMismatch)
    assert not _check(report, "policy.compose_hash").ok


@pytest.mark.parametrize("name", ["dstack/quote-report.json", "trust-center/debugData2_app_bundle.json"])
def test_altering_any_events_payload_fails_the_bundle(name: str) -> None:
    document = _document(name)
    events = json.loads(document["event_log"])
    baseline = _report(document)
    for index, event in enumerate(events):
        changed = [dict(e) for e in events]
        payload = bytes.fromhex(event["event_payload"]) or b"\x00"
        changed[index]["event_payload"] = (payload[:-1] + bytes([payload[-1] ^ 1])).hex()
        report = _report(_with_events(document, changed))
        if report.valid:
            # only a payload the TEE never measured can change unnoticed: nothing verified depends on it
            assert report.facts["events"][index]["digest_ok"] is None
            assert report.facts["app"] == baseline.facts["app"]
            assert report.facts["measurements"] == baseline.facts["measurements"]
        else:
            assert isinstance(report.error, EventDigestMismatch | RtmrMismatch), (index, report.error)


def test_swapped_runtime_payload_with_a_logged_digest_is_an_event_digest_mismatch() -> None:
    document = _document("trust-center/debugData2_app_bundle.json")
    events = json.loads(document["event_log"])
    events[_event_index(document, "app-id")]["event_payload"] = "00" * 20
    report = _report(_with_events(document, events))
    assert isinstance(report.error, EventDigestMismatch)
    assert _check(report, "event_log.replay").code == "rtmr_mismatch"  # recomputed, so RTMR3 differs too


def test_runtime_event_without_digest_that_was_changed_is_an_rtmr_mismatch() -> None:
    document = _document("dstack/tdx-lite-getquote.json")
    events = json.loads(document["event_log"])
    events[_event_index(document, "compose-hash")]["event_payload"] = "00" * 32
    report = _report(_with_events(document, events))
    assert isinstance(report.error, RtmrMismatch)
    assert _check(report, "event_log.replay").expected.startswith("rtmr3=")


def test_dropping_an_event_breaks_the_replay() -> None:
    document = _document("dstack/quote-report.json")
    events = json.loads(document["event_log"])
    del events[_event_index(document, "key-provider")]
    assert isinstance(_report(_with_events(document, events)).error, RtmrMismatch)


# --- app identity comes from RTMR3 before system-ready only -------------------------------------------------------


def _runtime(name: str, payload: bytes, imr: int = 3) -> dict[str, Any]:
    return {"imr": imr, "event_type": RUNTIME_EVENT_TYPE, "digest": "", "event": name, "event_payload": payload.hex()}


def _log(document: dict[str, Any], extra: list[dict[str, Any]], *, at: int | None = None) -> EventLog:
    events = json.loads(document["event_log"])
    if at is None:
        events.extend(extra)
    else:
        events[at:at] = extra
    return EventLog.from_list(events)


def test_compose_hash_emitted_by_the_app_after_system_ready_is_ignored() -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    genuine = app_info(EventLog.from_json(document["event_log"]))
    spoofed = app_info(_log(document, [_runtime("compose-hash", bytes(32)), _runtime("app-id", bytes(20))]))
    assert spoofed.compose_hash == genuine.compose_hash
    assert spoofed.app_id == genuine.app_id
    assert spoofed.app_events == ("compose-hash", "app-id")


def test_compose_hash_outside_rtmr3_is_ignored() -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    genuine = app_info(EventLog.from_json(document["event_log"]))
    assert app_info(_log(document, [_runtime("compose-hash", bytes(32), imr=2)], at=0)) == genuine


def test_two_compose_hashes_before_system_ready_are_ambiguous() -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    index = _event_index(document, "compose-hash")
    with pytest.raises(Malformed, match="two 'compose-hash'"):
        app_info(_log(document, [_runtime("compose-hash", bytes(32))], at=index))


def test_log_without_compose_hash_names_no_app() -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    events = [e for e in json.loads(document["event_log"]) if e["event"] != "compose-hash"]
    with pytest.raises(Malformed, match="compose-hash"):
        app_info(EventLog.from_list(events))
    report = _report(_with_events(document, events))
    assert not _check(report, "dstack.app").ok


def test_key_provider_is_parsed_from_its_event() -> None:
    document = _document("trust-center/debugData2_kms_bundle.json")
    provider = app_info(EventLog.from_json(document["event_log"])).key_provider
    assert provider is not None
    assert provider.name == "local-sgx"
    assert provider.kind == 1


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"id": "00"}', b'{"name": "kms", "id": "zz"}'])
def test_unreadable_key_provider_event_is_malformed(payload: bytes) -> None:
    with pytest.raises(Malformed):
        KeyProvider.from_payload(payload)


def test_key_provider_policy_pins_name_and_optionally_id() -> None:
    document = _document("dstack/tdx-lite-getquote.json")
    provider = _report(document).facts["app"]["key_provider"]
    assert provider["name"] == "kms"
    for allowed, ok in [("kms", True), (f"kms:{provider['id']}", True), ("kms:00", False), ("local-sgx", False)]:
        policy = TdxPolicy(unsafe_any_measurements=True, key_providers=frozenset({allowed}))
        assert _report(document, policy).valid is ok, allowed


def test_app_id_policy() -> None:
    document = _document("trust-center/debugData2_gateway_bundle.json")
    app_id = bytes.fromhex(document["main_fields"]["app_id"].removeprefix("0x"))
    assert _report(document, TdxPolicy(unsafe_any_measurements=True, app_ids=frozenset({app_id}))).valid
    report = _report(document, TdxPolicy(unsafe_any_measurements=True, app_ids=frozenset({bytes(20)})))
    assert isinstance(report.error, ComposeHashMismatch)


# --- MRCONFIGID ----------------------------------------------------------------------------------------------------


def test_mr_config_id_v1_of_real_quotes_commits_to_the_compose_hash() -> None:
    document = _document("dstack/tdx-lite-getquote.json")
    attestation = dstack.verify(_bytes(document), ANY, now=NOW, unsafe_no_collateral=True)
    assert attestation.mr_config_id.version == 1
    assert attestation.td.mr_config_id == mr_config_id_v1(attestation.app.compose_hash)


def _with_mr_config_id(document: dict[str, Any], value: bytes) -> dict[str, Any]:
    quote = bytes.fromhex(document["quote"])
    return {**document, "quote": (quote[:MR_CONFIG_ID] + value + quote[MR_CONFIG_ID + 48 :]).hex()}


def test_mr_config_id_naming_another_compose_hash_is_a_mismatch() -> None:
    document = _with_mr_config_id(_document("dstack/tdx-lite-getquote.json"), mr_config_id_v1(bytes(32)))
    report = _report(document)
    assert isinstance(report.error, ComposeHashMismatch)
    assert not _check(report, "dstack.mr_config_id").ok


def test_mr_config_id_v2_commits_to_compose_app_and_key_provider() -> None:
    document = _document("dstack/tdx-lite-getquote.json")
    app = app_info(EventLog.from_json(document["event_log"]))
    assert app.key_provider is not None and app.key_provider.kind == 2
    value = mr_config_id_v2(app.compose_hash, app.app_id, 2, app.key_provider.id)
    assert _report(_with_mr_config_id(document, value)).valid
    wrong = mr_config_id_v2(app.compose_hash, app.app_id, 1, app.key_provider.id)
    assert isinstance(_report(_with_mr_config_id(document, wrong)).error, ComposeHashMismatch)


def test_mr_config_id_v3_cannot_be_checked_and_fails_closed() -> None:
    document = _with_mr_config_id(_document("dstack/tdx-lite-getquote.json"), b"\x03" + bytes(47))
    assert "cannot be checked" in _check(_report(document), "dstack.mr_config_id").detail


def test_unset_mr_config_id_is_reported_as_not_set() -> None:
    report = _report(_document("dstack/quote-report.json"))
    assert report.facts["mr_config_id"] == "not set"
    assert MrConfigId.decode(bytes(48)).check(_app_stub()) is None


def _app_stub() -> AppInfo:
    return AppInfo(bytes(20), bytes(32), b"", None, None, None, True, (), ())


def test_mr_config_id_v2_matches_dstacks_published_test_vector() -> None:
    value = mr_config_id_v2(bytes(range(32)), bytes(range(20)), 2, bytes.fromhex("aabbccdd"))
    assert value.hex() == "02e472ed80a08042f044ba63b53b798e98e3ea5219cd078007b1ac8b3dfc762b94" + "00" * 15


def test_keccak256_is_ethereums_keccak_not_sha3() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"").hex() != hashlib.sha3_256(b"").hexdigest()


@pytest.mark.parametrize("size", [0, 1, 135, 136, 137, 272, 1000])
def test_keccak_permutation_agrees_with_sha3_when_padded_like_sha3(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    assert dstack._keccak(data, padding=0x06) == hashlib.sha3_256(data).digest()


# --- bundles ------------------------------------------------------------------------------------------------------


def test_bundle_whose_report_data_disagrees_with_the_quote_is_refused() -> None:
    document = {**_document("dstack/quote-report.json"), "report_data": "ff" * 64}
    report = _report(document)
    assert isinstance(report.error, ReportDataMismatch)


def test_bundle_without_collateral_is_invalid_unless_unsafe() -> None:
    data = _bytes(_document("dstack/quote-report.json"))
    report = dstack.report(data, ANY, now=NOW)
    assert isinstance(report.error, CollateralMissing)
    assert _check(report, "event_log.replay").ok  # everything else was still checked


def test_bundle_event_log_may_be_an_embedded_array() -> None:
    document = _document("dstack/quote-report.json")
    document["event_log"] = json.loads(document["event_log"])
    assert _report(document).valid


@pytest.mark.parametrize(
    "document",
    [
        {"event_log": "[]"},
        {"quote": "00", "event_log": "[]"},
        {"quote": 5, "event_log": "[]"},
        {"quote": "zz", "event_log": "[]"},
    ],
)
def test_unusable_bundle_is_malformed(document: dict[str, Any]) -> None:
    report = dstack.report(json.dumps(document).encode(), ANY, now=NOW, unsafe_no_collateral=True)
    assert isinstance(report.error, Malformed)
    assert [c.name for c in report.checks] == ["bundle.parse"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"app_compose": 5}, "app_compose"),
        ({"vm_config": "{"}, "vm_config"),
        ({"vm_config": 7}, "vm_config"),
        ({"report_data": "zz"}, "report_data"),
    ],
)
def test_wrong_optional_bundle_fields_are_malformed(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(Malformed, match=match):
        DstackBundle.from_mapping({**_document("dstack/quote-report.json"), **changes})


def test_bundles_are_recognised_and_other_json_is_not() -> None:
    assert dstack.is_bundle(_bytes(_document("dstack/quote-report.json")))
    assert not dstack.is_bundle(b'{"quote": "00"}')
    assert not dstack.is_bundle(fixtures_dir("tdx", "dcap-qvl", "tdx_quote").read_bytes())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_bundles_raise_only_enclavekit_errors(data: st.DataObject) -> None:
    raw = bytearray(_bytes(_document("dstack/quote-report.json")))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(Error):
        DstackBundle.from_json(bytes(raw))
    report = dstack.report(bytes(raw), ANY, now=NOW, unsafe_no_collateral=True)
    assert report.valid or report.error is not None
