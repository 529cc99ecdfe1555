"""``enclavekit kms serve`` as a real process: one ready line, boto3 served, clean exit on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclavekit.kms import KmsClient
from tests.test_kms_fixtures import boto3_kms, enclave_only_policy, kms_endpoint, simulated_enclave


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "enclavekit.cli", "kms", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def sim_state(tmp_path: Path) -> Path:
    return tmp_path / "sim"


@pytest.fixture
def server(tmp_path: Path, sim_state: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    simulated_enclave(sim_state)  # makes the simulator's CA
    process = _start("--state", str(tmp_path / "state"), "--trust-sim-root", str(sim_state))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        yield process, json.loads(line)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_prints_exactly_one_ready_line_then_serves_boto3(
    server: tuple[subprocess.Popen[str], dict[str, object]], sim_state: Path
) -> None:
    process, ready = server
    assert ready["ready"] is True
    url = str(ready["url"])
    assert url.startswith("http://127.0.0.1:")
    kms = boto3_kms(url)
    enclave = simulated_enclave(sim_state)
    key_id = kms.create_key(Policy=enclave_only_policy(enclave.pcr(0).hex()))["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"served")["CiphertextBlob"]
    assert KmsClient(kms_endpoint(url), enclave.client().attestation).decrypt(blob) == b"served"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert stdout == ""  # nothing after the ready line
    assert "Traceback" not in stderr


def test_sigint_stops_it_cleanly(server: tuple[subprocess.Popen[str], dict[str, object]]) -> None:
    process, _ = server
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert "KeyboardInterrupt" not in stderr


def test_keys_persist_between_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = _start("--state", str(state))
    assert process.stdout is not None
    kms = boto3_kms(json.loads(process.stdout.readline())["url"])
    blob = kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"kept")["CiphertextBlob"]
    process.terminate()
    assert process.wait(15) == 0
    process = _start("--state", str(state))
    try:
        assert process.stdout is not None
        kms = boto3_kms(json.loads(process.stdout.readline())["url"])
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"
    finally:
        process.terminate()
        assert process.wait(15) == 0


def test_missing_simulator_root_is_a_usage_error(tmp_path: Path) -> None:
    process = _start("--state", str(tmp_path / "state"), "--trust-sim-root", str(tmp_path / "nowhere"))
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert stdout == ""
    assert "no NSM simulator root" in stderr


def test_a_state_folder_in_use_is_a_usage_error(
    server: tuple[subprocess.Popen[str], dict[str, object]], tmp_path: Path
) -> None:
    second = _start("--state", str(tmp_path / "state"))
    _stdout, stderr = second.communicate(timeout=30)
    assert second.returncode == 2
    assert "in use" in stderr
