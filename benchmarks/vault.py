"""vault: unlock cost (and Argon2id's share of it), secret put/get round trip through NATS and the enclave, and
operations per second with many users.

    python3 dev.py run python benchmarks/vault.py [--quick] [--json]

* ``unlock`` — :meth:`VaultCore.unlock` in process, production Argon2id (t=3, 64 MiB), ledger of 3 in-memory
  replicas, KMS emulator over HTTP: ``warm`` (material already unsealed) and ``cold`` (a fresh enclave: KMS
  Decrypt with an attested Recipient first); ``argon2id`` is :func:`stretch_pin` alone, same run.
* ``round_trip`` — the real processes of ``enclavekit up``'s vault (nats-server with per-user authorization, KMS
  emulator, vault enclave, host bridge): one user's ``secret.put`` and ``secret.get`` with a session (no PIN, so
  no Argon2id), sequential, measured at the client.
* ``ops_per_second`` — USERS users enrolled, then every user's client runs ``secret.get`` with its session in a
  loop for a few seconds, all at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from enclavekit.kms import KmsClient
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.services.vault.client import VaultClient
from enclavekit.services.vault.core import VaultCore
from enclavekit.services.vault.guesses import GuessLedger, MemoryReplica
from enclavekit.services.vault.keys import ARGON2, stretch_pin
from enclavekit.services.vault.nats_auth import add_user, credentials
from enclavekit.services.vault.objects import DirectoryObjectStore
from enclavekit.services.vault.sealing import KmsSealer
from enclavekit.services.vault.stack import expected_pcr0, key_policy, load_local, prepare_vault, start_vault
from enclavekit.stack.state import StateDir
from enclavekit.stack.up import Stack


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "n": len(ordered),
    }


async def _unlock(root: Path, rounds: int) -> dict[str, Any]:
    import boto3

    from enclavekit.kms import EmulatorThread, open_service

    sim = root / "sim"
    app = {"vault.py": b"bench"}
    simulator = NsmSimulator(sim, app=app)
    service = open_service(root / "kms", trusted_roots=[load_root(sim)], region="us-east-1")
    with EmulatorThread(service) as emulator:
        secret = "bench"
        kms = boto3.client(
            "kms",
            endpoint_url=emulator.url,
            region_name="us-east-1",
            aws_access_key_id="b",
            aws_secret_access_key=secret,
        )
        key_id = kms.create_key(Policy=key_policy(simulator.pcr(0).hex()))["KeyMetadata"]["KeyId"]
        replicas = [MemoryReplica() for _ in range(3)]

        def enclave() -> VaultCore:
            client = KmsClient.connect(
                simulator.client().attestation,
                region_name="us-east-1",
                endpoint_url=emulator.url,
                aws_access_key_id="b",
                aws_secret_access_key=secret,
            )
            return VaultCore(GuessLedger(replicas), KmsSealer(client, key_id), DirectoryObjectStore(root / "objects"))

        warm = enclave()
        await warm.enroll("bench", "2468")
        warm_ms, cold_ms, argon_ms = [], [], []
        material = bytes(32)
        for _ in range(rounds):
            started = time.perf_counter()
            await warm.unlock("bench", "2468")
            warm_ms.append((time.perf_counter() - started) * 1000)
            cold = enclave()
            started = time.perf_counter()
            await cold.unlock("bench", "2468")
            cold_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            stretch_pin("2468", "bench", material, ARGON2)
            argon_ms.append((time.perf_counter() - started) * 1000)
    service.keystore.close()
    out = {"warm": _stats(warm_ms), "cold": _stats(cold_ms), "argon2id": _stats(argon_ms)}
    out["argon2id_share_of_warm_p50"] = round(out["argon2id"]["p50_ms"] / out["warm"]["p50_ms"], 3)
    out["argon2id_share_of_cold_p50"] = round(out["argon2id"]["p50_ms"] / out["cold"]["p50_ms"], 3)
    out["params"] = ARGON2.name
    return out


@asynccontextmanager
async def running_vault(root: Path, names: list[str]) -> AsyncIterator[list[VaultClient]]:
    """The vault of ``enclavekit up`` (nats-server with per-user authorization, KMS emulator, vault enclaves, host
    bridge), each piece its own process, and one connected client per name; stopped on exit."""
    state = StateDir(root / "state")
    state.create()
    for name in names:
        add_user(state.root, name)
    stack = Stack(state)
    prepare_vault(stack)
    try:
        await stack.start_nats()
        expected_pcr0(state.root)
        await start_vault(stack)
        local = load_local(state.root)
        pcr0 = [bytes.fromhex(p) for p in local["pcr0"]]
        roots = [load_root(state.root)]
        clients = [
            VaultClient(credentials(state.root, n).url(local["nats_url"]), n, pcr0, roots, timeout=300) for n in names
        ]
        for client in clients:
            await client.__aenter__()
        yield clients
        for client in clients:
            await client.__aexit__(None, None, None)
    finally:
        await stack.stop()


async def _through_nats(root: Path, rounds: int, users: int, seconds: float) -> dict[str, Any]:
    async with running_vault(root, [f"user{i:03d}" for i in range(users)]) as clients:
        started = time.perf_counter()
        slots = asyncio.Semaphore(4)  # the enclave stretches 2 PINs at a time; keep its queue short

        async def enroll(client: VaultClient) -> None:
            async with slots:
                await client.enroll("2468")

        await asyncio.gather(*(enroll(c) for c in clients))
        enroll_s = time.perf_counter() - started
        first = clients[0]
        put_ms, get_ms = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            await first.call(
                "secret.put", {"session": first.session, "name": "k", "value": "dmFsdWU=", "critical": False}
            )
            put_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await first.get_secret("k")
            get_ms.append((time.perf_counter() - started) * 1000)
        for client in clients[1:]:
            await client.call(
                "secret.put", {"session": client.session, "name": "k", "value": "dmFsdWU=", "critical": False}
            )
        done = 0
        stop = time.perf_counter() + seconds

        async def loop(client: VaultClient) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await client.get_secret("k")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in clients))
        elapsed = time.perf_counter() - started
    return {
        "round_trip": {"secret_put": _stats(put_ms), "secret_get": _stats(get_ms)},
        "ops_per_second": {
            "users": users,
            "secret_get_per_s": round(done / elapsed, 1),
            "seconds": round(elapsed, 1),
        },
        "enroll_all_s": round(enroll_s, 1),
    }


async def _main(quick: bool, users: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        unlock = await _unlock(root / "unlock", 5 if quick else 20)
        nats_figures = await _through_nats(
            root / "stack", 20 if quick else 200, users or (10 if quick else 100), 3 if quick else 10
        )
    return {"unlock": unlock, **nats_figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and 10 users (about a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--users", type=int, default=None, help="users for ops/s (default 10 with --quick, else 100)")
    args = parser.parse_args()
    figures = asyncio.run(_main(args.quick, args.users))
    if args.json:
        print(json.dumps(figures))
        return
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
