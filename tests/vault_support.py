"""Shared pieces of the vault tests: a simulated vault enclave with a real KMS emulator and key policy."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from enclavekit.kms import KmsClient, RunningEmulator
from enclavekit.nsm import NsmSimulator
from enclavekit.services.vault.core import VaultCore
from enclavekit.services.vault.guesses import (
    GuessEntry,
    GuessLedger,
    GuessReplica,
    MemoryReplica,
    Proposal,
    Replica,
    View,
)
from enclavekit.services.vault.keys import UNSAFE_TEST_ARGON2
from enclavekit.services.vault.objects import DirectoryObjectStore
from enclavekit.services.vault.sealing import KmsSealer
from tests.test_kms_fixtures import REGION, boto3_kms, emulator_for, enclave_only_policy, simulated_enclave

VAULT_APP = {"vault.py": b"the vault enclave image\n"}


def members(n: int = 3) -> list[MemoryReplica]:
    """``n`` ready replicas, the members of one genesis view (as ``n`` enclaves that booted together)."""
    replicas = [MemoryReplica(GuessReplica(ready=True)) for _ in range(n)]
    view = View(1, frozenset(r.identity for r in replicas))
    for replica in replicas:
        replica.replica.view = view
    return replicas


def answers(*ready: MemoryReplica) -> dict[str, tuple[View | None, dict[str, GuessEntry]]]:
    """What ready replicas answer a booting one (``vault.ledger.snapshot``): boot identity → (view, entries)."""
    return {r.identity: (r.replica.view, r.replica.snapshot()) for r in ready}


def join(
    new: MemoryReplica,
    ready: Sequence[MemoryReplica],
    booting: Sequence[str] = (),
    *,
    replicas: int = 3,
    quorum: int = 2,
) -> bool:
    """One round of ``ledger_peers.catch_up`` for the booting ``new``, with the peers the host lets it reach: plan,
    and if that is a proposal, ask the reachable acceptors (each accepts once per view) and finish."""
    plan = new.replica.plan(answers(*ready), set(booting), own=new.identity, replicas=replicas, quorum=quorum)
    if not isinstance(plan, Proposal):
        return plan
    replaced = next(iter(plan.view.members - plan.successor.members))
    accepted: dict[str, tuple[View | None, dict[str, GuessEntry]]] = {}
    for peer in ready:
        if peer.identity in plan.acceptors and peer.replica.view == plan.view:
            view = peer.replica.accept(plan.view, new.identity, replaced, own=peer.identity)
            accepted[peer.identity] = (view, peer.replica.snapshot())
    return new.replica.joined(plan, accepted, own=new.identity, quorum=quorum)


@dataclass
class VaultWorld:
    """One KMS, one simulated vault image, the host's object folder and the ledger replicas."""

    sim_state: Path
    objects_dir: Path
    emulator: RunningEmulator
    key_id: str
    replicas: list[Replica]

    def kms_client(self, app: dict[str, bytes] = VAULT_APP) -> KmsClient:
        simulator = simulated_enclave(self.sim_state, app)
        return KmsClient.connect(
            simulator.client().attestation,
            region_name=REGION,
            endpoint_url=self.emulator.url,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def enclave(self, app: dict[str, bytes] = VAULT_APP) -> VaultCore:
        """A (re)started vault enclave: fresh memory, same replicas, same host storage."""
        return VaultCore(
            GuessLedger(self.replicas),
            KmsSealer(self.kms_client(app), self.key_id),
            DirectoryObjectStore(self.objects_dir),
            argon2=UNSAFE_TEST_ARGON2,
        )

    def snapshot(self, where: Path) -> None:
        shutil.copytree(self.objects_dir, where)

    def restore(self, where: Path) -> None:
        shutil.rmtree(self.objects_dir)
        shutil.copytree(where, self.objects_dir)


@contextlib.contextmanager
def vault_world(tmp_path: Path, replicas: Sequence[Replica] | None = None) -> Iterator[VaultWorld]:
    sim_state = tmp_path / "sim"
    pcr0 = NsmSimulator(sim_state, app=VAULT_APP).pcr(0).hex()
    with emulator_for(tmp_path / "kms", trust=[sim_state]) as running:
        kms = boto3_kms(running.url)
        key_id = kms.create_key(Policy=enclave_only_policy(pcr0))["KeyMetadata"]["KeyId"]
        objects = tmp_path / "objects"
        objects.mkdir()
        yield VaultWorld(sim_state, objects, running, key_id, list(replicas or members()))


def invite(state: Path, user: str | None = None, *, ttl: float = 3600.0, now: float | None = None) -> str:
    """An invitation code signed with the stack's operator key (``STATE/vault/operator.key``), as the operator's
    ``enclavekit vault invite create`` makes one (and recorded, without the code, in the operator's registry)."""
    import time

    from enclavekit.client.identity import load
    from enclavekit.services.vault.invitation import issue
    from enclavekit.services.vault.members import MemberRegistry
    from enclavekit.services.vault.stack import operator_key_path

    moment = time.time() if now is None else now
    invitation, code = issue(load(operator_key_path(state)), ttl=ttl, now=moment, user=user)
    registry = MemberRegistry.open(state)
    try:
        registry.add_invitation(invitation, created_at=moment)
    finally:
        registry.close()
    return code
