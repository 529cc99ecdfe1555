"""The dstack event log: parsing, RTMR replay on every real bundle, and logs that lie."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.attestation.errors import Malformed
from enclavekit.attestation.event_log import (
    MAX_EVENTS,
    RUNTIME_EVENT_TYPE,
    Event,
    EventLog,
    replay,
    runtime_digest_v1,
    runtime_digest_v2,
)
from enclavekit.attestation.quote import Quote
from enclavekit.errors import Error
from tests.conftest import fixtures_dir

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


def _bundle(name: str) -> dict[str, Any]:
    path: Path = fixtures_dir("tdx", *name.split("/"))
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _rtmrs(bundle: dict[str, Any]) -> tuple[bytes, ...]:
    td = Quote.parse(bundle["quote"].encode()).td
    assert td is not None
    return td.rtmrs


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(bundle["event_log"])
    return entries


@pytest.mark.parametrize("name", BUNDLES)
def test_replay_reproduces_all_four_rtmrs_of_the_quote(name: str) -> None:
    bundle = _bundle(name)
    replayed = replay(EventLog.from_json(bundle["event_log"]))
    assert replayed.rtmrs == _rtmrs(bundle)
    assert replayed.mismatches == ()


@pytest.mark.parametrize("name", BUNDLES)
def test_every_runtime_digest_is_recomputed_never_taken_from_the_log(name: str) -> None:
    replayed = replay(EventLog.from_json(_bundle(name)["event_log"]))
    runtime = [e for e in replayed.events if e.event.is_runtime]
    assert runtime
    assert all(
        e.status == "recomputed" and e.digest == runtime_digest_v1(e.event.name, e.event.payload) for e in runtime
    )


def test_lite_logs_without_runtime_digests_still_replay() -> None:
    bundle = _bundle("dstack/tdx-lite-getquote.json")
    assert all(e["digest"] == "" for e in _entries(bundle) if e["imr"] == 3)
    assert replay(EventLog.from_json(bundle["event_log"])).rtmrs == _rtmrs(bundle)


def _tampered_payload(entry: dict[str, Any]) -> str:
    payload = bytes.fromhex(entry["event_payload"])
    return (payload[:-1] + bytes([payload[-1] ^ 1])).hex() if payload else "00"


@pytest.mark.parametrize("name", BUNDLES)
def test_altering_any_measured_payload_is_detected(name: str) -> None:
    """For every event: change its payload. Either the change is caught (digest mismatch, or RTMRs no longer
    replay), or the event's payload is not what the TEE measured — then it is reported as unbound and nothing
    the verifier reads from the log changes."""
    bundle = _bundle(name)
    quoted = _rtmrs(bundle)
    entries = _entries(bundle)
    caught = unbound = 0
    for index in range(len(entries)):
        changed = [dict(e) for e in entries]
        changed[index]["event_payload"] = _tampered_payload(changed[index])
        replayed = replay(EventLog.from_list(changed))
        event = replayed.events[index]
        if replayed.mismatches or replayed.differing_rtmrs(quoted):
            caught += 1
        else:
            assert event.status == "unbound", f"event {index} ({event.event.label}) changed undetected"
            assert not event.event.is_runtime
            unbound += 1
    assert caught >= sum(1 for e in entries if e["event_type"] == RUNTIME_EVENT_TYPE)
    assert caught + unbound == len(entries)


@pytest.mark.parametrize("name", BUNDLES)
def test_altering_any_logged_digest_breaks_the_replay_or_is_flagged(name: str) -> None:
    bundle = _bundle(name)
    quoted = _rtmrs(bundle)
    entries = _entries(bundle)
    for index in range(len(entries)):
        changed = [dict(e) for e in entries]
        changed[index]["digest"] = "11" * 48
        replayed = replay(EventLog.from_list(changed))
        assert replayed.mismatches or replayed.differing_rtmrs(quoted), f"event {index}"


def test_a_log_that_lies_about_compose_hash_and_keeps_the_old_digest_is_caught() -> None:
    """The attack on verifiers that trust logged runtime digests: swap the compose-hash payload, keep the digest
    that was really extended. Trusting the digest would replay fine; recomputing it does not."""
    bundle = _bundle("trust-center/debugData2_kms_bundle.json")
    entries = _entries(bundle)
    index = next(i for i, e in enumerate(entries) if e["event"] == "compose-hash")
    entries[index]["event_payload"] = hashlib.sha256(b"an app the user never approved").hexdigest()
    naive = [bytes(48)] * 4
    for entry in entries:
        naive[entry["imr"]] = hashlib.sha384(naive[entry["imr"]] + bytes.fromhex(entry["digest"])).digest()
    assert tuple(naive) == _rtmrs(bundle)  # a trusting verifier is fooled
    replayed = replay(EventLog.from_list(entries))
    assert [e.event.name for e in replayed.mismatches] == ["compose-hash"]
    assert replayed.differing_rtmrs(_rtmrs(bundle)) == (3,)


def test_v1_runtime_digest_matches_dstacks_definition() -> None:
    expected = hashlib.sha384(struct.pack("<I", 0x08000001) + b":app-id:" + bytes.fromhex("deadbeef")).digest()
    assert runtime_digest_v1("app-id", bytes.fromhex("deadbeef")) == expected


def test_v2_runtime_digest_is_sha384_of_canonical_json() -> None:
    canonical = b'{"name":"compose-hash","payload":"abcd","type":134217729}'
    assert runtime_digest_v2("compose-hash", bytes.fromhex("abcd")) == hashlib.sha384(canonical).digest()
    assert runtime_digest_v2("x", b"") != runtime_digest_v1("x", b"")


def test_v2_canonical_json_escapes_like_rfc8785() -> None:
    name = 'q"\\\n\x01é🦀'
    canonical = '{"name":"q\\"\\\\\\n\\u0001é🦀","payload":"ff","type":134217729}'.encode()
    assert runtime_digest_v2(name, b"\xff") == hashlib.sha384(canonical).digest()


def _runtime(name: str, payload: bytes, *, version: int = 1, digest: bytes = b"") -> dict[str, Any]:
    entry: dict[str, Any] = {
        "imr": 3,
        "event_type": RUNTIME_EVENT_TYPE,
        "digest": digest.hex(),
        "event": name,
        "event_payload": payload.hex(),
    }
    if version != 1:
        entry["version"] = version
    return entry


def test_v2_events_replay_and_a_wrong_v2_digest_is_flagged() -> None:
    payload = bytes(32)
    good = _runtime("compose-hash", payload, version=2, digest=runtime_digest_v2("compose-hash", payload))
    replayed = replay(EventLog.from_list([good]))
    assert replayed.events[0].status == "recomputed"
    assert replayed.rtmrs[3] == hashlib.sha384(bytes(48) + runtime_digest_v2("compose-hash", payload)).digest()
    lying = _runtime("compose-hash", payload, version=2, digest=runtime_digest_v1("compose-hash", payload))
    assert replay(EventLog.from_list([lying])).events[0].status == "mismatch"


def test_v2_self_describing_form_is_recognised_when_logged() -> None:
    canonical = b'{"event":"app-id","event_type":134217729,"payload":"01","version":2}'
    digest = hashlib.sha384(canonical).digest()
    replayed = replay(EventLog.from_list([_runtime("app-id", b"\x01", version=2, digest=digest)]))
    assert replayed.events[0].status == "recomputed"
    assert replayed.events[0].digest == digest


def test_boot_events_whose_digest_hashes_their_payload_are_checked() -> None:
    separator = {
        "imr": 1,
        "event_type": 4,
        "digest": hashlib.sha384(bytes(4)).hexdigest(),
        "event": "",
        "event_payload": "00000000",
    }
    assert replay(EventLog.from_list([separator])).events[0].digest_ok is True
    separator["event_payload"] = "01000000"
    assert replay(EventLog.from_list([separator])).events[0].digest_ok is False


def test_event_labels_name_nameless_boot_events_by_type() -> None:
    log = EventLog.from_json(_bundle("dstack/quote-report.json")["event_log"])
    labels = [e.label for e in log.events]
    assert "EV_SEPARATOR" in labels and "EV_EFI_VARIABLE_BOOT" in labels and "compose-hash" in labels


# --- parsing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ({"imr": 0}, "JSON array"),
        ([[1, 2]], "not a JSON object"),
        ([{"imr": 3}], "lacks"),
        ([{**_runtime("a", b""), "imr": 4}], "imr"),
        ([{**_runtime("a", b""), "imr": True}], "imr"),
        ([{**_runtime("a", b""), "event_type": -1}], "event_type"),
        ([{**_runtime("a", b""), "event_type": 2**32}], "event_type"),
        ([{**_runtime("a", b""), "digest": "zz"}], "digest"),
        ([{**_runtime("a", b""), "digest": "00" * 32}], "48 bytes"),
        ([{**_runtime("a", b""), "event_payload": 5}], "hex string"),
        ([{**_runtime("a", b""), "event": 5}], "event must be"),
        ([{**_runtime("a", b""), "version": 3}], "version"),
        ([{**_runtime("a", b""), "surprise": 1}], "unknown"),
        ([{"imr": 0, "event_type": 4, "digest": "", "event": "", "event_payload": ""}], "boot event must carry"),
    ],
)
def test_malformed_event_logs_are_rejected(entries: Any, match: str) -> None:
    with pytest.raises(Malformed, match=match):
        EventLog.from_list(entries)


@pytest.mark.parametrize(
    "text",
    ["not json", '[{"imr": 3, "imr": 2}]', "[NaN]", "[" * 100_000, '["\\ud800"]', b"\xff\xfe"],
    ids=["garbage", "duplicate-key", "nan", "deep", "lone-surrogate", "not-utf8"],
)
def test_hostile_json_is_malformed_not_a_crash(text: str | bytes) -> None:
    with pytest.raises(Malformed):
        EventLog.from_json(text)


def test_lone_surrogate_in_an_event_name_is_rejected() -> None:
    with pytest.raises(Malformed, match="Unicode"):
        EventLog.from_json('[{"imr":3,"event_type":134217729,"digest":"","event":"\\udc00","event_payload":""}]')


def test_too_many_events_are_rejected() -> None:
    with pytest.raises(Malformed, match="at most"):
        EventLog.from_list([_runtime("a", b"")] * (MAX_EVENTS + 1))


def test_events_are_immutable_values() -> None:
    event = Event(3, RUNTIME_EVENT_TYPE, b"", "a", b"")
    with pytest.raises(AttributeError):
        event.name = "b"  # type: ignore[misc]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)
_event_like = st.fixed_dictionaries(
    {},
    optional={
        "imr": st.integers(-2, 6) | _json_values,
        "event_type": st.sampled_from([4, RUNTIME_EVENT_TYPE, 0x80000002, 2**32]) | _json_values,
        "digest": st.sampled_from(["", "00" * 48, "zz"]) | st.binary(max_size=50).map(bytes.hex) | _json_values,
        "event": st.text(max_size=30) | _json_values,
        "event_payload": st.binary(max_size=64).map(bytes.hex) | _json_values,
        "version": st.sampled_from([1, 2, "v2", "3"]) | _json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event_like, max_size=8) | _json_values)
def test_fuzzed_event_logs_raise_only_enclavekit_errors(value: Any) -> None:
    try:
        log = EventLog.from_json(json.dumps(value))
    except Error:
        return
    replay(log)  # whatever parses, replays


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzzed_bytes_raise_only_malformed(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        EventLog.from_json(data)
