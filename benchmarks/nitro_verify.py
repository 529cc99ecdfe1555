"""Nitro attestation verification latency, cold and warm, against its cryptographic floor (same run).

    python3 dev.py run python benchmarks/nitro_verify.py [--quick] [--json]

Cold: a new chain verifier for every document (nothing cached: four certificate signatures and the COSE
signature). Warm: the chain of the same enclave already verified (only the COSE signature is left). The floor
is one P-384 ECDSA-SHA384 signature check, timed here on the same documents. For comparison, a plain
implementation: cryptography's X.509 path builder plus the COSE signature, every time.

The four are timed interleaved, round by round (``benchmarks/interleave.py``): each ratio is taken within a
round, and reported as the median over rounds with its spread (min..max), so a busy minute on a shared machine
moves both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
from interleave import CPU, interleave

T = TypeVar("T")
PER_ROUND = 10  # calls of each case per round
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nitro"


def _load() -> list[tuple[bytes, datetime]]:
    facts = json.loads((FIXTURES / "samples.json").read_text())
    return [
        ((FIXTURES / f["file"]).read_bytes(), datetime.fromtimestamp(f["timestamp_ms"] / 1000, tz=UTC))
        for f in facts
        if f["expected"].startswith("valid")
    ]


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
    checks: list[Callable[[], object]] = []
    for data, _ in documents:
        cose = cbor2.loads(data)
        payload = cbor2.loads(cose[2])
        key = x509.load_der_x509_certificate(payload["certificate"]).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        signature = encode_dss_signature(int.from_bytes(cose[3][:48], "big"), int.from_bytes(cose[3][48:], "big"))
        message = sig_structure(cose[0], cose[2])
        checks.append(functools.partial(key.verify, signature, message, ec.ECDSA(hashes.SHA384())))

    def cycling(items: list[T]) -> Callable[[], T]:
        """Each call returns the next item (each case walks the documents on its own)."""
        index = [0]

        def step() -> T:
            index[0] = (index[0] + 1) % len(items)
            return items[index[0]]

        return step

    next_check = cycling(checks)

    def floor() -> None:
        next_check()()

    next_cold = cycling(documents)
    cold_chains = ChainVerifier([root])

    def cold() -> None:
        data, at = next_cold()
        cold_chains.clear()
        nitro.verify(data, policy, now=at, chains=cold_chains)

    next_warm = cycling(documents)
    warm_chains = ChainVerifier([root])
    for data, at in documents:
        nitro.verify(data, policy, now=at, chains=warm_chains)

    def warm() -> None:
        data, at = next_warm()
        nitro.verify(data, policy, now=at, chains=warm_chains)

    next_plain = cycling(documents)
    store = verification.Store([x509.load_der_x509_certificate(root)])
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
    )

    def path_builder() -> None:
        data, at = next_plain()
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

    # Interleaved round by round (the floor too), so every ratio is taken on one machine state.
    timed = interleave(
        {"floor": floor, "cold": cold, "warm": warm, "path_builder": path_builder},
        rounds=rounds // PER_ROUND,
        per_round=PER_ROUND,
        warmup=20,
        clock=CPU,
    )
    cold_ratio = timed.ratio("cold", "floor", scale=5)
    warm_ratio = timed.ratio("warm", "floor")
    out: dict[str, Any] = {
        "benchmark": "nitro_verify",
        "documents": len(documents),
        "calls_per_case": rounds,
        "rounds": rounds // PER_ROUND,
        "signature_check_p50_us": round(timed.p50("floor"), 1),
        "cold": timed.stats("cold"),
        "warm": timed.stats("warm"),
        "path_builder_plain": timed.stats("path_builder"),
        "cold_p50_over_5_signatures": cold_ratio["median"],
        "warm_p50_over_1_signature": warm_ratio["median"],
        "path_builder_p50_over_cold_p50": timed.ratio("path_builder", "cold")["median"],
        "spread_over_rounds": {"cold_over_5_signatures": cold_ratio, "warm_over_1_signature": warm_ratio},
        "targets": {"cold_p50_over_5_signatures": 1.3, "warm_p50_over_1_signature": 1.5},
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"one P-384 signature check (floor): {out['signature_check_p50_us']:.0f} µs (median)")
    for name in ("cold", "warm", "path_builder_plain"):
        print(f"{name:>20}: p50 {out[name]['p50_us']:.0f} µs, p99 {out[name]['p99_us']:.0f} µs")
    for name, target in (("cold_over_5_signatures", 1.3), ("warm_over_1_signature", 1.5)):
        spread = out["spread_over_rounds"][name]
        print(
            f"{name.replace('_', ' '):>24} = {spread['median']} (target ≤ {target}; "
            f"{out['rounds']} rounds: {spread['min']}..{spread['max']})"
        )


if __name__ == "__main__":
    main()
