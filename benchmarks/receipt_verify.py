"""AIR v1 receipt verification latency against a plain cbor2 + cryptography verification (same run).

    python3 dev.py run python benchmarks/receipt_verify.py [--quick] [--json]

Both verify the AIR golden vector ``valid/v1-tdx-with-nonce.json`` from its bytes and the raw 32-byte key,
interleaved round by round (the order alternates), so both see the same machine load. *ours* is
``enclavekit.receipts.verify_receipt`` with a policy (nonce, model hash, platform, max age): all four layers,
every check. *plain* decodes the COSE_Sign1 and the claims with cbor2 and checks the Ed25519 signature with
cryptography, nothing else. Also timed: ``sign_receipt`` (what the enclave pays per request).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclavekit.receipts import MeasurementType, ReceiptPolicy, parse_receipt, sign_receipt, verify_receipt

VECTOR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "air" / "valid" / "v1-tdx-with-nonce.json"


def _stats(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_us": round(statistics.median(values), 1),
        "p99_us": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a few seconds)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    rounds = 2000 if args.quick else 20000

    if not VECTOR.exists():
        sys.exit(f"AIR vectors not found at {VECTOR}")
    vector = json.loads(VECTOR.read_text())
    data = bytes.fromhex(vector["receipt_hex"])
    key = bytes.fromhex(vector["public_key_hex"])
    claims = vector["claims"]
    now = datetime.fromtimestamp(claims["iat"] + 60, tz=UTC)
    policy = ReceiptPolicy(
        nonce=bytes.fromhex(claims["eat_nonce_hex"]),
        model_hash=bytes.fromhex(claims["model_hash_hex"]),
        platform=MeasurementType.TDX,
        max_age=300,
    )

    def ours() -> None:
        verify_receipt(data, public_key=key, policy=policy, now=now)

    def plain() -> None:
        protected, _, payload, signature = cbor2.loads(data).value
        Ed25519PublicKey.from_public_bytes(key).verify(signature, cbor2.dumps(["Signature1", protected, b"", payload]))
        cbor2.loads(payload)

    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["signing_key_seed_hex"]))
    parsed = parse_receipt(data).claims

    def sign() -> None:
        sign_receipt(parsed, signer)

    timings: dict[str, list[float]] = {"ours": [], "plain": [], "sign": []}
    for fn in (ours, plain, sign):  # warm-up
        for _ in range(50):
            fn()
    order = [("ours", ours), ("plain", plain), ("sign", sign)]
    clock = time.perf_counter_ns
    for round_ in range(rounds):
        for name, fn in order if round_ % 2 == 0 else reversed(order):
            start = clock()
            fn()
            timings[name].append((clock() - start) / 1000)

    result = {
        "rounds": rounds,
        "receipt_bytes": len(data),
        "verify_ours": _stats(timings["ours"]),
        "verify_plain": _stats(timings["plain"]),
        "sign_ours": _stats(timings["sign"]),
    }
    result["verify_ratio_p50"] = round(result["verify_ours"]["p50_us"] / result["verify_plain"]["p50_us"], 2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"AIR receipt ({len(data)} bytes), {rounds} interleaved rounds")
    for name in ("verify_ours", "verify_plain", "sign_ours"):
        print(f"  {name:13} p50 {result[name]['p50_us']:7.1f} us   p99 {result[name]['p99_us']:7.1f} us")
    print(f"  ours / plain at p50: {result['verify_ratio_p50']}x")


if __name__ == "__main__":
    main()
