"""``vote.cast`` ``{pin|session, proposal, choice}``, ``vote.proof`` ``{pin|session, proposal}`` and
``vote.results`` ``{proposal}`` — ``proposal`` is the operator-signed document
(:class:`~enclavekit.services.vault.proposal.SignedProposal`), checked against the measured operator keys.

Casting: the proposal must be open by this enclave's clock and offer the choice; the user's identity seed (32
random bytes in the encrypted vault state, made on the first vote, re-encrypted with the rest on a PIN change)
gives the voting key; the ballot, endorsed by this enclave's endorser key, goes to the box *sealed* (under a KMS
data key only the vault image can open) until the close, and the state records the vote. A second vote on a
proposal is **refused** (``already_voted``) by the state; should the host roll the state back, the voting key is
the same and the tally counts one ballot per key. Each cast is counted in the guess ledger (at a majority) before
its ballot is written. After the close, the first results or proof opens the box — if it shows as many valid
ballots as were counted (``box_incomplete`` otherwise: withheld or dropped ballots). A proof re-derives the key,
tallies the box and returns the path of the user's leaf (``ballot_not_counted`` when a complete box lacks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.errors import Error
from enclavekit.services.vault.ballot import (
    SEED_SIZE,
    Ballot,
    BallotInvalid,
    Results,
    ResultsNotReady,
    ballot_counter,
    ballot_key,
    box_key_context,
    box_key_id,
    box_key_name,
    endorser_binding,
    endorser_key,
    open_sealed,
    raw_public,
    read_box,
    seal_ballot,
    sealed_name,
    verify_endorser,
    voting_key,
)
from enclavekit.services.vault.errors import VaultRejected
from enclavekit.services.vault.operations import BadPayload, Handler, Request
from enclavekit.services.vault.proposal import Proposal, SignedProposal
from enclavekit.services.vault.sealing import KmsSealer
from enclavekit.services.vault.secret_store import SecretStore

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave
    from enclavekit.services.vault.state import VaultStore

__all__ = ["OPERATIONS", "AlreadyVoted", "BallotNotCounted", "BoxIncomplete", "Endorser", "NotVoted"]

CheckEndorser = Callable[[bytes, bytes], Awaitable[bool]]

MAX_VERIFIED_ENDORSERS: Final = 4096
MAX_OPEN_PROPOSALS: Final = 256
MAX_OPENED_KEYS: Final = 4096


class AlreadyVoted(VaultRejected):
    """One vote per user per proposal: a second is refused."""

    code = "already_voted"


class NotVoted(VaultRejected):
    """A proof was asked for a proposal this vault cast no vote on."""

    code = "not_voted"


class BoxIncomplete(VaultRejected):
    """The box shows fewer valid ballots than the ledger counted casts: ballots were withheld or removed. Nothing is
    opened (a partial opening would unmix the ballots shown); results wait until the host serves the whole box."""

    code = "box_incomplete"


class BallotNotCounted(VaultRejected):
    """The user voted, but the box the host serves has no valid ballot of the user's key: it was dropped."""

    code = "ballot_not_counted"


@dataclass
class Endorser:
    """This enclave's endorser key (made at boot, memory only), the proposals whose box already holds its
    attestation document, and the endorser keys of other boots it has verified."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    published: set[str] = field(default_factory=set)
    verified: set[bytes] = field(default_factory=set)
    box_keys: dict[str, tuple[str, bytes]] = field(default_factory=dict, repr=False)
    """This boot's data key per proposal, sealing its ballots until the close (memory; the blob is in the box)."""
    opened_keys: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    """Data keys of the boxes already released by KMS, by SHA-256 of their blob."""
    known: set[bytes] = field(default_factory=set)
    """Digests of ballots whose signatures verified (any proposal: the digest covers the proposal id)."""

    @property
    def public(self) -> bytes:
        return raw_public(self.key)


def _proposal(vault: VaultEnclave, request: Request) -> Proposal:
    if vault.config is None:
        raise VaultRejected("the vault enclave has not booted")
    if "proposal" not in request.payload:
        raise BadPayload("proposal is the operator-signed proposal document")
    return SignedProposal.from_json(request.payload["proposal"]).verify(vault.config.require_operator_signature)


def _voting_meta(store: VaultStore) -> dict[str, Any]:
    assert store.index is not None
    meta: dict[str, Any] = json.loads(json.dumps(store.index.meta))  # a deep copy to change
    return meta


def _kms(vault: VaultEnclave) -> KmsSealer:
    sealer = vault.require_core().sealer
    if not isinstance(sealer, KmsSealer):
        raise VaultRejected("ballots are sealed with the vault's KMS key, and this vault has none")
    return sealer


async def _box_key(vault: VaultEnclave, proposal_id: str) -> tuple[str, bytes]:
    """This boot's data key for the proposal's ballots: made by KMS on the first vote (its blob and the endorser's
    attestation document go to the box), then kept in memory."""
    endorser = vault.endorser
    key = endorser.box_keys.get(proposal_id)
    if key is not None:
        return key
    objects, sealer = vault.require_core().objects, _kms(vault)
    if proposal_id not in endorser.published:
        assert vault._context is not None
        document = await vault._context.attest(user_data=endorser_binding(endorser.public))
        await objects.put(endorser_key(proposal_id, endorser.public), document)
        endorser.published.add(proposal_id)
    made = await asyncio.to_thread(
        sealer.kms.generate_data_key,
        sealer.key_id,
        key_spec=None,
        number_of_bytes=32,
        encryption_context=box_key_context(proposal_id),
    )
    key_id = box_key_id(made.ciphertext_blob)
    await objects.put(box_key_name(proposal_id, key_id), made.ciphertext_blob)
    if len(endorser.box_keys) >= MAX_OPEN_PROPOSALS:  # a proposal evicted here gets another key: both are opened
        endorser.box_keys.pop(next(iter(endorser.box_keys)))
    endorser.box_keys[proposal_id] = (key_id, made.plaintext)
    return key_id, made.plaintext


async def _open_box(vault: VaultEnclave, proposal: Proposal, check: CheckEndorser) -> None:
    """After the close: open every sealed ballot and write the clear ones that are missing (or were replaced), all
    at once and in voting-key order — the host learns the set of ballots, not who cast which. Only if the box holds
    at least as many valid ballots as the ledger counted casts (:class:`BoxIncomplete` otherwise): a host that
    shows a vault part of the sealed ballots, to unmix them, gets nothing written."""
    core = vault.require_core()
    objects = core.objects
    prefix = f"ballots/{proposal.id}/"
    names = await objects.list(prefix)
    keys: dict[str, bytes] = {}
    endorsers: set[bytes] = set()
    existing: list[Ballot] = []
    sealed: list[bytes] = []
    for name in names:
        data = await objects.get(name)
        leaf = name.removeprefix(prefix)
        if data is None:
            continue
        if leaf.startswith("sealed-"):
            sealed.append(data)
        elif leaf.startswith("ballot-"):
            with contextlib.suppress(BallotInvalid):
                existing.append(Ballot.from_bytes(data))
        elif leaf.startswith("endorser-") and len(leaf) == 9 + 64:
            with contextlib.suppress(ValueError):
                if await check(data, bytes.fromhex(leaf.removeprefix("endorser-"))):
                    endorsers.add(bytes.fromhex(leaf.removeprefix("endorser-")))
        elif leaf.startswith("key-") and name == box_key_name(proposal.id, box_key_id(data)):
            opened = await _open_key(vault, proposal.id, data)
            if opened is not None:
                keys[box_key_id(data)] = opened
    clear: dict[bytes, Ballot] = {}
    for data in sealed:
        try:
            ballot = open_sealed(data, proposal.id, keys).verify(proposal, endorsers)
        except BallotInvalid:
            continue
        held = clear.get(ballot.voting_key)
        if held is None or (ballot.timestamp, ballot.signature) < (held.timestamp, held.signature):
            clear[ballot.voting_key] = ballot
    valid = set(clear)
    for ballot in existing:
        with contextlib.suppress(BallotInvalid):
            valid.add(ballot.verify(proposal, endorsers).voting_key)
    entry = await core.ledger.read(ballot_counter(proposal.id))
    cast = sum(entry.attempts.values())
    if len(valid) < cast:
        raise BoxIncomplete(f"the box of {proposal.id} shows {len(valid)} valid ballots; {cast} were cast")
    present = set(names)
    for public in sorted(clear):  # a clear ballot the host removed or replaced is written again
        name, data = ballot_key(proposal.id, public), clear[public].to_bytes()
        if name not in present or await objects.get(name) != data:
            await objects.put(name, data)


async def _open_key(vault: VaultEnclave, proposal_id: str, blob: bytes) -> bytes | None:
    """A box data key, released by KMS to this image (cached), or None when it is not one of this vault's."""
    endorser, sealer = vault.endorser, _kms(vault)
    digest = hashlib.sha256(blob).digest()
    if digest not in endorser.opened_keys:
        try:
            opened = await asyncio.to_thread(
                sealer.kms.decrypt, blob, encryption_context=box_key_context(proposal_id), key_id=sealer.key_id
            )
        except Error:
            return None
        if len(endorser.opened_keys) >= MAX_OPENED_KEYS:
            endorser.opened_keys.pop(next(iter(endorser.opened_keys)))
        endorser.opened_keys[digest] = opened
    return endorser.opened_keys[digest]


def _endorser_check(vault: VaultEnclave) -> CheckEndorser:
    """Whether an endorser document in the box is a vault enclave's (cached): exactly what anyone else checks."""
    context = vault._context
    assert context is not None
    endorser = vault.endorser

    async def check(document: bytes, key: bytes) -> bool:
        if key in endorser.verified:
            return True
        try:
            verify_endorser(document, key, pcr0=[context.pcr0], roots=vault.roots)
        except Error:
            return False
        if len(endorser.verified) < MAX_VERIFIED_ENDORSERS:
            endorser.verified.add(key)
        return True

    return check


async def _results(vault: VaultEnclave, proposal: Proposal, now: float) -> Results:
    if now < proposal.closes_at:
        raise ResultsNotReady(f"proposal {proposal.id} closes at {proposal.closes_at}")
    check = _endorser_check(vault)
    await _open_box(vault, proposal, check)
    return await read_box(vault.require_core().objects, proposal, check, known=vault.endorser.known)


async def cast(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    proposal = _proposal(vault, request)
    proposal.check_open(request.now)
    choice = proposal.check_choice(request.payload.get("choice"))
    opened = await vault.unlock(request)
    core = vault.require_core()
    async with core.ledger.lock(request.user):
        store = core.store(opened.unlocked)
        await store.load()
        meta = _voting_meta(store)
        voting = meta.setdefault("voting", {"seed": secrets.token_bytes(SEED_SIZE).hex(), "cast": {}})
        if proposal.id in voting["cast"]:
            raise AlreadyVoted(f"this vault already voted on {proposal.id}")
        key = voting_key(bytes.fromhex(voting["seed"]), proposal.id)
        counter = ballot_counter(proposal.id)
        async with core.ledger.lock(counter):  # counted before it is written: a crash can only over-count
            await core.ledger.begin_attempt(counter, await core.ledger.read(counter))
        key_id, box_key = await _box_key(vault, proposal.id)
        timestamp = int(request.now)
        ballot = Ballot.cast(proposal, key, choice, timestamp, vault.endorser.key)
        await core.objects.put(sealed_name(proposal.id), seal_ballot(box_key, key_id, ballot))
        voting["cast"][proposal.id] = {"choice": choice, "at": timestamp}
        await store.commit({}, meta)
        head = await SecretStore(store).record("vote.cast", now=request.now, proposal=proposal.id)
    return {
        "proposal": proposal.id,
        "leaf": ballot.leaf.hex(),
        "timestamp": timestamp,
        "audit_head": head,
        "session": opened.session,
    }


async def proof(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    proposal = _proposal(vault, request)
    if request.now < proposal.closes_at:
        raise ResultsNotReady(f"proposal {proposal.id} closes at {proposal.closes_at}")
    opened = await vault.unlock(request)
    index = opened.store.index or await opened.store.load()
    voting = index.meta.get("voting", {})
    if proposal.id not in voting.get("cast", {}):
        raise NotVoted(f"this vault cast no vote on {proposal.id}")
    public = raw_public(voting_key(bytes.fromhex(voting["seed"]), proposal.id))
    results = await _results(vault, proposal, request.now)
    inclusion = results.proof_for(public)
    if inclusion is None:
        raise BallotNotCounted(f"the ballot box of {proposal.id} does not count this vault's ballot")
    return {"proof": inclusion.to_json(), "session": opened.session}


async def results(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    proposal = _proposal(vault, request)
    return (await _results(vault, proposal, request.now)).to_json()


OPERATIONS: Final[dict[str, Handler]] = {"vote.cast": cast, "vote.proof": proof, "vote.results": results}
