"""vault: unlock cost (and Argon2id's share of it), secret put/get round trip through NATS and the enclave, and
operations per second with many users.

    python3 dev.py run python benchmarks/vault.py [--quick] [--json]

* ``unlock`` — :meth:`VaultCore.unlock` in process, production Argon2id (t=3, 64 MiB), ledger of 3 in-memory
  replicas, KMS emulator over HTTP: ``warm`` (material already unsealed) and ``cold`` (a fresh enclave: KMS
  Decrypt with an attested Recipient first); ``argon2id`` is :func:`stretch_pin` alone, same run.
* ``round_trip`` — the real processes of ``enclavekit up``'s vault (nats-server with per-user authorization, KMS
  emulator, vault enclave, host bridge): one user's ``secret.put`` and ``secret.get`` with a session (no PIN, so
  no Argon2id), sequential, measured at the client.
* ``recovery`` (``--recovery``, alone) — in process as ``unlock``: enrollment without and with the backup key, and
  each recovery step (start, a device's cancel on a cold enclave, token, complete with the new PIN's Argon2id).
* ``ops_per_second`` — USERS users enrolled (each with its own invitation code), then every user's client runs
  ``secret.get`` with its session in a loop for a few seconds, all at once.
* ``invitation`` — what an invitation adds to an enrollment, in process: parsing the code and checking the
  operator's Ed25519 signature (``verify``), and :func:`admit` whole (that, plus the two majority rounds that record
  the single use) over a ledger of 3 in-memory replicas. ``--invitation-only`` runs just this part.
* ``workers`` — the enclave's per-user worker pool (``workers.py``) with its default 64 MiB bound: how many workers
  it holds idle and with one open session each (real unlocked keys), the memory tracemalloc measures for them
  against what the pool counts, and the cost of an eviction at the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.client.identity import load as load_identity
from enclavekit.kms import KmsClient
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.services.vault.backup import Backup
from enclavekit.services.vault.client import VaultClient
from enclavekit.services.vault.core import VaultCore
from enclavekit.services.vault.guesses import GuessLedger, MemoryReplica
from enclavekit.services.vault.invitation import admit, issue, parse_code
from enclavekit.services.vault.keys import ARGON2, stretch_pin
from enclavekit.services.vault.nats_auth import add_user, credentials
from enclavekit.services.vault.objects import DirectoryObjectStore
from enclavekit.services.vault.recovery import RecoveryDesk, add_device, cancel_message
from enclavekit.services.vault.sealing import KmsSealer
from enclavekit.services.vault.stack import (
    expected_pcr0,
    key_policy,
    load_local,
    operator_key_path,
    prepare_vault,
    start_vault,
)
from enclavekit.stack.state import StateDir
from enclavekit.stack.up import Stack


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "n": len(ordered),
    }


@contextlib.contextmanager
def _in_process(root: Path) -> Iterator[Callable[..., VaultCore]]:
    """A KMS emulator over HTTP, a simulated vault image with a key bound to its PCR0, 3 in-memory replicas; yields
    a factory of (re)started vault enclaves (``backup=True``: keeping a backup, as the real enclave does)."""
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

        def enclave(*, backup: bool = False) -> VaultCore:
            client = KmsClient.connect(
                simulator.client().attestation,
                region_name="us-east-1",
                endpoint_url=emulator.url,
                aws_access_key_id="b",
                aws_secret_access_key=secret,
            )
            objects = DirectoryObjectStore(root / "objects")
            core = VaultCore(GuessLedger(replicas), KmsSealer(client, key_id), objects)
            if backup:
                core.backup = Backup(objects, KmsSealer(client, key_id, purpose="backup"))
            return core

        yield enclave
    service.keystore.close()


async def _unlock(root: Path, rounds: int) -> dict[str, Any]:
    with _in_process(root) as enclave:
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
    out = {"warm": _stats(warm_ms), "cold": _stats(cold_ms), "argon2id": _stats(argon_ms)}
    out["argon2id_share_of_warm_p50"] = round(out["argon2id"]["p50_ms"] / out["warm"]["p50_ms"], 3)
    out["argon2id_share_of_cold_p50"] = round(out["argon2id"]["p50_ms"] / out["cold"]["p50_ms"], 3)
    out["params"] = ARGON2.name
    return out


async def _recovery(root: Path, rounds: int) -> dict[str, Any]:
    """Enrollment without and with the backup (one more KMS data key and object), and each recovery step."""
    with _in_process(root) as enclave:
        plain, backed = enclave(), enclave(backup=True)
        enroll_ms, enroll_backup_ms, start_ms, cancel_ms, token_ms, complete_ms = [], [], [], [], [], []
        device = ClientIdentityKey.generate()
        for n in range(rounds):
            started = time.perf_counter()
            await plain.enroll(f"plain{n}", "2468")
            enroll_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            unlocked = await backed.enroll(f"backed{n}", "2468")
            enroll_backup_ms.append((time.perf_counter() - started) * 1000)
            await add_device(backed.store(unlocked), device.public_key)
            desk = RecoveryDesk(enclave(backup=True), delay=1)  # a cold enclave: the backup key is unsealed
            status, _ = await desk.start(f"backed{n}", now=0)
            started = time.perf_counter()
            signature = device.sign(cancel_message(f"backed{n}", status.number))
            await desk.cancel(f"backed{n}", device=device.public_key, signature=signature)
            cancel_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            _, claim = await desk.start(f"backed{n}", now=10)
            start_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            token, _ = await desk.token(f"backed{n}", claim, now=11)
            token_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await desk.complete(f"backed{n}", token, "975310", now=11)
            complete_ms.append((time.perf_counter() - started) * 1000)
    return {
        "enroll": _stats(enroll_ms),
        "enroll_with_backup": _stats(enroll_backup_ms),
        "recover_start": _stats(start_ms),
        "recover_cancel_by_device_cold": _stats(cancel_ms),
        "recover_token": _stats(token_ms),
        "recover_complete": _stats(complete_ms),
        "params": ARGON2.name,
    }


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


def invitation(root: Path, user: str) -> str:
    """An invitation code for ``user`` from the operator key of the vault :func:`running_vault` runs in ``root``."""
    operator = load_identity(operator_key_path(root / "state"))
    return issue(operator, ttl=3600, now=time.time(), user=user)[1]


async def _through_nats(root: Path, rounds: int, users: int, seconds: float) -> dict[str, Any]:
    async with running_vault(root, [f"user{i:03d}" for i in range(users)]) as clients:
        started = time.perf_counter()
        slots = asyncio.Semaphore(4)  # the enclave stretches 2 PINs at a time; keep its queue short

        async def enroll(client: VaultClient) -> None:
            async with slots:
                await client.enroll("2468", invitation=invitation(root, client.user))

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


def _workers(count: int) -> dict[str, Any]:
    import tracemalloc

    from enclavekit.services.vault.core import Unlocked
    from enclavekit.services.vault.guesses import GuessEntry
    from enclavekit.services.vault.keys import derive_keys
    from enclavekit.services.vault.workers import SESSION_BYTES, WORKER_BYTES, WorkerPool

    pool = WorkerPool()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        user = f"user-{i:07d}"
        keys = derive_keys(i.to_bytes(32, "big"), bytes(32), user, 1, epoch="ab" * 16)
        entry = GuessEntry(attempts={"slot": 1}, cleared={"slot": 1}, generation=1)
        pool.get(user).open_session(Unlocked(user, keys, entry), now=0.0)
    measured = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    full = WorkerPool(max_bytes=1000 * WORKER_BYTES)
    for i in range(1000):
        full.get(f"user-{i}")
    started = time.perf_counter()
    for i in range(1000, 1000 + count):
        full.get(f"user-{i}")
    per_eviction = (time.perf_counter() - started) / count
    return {
        "bound_mib": pool.max_bytes // (1024 * 1024),
        "held_idle": pool.max_bytes // WORKER_BYTES,
        "held_with_a_session": pool.max_bytes // (WORKER_BYTES + SESSION_BYTES),
        "measured_bytes_per_worker_with_a_session": round(measured / count),
        "counted_bytes_per_worker_with_a_session": WORKER_BYTES + SESSION_BYTES,
        "eviction_us": round(per_eviction * 1e6, 2),
    }


async def _invitation(rounds: int) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    operator = ClientIdentityKey.generate()
    public = Ed25519PublicKey.from_public_bytes(operator.public_key)

    def require(message: bytes, signature: bytes) -> bytes:
        public.verify(signature, message)
        return operator.public_key

    ledger = GuessLedger([MemoryReplica() for _ in range(3)])
    verify_ms, admit_ms = [], []
    for n in range(rounds):
        _, code = issue(operator, ttl=3600, now=time.time())
        started = time.perf_counter()
        _, message, signature = parse_code(code)
        require(message, signature)
        verify_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await admit(code, user=f"user{n}", now=time.time(), require_signature=require, ledger=ledger)
        admit_ms.append((time.perf_counter() - started) * 1000)
    return {"verify": _stats(verify_ms), "admit": _stats(admit_ms), "code_chars": len(code)}


async def _main(quick: bool, users: int | None, recovery: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if recovery:
            return {"recovery": await _recovery(root / "recovery", 5 if quick else 20)}
        unlock = await _unlock(root / "unlock", 5 if quick else 20)
        nats_figures = await _through_nats(
            root / "stack", 20 if quick else 200, users or (10 if quick else 100), 3 if quick else 10
        )
    return {
        "unlock": unlock,
        **nats_figures,
        "invitation": await _invitation(200 if quick else 2000),
        "workers": _workers(2_000 if quick else 20_000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and 10 users (about a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--users", type=int, default=None, help="users for ops/s (default 10 with --quick, else 100)")
    parser.add_argument("--invitation-only", action="store_true", help="only the invitation figures (seconds)")
    parser.add_argument("--recovery", action="store_true", help="only the backup and recovery figures (in process)")
    args = parser.parse_args()
    if args.invitation_only:
        figures = {"invitation": asyncio.run(_invitation(2000))}
    else:
        figures = asyncio.run(_main(args.quick, args.users, args.recovery))
    if args.json:
        print(json.dumps(figures))
        return
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
