"""Property-based attacks on the Nitro parser: whatever the bytes, only enclavekit's own errors come out."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.attestation import nitro
from enclavekit.attestation.cbor import MAX_DEPTH
from enclavekit.attestation.errors import AttestationError, Malformed
from enclavekit.attestation.nitro import MAX_DOCUMENT_SIZE, AttestationDocument, NitroAttestation, NitroPolicy
from enclavekit.attestation.report import Report
from tests.nitro_samples import sample

POLICY = NitroPolicy(unsafe_any_measurements=True)
NOW = datetime(2024, 11, 30, 16, 22, 50, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_reject(data: bytes) -> Report[NitroAttestation]:
    """Parse and report ``data``: only enclavekit's errors may come out of the parser, ``report`` never raises
    for bad evidence, and a document the parser refuses is refused by the report too, at ``document.parse``
    with the parser's code."""
    try:
        AttestationDocument.from_bytes(data)
    except AttestationError as exc:
        refused: AttestationError | None = exc
    else:
        refused = None
    result = nitro.report(data, POLICY, now=NOW)
    if refused is not None:
        assert result.error is not None and result.error.code == refused.code
        assert [(c.name, c.ok) for c in result.checks] == [("document.parse", False)]
    return result


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_enclavekit_errors(data: bytes) -> None:
    assert not _parse_or_reject(data).valid


@FUZZ
@given(st.data())
def test_mutated_real_document_raises_only_enclavekit_errors(data: st.DataObject) -> None:
    real = bytearray(sample("base_2024-11-30").data)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(real) - 1))
        real[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(real)))
    mutated = bytes(real[:cut]) if data.draw(st.booleans()) else bytes(real)
    # every byte of a document is signed or is the signature, save the empty unprotected header (one byte, and
    # no other one-byte item is a map): a document that differs from the original must not verify
    assert _parse_or_reject(mutated).valid == (mutated == sample("base_2024-11-30").data)


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
    assert not _parse_or_reject(document).valid


def test_deeply_nested_cbor_is_rejected_without_recursion_error() -> None:
    nested = b"\x81" * 10_000 + b"\x00"  # deeper than Python's recursion limit, yet under the size limit
    assert len(nested) < MAX_DOCUMENT_SIZE
    with pytest.raises(Malformed, match="depth"):  # refused by the nesting limit, not by a size check
        AttestationDocument.from_bytes(nested)
    just_too_deep = _parse_or_reject(b"\x81" * (MAX_DEPTH + 1) + b"\x00").error
    assert just_too_deep is not None and "depth" in str(just_too_deep)


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


@pytest.mark.parametrize("declared", [2**28, 2**62])
def test_huge_declared_length_is_rejected_without_allocation(declared: int) -> None:
    data = b"\x84\x5b" + declared.to_bytes(8, "big")  # an array whose first item claims ``declared`` bytes
    tracemalloc.start()
    try:
        with pytest.raises(Malformed):
            AttestationDocument.from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated for a 10-byte input"
    refused = _parse_or_reject(data).error
    assert refused is not None and refused.code == "malformed"
