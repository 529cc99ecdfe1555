"""Nitro attestation verification latency, cold and warm, against its cryptographic floor (same run).

    python3 dev.py run python benchmarks/nitro_verify.py [--quick] [--json]

Cold: a new chain verifier for every document (nothing cached: four certificate signatures and the COSE
signature). Warm: the chain of the same enclave already verified (only the COSE signature is left). The floor
is one P-384 ECDSA-SHA384 signature check, timed here on the same documents. For comparison, a plain
implementation: cryptography's X.509 path builder plus the COSE signature, every time.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509 import verification

from enclavekit.attestation import nitro
from enclavekit.attestation.chain import ChainVerifier
from enclavekit.attestation.cose import sig_structure
from enclavekit.attestation.roots import aws_nitro_root

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nitro"


def _load() -> list[tuple[bytes, datetime]]:
    facts = json.loads((FIXTURES / "samples.json").read_text())
    return [
        ((FIXTURES / f["file"]).read_bytes(), datetime.fromtimestamp(f["timestamp_ms"] / 1000, tz=UTC))
        for f in facts
        if f["expected"].startswith("valid")
    ]


def _time(fn: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_us": round(statistics.median(values), 1),
        "p99_us": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    rounds = 300 if args.quick else 3000

    if not FIXTURES.exists():
        sys.exit(f"fixtures not found at {FIXTURES}")
    documents = _load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = nitro.NitroPolicy(unsafe_any_measurements=True, allow_debug=True)
    root = aws_nitro_root()

    # The floor: one P-384 signature check (the COSE signature of each document, with its leaf key).
    floors = []
    for data, _ in documents:
        cose = cbor2.loads(data)
        payload = cbor2.loads(cose[2])
        key = x509.load_der_x509_certificate(payload["certificate"]).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        signature = encode_dss_signature(int.from_bytes(cose[3][:48], "big"), int.from_bytes(cose[3][48:], "big"))
        message = sig_structure(cose[0], cose[2])
        check = functools.partial(key.verify, signature, message, ec.ECDSA(hashes.SHA384()))
        floors += _time(check, rounds // len(documents))

    index = [0]

    def next_document() -> tuple[bytes, datetime]:
        index[0] = (index[0] + 1) % len(documents)
        return documents[index[0]]

    cold_chains = ChainVerifier([root])

    def cold() -> None:
        data, at = next_document()
        cold_chains.clear()
        nitro.verify(data, policy, now=at, chains=cold_chains)

    warm_chains = ChainVerifier([root])
    for data, at in documents:
        nitro.verify(data, policy, now=at, chains=warm_chains)

    def warm() -> None:
        data, at = next_document()
        nitro.verify(data, policy, now=at, chains=warm_chains)

    store = verification.Store([x509.load_der_x509_certificate(root)])
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
    )

    def path_builder() -> None:
        data, at = next_document()
        cose = cbor2.loads(data)
        payload = cbor2.loads(cose[2])
        leaf = x509.load_der_x509_certificate(payload["certificate"])
        intermediates = [x509.load_der_x509_certificate(c) for c in payload["cabundle"][1:]]
        verifier = (
            verification.PolicyBuilder()
            .store(store)
            .time(at)
            .extension_policies(ca_policy=ca_policy, ee_policy=verification.ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        verifier.verify(leaf, intermediates)
        key = leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        r, s = int.from_bytes(cose[3][:48], "big"), int.from_bytes(cose[3][48:], "big")
        key.verify(encode_dss_signature(r, s), sig_structure(cose[0], cose[2]), ec.ECDSA(hashes.SHA384()))

    for fn in (cold, warm, path_builder):  # warm up the interpreter and caches of the libraries
        _time(fn, 20)
    results = {
        "cold": _stats(_time(cold, rounds)),
        "warm": _stats(_time(warm, rounds)),
        "path_builder": _stats(_time(path_builder, rounds)),
    }
    floor = statistics.median(floors)
    out: dict[str, Any] = {
        "benchmark": "nitro_verify",
        "documents": len(documents),
        "rounds": rounds,
        "signature_check_p50_us": round(floor, 1),
        "cold": results["cold"],
        "warm": results["warm"],
        "path_builder_plain": results["path_builder"],
        "cold_p50_over_5_signatures": round(results["cold"]["p50_us"] / (5 * floor), 2),
        "warm_p50_over_1_signature": round(results["warm"]["p50_us"] / floor, 2),
        "path_builder_p50_over_cold_p50": round(results["path_builder"]["p50_us"] / results["cold"]["p50_us"], 2),
        "targets": {"cold_p50_over_5_signatures": 1.3, "warm_p50_over_1_signature": 1.5},
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"one P-384 signature check (floor): {floor:.0f} µs (median)")
    for name in ("cold", "warm", "path_builder_plain"):
        print(f"{name:>20}: p50 {out[name]['p50_us']:.0f} µs, p99 {out[name]['p99_us']:.0f} µs")
    print(f"cold p50 / 5 signatures = {out['cold_p50_over_5_signatures']} (target ≤ 1.3)")
    print(f"warm p50 / 1 signature  = {out['warm_p50_over_1_signature']} (target ≤ 1.5)")


if __name__ == "__main__":
    main()
