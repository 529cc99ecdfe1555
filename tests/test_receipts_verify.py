"""AIR v1 verification: every golden vector with its stated failure, and every failure class the format defines."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclavekit.attestation import nitro
from enclavekit.attestation.cose import sig_structure
from enclavekit.attestation.errors import PolicyInvalid
from enclavekit.nsm import NsmSimulator
from enclavekit.receipts import (
    AttestationBinding,
    EnclaveMeasurements,
    MeasurementType,
    ReceiptClaims,
    ReceiptPolicy,
    encode_claims,
    report_receipt,
    sign_receipt,
    verify_receipt,
)
from enclavekit.receipts.air import PROTECTED_HEADER
from enclavekit.receipts.errors import AIR_CODES, ReceiptError
from enclavekit.receipts.verification import _SMALL_ORDER_Y
from tests.conftest import fixtures_dir

SEED = bytes([0x2A] * 32)
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUBLIC = KEY.public_key().public_bytes_raw()
IAT = 1_800_000_000
NOW = datetime.fromtimestamp(IAT + 5, tz=UTC)


def vectors(kind: str) -> list[Path]:
    return sorted(fixtures_dir("air", kind).glob("*.json"))


def _policy_from_vector(raw: dict[str, Any] | None) -> ReceiptPolicy:
    raw = raw or {}
    nonce, model_hash = raw.get("expected_nonce_hex"), raw.get("expected_model_hash_hex")
    platform, max_age = raw.get("expected_platform"), raw.get("max_age_secs")
    return ReceiptPolicy(
        nonce=None if nonce is None else bytes.fromhex(nonce),
        model_hash=None if model_hash is None else bytes.fromhex(model_hash),
        platform=None if platform is None else MeasurementType(platform),
        max_age=max_age,
    )


def test_every_valid_golden_vector_verifies_under_its_claims() -> None:
    paths = vectors("valid")
    assert paths, "no valid AIR vectors"
    for path in paths:
        vector = json.loads(path.read_text())
        data = bytes.fromhex(vector["receipt_hex"])
        nonce = vector["claims"].get("eat_nonce_hex")
        iat = vector["claims"]["iat"]
        policy = ReceiptPolicy(
            nonce=None if nonce is None else bytes.fromhex(nonce),
            model_hash=bytes.fromhex(vector["claims"]["model_hash_hex"]),
            platform=MeasurementType(vector["claims"]["enclave_measurements"]["measurement_type"]),
            max_age=300,
        )
        verified = verify_receipt(
            data,
            public_key=bytes.fromhex(vector["public_key_hex"]),
            policy=policy,
            now=datetime.fromtimestamp(iat + 60, tz=UTC),
        )
        assert verified.claims.iat == iat
        assert verified.claims.model_id == vector["claims"]["model_id"]


def test_every_invalid_golden_vector_fails_with_its_stated_code() -> None:
    paths = vectors("invalid")
    assert paths, "no invalid AIR vectors"
    for path in paths:
        vector = json.loads(path.read_text())
        data = bytes.fromhex(vector["receipt_hex"])
        key = vector.get("wrong_public_key_hex") or vector["public_key_hex"]
        expected = AIR_CODES[vector["expected_failure"]["code"]]
        report = report_receipt(
            data,
            public_key=bytes.fromhex(key),
            policy=_policy_from_vector(vector.get("verify_policy")),
            now=datetime(2025, 2, 25, 16, 15, tzinfo=UTC),  # minutes after the vectors' iat
        )
        assert report.error is not None, path.name
        assert type(report.error) is expected, (path.name, report.error)
        assert report.error.layer == vector["expected_failure"]["layer"], path.name


# --- receipts we build ourselves, one per failure class -----------------------------------------------------


def _claims(**change: Any) -> ReceiptClaims:
    base = ReceiptClaims(
        iss="enclavekit",
        iat=IAT,
        cti=bytes(range(16)),
        eat_nonce=b"\x07" * 16,
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
        sequence_number=7,
        execution_time_ms=3,
        memory_peak_mb=90,
        security_mode="production",
    )
    return replace(base, **change)


def _sign(payload: bytes, protected: bytes = PROTECTED_HEADER, key: Ed25519PrivateKey = KEY) -> bytes:
    return key.sign(sig_structure(protected, payload))


def forge(
    *,
    claims: dict[Any, Any] | None = None,
    payload: bytes | None = None,
    protected: bytes = PROTECTED_HEADER,
    unprotected: dict[Any, Any] | None = None,
    tag: int | None = 18,
    signature: bytes | None = None,
) -> bytes:
    """A receipt built by hand with cbor2 and cryptography (not our encoder), properly signed unless told."""
    if payload is None:
        payload = cbor2.dumps(_claims().to_cbor_map() if claims is None else claims)
    body = [protected, {} if unprotected is None else unprotected, payload, signature or _sign(payload, protected)]
    return cbor2.dumps(body if tag is None else cbor2.CBORTag(tag, body))


def _map(**change: Any) -> dict[Any, Any]:
    m = _claims().to_cbor_map()
    for key, value in change.items():
        number = int(key.removeprefix("k").replace("m", "-"))
        if value is _DROP:
            del m[number]
        else:
            m[number] = value
    return m


_DROP = object()


def _code(data: bytes, policy: ReceiptPolicy | None = None, now: datetime = NOW) -> str | None:
    report = report_receipt(data, public_key=PUBLIC, policy=policy, now=now)
    return None if report.error is None else report.error.code


def test_well_formed_receipt_verifies() -> None:
    verified = verify_receipt(sign_receipt(_claims(), KEY), public_key=PUBLIC, now=NOW)
    assert verified.public_key == PUBLIC
    assert forge() == sign_receipt(_claims(), KEY)  # the hand-built baseline is a valid receipt


def _unordered_payload() -> bytes:
    m = _claims().to_cbor_map()
    return cbor2.dumps(dict(reversed(list(m.items()))))


def _duplicate_key_payload() -> bytes:
    good = encode_claims(_claims())
    assert good[0] == 0xB1  # map of 17 entries
    return bytes([0xB2]) + good[1:] + cbor2.dumps(1) + cbor2.dumps("enclavekit")


BAD_RECEIPTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "untagged": (lambda: forge(tag=None), "malformed"),
    "other_tag": (lambda: forge(tag=98), "malformed"),
    "alg_es256": (lambda: forge(protected=cbor2.dumps({1: -7, 3: 61})), "unsupported_algorithm"),
    "alg_missing": (lambda: forge(protected=cbor2.dumps({3: 61})), "unsupported_algorithm"),
    "alg_as_text": (lambda: forge(protected=cbor2.dumps({1: "EdDSA", 3: 61})), "unsupported_algorithm"),
    "empty_protected": (lambda: forge(protected=b""), "unsupported_algorithm"),
    "no_content_type": (lambda: forge(protected=cbor2.dumps({1: -8})), "malformed"),
    "extra_header": (lambda: forge(protected=cbor2.dumps({1: -8, 3: 61, 4: b"kid"})), "malformed"),
    "unprotected_not_empty": (lambda: forge(unprotected={4: b"kid"}), "malformed"),
    "alg_unprotected": (lambda: forge(unprotected={1: -8}), "malformed"),
    "trailing_bytes": (lambda: forge() + b"\x00", "malformed"),
    "truncated": (lambda: forge()[:-1], "malformed"),
    "oversized": (lambda: forge(claims=_map(k1="x" * 70_000)), "malformed"),
    "duplicate_claim": (lambda: forge(payload=_duplicate_key_payload()), "malformed"),
    "unknown_claim": (lambda: forge(claims={**_map(), -65550: "x"}), "malformed"),
    "unknown_standard_claim": (lambda: forge(claims={**_map(), 4: 1}), "malformed"),
    "text_claim_key": (lambda: forge(claims={**_map(), "iss": "x"}), "malformed"),
    "missing_claim": (lambda: forge(claims=_map(km65541=_DROP)), "malformed"),
    "iat_as_text": (lambda: forge(claims=_map(k6="1800000000")), "malformed"),
    "iat_negative": (lambda: forge(claims=_map(k6=-1)), "malformed"),
    "iat_bignum": (lambda: forge(claims=_map(k6=cbor2.CBORTag(2, IAT.to_bytes(8, "big")))), "malformed"),
    "iat_float": (lambda: forge(claims=_map(k6=float(IAT))), "malformed"),
    "cti_short": (lambda: forge(claims=_map(k7=b"\x01" * 15)), "malformed"),
    "model_hash_short": (lambda: forge(claims=_map(km65539=b"\x01" * 31)), "malformed"),
    "nonce_too_long": (lambda: forge(claims=_map(k10=b"\x01" * 65)), "malformed"),
    "wrong_profile": (lambda: forge(claims=_map(k265="https://example.com/v2")), "malformed"),
    "unknown_hash_scheme": (lambda: forge(claims={**_map(), -65549: "md5"}), "malformed"),
    "measurements_not_map": (lambda: forge(claims=_map(km65543=[b"\x01" * 48])), "malformed"),
    "unknown_measurement_type": (
        lambda: forge(
            claims=_map(km65543={"pcr0": b"1" * 48, "pcr1": b"1" * 48, "pcr2": b"1" * 48, "measurement_type": "sev"})
        ),
        "malformed",
    ),
    "tdx_with_pcr8": (
        lambda: forge(
            claims=_map(
                km65543={
                    "pcr0": b"1" * 48,
                    "pcr1": b"1" * 48,
                    "pcr2": b"1" * 48,
                    "pcr8": b"1" * 48,
                    "measurement_type": "tdx-mrtd-rtmr",
                }
            )
        ),
        "malformed",
    ),
    "missing_pcr2": (
        lambda: forge(claims=_map(km65543={"pcr0": b"1" * 48, "pcr1": b"1" * 48, "measurement_type": "nitro-pcr"})),
        "malformed",
    ),
    "payload_not_deterministic": (lambda: forge(payload=_unordered_payload()), "malformed"),
    "payload_not_a_map": (lambda: forge(payload=cbor2.dumps([1, 2])), "malformed"),
    "detached_payload": (
        lambda: cbor2.dumps(cbor2.CBORTag(18, [PROTECTED_HEADER, {}, None, b"\x00" * 64])),
        "malformed",
    ),
    "signature_short": (lambda: forge(signature=b"\x01" * 63), "malformed"),
    "not_an_array": (lambda: cbor2.dumps(cbor2.CBORTag(18, {"a": 1})), "malformed"),
    "empty": (lambda: b"", "malformed"),
    "signature_zeroed": (lambda: forge(signature=b"\x00" * 64), "signature_invalid"),
    "signed_by_another_key": (
        lambda: forge(signature=_sign(encode_claims(_claims()), key=Ed25519PrivateKey.generate())),
        "signature_invalid",
    ),
    "claim_altered_after_signing": (
        lambda: forge(payload=encode_claims(_claims(sequence_number=8)), signature=_sign(encode_claims(_claims()))),
        "signature_invalid",
    ),
    "zero_model_hash": (lambda: forge(claims=_map(km65539=bytes(32))), "zero_model_hash"),
    "short_measurement": (
        lambda: forge(
            claims=_map(
                km65543={"pcr0": b"1" * 48, "pcr1": b"1" * 32, "pcr2": b"1" * 48, "measurement_type": "nitro-pcr"}
            )
        ),
        "bad_measurement_length",
    ),
    "long_optional_measurement": (
        lambda: forge(
            claims=_map(
                km65543={
                    "pcr0": b"1" * 48,
                    "pcr1": b"1" * 48,
                    "pcr2": b"1" * 48,
                    "pcr8": b"1" * 64,
                    "measurement_type": "nitro-pcr",
                }
            )
        ),
        "bad_measurement_length",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_RECEIPTS))
def test_forged_receipt_is_rejected_with_its_failure_code(name: str) -> None:
    build, code = BAD_RECEIPTS[name]
    assert _code(build()) == code


def test_receipt_without_the_clients_nonce_is_rejected() -> None:
    assert _code(sign_receipt(_claims(), KEY), ReceiptPolicy(nonce=b"\x08" * 16)) == "nonce_mismatch"
    assert _code(sign_receipt(_claims(eat_nonce=None), KEY), ReceiptPolicy(nonce=b"\x07" * 16)) == "nonce_mismatch"
    assert _code(sign_receipt(_claims(), KEY), ReceiptPolicy(nonce=b"\x07" * 16)) is None


def test_receipt_for_another_model_is_rejected() -> None:
    assert _code(sign_receipt(_claims(), KEY), ReceiptPolicy(model_hash=b"\x12" * 32)) == "model_hash_mismatch"


def test_tdx_receipt_is_rejected_when_nitro_is_expected() -> None:
    tdx = EnclaveMeasurements(
        measurement_type=MeasurementType.TDX, pcr0=b"\x01" * 48, pcr1=b"\x02" * 48, pcr2=b"\x03" * 48
    )
    receipt = sign_receipt(_claims(enclave_measurements=tdx), KEY)
    assert _code(receipt, ReceiptPolicy(platform=MeasurementType.NITRO)) == "platform_mismatch"
    assert _code(receipt, ReceiptPolicy(platform=MeasurementType.TDX)) is None


def test_old_receipt_is_stale() -> None:
    receipt = sign_receipt(_claims(), KEY)
    policy = ReceiptPolicy(max_age=300)
    assert _code(receipt, policy, now=datetime.fromtimestamp(IAT + 300, tz=UTC)) is None
    assert _code(receipt, policy, now=datetime.fromtimestamp(IAT + 301, tz=UTC)) == "stale"


def test_receipt_from_the_future_beyond_skew_is_rejected() -> None:
    receipt = sign_receipt(_claims(), KEY)
    assert _code(receipt, now=datetime.fromtimestamp(IAT - 60, tz=UTC)) is None
    assert _code(receipt, now=datetime.fromtimestamp(IAT - 61, tz=UTC)) == "timestamp_in_future"
    strict = ReceiptPolicy(max_clock_skew=0)
    assert _code(receipt, strict, now=datetime.fromtimestamp(IAT - 1, tz=UTC)) == "timestamp_in_future"


def test_verification_without_a_key_is_a_usage_error() -> None:
    with pytest.raises(PolicyInvalid):
        report_receipt(sign_receipt(_claims(), KEY), now=NOW)
    with pytest.raises(PolicyInvalid):
        report_receipt(sign_receipt(_claims(), KEY), public_key=b"\x01" * 31, now=NOW)
    with pytest.raises(PolicyInvalid):
        report_receipt(sign_receipt(_claims(), KEY), public_key=PUBLIC, now=NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    "policy",
    [
        {"nonce": b""},
        {"model_hash": b"\x01" * 31},
        {"max_age": 0},
        {"max_age": -5},
        {"max_clock_skew": -1},
        {"platform": "nitro"},
    ],
)
def test_unusable_policy_is_refused(policy: dict[str, Any]) -> None:
    with pytest.raises(PolicyInvalid):
        ReceiptPolicy(**policy)


def test_report_lists_every_layer_and_the_first_failure() -> None:
    receipt = forge(claims=_map(km65539=bytes(32)))
    report = report_receipt(receipt, public_key=PUBLIC, policy=ReceiptPolicy(model_hash=b"\x11" * 32), now=NOW)
    out = report.to_json()
    assert out["valid"] is False
    assert out["error"]["code"] == "zero_model_hash"
    names = {c["name"]: c["ok"] for c in out["checks"]}
    assert names == {
        "receipt.parse": True,
        "receipt.signature": True,
        "receipt.claims": False,
        "policy.model_hash": False,
        "policy.freshness": True,
    }
    assert out["claims"]["model_hash"] == "00" * 32
    with pytest.raises(ReceiptError):
        report.verified()


# --- binding to a (simulated) Nitro attestation document ---------------------------------------------------


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> NsmSimulator:
    return NsmSimulator(tmp_path_factory.mktemp("nsm"), app={"main.py": b"print('inference')\n"}, now=lambda: NOW)


def _binding(simulator: NsmSimulator, user_data: bytes | None) -> AttestationBinding:
    document = simulator.client().attestation(user_data=user_data)
    policy = nitro.NitroPolicy(unsafe_any_measurements=True, roots=(simulator.root_der,))
    return AttestationBinding(document, nitro.verify(document, policy, now=NOW))


def test_receipt_bound_to_its_attestation_document_verifies(simulator: NsmSimulator) -> None:
    binding = _binding(simulator, PUBLIC)
    receipt = sign_receipt(_claims(attestation_doc_hash=binding.document_hash), KEY)
    verified = verify_receipt(receipt, now=NOW, attestation=binding)
    assert verified.public_key == PUBLIC
    assert verified.attestation is binding.attestation
    assert verify_receipt(receipt, public_key=PUBLIC, now=NOW, attestation=binding).public_key == PUBLIC


def test_receipt_signed_by_a_key_the_document_does_not_bind_is_rejected(simulator: NsmSimulator) -> None:
    other = Ed25519PrivateKey.generate()
    binding = _binding(simulator, other.public_key().public_bytes_raw())
    receipt = sign_receipt(_claims(attestation_doc_hash=binding.document_hash), KEY)
    assert report_receipt(receipt, now=NOW, attestation=binding).error.code == "signature_invalid"  # type: ignore[union-attr]
    mixed = report_receipt(receipt, public_key=PUBLIC, now=NOW, attestation=binding)
    assert mixed.error is not None and mixed.error.code == "key_not_bound"


def test_receipt_naming_another_attestation_document_is_not_bound(simulator: NsmSimulator) -> None:
    binding = _binding(simulator, PUBLIC)
    receipt = sign_receipt(_claims(attestation_doc_hash=b"\x44" * 32), KEY)
    report = report_receipt(receipt, now=NOW, attestation=binding)
    assert report.error is not None and report.error.code == "key_not_bound"
    assert "attestation_doc_hash" in report.error.message


@pytest.mark.parametrize("user_data", [None, b"\x01" * 31, b"\x01" * 64])
def test_document_without_a_raw_ed25519_key_binds_nothing(simulator: NsmSimulator, user_data: bytes | None) -> None:
    binding = _binding(simulator, user_data)
    receipt = sign_receipt(_claims(attestation_doc_hash=binding.document_hash), KEY)
    report = report_receipt(receipt, public_key=PUBLIC, now=NOW, attestation=binding)
    assert report.error is not None and report.error.code == "key_not_bound"


# --- weak keys ---------------------------------------------------------------------------------------------

_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def _decompress(encoded: bytes) -> tuple[int, int]:
    """An Edwards25519 point from its 32-byte encoding (non-canonical y reduced), in plain Python."""
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    sign = encoded[31] >> 7
    y %= _P
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = pow(u * pow(v, -1, _P), (_P + 3) // 8, _P)
    if (v * x * x - u) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    assert (v * x * x - u) % _P == 0, "not on the curve"
    if x & 1 != sign:
        x = _P - x if x else 0
    return x, y


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    return (x1 * y2 + y1 * x2) * pow(1 + t, -1, _P) % _P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P


def test_small_order_list_holds_exactly_the_points_of_order_dividing_8() -> None:
    for encoded in _SMALL_ORDER_Y:
        for sign in (0, 0x80):
            point = _decompress(encoded[:31] + bytes([encoded[31] | sign]))
            multiple = point
            for _ in range(3):
                multiple = _add(multiple, multiple)
            assert multiple == (0, 1), encoded.hex()
    assert PUBLIC[:31] + bytes([PUBLIC[31] & 0x7F]) not in _SMALL_ORDER_Y


def test_weak_public_key_cannot_forge_every_receipt() -> None:
    identity = bytes([1]) + bytes(31)
    forged = forge(signature=identity + bytes(32))  # R = identity, S = 0: "valid" for any message under the identity
    tbs = sig_structure(PROTECTED_HEADER, encode_claims(_claims()))
    Ed25519PublicKey.from_public_bytes(identity).verify(identity + bytes(32), tbs)  # OpenSSL alone accepts it
    report = report_receipt(forged, public_key=identity, now=NOW)
    assert report.error is not None and report.error.code == "signature_invalid"
    assert "small order" in report.error.message
