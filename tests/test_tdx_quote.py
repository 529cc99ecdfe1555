"""DCAP quote parsing: every real quote of the fixtures, and every structural lie we can think of."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import dcap_qvl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclavekit.attestation.errors import Malformed
from enclavekit.attestation.quote import MAX_QUOTE_SIZE, Quote, decode_quote_text
from enclavekit.errors import Error
from tests.conftest import fixtures_dir

MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
QUOTES = ["tdx_quote", "tdx_quote_outdated", "sgx_quote", "near_quote_hex.txt", "tdx-quote.hex", "quote-from-tappd.hex"]


def _dcap(name: str) -> bytes:
    return fixtures_dir("tdx", "dcap-qvl", name).read_bytes()


def _raw(name: str) -> bytes:
    return decode_quote_text(_dcap(name))


@pytest.mark.parametrize("name", QUOTES)
def test_every_fixture_quote_parses_like_dcap_qvl_reads_it(name: str) -> None:
    raw = _raw(name)
    quote = Quote.parse(raw)
    theirs = dcap_qvl.parse_quote(raw)
    assert quote.header.version == theirs.header.version
    assert quote.header.tee_type == theirs.header.tee_type
    assert quote.header.qe_vendor_id == theirs.header.qe_vendor_id
    assert quote.tee == theirs.quote_type().lower()
    if quote.td is not None:
        report = theirs.report
        assert quote.td.mr_td == report.mr_td
        assert quote.td.rtmrs == (report.rt_mr0, report.rt_mr1, report.rt_mr2, report.rt_mr3)
        assert quote.td.report_data == report.report_data
        assert quote.td.mr_config_id == report.mr_config_id
        assert quote.td.td_attributes == report.td_attributes
        assert quote.td.xfam == report.xfam
        assert quote.td.tee_tcb_svn == report.tee_tcb_svn
    else:
        assert quote.sgx is not None
        assert quote.sgx.mr_enclave == theirs.report.mr_enclave
        assert quote.sgx.mr_signer == theirs.report.mr_signer
    assert quote.signature.pck_chain_pem is not None
    assert quote.signature.pck_chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")


def test_tdx_quote_fields_are_those_the_fixture_readme_states() -> None:
    quote = Quote.parse(_dcap("tdx_quote"))
    assert quote.tee == "tdx"
    assert quote.version == 4
    assert quote.td is not None
    assert quote.td.version == "1.0"
    assert quote.td.mr_td.hex() == MRTD
    assert quote.td.rtmrs[3] == bytes(48)
    assert not quote.td.debug
    assert quote.signed_bytes == quote.raw[: 48 + 584]


def test_sgx_quote_is_recognised_as_sgx_not_tdx() -> None:
    quote = Quote.parse(_dcap("sgx_quote"))
    assert quote.tee == "sgx"
    assert quote.td is None
    assert quote.sgx is not None
    assert quote.version == 3


def test_v5_quote_carries_a_td15_report() -> None:
    quote = Quote.parse(_dcap("tdx_quote_outdated"))
    assert quote.version == 5
    assert quote.body_type == 3
    assert quote.td is not None
    assert quote.td.version == "1.5"
    assert quote.td.tee_tcb_svn2 is not None and quote.td.mr_servicetd is not None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(lambda raw: raw.hex().encode(), id="hex"),
        pytest.param(lambda raw: b"0x" + raw.hex().upper().encode(), id="0x-upper"),
        pytest.param(lambda raw: b"  " + raw.hex().encode() + b"\n", id="whitespace"),
    ],
)
def test_hex_quotes_parse_to_the_same_quote(text: object) -> None:
    raw = _raw("tdx_quote")
    assert callable(text)
    assert Quote.parse(text(raw)).raw == Quote.parse(raw).raw


def test_zero_padding_after_the_quote_is_dropped() -> None:
    raw = _raw("tdx_quote")
    quote = Quote.parse(raw)
    assert len(raw) - len(quote.raw) == 70  # quote providers pad their buffer
    assert Quote.from_bytes(raw + bytes(100)).raw == quote.raw


def test_smuggled_bytes_after_the_quote_are_rejected() -> None:
    raw = _raw("tdx_quote")
    with pytest.raises(Malformed, match="trailing"):
        Quote.from_bytes(raw + b"\x01")


@pytest.mark.parametrize("cut", [0, 1, 47, 48, 100, 632, 635, 700, 4935])
def test_truncated_quote_is_rejected_as_malformed(cut: int) -> None:
    raw = Quote.parse(_dcap("tdx_quote")).raw
    with pytest.raises(Malformed):
        Quote.from_bytes(raw[:cut])


def _patched(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(raw)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "match"),
    [
        (0, "<H", 2, "version"),
        (0, "<H", 6, "version"),
        (2, "<H", 1, "attestation key type"),
        (4, "<I", 0x82, "TEE type"),
        (632, "<I", 0xFFFF, "truncated"),
        (632, "<I", 10, "unexpected bytes|truncated"),
    ],
    ids=["v2", "v6", "key-type", "tee-type", "signature-length-too-long", "signature-length-too-short"],
)
def test_lying_header_or_length_fields_are_rejected(offset: int, fmt: str, value: int, match: str) -> None:
    raw = Quote.parse(_dcap("tdx_quote")).raw
    with pytest.raises(Malformed, match=match):
        Quote.from_bytes(_patched(raw, offset, fmt, value))


def test_v3_quote_claiming_tdx_is_rejected() -> None:
    raw = Quote.parse(_dcap("sgx_quote")).raw
    with pytest.raises(Malformed, match="SGX only"):
        Quote.from_bytes(_patched(raw, 4, "<I", 0x81))


def test_v5_body_type_that_contradicts_the_tee_is_rejected() -> None:
    raw = Quote.parse(_dcap("tdx_quote_outdated")).raw
    with pytest.raises(Malformed):
        Quote.from_bytes(_patched(raw, 48, "<H", 1))
    with pytest.raises(Malformed, match="body type 7"):
        Quote.from_bytes(_patched(raw, 48, "<H", 7))
    with pytest.raises(Malformed, match="must be 648"):
        Quote.from_bytes(_patched(raw, 50, "<I", 584))


def test_oversized_quote_is_rejected_before_parsing() -> None:
    with pytest.raises(Malformed, match="over the limit"):
        Quote.from_bytes(b"\x04\x00" + bytes(MAX_QUOTE_SIZE))
    with pytest.raises(Malformed, match="over the limit"):
        Quote.parse(b"ab" * (MAX_QUOTE_SIZE + 100))


@pytest.mark.parametrize("text", [b"", b"hello", b"0x123", b"zz" * 10, b"\xff\xfe"])
def test_text_that_is_not_a_quote_is_rejected(text: bytes) -> None:
    with pytest.raises(Malformed):
        Quote.parse(text)


def test_ra_tls_quote_from_dstack_parses() -> None:
    path: Path = fixtures_dir("tdx", "dstack", "ra-tls_tdx_quote")
    quote = Quote.parse(path.read_bytes())
    assert quote.tee == "tdx"


# --- fuzzing: only enclavekit errors may escape ------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_fuzzed_bytes_raise_only_malformed(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        Quote.parse(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_mutations_of_a_real_quote_raise_only_enclavekit_errors(data: st.DataObject) -> None:
    raw = bytearray(Quote.parse(_dcap("tdx_quote_outdated" if data.draw(st.booleans()) else "sgx_quote")).raw)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(Error):
        Quote.parse(bytes(raw[:cut]))
