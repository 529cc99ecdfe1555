"""AIR v1 signing: our signers reproduce the format's golden vectors byte for byte and refuses bad claims."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit.receipts import (
    EnclaveMeasurements,
    MeasurementType,
    ReceiptClaims,
    ReceiptSigner,
    parse_receipt,
    sign_receipt,
)
from enclavekit.receipts.air import MODEL_HASH_SCHEMES
from enclavekit.receipts.errors import BadMeasurementLength, ReceiptMalformed, ZeroModelHash
from tests.conftest import fixtures_dir

SEED = bytes([0x2A] * 32)
PUBLIC_KEY = "197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61"


def claims_from_vector(raw: dict[str, Any]) -> ReceiptClaims:
    """The vector's JSON claims as our dataclass (hex fields decoded)."""
    m = raw["enclave_measurements"]

    def opt(name: str) -> bytes | None:
        value = m.get(f"{name}_hex")
        return None if value is None else bytes.fromhex(value)

    nonce = raw.get("eat_nonce_hex")
    return ReceiptClaims(
        iss=raw["iss"],
        iat=raw["iat"],
        cti=bytes.fromhex(raw["cti_hex"]),
        eat_nonce=None if nonce is None else bytes.fromhex(nonce),
        eat_profile=raw["eat_profile"],
        model_id=raw["model_id"],
        model_version=raw["model_version"],
        model_hash=bytes.fromhex(raw["model_hash_hex"]),
        request_hash=bytes.fromhex(raw["request_hash_hex"]),
        response_hash=bytes.fromhex(raw["response_hash_hex"]),
        attestation_doc_hash=bytes.fromhex(raw["attestation_doc_hash_hex"]),
        enclave_measurements=EnclaveMeasurements(
            measurement_type=MeasurementType(m["measurement_type"]),
            pcr0=bytes.fromhex(m["pcr0_hex"]),
            pcr1=bytes.fromhex(m["pcr1_hex"]),
            pcr2=bytes.fromhex(m["pcr2_hex"]),
            pcr8=opt("pcr8"),
        ),
        policy_version=raw["policy_version"],
        sequence_number=raw["sequence_number"],
        execution_time_ms=raw["execution_time_ms"],
        memory_peak_mb=raw["memory_peak_mb"],
        security_mode=raw["security_mode"],
    )


def valid_vectors() -> list[Path]:
    return sorted(fixtures_dir("air", "valid").glob("*.json"))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


@pytest.mark.parametrize("name", ["v1-nitro-no-nonce", "v1-tdx-with-nonce"])
def test_signer_reproduces_golden_vector_byte_for_byte(name: str, key: Ed25519PrivateKey) -> None:
    vector = json.loads(fixtures_dir("air", "valid", f"{name}.json").read_text())
    assert vector["public_key_hex"] == PUBLIC_KEY
    claims = claims_from_vector(vector["claims"])
    receipt = sign_receipt(claims, key)
    assert receipt.hex() == vector["receipt_hex"]
    assert len(receipt) == vector["receipt_length"]
    assert parse_receipt(receipt).claims == claims


@pytest.fixture
def claims() -> ReceiptClaims:
    return ReceiptClaims(
        iss="enclavekit",
        iat=1_800_000_000,
        cti=bytes(range(16)),
        model_id="all-minilm-l6-v2",
        model_version="1",
        model_hash=b"\x11" * 32,
        request_hash=b"\x22" * 32,
        response_hash=b"\x33" * 32,
        attestation_doc_hash=b"\x44" * 32,
        enclave_measurements=EnclaveMeasurements(
            measurement_type=MeasurementType.NITRO, pcr0=b"\x01" * 48, pcr1=b"\x02" * 48, pcr2=b"\x03" * 48
        ),
        policy_version="p1",
        sequence_number=1,
        execution_time_ms=3,
        memory_peak_mb=90,
        security_mode="production",
    )


def test_signer_refuses_zero_model_hash(claims: ReceiptClaims, key: Ed25519PrivateKey) -> None:
    with pytest.raises(ZeroModelHash):
        sign_receipt(replace(claims, model_hash=bytes(32)), key)


def test_signer_refuses_short_measurement(claims: ReceiptClaims, key: Ed25519PrivateKey) -> None:
    bad = replace(claims.enclave_measurements, pcr1=b"\x02" * 32)
    with pytest.raises(BadMeasurementLength):
        sign_receipt(replace(claims, enclave_measurements=bad), key)


@pytest.mark.parametrize(
    "change",
    [
        {"cti": b"\x00" * 15},
        {"model_hash": b"\x01" * 31},
        {"iat": -1},
        {"iat": 2**64},
        {"sequence_number": True},
        {"iss": b"bytes"},
        {"eat_nonce": b"short"},
        {"eat_nonce": b"\x00" * 65},
        {"model_hash_scheme": "md5"},
        {"eat_profile": "https://example.com/other"},
    ],
)
def test_claims_with_wrong_type_or_length_cannot_be_built(claims: ReceiptClaims, change: dict[str, Any]) -> None:
    with pytest.raises(ReceiptMalformed):
        replace(claims, **change)


def test_tdx_measurements_refuse_pcr8() -> None:
    with pytest.raises(ReceiptMalformed, match="pcr8"):
        EnclaveMeasurements(
            measurement_type=MeasurementType.TDX,
            pcr0=b"\x01" * 48,
            pcr1=b"\x01" * 48,
            pcr2=b"\x01" * 48,
            pcr8=b"1" * 48,
        )


def test_signed_receipt_round_trips_with_every_optional_claim(claims: ReceiptClaims, key: Ed25519PrivateKey) -> None:
    full = replace(
        claims,
        eat_nonce=b"\x05" * 32,
        model_hash_scheme="sha256-manifest",
        enclave_measurements=replace(
            claims.enclave_measurements, pcr3=b"\x04" * 48, pcr4=b"\x05" * 48, pcr8=b"\x08" * 48
        ),
    )
    receipt = sign_receipt(full, key)
    assert parse_receipt(receipt).claims == full
    assert sign_receipt(full, key) == receipt  # deterministic


def test_measurements_from_an_nsm_pcr_map_and_a_td() -> None:
    pcrs = {i: bytes([i]) * 48 for i in range(16)}
    nitro = EnclaveMeasurements.nitro(pcrs, optional=(8,))
    assert nitro.registers() == {"pcr0": pcrs[0], "pcr1": pcrs[1], "pcr2": pcrs[2], "pcr8": pcrs[8]}
    with pytest.raises(ReceiptMalformed):
        EnclaveMeasurements.nitro(pcrs, optional=(5,))  # not an AIR register
    tdx = EnclaveMeasurements.tdx(b"\x0a" * 48, (b"\x00" * 48, b"\x01" * 48, b"\x02" * 48, b"\x03" * 48))
    assert tdx.measurement_type is MeasurementType.TDX
    assert tdx.pcr4 == b"\x03" * 48
    with pytest.raises(ReceiptMalformed):
        EnclaveMeasurements.tdx(b"\x0a" * 48, (b"\x00" * 48,))


# --- ReceiptSigner: the enclave's per-request signer must give sign_receipt's bytes exactly -------------------

_CONSTANT = (
    "iss",
    "model_id",
    "model_version",
    "model_hash",
    "enclave_measurements",
    "policy_version",
    "security_mode",
    "model_hash_scheme",
)


def _signer_for(claims: ReceiptClaims, key: Ed25519PrivateKey) -> ReceiptSigner:
    return ReceiptSigner(key, **{name: getattr(claims, name) for name in _CONSTANT})


@pytest.mark.parametrize("name", ["v1-nitro-no-nonce", "v1-tdx-with-nonce"])
def test_prepared_signer_reproduces_golden_vector_byte_for_byte(name: str, key: Ed25519PrivateKey) -> None:
    vector = json.loads(fixtures_dir("air", "valid", f"{name}.json").read_text())
    claims = claims_from_vector(vector["claims"])
    assert _signer_for(claims, key).sign_claims(claims).hex() == vector["receipt_hex"]


_hash = st.binary(min_size=32, max_size=32)
_pcr = st.binary(min_size=48, max_size=48)
_uint = st.integers(min_value=0, max_value=2**64 - 1)
_text = st.text(max_size=300)


@st.composite
def _any_claims(draw: st.DrawFn) -> ReceiptClaims:
    kind = draw(st.sampled_from(MeasurementType))
    optional = ("pcr3", "pcr4", "pcr8") if kind is MeasurementType.NITRO else ("pcr3", "pcr4")
    extra = {name: draw(st.none() | _pcr) for name in optional}
    return ReceiptClaims(
        iss=draw(_text),
        iat=draw(_uint),
        cti=draw(st.binary(min_size=16, max_size=16)),
        model_id=draw(_text),
        model_version=draw(_text),
        model_hash=draw(_hash.filter(any)),
        request_hash=draw(_hash),
        response_hash=draw(_hash),
        attestation_doc_hash=draw(_hash),
        enclave_measurements=EnclaveMeasurements(
            measurement_type=kind, pcr0=draw(_pcr), pcr1=draw(_pcr), pcr2=draw(_pcr), **extra
        ),
        policy_version=draw(_text),
        sequence_number=draw(_uint),
        execution_time_ms=draw(_uint),
        memory_peak_mb=draw(_uint),
        security_mode=draw(_text),
        eat_nonce=draw(st.none() | st.binary(min_size=8, max_size=64)),
        model_hash_scheme=draw(st.none() | st.sampled_from(sorted(MODEL_HASH_SCHEMES))),
    )


@settings(max_examples=300, deadline=None)
@given(_any_claims())
def test_prepared_signer_gives_sign_receipts_bytes_for_any_claims(claims: ReceiptClaims) -> None:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    receipt = _signer_for(claims, key).sign_claims(claims)
    assert receipt == sign_receipt(claims, key)
    assert parse_receipt(receipt).claims == claims


def test_prepared_signer_refuses_what_sign_receipt_refuses(claims: ReceiptClaims, key: Ed25519PrivateKey) -> None:
    with pytest.raises(ZeroModelHash):
        _signer_for(replace(claims, model_hash=bytes(32)), key)
    short = replace(claims.enclave_measurements, pcr1=b"\x02" * 32)
    with pytest.raises(BadMeasurementLength):
        _signer_for(replace(claims, enclave_measurements=short), key)
    signer = _signer_for(claims, key)
    with pytest.raises(ReceiptMalformed, match="not those this signer"):
        signer.sign_claims(replace(claims, model_version="2"))
    for change in (
        {"cti": b"\x00" * 15},
        {"request_hash": b"\x01" * 31},
        {"response_hash": "not bytes"},
        {"attestation_doc_hash": b"\x01" * 33},
        {"iat": -1},
        {"sequence_number": 2**64},
        {"execution_time_ms": True},
        {"memory_peak_mb": 1.5},
        {"eat_nonce": b"short"},
        {"eat_nonce": b"\x00" * 65},
    ):
        good = {
            "iat": claims.iat,
            "cti": claims.cti,
            "request_hash": claims.request_hash,
            "response_hash": claims.response_hash,
            "attestation_doc_hash": claims.attestation_doc_hash,
            "sequence_number": 1,
            "execution_time_ms": 1,
            "memory_peak_mb": 1,
        }
        with pytest.raises(ReceiptMalformed):
            signer.sign(**{**good, **change})
