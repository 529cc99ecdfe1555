"""Attested key release, end to end, beside its parts (same run).

    python3 dev.py run python benchmarks/kms_release.py [--quick] [--json]

Round trip, as an enclave does it with :class:`enclavekit.kms.KmsClient`: an attestation document from the
simulated NSM binding the client's RSA-2048 public key, then KMS Decrypt with that ``Recipient`` over HTTP
(the stdlib endpoint with SigV4 -> the emulator on loopback: JSON, attestation verification, key policy on
PCR0, AES-GCM decrypt, CMS seal), then opening the CMS envelope. Parts, timed on their own in the same process:

* ``attestation`` — one document from the simulated NSM (CBOR, ES384 signature);
* ``kms_decrypt_http`` — boto3 Decrypt with a ready-made Recipient, over HTTP;
* ``kms_decrypt_in_process`` — the same request handled by the service directly (no HTTP, no boto3);
* ``attestation_verify`` — the emulator's verification of the document (chain cached, as in a running KMS);
* ``cms_seal`` and ``cms_open`` — the envelope, each side;
* ``http_floor`` — boto3 GenerateRandom without a Recipient (HTTP + boto3 + JSON, no crypto worth naming);
* ``rsa2048_keygen`` — once per client, not per release.

The round trip and its parts are timed interleaved, round by round (``benchmarks/interleave.py``): the ratio
is the median over rounds of each round's ratio, with its spread.

EphemeralML measured KMS key release at 76-79 ms on real Nitro (network to AWS KMS through the vsock proxy).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from cryptography.hazmat.primitives.asymmetric import rsa

from enclavekit.attestation import nitro
from enclavekit.kms import EmulatorThread, KmsClient, open_envelope, open_service, seal_envelope
from enclavekit.kms.endpoint import Credentials, KmsEndpoint
from enclavekit.nsm import NsmSimulator, load_root
from interleave import interleave

PER_ROUND = 5  # calls of each part per round


def _time(fn: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    rounds = 100 if args.quick else 1000
    keygen_rounds = 5 if args.quick else 30

    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder)
        enclave = NsmSimulator(state / "sim", app={"main.py": b"print('benchmark enclave')\n"})
        nsm = enclave.client()
        service = open_service(state / "kms-state", trusted_roots=[load_root(state / "sim")])
        with EmulatorThread(service) as running:
            kms = boto3.client(
                "kms",
                endpoint_url=running.url,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            document_policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Encrypt", "Resource": "*"},
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": "*"},
                        "Action": "kms:Decrypt",
                        "Resource": "*",
                        "Condition": {
                            "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": enclave.pcr(0).hex()}
                        },
                    },
                ],
            }
            key_id = kms.create_key(Policy=json.dumps(document_policy))["KeyMetadata"]["KeyId"]
            secret = bytes(range(32))
            blob = kms.encrypt(KeyId=key_id, Plaintext=secret)["CiphertextBlob"]

            keygen = _time(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), keygen_rounds)
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            endpoint = KmsEndpoint(running.url, region="us-east-1", credentials=Credentials("bench", "bench"))
            client = KmsClient(endpoint, nsm.attestation, recipient_key=private_key)
            public_der = client.public_key_der

            def round_trip() -> None:
                assert client.decrypt(blob) == secret

            def attestation() -> None:
                nsm.attestation(public_key=public_der)

            recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": b""}
            made = [0.0]

            def fresh_recipient() -> dict[str, Any]:
                if time.monotonic() - made[0] > 60:  # documents must stay under KMS's 5-minute age limit
                    recipient["AttestationDocument"] = nsm.attestation(public_key=public_der)
                    made[0] = time.monotonic()
                return recipient

            def kms_http() -> None:
                kms.decrypt(CiphertextBlob=blob, Recipient=fresh_recipient())

            request = {"CiphertextBlob": base64.b64encode(blob).decode()}

            def kms_in_process() -> None:
                body = request | {
                    "Recipient": {
                        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                        "AttestationDocument": base64.b64encode(fresh_recipient()["AttestationDocument"]).decode(),
                    }
                }
                service.handle("Decrypt", body, now=datetime.now(UTC))

            def verify() -> None:
                nitro.verify(fresh_recipient()["AttestationDocument"], service.verifier.policy, now=datetime.now(UTC))

            envelope = kms.decrypt(CiphertextBlob=blob, Recipient=fresh_recipient())["CiphertextForRecipient"]

            def cms_open() -> None:
                open_envelope(envelope, private_key)

            def cms_seal() -> None:
                seal_envelope(secret, private_key.public_key())

            def http_floor() -> None:
                kms.generate_random(NumberOfBytes=32)

            parts: dict[str, Callable[[], None]] = {
                "round_trip": round_trip,
                "attestation": attestation,
                "kms_decrypt_http": kms_http,
                "kms_decrypt_in_process": kms_in_process,
                "attestation_verify": verify,
                "cms_seal": cms_seal,
                "cms_open": cms_open,
                "http_floor": http_floor,
            }
            # Interleaved round by round (wall clock: the emulator answers on another thread), so the round trip
            # and its parts see the same machine; warm-up fills the connection pool and the chain cache.
            timed = interleave(parts, rounds=rounds // PER_ROUND, per_round=PER_ROUND)
            results = {name: _stats([value / 1000 for value in timed.all(name)]) for name in parts}
        service.keystore.close()

    results["rsa2048_keygen"] = _stats(keygen)
    p50 = {name: figures["p50_ms"] for name, figures in results.items()}
    over_parts = timed.ratio("round_trip", ("attestation", "kms_decrypt_http", "cms_open"))
    out: dict[str, Any] = {
        "benchmark": "kms_release",
        "rounds": rounds,
        **results,
        "sum_of_parts_p50_ms": round(p50["attestation"] + p50["kms_decrypt_http"] + p50["cms_open"], 3),
        "round_trip_p50_over_sum_of_parts": over_parts["median"],
        "http_share_of_kms_decrypt": timed.spread(
            lambda m: (m["kms_decrypt_http"] - m["kms_decrypt_in_process"]) / m["kms_decrypt_http"]
        )["median"],
        "spread_over_rounds": {"round_trip_over_sum_of_parts": over_parts},
        "reference_ephemeralml_real_nitro_ms": [76, 79],
    }
    if args.json:
        print(json.dumps(out))
        return
    p99 = results["round_trip"]["p99_ms"]
    print(f"key release round trip ({rounds} calls): p50 {p50['round_trip']:.2f} ms, p99 {p99:.2f} ms")
    for name in parts:
        if name != "round_trip":
            print(f"  {name:>24}: p50 {p50[name]:8.3f} ms   p99 {results[name]['p99_ms']:8.3f} ms")
    print(f"  {'rsa2048_keygen (once)':>24}: p50 {p50['rsa2048_keygen']:8.3f} ms")
    print(
        f"round trip / (attestation + KMS over HTTP + CMS open) = {over_parts['median']} "
        f"({rounds // PER_ROUND} rounds: {over_parts['min']}..{over_parts['max']})"
    )
    print("EphemeralML, real Nitro + AWS KMS: 76-79 ms")


if __name__ == "__main__":
    main()
