"""Evidence is parsed once per boundary it crosses: once when an upload is accepted, once when a worker reads
it back to verify it, once per file in ``enclavekit verify`` — never again further down.

Before the typed :class:`~enclavekit.attestation.evidence.Evidence` the same bytes were parsed again to pick
the verification time (``doc``), to look for the simulator's root, to choose the OS registry entries, and by
the core report itself: a simulated Nitro document verified at ``doc`` was parsed 1 + 3 times, a dstack bundle
1 + 2 times, a document the CLI gave a hint for twice. The real parsers run here; a wrapper only counts the
outermost call (a bundle's own quote is part of parsing the bundle).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enclavekit.attestation.dstack import DstackBundle
from enclavekit.attestation.evidence import Evidence, VerifyOptions, verify_evidence
from enclavekit.attestation.nitro import AttestationDocument
from enclavekit.attestation.quote import Quote
from enclavekit.attestation.verification_time import At
from enclavekit.cli._verify_options import VerifyArgs
from enclavekit.cli._verify_run import run_verify
from enclavekit.errors import Error
from enclavekit.services.trust.model import TargetOptions, TaskStatus
from enclavekit.services.trust.queue import TaskQueue
from enclavekit.services.trust.service import TrustService
from enclavekit.services.trust.settings import TrustSettings
from enclavekit.services.trust.worker import Worker
from tests.test_tdx_collateral import FakePccs, pccs  # noqa: F401  (the loopback PCCS fixture)
from tests.test_trust_helpers import nitro_sample, simulator_documents, tdx

PARSERS: tuple[tuple[type[Any], str], ...] = (
    (AttestationDocument, "from_bytes"),
    (Quote, "from_bytes"),
    (DstackBundle, "from_mapping"),
)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the outermost calls to the evidence parsers (each still runs for real)."""
    counts: Counter[str] = Counter()
    depth = [0]

    def counting(owner: type[Any], name: str, parse: Callable[..., Any]) -> classmethod[Any, Any, Any]:
        def wrapper(cls: type[Any], data: Any, *args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                counts[f"{owner.__name__}.{name}"] += 1
            depth[0] += 1
            try:
                return parse(data, *args, **kwargs)
            finally:
                depth[0] -= 1

        return classmethod(wrapper)

    for owner, name in PARSERS:
        monkeypatch.setattr(owner, name, counting(owner, name, getattr(owner, name)))
    return counts


@contextlib.contextmanager
def trust_service(tmp_path: Path, *simulator_states: Path, pccs_url: str | None = None) -> Iterator[TrustService]:
    settings = TrustSettings(state_dir=tmp_path / "trust", simulator_roots=simulator_states, pccs_url=pccs_url)
    service = TrustService(settings)
    try:
        yield service
    finally:
        service.close()


def submit_then_verify(service: TrustService, parses: Counter[str], evidence: bytes, **submit: Any) -> list[int]:
    """Parses while the upload is accepted, then while a worker (no queue needed) verifies its task."""
    parses.clear()
    accepted = service.submit(evidence, **submit)
    at_submit = sum(parses.values())
    parses.clear()
    worker = Worker(service, TaskQueue("nats://127.0.0.1:1"))  # process() takes the task id; NATS is never used
    assert asyncio.run(worker.process(accepted.task.id)) is True
    assert service.store.get_task(accepted.task.id).status is TaskStatus.COMPLETED
    return [at_submit, sum(parses.values())]


def test_a_simulated_nitro_document_at_doc_is_parsed_once_per_boundary(tmp_path: Path, parses: Counter[str]) -> None:
    make, _ = simulator_documents(tmp_path / "enclave")
    with trust_service(tmp_path, tmp_path / "enclave") as service:
        options = TargetOptions(at=At.DOC, trust_simulator=True)
        assert submit_then_verify(service, parses, make(None), options=options) == [1, 1]
        assert set(parses) == {"AttestationDocument.from_bytes"}


def test_a_dstack_bundle_is_parsed_once_per_boundary(tmp_path: Path, parses: Counter[str]) -> None:
    bundle = tdx("trust-center", "debugData_app_bundle.json").read_bytes()
    with trust_service(tmp_path) as service:
        assert submit_then_verify(service, parses, bundle) == [1, 1]
        assert set(parses) == {"DstackBundle.from_mapping"}


def test_a_tdx_quote_with_its_collateral_is_parsed_once_per_boundary(tmp_path: Path, parses: Counter[str]) -> None:
    quote = tdx("dcap-qvl", "tdx_quote").read_bytes()
    collateral = tdx("dcap-qvl", "tdx_quote_collateral.json").read_bytes()
    with trust_service(tmp_path) as service:
        assert submit_then_verify(service, parses, quote, collateral=collateral) == [1, 1]
        assert set(parses) == {"Quote.from_bytes"}


def test_a_quote_whose_collateral_the_worker_fetches_is_still_parsed_once(
    tmp_path: Path,
    parses: Counter[str],
    pccs: FakePccs,  # noqa: F811
) -> None:
    quote = tdx("dcap-qvl", "tdx_quote").read_bytes()
    options = TargetOptions(at=At.parse("2025-06-20T00:00:00Z"))  # the collateral's time, resolved by the worker
    with trust_service(tmp_path, pccs_url=pccs.url) as service:
        assert submit_then_verify(service, parses, quote, options=options) == [1, 1]
    assert pccs.requests  # the worker fetched collateral for the quote it had parsed


def test_the_cli_parses_each_file_once_even_when_it_adds_a_hint(tmp_path: Path, parses: Counter[str]) -> None:
    make, _ = simulator_documents(tmp_path / "enclave")
    document = tmp_path / "simulated.cbor"
    document.write_bytes(make(None))
    args = VerifyArgs(
        files=[document, document],
        at="now",
        policy=None,
        allow_debug=False,
        trust_sim_root=[],  # untrusted: the chain fails and the CLI looks for the simulator's root to hint at it
        collateral=[],
        pccs=None,
        compose=None,
        unsafe_no_collateral=False,
        output_format="report",
        as_json=True,
    )
    parses.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_verify(args) == 1
    assert "--trust-sim-root" in out.getvalue()  # the hint was made, from the parsed document
    assert parses == Counter({"AttestationDocument.from_bytes": 2})  # one per file


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "malformed"),
        (b"hello, not evidence", "malformed"),
        (b"\x84" + b"\x00" * 40, "malformed"),  # looks like COSE_Sign1, is not one
        (b'{"quote": "zz", "event_log": []}', "malformed"),  # looks like a dstack bundle, is not one
        (b"\x84" * (4 * 1024 * 1024 + 1), "malformed"),  # over the size limit: not even sniffed
    ],
)
def test_evidence_that_does_not_parse_says_why_and_an_upload_of_it_is_refused(
    tmp_path: Path, data: bytes, code: str
) -> None:
    evidence = Evidence.from_bytes(data)
    assert evidence.parsed is None and evidence.problem is not None and evidence.problem.code == code
    assert evidence.document is None and evidence.quote is None and evidence.timestamp is None
    with pytest.raises(type(evidence.problem)):
        evidence.require()
    with trust_service(tmp_path) as service, pytest.raises(Error):
        service.submit(data)
    result = verify_evidence(evidence, VerifyOptions())  # a report, never an exception
    assert not result.valid and result.error is not None


def test_a_bundles_quote_and_a_documents_time_come_from_the_one_parse() -> None:
    bundle = Evidence.from_bytes(tdx("trust-center", "debugData_app_bundle.json").read_bytes())
    assert bundle.bundle is not None and bundle.quote is bundle.bundle.quote and bundle.timestamp is None
    document = Evidence.from_bytes(nitro_sample("base_2024-11-30_nondebug.cbor").read_bytes())
    assert document.document is not None and document.timestamp == document.document.timestamp
    assert document.sha256 == hashlib.sha256(document.raw).hexdigest()
