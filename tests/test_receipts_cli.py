"""``enclavekit receipt verify`` as a user runs it: a real process, its exit code and its JSON object."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.nsm import NsmSimulator
from enclavekit.receipts import EnclaveMeasurements, MeasurementType, ReceiptClaims, sign_receipt
from enclavekit.receipts.errors import AIR_CODES
from tests.conftest import fixtures_dir

ENCLAVEKIT = [sys.executable, "-m", "enclavekit.cli"]
KEY = Ed25519PrivateKey.from_private_bytes(bytes([0x2A] * 32))
PUBLIC_HEX = KEY.public_key().public_bytes_raw().hex()


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENCLAVEKIT, *map(str, args)], capture_output=True, text=True, timeout=60)


def run_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = run(*args, "--json")
    assert result.stdout.count("\n") == 1, result.stderr
    return result.returncode, json.loads(result.stdout)


def _vector(kind: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(fixtures_dir("air", kind, f"{name}.json").read_text())
    return loaded


def test_golden_vector_verifies_as_raw_hex_and_base64(tmp_path: Path) -> None:
    vector = _vector("valid", "v1-tdx-with-nonce")
    raw = bytes.fromhex(vector["receipt_hex"])
    forms = {"r.cbor": raw, "r.hex": vector["receipt_hex"].encode() + b"\n", "r.b64": base64.b64encode(raw)}
    for name, content in forms.items():
        (tmp_path / name).write_bytes(content)
        code, out = run_json(
            "receipt", "verify", tmp_path / name, "--public-key", PUBLIC_HEX, "--nonce", "deadbeefcafebabe",
            "--model-hash", "55" * 32, "--platform", "tdx", "--max-age", "600", "--at", "2025-02-25T16:20:00Z",
        )  # fmt: skip
        assert code == 0, (name, out)
        assert out["valid"] is True and out["error"] is None
        assert out["claims"]["eat_nonce"] == "deadbeefcafebabe"
        assert {c["name"] for c in out["checks"]} >= {"receipt.signature", "policy.nonce", "policy.freshness"}


@pytest.mark.parametrize("name", ["v1-wrong-key", "v1-zero-model-hash", "v1-nonce-mismatch", "v1-model-hash-mismatch"])
def test_invalid_golden_vector_exits_1_with_its_code(name: str, tmp_path: Path) -> None:
    vector = _vector("invalid", name)
    (tmp_path / "r.hex").write_text(vector["receipt_hex"])
    args: list[str | Path] = ["receipt", "verify", tmp_path / "r.hex", "--at", "1740500200"]
    args += ["--public-key", vector.get("wrong_public_key_hex") or vector["public_key_hex"]]
    policy = vector.get("verify_policy", {})
    if "expected_nonce_hex" in policy:
        args += ["--nonce", policy["expected_nonce_hex"]]
    if "expected_model_hash_hex" in policy:
        args += ["--model-hash", policy["expected_model_hash_hex"]]
    code, out = run_json(*args)
    assert code == 1
    assert out["valid"] is False
    assert out["error"]["code"] == AIR_CODES[vector["expected_failure"]["code"]].code


@pytest.mark.parametrize(
    "args",
    [
        [],  # no key at all
        ["--public-key", "zz"],
        ["--public-key", "00" * 31],
        ["--public-key", "00" * 32, "--platform", "sev"],
        ["--public-key", "00" * 32, "--at", "doc"],
        ["--public-key", "00" * 32, "--max-age", "0"],
        ["--public-key", "00" * 32, "--model-hash", "11" * 31],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "r").write_bytes(b"\xd2")
    result = run("receipt", "verify", tmp_path / "r", *args)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr


def test_garbage_file_is_malformed_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "r").write_bytes(b"\x00\xffnot a receipt")
    code, out = run_json("receipt", "verify", tmp_path / "r", "--public-key", PUBLIC_HEX)
    assert (code, out["error"]["code"], out["claims"]) == (1, "malformed", None)
    code, out = run_json("receipt", "verify", tmp_path / "missing", "--public-key", PUBLIC_HEX)
    assert (code, out["error"]["code"]) == (1, "malformed")


def _bound_receipt(tmp_path: Path, user_data: bytes) -> tuple[Path, Path, Path]:
    state = tmp_path / "state"
    document = NsmSimulator(state, app={"main.py": b"print('inference')\n"}).client().attestation(user_data=user_data)
    claims = ReceiptClaims(
        iss="enclavekit",
        iat=int(time.time()),
        cti=bytes(range(16)),
        model_id="all-minilm-l6-v2",
        model_version="1",
        model_hash=b"\x11" * 32,
        request_hash=b"\x22" * 32,
        response_hash=b"\x33" * 32,
        attestation_doc_hash=hashlib.sha256(document).digest(),
        enclave_measurements=EnclaveMeasurements(
            measurement_type=MeasurementType.NITRO, pcr0=b"\x01" * 48, pcr1=b"\x02" * 48, pcr2=b"\x03" * 48
        ),
        policy_version="p1",
        sequence_number=1,
        execution_time_ms=3,
        memory_peak_mb=90,
        security_mode="production",
    )
    (tmp_path / "doc.cbor").write_bytes(document)
    (tmp_path / "r.b64").write_bytes(base64.urlsafe_b64encode(sign_receipt(claims, KEY)))
    return tmp_path / "r.b64", tmp_path / "doc.cbor", state


def test_receipt_bound_to_a_simulated_attestation_verifies(tmp_path: Path) -> None:
    receipt, document, state = _bound_receipt(tmp_path, bytes.fromhex(PUBLIC_HEX))
    code, out = run_json("receipt", "verify", receipt, "--attestation", document, "--trust-sim-root", state)
    assert code == 0, out
    names = [c["name"] for c in out["checks"]]
    assert "binding.key" in names and "binding.attestation_hash" in names
    assert any(name.startswith("attestation.") for name in names)
    human = run("receipt", "verify", receipt, "--attestation", document, "--trust-sim-root", state)
    assert human.returncode == 0 and "VALID" in human.stdout


def test_attestation_from_an_untrusted_root_fails_with_the_attestation_code(tmp_path: Path) -> None:
    receipt, document, _ = _bound_receipt(tmp_path, bytes.fromhex(PUBLIC_HEX))
    code, out = run_json("receipt", "verify", receipt, "--attestation", document)
    assert (code, out["error"]["code"]) == (1, "chain_untrusted")
    assert out["claims"]["model_id"] == "all-minilm-l6-v2"  # shown, not trusted


def test_receipt_key_not_in_the_attestation_is_not_bound(tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    receipt, document, state = _bound_receipt(tmp_path, other)
    code, out = run_json(
        "receipt", "verify", receipt, "--attestation", document, "--trust-sim-root", state, "--public-key", PUBLIC_HEX
    )
    assert (code, out["error"]["code"]) == (1, "key_not_bound")
