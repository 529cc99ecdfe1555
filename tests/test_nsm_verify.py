"""Simulated documents through the real Nitro verifier: trusted only where their root is trusted.

A simulated document must verify exactly like a real one once the simulator's root is trusted, and must be
refused everywhere else: by the default policy (the pinned AWS root), and by a policy trusting another
simulator's root.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclavekit.attestation import nitro
from enclavekit.attestation.errors import CertificateExpired, ChainUntrusted, DebugMode, MeasurementMismatch
from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.nsm import NsmSimulator, load_root

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def simulator(tmp_path: Path) -> NsmSimulator:
    return NsmSimulator(tmp_path / "state", app={"main.py": b"print('enclave')\n"}, now=Clock())


def _trusting(state: Path, **options: Any) -> NitroPolicy:
    return NitroPolicy(roots=(load_root(state),), **options)


def test_simulated_document_verifies_when_the_simulator_root_is_trusted(
    simulator: NsmSimulator, tmp_path: Path
) -> None:
    nsm = simulator.client()
    nsm.extend_pcr(16, b"config")
    nsm.lock_pcr(16)
    document = nsm.attestation(nonce=b"n" * 32, user_data=b"hello", public_key=b"k" * 97)
    policy = _trusting(tmp_path / "state", measurements=[{0: simulator.pcr(0), 16: simulator.pcr(16)}], nonce=b"n" * 32)
    attestation = nitro.verify(document, policy, now=T0 + timedelta(seconds=1))
    assert attestation.module_id == simulator.module_id
    assert attestation.pcrs[0] == simulator.pcr(0)
    assert attestation.pcrs[16] == simulator.pcr(16)
    assert (attestation.nonce, attestation.user_data, attestation.public_key) == (b"n" * 32, b"hello", b"k" * 97)
    assert not attestation.debug
    assert attestation.chain[0] == simulator.root_der


def test_simulated_document_is_rejected_by_the_default_aws_root(simulator: NsmSimulator) -> None:
    document = simulator.client().attestation()
    report = nitro.report(document, NitroPolicy(unsafe_any_measurements=True), now=T0)
    assert report.error is not None
    assert report.error.code == "chain_untrusted"
    with pytest.raises(ChainUntrusted):
        nitro.verify(document, NitroPolicy(measurements=[{0: simulator.pcr(0)}]), now=T0)


def test_document_from_another_simulator_root_is_rejected(simulator: NsmSimulator, tmp_path: Path) -> None:
    other = tmp_path / "other-state"
    NsmSimulator(other, now=Clock())
    document = simulator.client().attestation()
    report = nitro.report(document, _trusting(other, unsafe_any_measurements=True), now=T0)
    assert report.error is not None
    assert report.error.code == "chain_untrusted"


def test_trusting_several_simulator_roots_accepts_each_of_their_documents(tmp_path: Path) -> None:
    states = [tmp_path / "a", tmp_path / "b"]
    documents = [NsmSimulator(state, now=Clock()).client().attestation() for state in states]
    policy = NitroPolicy(roots=tuple(load_root(state) for state in states), unsafe_any_measurements=True)
    for document in documents:
        nitro.verify(document, policy, now=T0)


def test_other_code_does_not_match_the_pinned_pcr0(simulator: NsmSimulator, tmp_path: Path) -> None:
    impostor = NsmSimulator(tmp_path / "state", app={"main.py": b"print('impostor')\n"}, now=Clock())
    document = impostor.client().attestation()
    with pytest.raises(MeasurementMismatch):
        nitro.verify(document, _trusting(tmp_path / "state", measurements=[{0: simulator.pcr(0)}]), now=T0)


def test_simulated_debug_enclave_is_rejected_as_debug_mode(tmp_path: Path) -> None:
    debug = NsmSimulator(tmp_path, app=b"app", debug=True, now=Clock())
    with pytest.raises(DebugMode):
        nitro.verify(debug.client().attestation(), _trusting(tmp_path, unsafe_any_measurements=True), now=T0)


def test_simulated_document_expires_with_its_leaf_like_a_real_one(simulator: NsmSimulator, tmp_path: Path) -> None:
    document = simulator.client().attestation()
    policy = _trusting(tmp_path / "state", unsafe_any_measurements=True)
    nitro.verify(document, policy, now=T0 + timedelta(hours=2, minutes=59))
    with pytest.raises(CertificateExpired):
        nitro.verify(document, policy, now=T0 + timedelta(hours=3, minutes=1))


def test_full_size_fields_verify(simulator: NsmSimulator, tmp_path: Path) -> None:
    document = simulator.client().attestation(user_data=b"u" * 1024, nonce=b"n" * 1024, public_key=b"k" * 1024)
    attestation = nitro.verify(document, _trusting(tmp_path / "state", unsafe_any_measurements=True), now=T0)
    assert attestation.user_data == b"u" * 1024


def test_documents_verify_across_intermediate_reissues(tmp_path: Path) -> None:
    clock = Clock()
    nsm = NsmSimulator(tmp_path, now=clock).client()
    policy = _trusting(tmp_path, unsafe_any_measurements=True)
    for _ in range(40):
        clock.now += timedelta(hours=13)
        nitro.verify(nsm.attestation(), policy, now=clock.now)
