"""The ``[tdx]`` section of a TOML policy file: what it can pin, and the typos that must not weaken it."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from enclavekit.attestation.errors import PolicyInvalid
from enclavekit.attestation.nitro import UnsafePolicyWarning
from enclavekit.attestation.tdx import (
    ExactReportData,
    HashedReportData,
    KeyNonceReportData,
    MeasurementSet,
    TdxPolicy,
)

M = "ab" * 48


def _policy(text: str, base_dir: Path) -> TdxPolicy:
    return TdxPolicy.from_mapping(tomllib.loads(text)["tdx"], base_dir=base_dir)


def test_full_section_is_read(tmp_path: Path) -> None:
    (tmp_path / "app-compose.json").write_bytes(b'{"name": "app"}\n')
    policy = _policy(
        f"""
        [tdx]
        allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
        allowed_advisory_ids = ["INTEL-SA-00615"]
        allow_smt = false
        compose_hashes = ["{"00" * 32}"]
        compose_files = ["app-compose.json"]
        app_ids = ["0x39F2f3373CEcFf85BD8BBd985adeeF32547a302c"]
        key_providers = ["kms", "local-sgx:1b7a"]

        [[tdx.measurements]]
        name = "dstack-0.5 8 vCPU 16 GiB"
        mrtd = "{M}"
        rtmr0 = "{M}"
        rtmr1 = "{M}"
        rtmr2 = "{M}"

        [tdx.report_data]
        hash = "sha512"
        preimage = "acme-account:https://acme.example/acct/1"
        """,
        tmp_path,
    )
    assert policy.allowed_tcb_statuses == {"UpToDate", "SWHardeningNeeded"}
    assert policy.allowed_advisory_ids == {"INTEL-SA-00615"}
    assert not policy.allow_smt and policy.allow_cached_keys and policy.restricts_platform
    assert policy.compose_hashes == {bytes(32), hashlib.sha256(b'{"name": "app"}\n').digest()}
    assert policy.app_ids == {bytes.fromhex("39F2f3373CEcFf85BD8BBd985adeeF32547a302c")}
    assert policy.key_providers == {"kms", "local-sgx:1b7a"}
    assert policy.measurements == (MeasurementSet(*(bytes.fromhex(M),) * 4, name="dstack-0.5 8 vCPU 16 GiB"),)
    assert policy.report_data == HashedReportData(b"acme-account:https://acme.example/acct/1", "sha512")
    assert policy.pins_app


def test_measurements_can_come_from_a_dstack_mr_json_file(tmp_path: Path) -> None:
    values = {"MRTD": M, "RTMR0": M, "rtmr1": M, "rtmr2": M, "mr_aggregated": "ignored"}
    (tmp_path / "os.json").write_text(json.dumps(values))
    policy = _policy('[tdx]\n[[tdx.measurements]]\nfile = "os.json"\n', tmp_path)
    assert policy.measurements[0].name == "os.json"
    assert policy.measurements[0].mrtd == bytes.fromhex(M)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"exact": "11" * 64}, ExactReportData(b"\x11" * 64)),
        ({"hash": "sha256", "preimage_hex": "00ff"}, HashedReportData(b"\x00\xff", "sha256")),
        ({"public_key": "04" * 33, "nonce": "abcd"}, KeyNonceReportData(b"\x04" * 33, b"\xab\xcd")),
    ],
)
def test_report_data_forms(table: dict[str, Any], expected: object) -> None:
    policy = TdxPolicy.from_mapping({"unsafe_any_measurements": True, "report_data": table}, base_dir=Path())
    assert policy.report_data == expected


def test_section_without_measurements_fails_closed() -> None:
    with pytest.raises(PolicyInvalid, match="pins no TDX measurements"):
        TdxPolicy.from_mapping({}, base_dir=Path())
    with pytest.raises(PolicyInvalid, match="pins no TDX measurements"):
        TdxPolicy.from_mapping({"compose_hashes": ["00" * 32]}, base_dir=Path())


def test_unsafe_any_measurements_must_be_said_by_name() -> None:
    assert TdxPolicy.from_mapping({"unsafe_any_measurements": True}, base_dir=Path()).unsafe_any_measurements


def test_allow_debug_in_a_file_warns() -> None:
    with pytest.warns(UnsafePolicyWarning):
        TdxPolicy.from_mapping({"unsafe_any_measurements": True, "allow_debug": True}, base_dir=Path())


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"unsafe_any_measurements": True, "allowed_tcb_status": ["UpToDate"]}, "unknown key"),
        ({"unsafe_any_measurements": "yes"}, "true or false"),
        ({"unsafe_any_measurements": True, "allowed_tcb_statuses": "UpToDate"}, "array of strings"),
        ({"unsafe_any_measurements": True, "allowed_tcb_statuses": ["Uptodate"]}, "unknown TCB status"),
        ({"unsafe_any_measurements": True, "compose_hashes": ["00" * 31]}, "32 bytes"),
        ({"unsafe_any_measurements": True, "app_ids": ["xyz"]}, "hex"),
        ({"unsafe_any_measurements": True, "compose_files": ["absent.json"]}, "cannot read"),
        ({"unsafe_any_measurements": True, "report_data": {"exact": "00"}}, "64 bytes"),
        ({"unsafe_any_measurements": True, "report_data": {"hash": "md5", "preimage": "x"}}, "hash must be"),
        ({"unsafe_any_measurements": True, "report_data": {"nonce": "00"}}, "report_data must be"),
        ({"unsafe_any_measurements": True, "report_data": "00"}, "must be a table"),
        ({"measurements": {"mrtd": M}}, "array of tables"),
        ({"measurements": [{"mrtd": M, "rtmr0": M, "rtmr1": M}]}, "lacks rtmr2"),
        ({"measurements": [{"mrtd": M, "rtmr0": M, "rtmr1": M, "rtmr2": M, "rtmr3": M}]}, "unknown key"),
        ({"measurements": [{"mrtd": "00", "rtmr0": M, "rtmr1": M, "rtmr2": M}]}, "48 bytes"),
        ({"measurements": [{"file": "absent.json"}]}, "cannot read"),
        ({"measurements": [{"file": "x.json", "mrtd": M}]}, "cannot be combined"),
    ],
)
def test_typos_and_bad_values_are_errors_not_weaker_policies(table: dict[str, Any], match: str, tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid, match=match):
        TdxPolicy.from_mapping(table, base_dir=tmp_path)


def test_measurement_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "os.json").write_text("mrtd=...")
    with pytest.raises(PolicyInvalid, match="not JSON"):
        TdxPolicy.from_mapping({"measurements": [{"file": "os.json"}]}, base_dir=tmp_path)
