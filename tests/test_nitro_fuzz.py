"""Property-based attacks on the Nitro parser: whatever the bytes, only enclavekit's own errors come out."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.attestation import nitro
from enclavekit.attestation.errors import AttestationError
from enclavekit.attestation.nitro import AttestationDocument, NitroPolicy
from tests.nitro_samples import sample

POLICY = NitroPolicy(unsafe_any_measurements=True)
NOW = datetime(2024, 11, 30, 16, 22, 50, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_reject(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        AttestationDocument.from_bytes(data)
    result = nitro.report(data, POLICY, now=NOW)  # never raises for bad evidence
    assert result.valid or result.error is not None


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_enclavekit_errors(data: bytes) -> None:
    _parse_or_reject(data)


@FUZZ
@given(st.data())
def test_mutated_real_document_raises_only_enclavekit_errors(data: st.DataObject) -> None:
    real = bytearray(sample("base_2024-11-30").data)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(real) - 1))
        real[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(real)))
    _parse_or_reject(bytes(real[:cut]) if data.draw(st.booleans()) else bytes(real))


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.binary(max_size=64)
    | st.text(max_size=16)
    | st.floats(allow_nan=True),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8) | st.integers(0, 40), children, max_size=5)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "module_id",
                "digest",
                "timestamp",
                "pcrs",
                "certificate",
                "cabundle",
                "public_key",
                "user_data",
                "nonce",
                "extra",
            ]
        ),
        cbor_values,
    )
)
def test_structurally_valid_cbor_with_wrong_shapes_raises_only_enclavekit_errors(payload: dict[str, object]) -> None:
    document = cbor2.dumps([bytes.fromhex("a1013822"), {}, cbor2.dumps(payload), b"\x01" * 96])
    _parse_or_reject(document)


def test_deeply_nested_cbor_is_rejected_without_recursion_error() -> None:
    _parse_or_reject(b"\x81" * 100_000 + b"\x00")


def test_certificate_with_unknown_signature_algorithm_is_rejected() -> None:
    """Found by the fuzzer: one byte of the OID ecdsa-with-SHA384 changed (cryptography raises its own error)."""
    real = sample("base_2024-11-30").data
    oid = bytes.fromhex("2a8648ce3d040303")
    position = real.index(oid, real.index(oid) + 1)  # in a certificate of the cabundle
    mutated = real[:position] + b"\x00" + real[position + 1 :]
    _parse_or_reject(mutated)
    error = nitro.report(mutated, POLICY, now=NOW).error
    assert error is not None
    assert error.code == "unsupported_algorithm"


def test_huge_declared_length_is_rejected_without_allocation() -> None:
    _parse_or_reject(b"\x84\x5b" + (2**62).to_bytes(8, "big"))
