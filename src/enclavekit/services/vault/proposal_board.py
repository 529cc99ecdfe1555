"""The public side of voting (host, untrusted): where proposals are published and results are computed.

Proposals are public and signed by an operator key, so the board is a plain folder
(``STATE/vault/proposals/{id}.json``): a host that edits one breaks its signature and the vault refuses it. Results
are not taken from anyone's word: :func:`box_results` recomputes the tally from the public ballot box
(``STATE/vault/objects/ballots/{id}/``) — checking every ballot's signature and endorsement and every endorser's
attestation against the vault's PCR0 and roots — exactly as the vault enclave does for a voter's proof, so the
root a voter's proof leads to is the root anyone computes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from enclavekit.errors import Error
from enclavekit.services.vault.ballot import Results, ResultsNotReady, read_box, verify_endorser
from enclavekit.services.vault.objects import ObjectStore
from enclavekit.services.vault.proposal import ProposalInvalid, SignedProposal
from enclavekit.stack.files import write_private

__all__ = ["box_results", "list_proposals", "load_proposal", "proposals_dir", "publish_proposal"]


def proposals_dir(state: Path) -> Path:
    return state / "vault" / "proposals"


def publish_proposal(state: Path, signed: SignedProposal) -> Path:
    """Write ``signed`` to the board (refusing to overwrite another proposal of the same id)."""
    path = proposals_dir(state) / f"{signed.proposal.id}.json"
    if path.exists() and SignedProposal.from_json(path.read_bytes()) != signed:
        raise ProposalInvalid(f"a proposal {signed.proposal.id} is already published")
    write_private(path, json.dumps(signed.to_json(), indent=2).encode())
    path.chmod(0o644)  # public
    return path


def load_proposal(state: Path, proposal_id: str) -> SignedProposal:
    """The published proposal ``proposal_id`` (:class:`ProposalInvalid` when there is none or it is malformed)."""
    path = proposals_dir(state) / f"{proposal_id}.json"
    if "/" in proposal_id or proposal_id.startswith(".") or not path.is_file():
        raise ProposalInvalid(f"no published proposal {proposal_id!r}")
    return SignedProposal.from_json(path.read_bytes())


def list_proposals(state: Path) -> list[SignedProposal]:
    """Every well-formed proposal on the board, by opening time (malformed files are skipped)."""
    found = []
    for path in sorted(proposals_dir(state).glob("*.json")):
        try:
            found.append(SignedProposal.from_json(path.read_bytes()))
        except Error:
            continue
    return sorted(found, key=lambda s: (s.proposal.opens_at, s.proposal.id))


async def box_results(
    objects: ObjectStore, signed: SignedProposal, *, pcr0: Sequence[bytes], roots: Sequence[bytes], now: float
) -> Results:
    """The results of a closed proposal, recomputed from its public ballot box (anyone can: the box, the vault's
    PCR0 and its attestation roots are all it takes)."""
    proposal = signed.proposal
    if now < proposal.closes_at:
        raise ResultsNotReady(f"proposal {proposal.id} closes at {proposal.closes_at}")

    async def check(document: bytes, key: bytes) -> bool:
        try:
            await asyncio.to_thread(verify_endorser, document, key, pcr0=pcr0, roots=roots)
        except Error:
            return False
        return True

    return await read_box(objects, proposal, check)
