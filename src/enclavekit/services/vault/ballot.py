"""Ballots, the ballot box and the tally: unlinkable per-proposal voting keys, endorsed by a vault enclave.

* **Voting key.** ``HKDF-SHA256(identity seed, salt = SHA-256(proposal id), info = "vote")`` → an Ed25519 private
  key (:func:`voting_key`). The seed is 32 random bytes in the user's encrypted vault state; the same user gets
  the same key for one proposal (so the tally dedups by key) and keys for two proposals that nobody without the
  seed can link.
* **Ballot.** The voting key signs ``proposal_id|vote|timestamp`` (the issue's message; the vote is a choice, which
  holds no ``|``). A vault enclave *endorses* the ballot with its endorser key — an Ed25519 key made at boot, bound
  to the enclave's attestation (``user_data = SHA-256("enclavekit vault ballot endorser v1\\0" ‖ key)``) — over
  ``"enclavekit vault ballot v1\\0" ‖ proposal id ‖ "\\0" ‖ voting key``: only a vault enclave, after checking the
  user's vault and the proposal, can make a voting key count. The host cannot stuff the box with keys it made up.
* **Box.** ``ballots/{proposal}/`` in the vault's object store. While the proposal is open it holds only
  *sealed* ballots (``sealed-{random}``: XChaCha20-Poly1305 under a data key of the box, whose KMS blob is
  ``key-{key id}`` — released by KMS only to the vault image) and the endorsers' attestation documents
  (``endorser-{key}``): the host sees that a user's request wrote *a* ballot, not which key or vote. After the close
  a vault enclave opens them all and writes the clear ballots ``ballot-{voting key}`` at once, in key order, so the
  order and timing of those writes tell nothing about who cast which — and only if the box shows as many valid
  ballots as the ledger counted casts (:func:`ballot_counter`), so that withholding some unmixes nothing.
* **Tally.** Anyone with the box and the vault's PCR0 and roots computes the same results (:func:`tally`,
  :func:`read_box`): the valid ballots (signature, endorsement by a verified endorser, a choice of the proposal, a
  timestamp in its window), one per voting key, as Merkle leaves ``SHA-256(voting key ‖ vote ‖ signature)`` sorted
  by voting key (:mod:`~enclavekit.services.vault.merkle`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclavekit.attestation.nitro import AttestationDocument, NitroPolicy, verify
from enclavekit.services.vault.errors import StateCorrupt, VaultRejected
from enclavekit.services.vault.merkle import InclusionProof, MerkleTree
from enclavekit.services.vault.objects import RESERVED_PREFIX, ObjectStore
from enclavekit.services.vault.proposal import Proposal
from enclavekit.services.vault.state import open_object, seal_object

__all__ = [
    "BALLOT_FORMAT",
    "MAX_BALLOT_BYTES",
    "SEED_SIZE",
    "Ballot",
    "BallotInvalid",
    "Results",
    "ResultsNotReady",
    "ballot_counter",
    "ballot_key",
    "box_key_context",
    "box_key_id",
    "box_key_name",
    "endorsement_message",
    "endorser_binding",
    "endorser_key",
    "leaf_hash",
    "open_sealed",
    "raw_public",
    "read_box",
    "seal_ballot",
    "sealed_name",
    "tally",
    "verify_endorser",
    "vote_message",
    "voting_key",
]

BALLOT_FORMAT: Final = "enclavekit-vault-ballot"
MAX_BALLOT_BYTES: Final = 4 * 1024
MAX_ENDORSER_DOCUMENT: Final = 32 * 1024
SEED_SIZE: Final = 32
MAX_KNOWN: Final = 1_000_000
"""Verified ballot digests an enclave remembers (32 MiB of digests at most)."""
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_HEX128: Final = re.compile(r"[0-9a-f]{128}")


class BallotInvalid(VaultRejected):
    """A ballot that does not parse, or whose signature or endorsement does not verify."""

    code = "ballot_invalid"


class ResultsNotReady(VaultRejected):
    """Results (and proofs) exist only once the proposal has closed."""

    code = "results_not_ready"


def voting_key(seed: bytes, proposal_id: str) -> Ed25519PrivateKey:
    """The user's Ed25519 voting key for one proposal (deterministic; unlinkable across proposals)."""
    if len(seed) != SEED_SIZE:
        raise ValueError("an identity seed is 32 bytes")
    salt = hashlib.sha256(proposal_id.encode()).digest()
    okm = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"vote").derive(seed)
    return Ed25519PrivateKey.from_private_bytes(okm)


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def vote_message(proposal_id: str, vote: str, timestamp: int) -> bytes:
    """``proposal_id|vote|timestamp`` — what the voting key signs."""
    return f"{proposal_id}|{vote}|{timestamp}".encode()


def endorsement_message(proposal_id: str, voting_public: bytes) -> bytes:
    return b"enclavekit vault ballot v1\x00" + proposal_id.encode() + b"\x00" + voting_public


def endorser_binding(endorser_public: bytes) -> bytes:
    """The ``user_data`` of the attestation document that vouches for an endorser key."""
    return hashlib.sha256(b"enclavekit vault ballot endorser v1\x00" + endorser_public).digest()


def leaf_hash(voting_public: bytes, vote: str, signature: bytes) -> bytes:
    """``SHA-256(voting key ‖ vote ‖ signature)``."""
    return hashlib.sha256(voting_public + vote.encode() + signature).digest()


def ballot_key(proposal_id: str, voting_public: bytes) -> str:
    return f"ballots/{proposal_id}/ballot-{voting_public.hex()}"


def endorser_key(proposal_id: str, endorser_public: bytes) -> str:
    return f"ballots/{proposal_id}/endorser-{endorser_public.hex()}"


def sealed_name(proposal_id: str) -> str:
    """A sealed ballot's object: a random name, so that the box says nothing about whose it is."""
    return f"ballots/{proposal_id}/sealed-{secrets.token_hex(16)}"


def box_key_name(proposal_id: str, key_id: str) -> str:
    """The KMS blob of a data key sealing ballots of one proposal (``key_id``: :func:`box_key_id` of the blob)."""
    return f"ballots/{proposal_id}/key-{key_id}"


def box_key_id(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:32]


def ballot_counter(proposal_id: str) -> str:
    """The guess-ledger entry that counts a proposal's ballots (a name no user can have: ``objects.check_user``)."""
    return RESERVED_PREFIX + "box-" + hashlib.sha256(proposal_id.encode()).hexdigest()[:32]


def box_key_context(proposal_id: str) -> dict[str, str]:
    """The KMS encryption context of a proposal's ballot-box keys."""
    return {"enclavekit:service": "vault", "enclavekit:ballot-box": proposal_id}


def _sealed_ad(proposal_id: str, key_id: str) -> bytes:
    return b"enclavekit vault sealed ballot v1\x00" + proposal_id.encode() + b"\x00" + key_id.encode()


def seal_ballot(key: bytes, key_id: str, ballot: Ballot) -> bytes:
    """``{"key", "box"}``: the ballot under a data key of the proposal's box (until the close)."""
    box = seal_object(key, _sealed_ad(ballot.proposal, key_id), ballot.to_bytes())
    return json.dumps({"key": key_id, "box": base64.b64encode(box).decode()}).encode()


def open_sealed(data: bytes, proposal_id: str, keys: Mapping[str, bytes]) -> Ballot:
    """The ballot in a sealed object, given the box's data keys by key id; :class:`BallotInvalid` otherwise."""
    try:
        if len(data) > 2 * MAX_BALLOT_BYTES:
            raise ValueError("too large")
        raw = json.loads(data)
        key_id = str(raw["key"])
        box = base64.b64decode(raw["box"], validate=True)
        key = keys[key_id]
    except (ValueError, KeyError, TypeError) as exc:
        raise BallotInvalid("a sealed ballot does not parse, or its key is unknown") from exc
    try:
        ballot = Ballot.from_bytes(open_object(key, _sealed_ad(proposal_id, key_id), box))
    except StateCorrupt as exc:
        raise BallotInvalid("a sealed ballot does not open under its key") from exc
    if ballot.proposal != proposal_id:
        raise BallotInvalid("a sealed ballot names another proposal")
    return ballot


def _verify(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Ballot:
    """One vote as stored in the box and listed in the results."""

    proposal: str
    voting_key: bytes
    vote: str
    timestamp: int
    signature: bytes
    endorser: bytes
    endorsement: bytes

    @classmethod
    def cast(
        cls, proposal: Proposal, key: Ed25519PrivateKey, vote: str, timestamp: int, endorser: Ed25519PrivateKey
    ) -> Ballot:
        """Sign ``vote`` with the voting key and endorse the key (inside the vault enclave)."""
        public = raw_public(key)
        return cls(
            proposal.id,
            public,
            vote,
            timestamp,
            key.sign(vote_message(proposal.id, vote, timestamp)),
            raw_public(endorser),
            endorser.sign(endorsement_message(proposal.id, public)),
        )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the whole ballot (what :func:`tally` remembers as verified)."""
        return hashlib.sha256(self.to_bytes()).digest()

    @property
    def leaf(self) -> bytes:
        return leaf_hash(self.voting_key, self.vote, self.signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BALLOT_FORMAT,
            "version": 1,
            "proposal": self.proposal,
            "voting_key": self.voting_key.hex(),
            "vote": self.vote,
            "timestamp": self.timestamp,
            "signature": self.signature.hex(),
            "endorser": self.endorser.hex(),
            "endorsement": self.endorsement.hex(),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, value: Any) -> Ballot:
        """Parse (not verify) a ballot; :class:`BallotInvalid` for anything malformed."""
        fields = {"format", "version", "proposal", "voting_key", "vote", "timestamp", "signature"}
        fields |= {"endorser", "endorsement"}
        if not isinstance(value, dict) or set(value) - {"hash"} != fields:
            raise BallotInvalid(f"a ballot has exactly {', '.join(sorted(fields))}")
        if value["format"] != BALLOT_FORMAT or value["version"] != 1:
            raise BallotInvalid(f"expected format {BALLOT_FORMAT!r} version 1")
        hexes = {name: value[name] for name in ("voting_key", "endorser", "signature", "endorsement")}
        if not all(isinstance(v, str) for v in hexes.values()) or not (
            _HEX64.fullmatch(hexes["voting_key"])
            and _HEX64.fullmatch(hexes["endorser"])
            and _HEX128.fullmatch(hexes["signature"])
            and _HEX128.fullmatch(hexes["endorsement"])
        ):
            raise BallotInvalid("keys are 64 and signatures 128 lower-case hex digits")
        if not isinstance(value["proposal"], str) or not isinstance(value["vote"], str) or not value["vote"]:
            raise BallotInvalid("proposal and vote are text")
        if type(value["timestamp"]) is not int:
            raise BallotInvalid("timestamp is an integer")
        return cls(
            value["proposal"],
            bytes.fromhex(hexes["voting_key"]),
            value["vote"],
            value["timestamp"],
            bytes.fromhex(hexes["signature"]),
            bytes.fromhex(hexes["endorser"]),
            bytes.fromhex(hexes["endorsement"]),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Ballot:
        if len(data) > MAX_BALLOT_BYTES:
            raise BallotInvalid(f"a ballot is at most {MAX_BALLOT_BYTES} bytes")
        try:
            return cls.from_json(json.loads(data))
        except ValueError as exc:
            raise BallotInvalid("a ballot is JSON") from exc

    def verify(self, proposal: Proposal, endorsers: Iterable[bytes]) -> Ballot:
        """This ballot, if it counts for ``proposal``: one of its choices, cast inside its window, signed by its
        voting key and endorsed by one of ``endorsers`` (verified endorser keys); :class:`BallotInvalid` if not."""
        if self.proposal != proposal.id or self.vote not in proposal.choices:
            raise BallotInvalid("the ballot is for another proposal or another choice")
        if not proposal.opens_at <= self.timestamp < proposal.closes_at:
            raise BallotInvalid("the ballot was cast outside the proposal's window")
        if self.endorser not in set(endorsers):
            raise BallotInvalid("the ballot's endorser is not a verified vault enclave key")
        if not _verify(self.endorser, self.endorsement, endorsement_message(self.proposal, self.voting_key)):
            raise BallotInvalid("the endorsement does not verify")
        if not _verify(self.voting_key, self.signature, vote_message(self.proposal, self.vote, self.timestamp)):
            raise BallotInvalid("the voting key's signature does not verify")
        return self


@dataclass(frozen=True, slots=True)
class Results:
    """A proposal's tally: counted ballots sorted by voting key, their tree, the counts per choice."""

    proposal: Proposal
    ballots: tuple[Ballot, ...]
    tree: MerkleTree
    rejected: int

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.proposal.choices, 0)
        for ballot in self.ballots:
            counts[ballot.vote] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """``{"proposal", "root", "counts", "leaves"}``; each leaf is the ballot and its ``hash``."""
        return {
            "proposal": self.proposal.id,
            "root": self.tree.root.hex(),
            "counts": self.counts,
            "leaves": [{**b.to_json(), "hash": b.leaf.hex()} for b in self.ballots],
        }

    def proof_for(self, voting_public: bytes) -> InclusionProof | None:
        """The inclusion proof of the ballot of this voting key, or None when the tally holds none."""
        for index, ballot in enumerate(self.ballots):  # sorted: a bisect would do, but a proof is per request
            if ballot.voting_key == voting_public:
                return self.tree.proof(index)
        return None


def tally(
    proposal: Proposal, ballots: Iterable[Ballot], endorsers: Iterable[bytes], *, known: set[bytes] | None = None
) -> Results:
    """Count the ballots that verify, one per voting key (if a key appears twice, the earliest ballot — then the
    smallest signature — counts: deterministic, and a replayed or restored vote never counts twice).

    ``known``: digests of (proposal, ballot) pairs that already verified — their two signatures are not checked
    again (an enclave re-tallies the box for every proof); new ones are added."""
    trusted = frozenset(endorsers)
    kept: dict[bytes, Ballot] = {}
    rejected = 0
    scope = hashlib.sha256(proposal.signing_bytes()).digest()
    for ballot in ballots:
        digest = hashlib.sha256(scope + ballot.digest).digest() if known is not None else b""
        try:
            if known is None or digest not in known or ballot.endorser not in trusted:
                ballot.verify(proposal, trusted)
                if known is not None and len(known) < MAX_KNOWN:
                    known.add(digest)
        except BallotInvalid:
            rejected += 1
            continue
        held = kept.get(ballot.voting_key)
        if held is None or (ballot.timestamp, ballot.signature) < (held.timestamp, held.signature):
            kept[ballot.voting_key] = ballot
    ordered = tuple(kept[key] for key in sorted(kept))
    return Results(proposal, ordered, MerkleTree([b.leaf for b in ordered]), rejected)


def verify_endorser(document: bytes, endorser_public: bytes, *, pcr0: Sequence[bytes], roots: Sequence[bytes]) -> None:
    """Raise unless ``document`` is an attestation by a vault enclave (one of ``pcr0``, under ``roots``) that binds
    ``endorser_public``. Checked at the document's own time: an endorser key stays valid after its enclave's
    certificate expires (it was made inside a genuine enclave; that is what counts)."""
    if len(document) > MAX_ENDORSER_DOCUMENT:
        raise BallotInvalid("an endorser document is at most 32 KiB")
    made = AttestationDocument.from_bytes(document).timestamp
    policy = NitroPolicy(
        measurements=[{0: p} for p in pcr0], roots=tuple(roots), user_data=endorser_binding(endorser_public)
    )
    verify(document, policy, now=made)


async def read_box(
    objects: ObjectStore,
    proposal: Proposal,
    check_endorser: Callable[[bytes, bytes], Awaitable[bool]],
    *,
    known: set[bytes] | None = None,
) -> Results:
    """The tally of the ballot box of ``proposal`` in ``objects``. ``check_endorser(document, key)`` says whether
    an endorser document verifies (the caller caches and uses :func:`verify_endorser`); ``known`` as for
    :func:`tally`."""
    prefix = f"ballots/{proposal.id}/"
    ballots: list[Ballot] = []
    endorsers: set[bytes] = set()
    unreadable = 0
    for name in await objects.list(prefix):
        leaf = name.removeprefix(prefix)
        data = await objects.get(name)
        if data is None:
            continue
        if leaf.startswith("endorser-") and _HEX64.fullmatch(leaf.removeprefix("endorser-")):
            key = bytes.fromhex(leaf.removeprefix("endorser-"))
            if await check_endorser(data, key):
                endorsers.add(key)
        elif leaf.startswith("ballot-"):
            try:
                ballot = Ballot.from_bytes(data)
            except BallotInvalid:
                unreadable += 1
                continue
            if leaf != f"ballot-{ballot.voting_key.hex()}":
                unreadable += 1
                continue
            ballots.append(ballot)
    results = tally(proposal, ballots, endorsers, known=known)
    return Results(results.proposal, results.ballots, results.tree, results.rejected + unreadable)
