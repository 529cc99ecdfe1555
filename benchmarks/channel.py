"""Attested session costs: handshake (fresh vs cached document) and per-record crypto, beside their floors.

    python3 dev.py run python benchmarks/channel.py [--quick] [--json]

Everything in one run, on the same machine state:

* floors: HPKE context setup alone (pyhpke SetupBaseS + SetupBaseR, the suite and info size the handshake
  uses), one warm Nitro verification (``NitroVerifier`` on a simulator document, the chain cached), one NSM
  simulator attestation, and ChaCha20-Poly1305 encrypt+decrypt of 1 KiB alone;
* handshake, sans-I/O, both sides in this process: initiator start, responder accept (fresh: one NSM
  attestation; cached: one Ed25519 signature), initiator verify + HPKE, responder HPKE + confirmation.
  Target: within 2x of HPKE setup + one warm verification (the fresh handshake also pays the attestation);
* the fresh handshake again with a client identity (version 2: one Ed25519 signature by the client, one
  verification by the enclave), interleaved with the anonymous one;
* records: ``Session.seal`` + ``Session.open`` of 1 KiB. Target: at most 10 µs.

Figures are medians (p50) over many rounds; per-record figures are medians of per-batch averages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.channel import ClientIdentityKey, Initiator, Mode, Responder, SessionKeys
from enclavekit.channel.adapters import NitroVerifier
from enclavekit.channel.schedule import SUITE
from enclavekit.nsm import NsmSimulator, load_root


def _samples(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


def _batched(fn: Callable[[], object], batches: int, size: int) -> list[float]:
    out = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(size):
            fn()
        out.append((time.perf_counter_ns() - start) / 1000 / size)
    return out


def _p50(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1)


def run(quick: bool) -> dict[str, Any]:
    rounds = 200 if quick else 2000
    batches, batch = (50, 200) if quick else (300, 1000)
    with tempfile.TemporaryDirectory() as state:
        simulator = NsmSimulator(Path(state), app={"main.py": b"print('benchmark enclave')\n"})
        nsm = simulator.client()
        keys = SessionKeys.generate()
        responder = Responder(keys, nsm)
        verifier = NitroVerifier(NitroPolicy(roots=(load_root(Path(state)),), measurements=[{0: simulator.pcr(0)}]))
        fresh = Initiator(verifier)
        identified = Initiator(verifier, identity=ClientIdentityKey.generate())
        cached = Initiator(verifier, modes=(Mode.CACHED,), max_document_age=timedelta(minutes=10))
        responder.refresh_document()

        def handshake(initiator: Initiator) -> Callable[[], object]:
            def once() -> object:
                now = datetime.now(UTC)
                client, hello = initiator.start(now=now)
                server, server_hello = responder.accept(hello, now=now)
                finish, _ = client.finish(server_hello, now=now)
                return server.finish(finish, now=now)

            return once

        # Floors.
        info = bytes(115)  # "enclavekit-session" ‖ version ‖ three SHA-256 hashes
        recipient = keys.hpke_private_key()
        public = SUITE.kem.deserialize_public_key(keys.bound.kem_public_key)

        def hpke_setup() -> object:
            enc, _ = SUITE.create_sender_context(public, info)
            return SUITE.create_recipient_context(enc, recipient, info)

        nonce = os.urandom(32)
        document = nsm.attestation(public_key=keys.public_bytes, nonce=nonce, user_data=bytes(32))
        now = datetime.now(UTC)
        verifier.verify(document, nonce=nonce, now=now)  # warm the chain cache

        def verify_warm() -> object:
            return verifier.verify(document, nonce=nonce, now=now)

        def attest() -> object:
            return nsm.attestation(public_key=keys.public_bytes, nonce=nonce, user_data=bytes(32))

        aead = ChaCha20Poly1305(os.urandom(32))
        aad, aead_nonce, kib = os.urandom(26), os.urandom(12), os.urandom(1024)

        def aead_only() -> object:
            return aead.decrypt(aead_nonce, aead.encrypt(aead_nonce, kib, aad), aad)

        now = datetime.now(UTC)
        client_session, server_session = _session_pair(fresh, responder, now)

        def seal_open() -> object:
            return server_session.open(client_session.seal(kib, now=now), now=now)

        for fn in (handshake(fresh), handshake(cached), handshake(identified), hpke_setup, verify_warm, attest):
            _samples(fn, 10)
        _batched(aead_only, 5, batch)
        _batched(seal_open, 5, batch)

        # Interleave the handshake modes so both see the same machine.
        fresh_samples: list[float] = []
        cached_samples: list[float] = []
        identity_samples: list[float] = []
        for _ in range(rounds // 10):
            fresh_samples += _samples(handshake(fresh), 10)
            cached_samples += _samples(handshake(cached), 10)
            identity_samples += _samples(handshake(identified), 10)
        hpke = _samples(hpke_setup, rounds)
        verify = _samples(verify_warm, rounds)
        attestation = _samples(attest, rounds)
        aead_figures: list[float] = []
        record_figures: list[float] = []
        for _ in range(batches):
            aead_figures += _batched(aead_only, 1, batch)
            record_figures += _batched(seal_open, 1, batch)

    floor = _p50(hpke) + _p50(verify)
    return {
        "benchmark": "channel",
        "rounds": rounds,
        "record_batches": [batches, batch],
        "hpke_setup_p50_us": _p50(hpke),
        "nitro_verify_warm_p50_us": _p50(verify),
        "nsm_simulator_attestation_p50_us": _p50(attestation),
        "handshake_fresh_p50_us": _p50(fresh_samples),
        "handshake_fresh_p99_us": _p99(fresh_samples),
        "handshake_fresh_identity_p50_us": _p50(identity_samples),
        "handshake_fresh_identity_p99_us": _p99(identity_samples),
        "handshake_identity_overhead_us": round(_p50(identity_samples) - _p50(fresh_samples), 1),
        "handshake_cached_p50_us": _p50(cached_samples),
        "handshake_cached_p99_us": _p99(cached_samples),
        "handshake_floor_us": round(floor, 1),
        "handshake_fresh_ratio": round(_p50(fresh_samples) / floor, 2),
        "handshake_fresh_ratio_with_attestation": round(_p50(fresh_samples) / (floor + _p50(attestation)), 2),
        "handshake_cached_ratio": round(_p50(cached_samples) / floor, 2),
        "aead_1kib_seal_open_p50_us": _p50(aead_figures),
        "record_1kib_seal_open_p50_us": _p50(record_figures),
        "record_overhead_over_aead_us": round(_p50(record_figures) - _p50(aead_figures), 2),
    }


def _session_pair(initiator: Initiator, responder: Responder, now: datetime):  # type: ignore[no-untyped-def]
    client, hello = initiator.start(now=now)
    server, server_hello = responder.accept(hello, now=now)
    finish, client_session = client.finish(server_hello, now=now)
    return client_session, server.finish(finish, now=now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    results = run(args.quick)
    if args.json:
        print(json.dumps(results))
        return
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
