"""``enclavekit nsm``: documents that verify, PCR0 printed, usage errors with exit code 2 and no traceback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from enclavekit.attestation import nitro
from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.cli import app
from enclavekit.nsm import NsmSimulator, load_root

runner = CliRunner()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    code = tmp_path / "app"
    code.mkdir()
    (code / "main.py").write_text("print('hello from the enclave')\n")
    return code


def test_attest_writes_a_document_that_verifies_with_the_simulator_root(tmp_path: Path, app_dir: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "doc.cbor"
    result = runner.invoke(
        app,
        [
            "nsm",
            "attest",
            "--app",
            str(app_dir),
            "--state",
            str(state),
            "--nonce",
            "00ff",
            "--user-data",
            "0xCAFE",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    expected_pcr0 = NsmSimulator(state, app=app_dir).pcr(0).hex()
    assert f"PCR0 {expected_pcr0}" in result.stdout
    assert str(out) in result.stdout
    policy = NitroPolicy(
        roots=(load_root(state),),
        measurements=[{0: bytes.fromhex(expected_pcr0)}],
        nonce=b"\x00\xff",
        user_data=b"\xca\xfe",
    )
    nitro.verify(out.read_bytes(), policy, now=datetime.now(UTC))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--nonce", "xyz", "not hexadecimal"),
        ("--user-data", "abc", "not hexadecimal"),  # odd number of digits
        ("--public-key", "ab" * 1025, "1025 bytes"),
        ("--nonce", "00" * 1025, "at most 1024"),
    ],
)
def test_bad_or_oversized_fields_are_usage_errors(tmp_path: Path, option: str, value: str, message: str) -> None:
    out = tmp_path / "doc.cbor"
    result = runner.invoke(app, ["nsm", "attest", "--state", str(tmp_path / "s"), option, value, "--out", str(out)])
    assert result.exit_code == 2
    assert message in result.output
    assert option in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()


def test_missing_app_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["nsm", "attest", "--app", str(tmp_path / "nope"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.skipif(Path("/dev/nsm").exists(), reason="a real NSM is present")
def test_device_outside_an_enclave_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["nsm", "attest", "--device", "--out", str(tmp_path / "doc")])
    assert result.exit_code == 1
    assert "nsm_unavailable" in result.output
    assert "/dev/nsm" in result.output
    assert "Traceback" not in result.output


def test_describe_json_reports_the_simulated_nsm(tmp_path: Path, app_dir: Path) -> None:
    state = tmp_path / "state"
    result = runner.invoke(app, ["nsm", "describe", "--state", str(state), "--app", str(app_dir), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["source"] == "simulator"
    assert (facts["version"], facts["digest"], facts["max_pcrs"]) == ("1.0.0", "SHA384", 32)
    assert facts["locked_pcrs"] == list(range(16))
    assert facts["pcrs"]["0"] == NsmSimulator(state, app=app_dir).pcr(0).hex()
    assert facts["simulator"]["root_sha256"] == hashlib.sha256(load_root(state)).hexdigest()


def test_describe_for_people_names_the_simulator(tmp_path: Path) -> None:
    result = runner.invoke(app, ["nsm", "describe", "--state", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "NSM (simulator)" in result.stdout
    assert "locked: 0-15" in result.stdout
    assert "SIMULATOR ONLY" in result.stdout


def test_unusable_state_folder_is_a_usage_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "nsm").mkdir(parents=True)
    (state / "nsm" / "root.pem").write_text("garbage")
    (state / "nsm" / "root.key").write_text("garbage")
    result = runner.invoke(app, ["nsm", "describe", "--state", str(state)])
    assert result.exit_code == 2
    assert "nsm_simulator_state" in result.output
    assert "Traceback" not in result.output


def test_attest_as_a_real_process_then_verify_as_another(tmp_path: Path, app_dir: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "doc.cbor"
    command = [sys.executable, "-c", "from enclavekit.cli import main; main()"]
    attest = subprocess.run(
        [*command, "nsm", "attest", "--app", str(app_dir), "--state", str(state), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert attest.returncode == 0, attest.stderr
    assert attest.stdout.startswith("PCR0 ")
    verify = subprocess.run(
        [*command, "verify", str(out), "--trust-sim-root", str(state), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout.splitlines()[0])["valid"] is True
    untrusted = subprocess.run(
        [*command, "verify", str(out), "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert untrusted.returncode == 1
    assert json.loads(untrusted.stdout.splitlines()[0])["error"]["code"] == "chain_untrusted"


def test_verify_trusting_a_folder_without_a_simulator_is_a_usage_error(tmp_path: Path) -> None:
    document = NsmSimulator(tmp_path / "state").client().attestation()
    (tmp_path / "doc.cbor").write_bytes(document)
    result = runner.invoke(app, ["verify", str(tmp_path / "doc.cbor"), "--trust-sim-root", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no NSM simulator root" in result.output
    assert "Traceback" not in result.output
