"""Simulated documents and chains are shaped like real AWS ones, and the simulator's CA stays fresh and private.

Each test compares the simulator's output with real Nitro documents from ``../shared/fixtures/nitro`` level by
level, so a verifier that accepts one shape and not the other is caught here, not in production.
"""

from __future__ import annotations

import itertools
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from enclavekit.attestation.cose import CoseSign1, verify_es384
from enclavekit.nsm import NsmSimulator, SimulatorStateError, load_root
from enclavekit.nsm.ca import SimulatorCA
from tests.conftest import fixtures_dir

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
LEVELS = ("root", "regional", "zonal", "instance", "leaf")
# Real samples of the current chain shape (2024 on; 2022-2023 instance CAs lacked SKI/AKI).
REAL_SAMPLES = (
    "base_2024-11-30_nondebug.cbor",
    "blocky_2024-09-07_nondebug.cbor",
    "base_2026-01-03_nondebug_indefinite_repaired.cbor",
)
MODULE_ID = re.compile(r"^i-[0-9a-f]{17}-enc[0-9a-f]{16}$")


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _real(name: str) -> bytes:
    return fixtures_dir("nitro", "samples", name).read_bytes()


def _payload(document: bytes) -> dict[str, Any]:
    payload = cbor2.loads(cbor2.loads(document)[2])
    assert isinstance(payload, dict)
    return payload


def _chain(document: bytes) -> list[x509.Certificate]:
    payload = _payload(document)
    return [x509.load_der_x509_certificate(der) for der in [*payload["cabundle"], payload["certificate"]]]


def _ext(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _shape(cert: x509.Certificate, issuer: x509.Certificate) -> dict[str, Any]:
    """Everything about a certificate that must match the real chain level for level (not the values)."""
    key = cert.public_key()
    basic = _ext(cert, x509.BasicConstraints)
    usage = _ext(cert, x509.KeyUsage)
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    issuer_ski = _ext(issuer, x509.SubjectKeyIdentifier)
    crl = _ext(cert, x509.CRLDistributionPoints)
    return {
        "version": cert.version,
        "signature": cert.signature_algorithm_oid,
        "key": isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name,
        "extensions": [(e.oid.dotted_string, e.critical) for e in cert.extensions],
        "basic_constraints": (basic.ca, basic.path_length),
        "key_usage": (
            usage.digital_signature,
            usage.content_commitment,
            usage.key_encipherment,
            usage.data_encipherment,
            usage.key_agreement,
            usage.key_cert_sign,
            usage.crl_sign,
        ),
        "ski_is_sha1_of_key": None if ski is None else ski == x509.SubjectKeyIdentifier.from_public_key(key),
        "aki_is_issuer_key_id_only": None
        if aki is None
        else (
            aki.key_identifier == issuer_ski.digest
            and aki.authority_cert_issuer is None
            and aki.authority_cert_serial_number is None
        ),
        "crl_points": None if crl is None else [len(point.full_name) for point in crl],
        "subject_attributes": [a.oid.dotted_string for a in cert.subject],
        "issued_by_parent": cert.issuer == issuer.subject,
    }


@pytest.fixture
def simulated(tmp_path: Path) -> bytes:
    simulator = NsmSimulator(tmp_path / "state", app={"main.py": b"print(1)\n"}, now=Clock())
    return simulator.client().attestation(public_key=b"k" * 65)


@pytest.mark.parametrize("sample", REAL_SAMPLES)
def test_simulated_chain_has_the_shape_of_the_real_chain(simulated: bytes, sample: str) -> None:
    real, sim = _chain(_real(sample)), _chain(simulated)
    assert len(sim) == len(real) == 5
    for level, (real_cert, sim_cert, real_parent, sim_parent) in enumerate(
        zip(real, sim, [real[0], *real], [sim[0], *sim], strict=False)
    ):
        assert _shape(sim_cert, sim_parent) == _shape(real_cert, real_parent), LEVELS[level]


@pytest.mark.parametrize("sample", REAL_SAMPLES)
def test_simulated_chain_lifetimes_match_the_real_chain(simulated: bytes, sample: str) -> None:
    # zonal CAs vary between 5 d 14 h and 5 d 22 h in real chains; every other level is fixed
    tolerance = {"root": 60, "regional": 60, "zonal": 6 * 3600, "instance": 60, "leaf": 60}
    for level, real_cert, sim_cert in zip(LEVELS, _chain(_real(sample)), _chain(simulated), strict=True):
        real_life = real_cert.not_valid_after_utc - real_cert.not_valid_before_utc
        sim_life = sim_cert.not_valid_after_utc - sim_cert.not_valid_before_utc
        assert abs((real_life - sim_life).total_seconds()) <= tolerance[level], level


@pytest.mark.parametrize("document_of", ["real", "simulated"])
def test_leaf_serial_is_enclave_id_zeros_and_issue_time_as_on_aws(simulated: bytes, document_of: str) -> None:
    document = _real(REAL_SAMPLES[0]) if document_of == "real" else simulated
    payload = _payload(document)
    leaf = _chain(document)[-1]
    enclave_id = int(payload["module_id"].split("-enc")[1], 16)
    assert leaf.serial_number >> 64 == enclave_id
    assert (leaf.serial_number >> 32) & 0xFFFFFFFF == 0
    issued = datetime.fromtimestamp(leaf.serial_number & 0xFFFFFFFF, tz=UTC)
    assert leaf.not_valid_before_utc == issued - timedelta(seconds=3)
    assert leaf.not_valid_after_utc == issued + timedelta(hours=3)


def test_serial_sizes_match_the_real_chain(simulated: bytes) -> None:
    for real_cert, sim_cert in zip(_chain(_real(REAL_SAMPLES[0])), _chain(simulated), strict=True):
        assert sim_cert.serial_number.bit_length() <= max(128, real_cert.serial_number.bit_length())


def test_simulated_document_has_the_structure_of_real_documents(simulated: bytes) -> None:
    real = _real(REAL_SAMPLES[0])
    # untagged COSE_Sign1 array(4), protected h'a1013822' (ES384), unprotected {}, payload as a byte string
    assert simulated[:7] == real[:7] == bytes.fromhex("8444a1013822a0")
    real_cose, sim_cose = cbor2.loads(real), cbor2.loads(simulated)
    assert len(sim_cose[3]) == len(real_cose[3]) == 96
    real_payload, sim_payload = _payload(real), _payload(simulated)
    assert (
        list(sim_payload)
        == list(real_payload)
        == ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"]
    )
    assert sim_cose[2][:1] == real_cose[2][:1] == b"\xa9"  # a definite-length map of 9 entries
    for key in real_payload:
        assert type(sim_payload[key]) is type(real_payload[key]), key
    assert sim_payload["digest"] == "SHA384"
    assert list(sim_payload["pcrs"]) == list(real_payload["pcrs"]) == list(range(16))
    assert {len(v) for v in sim_payload["pcrs"].values()} == {48}
    assert MODULE_ID.match(sim_payload["module_id"]) and MODULE_ID.match(real_payload["module_id"])
    assert sim_payload["timestamp"] == int(T0.timestamp() * 1000)


def test_absent_optional_fields_are_cbor_nulls_as_on_the_device(tmp_path: Path) -> None:
    document = NsmSimulator(tmp_path, now=Clock()).client().attestation()
    payload = cbor2.loads(document)[2]
    nulls = "".join(f"{0x60 + len(k):02x}{k.encode().hex()}f6" for k in ("public_key", "user_data", "nonce"))
    assert payload.hex().endswith(nulls)


def test_document_signature_verifies_with_the_leaf_and_each_certificate_with_its_issuer(simulated: bytes) -> None:
    cose = CoseSign1.from_bytes(simulated, max_size=16 * 1024)
    chain = _chain(simulated)
    leaf_key = chain[-1].public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    verify_es384(leaf_key, cose.signature, cose.to_be_signed())
    chain[0].verify_directly_issued_by(chain[0])
    for parent, child in itertools.pairwise(chain):
        child.verify_directly_issued_by(parent)


def test_full_size_fields_fit_the_response_buffer_like_the_blocky_samples(tmp_path: Path) -> None:
    nsm = NsmSimulator(tmp_path, now=Clock()).client()
    document = nsm.attestation(user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"k" * 1024)
    payload = _payload(document)
    assert (payload["user_data"], payload["nonce"], payload["public_key"]) == (b"u" * 1024, b"n" * 1024, b"k" * 1024)
    assert all(len(der) <= 1024 for der in [*payload["cabundle"], payload["certificate"]])


# --- the CA over time --------------------------------------------------------------------------------------------


def _validity_nests(chain: list[x509.Certificate], at: datetime) -> None:
    for cert in chain:
        assert cert.not_valid_before_utc <= at <= cert.not_valid_after_utc
    for parent, child in itertools.pairwise(chain[1:]):  # below the root, a child ends before its parent
        assert child.not_valid_after_utc <= parent.not_valid_after_utc


def test_intermediates_are_reissued_before_they_expire(tmp_path: Path) -> None:
    clock = Clock()
    nsm = NsmSimulator(tmp_path, now=clock).client()
    first = _chain(nsm.attestation())
    _validity_nests(first, clock.now)
    clock.advance(timedelta(days=19))
    later = _chain(nsm.attestation())
    _validity_nests(later, clock.now)
    assert later[0] == first[0]  # one root for the life of the state folder
    assert all(old.serial_number != new.serial_number for old, new in zip(first[1:], later[1:], strict=True))
    for _ in range(30):  # a month of documents, every day: each chain is whole at its own time
        clock.advance(timedelta(days=1, minutes=7))
        _validity_nests(_chain(nsm.attestation()), clock.now)


def test_a_leaf_serves_many_documents_then_is_renewed_before_its_end(tmp_path: Path) -> None:
    clock = Clock()
    nsm = NsmSimulator(tmp_path, now=clock).client()
    leaf = _chain(nsm.attestation())[-1]
    clock.advance(timedelta(minutes=30))
    assert _chain(nsm.attestation())[-1] == leaf
    clock.advance(timedelta(minutes=31))
    renewed = _chain(nsm.attestation())[-1]
    assert renewed != leaf
    assert renewed.public_key() != leaf.public_key()
    assert renewed.not_valid_after_utc - clock.now >= timedelta(hours=2)


def test_enclaves_sharing_a_state_folder_share_the_chain_but_not_leaves(tmp_path: Path) -> None:
    clock = Clock()
    one = _chain(NsmSimulator(tmp_path, now=clock).client().attestation())
    two = _chain(NsmSimulator(tmp_path, now=clock).client().attestation())
    assert one[:4] == two[:4]
    assert one[4] != two[4]
    assert one[4].public_key() != two[4].public_key()


def test_a_clock_set_back_gets_a_chain_valid_at_that_time(tmp_path: Path) -> None:
    clock = Clock(T0 + timedelta(days=3))
    NsmSimulator(tmp_path, now=clock).client().attestation()
    clock.now = T0 + timedelta(hours=1)
    _validity_nests(_chain(NsmSimulator(tmp_path, now=clock).client().attestation()), clock.now)


# --- the state folder --------------------------------------------------------------------------------------------


def test_ca_keys_are_private_to_their_owner(tmp_path: Path) -> None:
    NsmSimulator(tmp_path, now=Clock()).client().attestation()
    folder = tmp_path / "nsm"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("root", "regional", "zonal", "instance"):
        assert stat.S_IMODE((folder / f"{name}.key").stat().st_mode) == 0o600, name
        assert (folder / f"{name}.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert "SIMULATOR ONLY" in (folder / "SIMULATOR-ONLY.txt").read_text()
    assert not list(folder.glob("*.tmp"))


def test_load_root_returns_the_root_that_signs_the_documents(tmp_path: Path) -> None:
    simulator = NsmSimulator(tmp_path, now=Clock())
    document = simulator.client().attestation()
    assert load_root(tmp_path) == load_root(tmp_path / "nsm") == simulator.root_der
    assert _payload(document)["cabundle"][0] == simulator.root_der


def test_each_state_folder_has_its_own_root(tmp_path: Path) -> None:
    one = x509.load_der_x509_certificate(NsmSimulator(tmp_path / "a").root_der)
    two = x509.load_der_x509_certificate(NsmSimulator(tmp_path / "b").root_der)
    assert one.public_key() != two.public_key()
    assert one.subject != two.subject  # so a verifier trusting both picks the right one by name


def test_load_root_of_a_folder_without_simulator_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SimulatorStateError, match="no NSM simulator root") as caught:
        load_root(tmp_path)
    assert caught.value.code == "nsm_simulator_state"
    assert isinstance(caught.value, ValueError)


def test_root_without_its_key_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    NsmSimulator(tmp_path)
    (tmp_path / "nsm" / "root.key").unlink()
    with pytest.raises(SimulatorStateError, match="root"):
        NsmSimulator(tmp_path)


def test_damaged_intermediate_is_reissued(tmp_path: Path) -> None:
    clock = Clock()
    first = _chain(NsmSimulator(tmp_path, now=clock).client().attestation())
    (tmp_path / "nsm" / "zonal.pem").write_text("not a certificate")
    second = _chain(NsmSimulator(tmp_path, now=clock).client().attestation())
    assert second[1] == first[1]
    assert second[2] != first[2]
    _validity_nests(second, clock.now)


def test_intermediates_of_a_replaced_root_are_not_reused(tmp_path: Path) -> None:
    clock = Clock()
    NsmSimulator(tmp_path, now=clock).client().attestation()
    other = tmp_path / "other"
    SimulatorCA(other).root(now=clock.now)
    for name in ("root.pem", "root.key"):
        (tmp_path / "nsm" / name).write_bytes((other / "nsm" / name).read_bytes())
    chain = _chain(NsmSimulator(tmp_path, now=clock).client().attestation())
    for parent, child in itertools.pairwise(chain):
        child.verify_directly_issued_by(parent)


def test_enclaves_starting_together_agree_on_one_root(tmp_path: Path) -> None:
    def start(_: int) -> tuple[bytes, bytes]:
        simulator = NsmSimulator(tmp_path, now=Clock())
        return simulator.root_der, _payload(simulator.client().attestation())["cabundle"][1]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(start, range(16)))
    assert len({root for root, _ in results}) == 1
    assert len({regional for _, regional in results}) == 1
