"""``enclavekit verify`` on TDX quotes and dstack bundles, as other tools call it: a real process, its exit code
and its JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import fixtures_dir
from tests.test_tdx_collateral import FakePccs, pccs  # noqa: F401  (the loopback PCCS fixture)

ENCLAVEKIT = [sys.executable, "-m", "enclavekit.cli"]
TDX_AT = "2025-06-20T00:00:00Z"


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENCLAVEKIT, *map(str, args)], capture_output=True, text=True, timeout=60, env=env)


def _dcap(name: str) -> Path:
    return fixtures_dir("tdx", "dcap-qvl", name)


def _bundle(name: str) -> Path:
    return fixtures_dir("tdx", "trust-center", name)


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_raw_tdx_quote_with_collateral_is_valid_with_the_tdx_json_shape() -> None:
    result = run(
        "verify", _dcap("tdx_quote"), "--collateral", _dcap("tdx_quote_collateral.json"), "--at", TDX_AT, "--json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = _lines(result)
    assert set(line) >= {"file", "valid", "tee", "error", "measurements", "tcb_status", "advisory_ids", "checks"}
    assert (line["valid"], line["tee"], line["tcb_status"], line["advisory_ids"]) == (True, "tdx", "UpToDate", [])
    assert set(line["measurements"]) >= {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data", "mr_config_id"}
    assert line["measurements"]["mrtd"].startswith("91eb2b44d141")
    assert line["hardware_verified"] is True


def test_expired_collateral_fails_on_new_years_day_2026() -> None:
    result = run(
        "verify", _dcap("tdx_quote"), "--collateral", _dcap("tdx_quote_collateral.json"), "--at", "1767225600", "--json"
    )
    assert result.returncode == 1
    assert _lines(result)[0]["error"]["code"] == "collateral_expired"


def test_hex_quote_and_sgx_quote_in_one_batch_each_with_its_collateral() -> None:
    result = run(
        "verify",
        _dcap("near_quote_hex.txt"),
        _dcap("sgx_quote"),
        "--collateral",
        _dcap("sgx_quote_collateral.json"),
        "--collateral",
        _dcap("near_quote_collateral.json"),
        "--at",
        "1757462400",
        "--json",
    )
    assert result.returncode == 1
    near, sgx = _lines(result)
    assert (near["valid"], near["tee"], near["tcb_status"]) == (True, "tdx", "UpToDate")
    assert (sgx["valid"], sgx["tee"]) == (False, "sgx")


def test_quote_without_collateral_is_invalid_unless_unsafe_and_then_says_so() -> None:
    result = run("verify", _dcap("tdx_quote"), "--json")
    assert result.returncode == 1
    assert _lines(result)[0]["error"]["code"] == "collateral_missing"
    result = run("verify", _dcap("tdx_quote"), "--unsafe-no-collateral", "--json")
    assert result.returncode == 0
    (line,) = _lines(result)
    assert line["hardware_verified"] is False and line["tcb_status"] is None
    assert "NOT VERIFIED" in next(c["detail"] for c in line["checks"] if c["name"] == "hardware.quote")
    assert "NOT verified" in result.stderr
    human = run("verify", _dcap("tdx_quote"), "--unsafe-no-collateral")
    assert "hardware NOT verified" in human.stdout


def test_dstack_bundle_reports_events_and_app() -> None:
    result = run("verify", _bundle("debugData2_gateway_bundle.json"), "--unsafe-no-collateral", "--json")
    assert result.returncode == 0, result.stdout
    (line,) = _lines(result)
    assert line["tee"] == "tdx"
    assert all(set(event) == {"name", "imr", "digest_ok"} for event in line["events"])
    assert {"name": "compose-hash", "imr": 3, "digest_ok": True} in line["events"]
    app = line["app"]
    assert app["compose_hash"] == "9a5b9b449a34cc55277614876720bb9e5b552085ae742ab18f026867f72bdabc"
    assert app["app_id"] == "39f2f3373cecff85bd8bbd985adeef32547a302c"
    assert set(app) >= {"app_id", "compose_hash", "instance_id", "os_image_hash", "key_provider"}
    assert app["compose_verified"] is True


def test_placeholder_compose_fails_and_a_compose_file_can_be_given(tmp_path: Path) -> None:
    result = run("verify", _bundle("debugData_kms_bundle.json"), "--unsafe-no-collateral", "--json")
    assert result.returncode == 1
    assert _lines(result)[0]["error"]["code"] == "compose_hash_mismatch"
    document = json.loads(_bundle("debugData2_gateway_bundle.json").read_text())
    compose = tmp_path / "app-compose.json"
    compose.write_text(document.pop("app_compose"))
    bare = tmp_path / "bundle.json"
    bare.write_text(json.dumps(document))
    result = run("verify", bare, "--compose", compose, "--unsafe-no-collateral", "--json")
    assert result.returncode == 0
    assert _lines(result)[0]["app"]["compose_verified"] is True
    other = tmp_path / "other.json"
    other.write_text('{"name": "other"}')
    result = run("verify", bare, "--compose", other, "--unsafe-no-collateral", "--json")
    assert _lines(result)[0]["error"]["code"] == "compose_hash_mismatch"


def test_ear_format_prints_eat_attestation_results(tmp_path: Path) -> None:
    quote = ("verify", _dcap("tdx_quote"), "--collateral", _dcap("tdx_quote_collateral.json"), "--at", TDX_AT)
    result = run(*quote, "--format", "ear")
    assert result.returncode == 0
    (claims,) = _lines(result)
    assert claims["eat_profile"] == "tag:ietf.org,2026:rats/ear#04"
    assert claims["submods"]["tdx"]["ear_status"] == "warning"  # no --policy: authenticity only
    assert claims["submods"]["tdx"]["ear_trustworthiness_vector"]["hardware"] == 2
    m = _lines(run(*quote, "--json"))[0]["measurements"]
    pins = f'mrtd = "{m["mrtd"]}"\nrtmr0 = "{m["rtmr0"]}"\nrtmr1 = "{m["rtmr1"]}"\nrtmr2 = "{m["rtmr2"]}"\n'
    policy = _policy(tmp_path, "[tdx]\n[[tdx.measurements]]\n" + pins)
    (claims,) = _lines(run(*quote, "--policy", policy, "--format", "ear"))
    assert claims["ear_status"] == "affirming"
    assert claims["submods"]["tdx"]["ear_trustworthiness_vector"]["executables"] == 3
    result = run("verify", _bundle("debugData_kms_bundle.json"), "--unsafe-no-collateral", "--format", "ear")
    assert _lines(result)[0]["ear_status"] == "contraindicated"


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def _pins(bundle: Path) -> str:
    line = _lines(run("verify", bundle, "--unsafe-no-collateral", "--json"))[0]
    m = line["measurements"]
    return f'mrtd = "{m["mrtd"]}"\nrtmr0 = "{m["rtmr0"]}"\nrtmr1 = "{m["rtmr1"]}"\nrtmr2 = "{m["rtmr2"]}"\n'


def test_tdx_policy_section_pins_os_and_compose_hash(tmp_path: Path) -> None:
    bundle = _bundle("debugData2_gateway_bundle.json")
    compose = "9a5b9b449a34cc55277614876720bb9e5b552085ae742ab18f026867f72bdabc"
    good = _policy(tmp_path, f'[tdx]\ncompose_hashes = ["{compose}"]\n[[tdx.measurements]]\n{_pins(bundle)}')
    assert run("verify", bundle, "--policy", good, "--unsafe-no-collateral").returncode == 0
    pins = _pins(bundle)
    mrtd = pins.split('"')[1]
    wrong_os = _policy(tmp_path, "[tdx]\n[[tdx.measurements]]\n" + pins.replace(mrtd, "00" * 48))
    result = run("verify", bundle, "--policy", wrong_os, "--unsafe-no-collateral", "--json")
    assert _lines(result)[0]["error"]["code"] == "measurement_mismatch"
    wrong_app = _policy(tmp_path, f'[tdx]\ncompose_hashes = ["{"00" * 32}"]\n[[tdx.measurements]]\n{_pins(bundle)}')
    result = run("verify", bundle, "--policy", wrong_app, "--unsafe-no-collateral", "--json")
    assert _lines(result)[0]["error"]["code"] == "compose_hash_mismatch"


def test_policy_without_a_tdx_section_refuses_tdx_evidence(tmp_path: Path) -> None:
    nitro_only = _policy(tmp_path, f'[[nitro.measurements]]\nPCR0 = "{"00" * 48}"\n')
    result = run("verify", _dcap("tdx_quote"), "--policy", nitro_only, "--unsafe-no-collateral", "--json")
    assert result.returncode == 1
    assert _lines(result)[0]["error"]["code"] == "policy_invalid"


def test_usage_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    cases: list[tuple[str | Path, ...]] = [
        ("--policy", _policy(tmp_path, "[tdx]\nallowed_tcb_status = []\n")),
        ("--collateral", tmp_path / "absent.json"),
        ("--format", "xml"),
        ("--pccs", "ftp://pccs.example"),
        ("--compose", tmp_path / "absent.json"),
    ]
    for extra in cases:
        result = run("verify", _dcap("tdx_quote"), *extra)
        assert result.returncode == 2, extra
        assert "Traceback" not in result.stderr


def test_a_file_that_is_not_collateral_is_collateral_invalid_on_each_quotes_line() -> None:
    result = run("verify", _dcap("tdx_quote"), "--collateral", _dcap("tdx_quote"), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = _lines(result)
    assert line["error"]["code"] == "collateral_invalid" and "--collateral" in line["hint"]


def test_at_doc_is_refused_for_quotes_that_carry_no_time() -> None:
    result = run("verify", _dcap("tdx_quote"), "--at", "doc", "--json")
    assert result.returncode == 1
    assert "no timestamp" in _lines(result)[0]["error"]["message"]


def test_nitro_and_tdx_evidence_in_one_batch() -> None:
    nitro = fixtures_dir("nitro", "samples", "base_2024-11-30_nondebug.cbor")
    result = run("verify", nitro, _dcap("tdx_quote"), "--unsafe-no-collateral", "--at", TDX_AT, "--json")
    tees = [line["tee"] for line in _lines(result)]
    assert tees == ["nitro", "tdx"]


def test_unknown_file_is_still_refused_as_unrecognised(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": "world"}')
    result = run("verify", junk, "--json")
    assert result.returncode == 1
    assert _lines(result)[0]["error"]["code"] == "malformed"


def test_pccs_collateral_is_fetched_once_then_read_from_the_cache(pccs: FakePccs, tmp_path: Path) -> None:  # noqa: F811
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    for _ in range(2):
        result = run("verify", _dcap("tdx_quote"), "--pccs", pccs.url, "--at", TDX_AT, "--json", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert _lines(result)[0]["tcb_status"] == "UpToDate"
    assert len(pccs.requests) == 4  # the second run used the cache
    assert (tmp_path / "enclavekit" / "collateral" / "tdx-B0C06F000000-platform.json").is_file()


def test_unreachable_pccs_warns_and_the_quote_lacks_collateral(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    result = run("verify", _dcap("tdx_quote"), "--pccs", "http://127.0.0.1:9", "--at", TDX_AT, "--json", env=env)
    assert result.returncode == 1
    assert _lines(result)[0]["error"]["code"] == "collateral_missing"
    assert "no collateral from the PCCS" in result.stderr


def test_collateral_without_crls_gives_every_input_its_json_line_not_a_usage_error(tmp_path: Path) -> None:
    document = json.loads(_dcap("tdx_quote_collateral.json").read_text())
    del document["pck_crl"], document["root_ca_crl"]
    no_crls = tmp_path / "no-crls.json"
    no_crls.write_text(json.dumps(document))
    nitro = fixtures_dir("nitro", "samples", "base_2024-11-30_nondebug.cbor")
    result = run("verify", _dcap("tdx_quote"), nitro, "--collateral", no_crls, "--at", TDX_AT, "--json")
    assert result.returncode == 1, result.stderr
    quote, document_line = _lines(result)
    assert quote["error"]["code"] == "collateral_invalid"
    assert "CRL" in quote["error"]["message"] and str(no_crls) in quote["error"]["message"]
    assert document_line["tee"] == "nitro" and document_line["error"]["code"] != "collateral_invalid"
    assert "0 verified, 2 invalid, 0 errors" in result.stderr


def test_dstack_bundle_without_collateral_says_collateral_missing_once() -> None:
    result = run("verify", _bundle("debugData2_gateway_bundle.json"))
    assert result.returncode == 1
    message = "the quote's signature and TCB status cannot be checked"
    assert result.stdout.count(message) == 1, result.stdout
    assert result.stdout.count("collateral_missing") == 1
    assert "--collateral" in result.stdout  # the CLI's hint, not the core's message


def test_at_doc_for_a_quote_names_the_flag_only_in_the_cli_hint() -> None:
    result = run("verify", _dcap("tdx_quote"), "--at", "doc", "--json")
    assert result.returncode == 1
    (line,) = _lines(result)
    assert line["error"]["code"] == "policy_invalid"
    assert "--at" not in line["error"]["message"] and "--at" in line["hint"]
    assert "0 verified, 0 invalid, 1 errors" not in result.stderr  # one file: no summary line
