"""Voting without a running stack: the Merkle tree and its proofs (checked by an independent verifier written
here with hashlib only), proposals (operator signature, window by an injected clock, bad input), unlinkable voting
keys, and a tally the host cannot stuff, alter or double-count."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from enclavekit.errors import Error
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.services.vault.ballot import (
    Ballot,
    BallotInvalid,
    ballot_key,
    endorser_binding,
    endorser_key,
    leaf_hash,
    open_sealed,
    raw_public,
    read_box,
    seal_ballot,
    tally,
    verify_endorser,
    voting_key,
)
from enclavekit.services.vault.enclave_config import NotAnOperator, VaultEnclaveConfig, vault_config_document
from enclavekit.services.vault.merkle import EMPTY_ROOT, InclusionProof, MerkleTree, ProofInvalid, verify_inclusion
from enclavekit.services.vault.objects import DirectoryObjectStore
from enclavekit.services.vault.proposal import (
    Proposal,
    ProposalInvalid,
    SignedProposal,
    UnknownChoice,
    VotingClosed,
    sign_proposal,
)

# --- an independent implementation of the tree: hashlib only, written from the text -----------


def independent_root(leaves: list[bytes]) -> bytes:
    """Leaves in order; an odd level duplicates its last node; parent = SHA-256(left ‖ right)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = leaves
    while len(level) > 1:
        if len(level) % 2 == 1:
            level = [*level, level[-1]]
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def independent_verify(proof: dict[str, Any], root_hex: str) -> bool:
    """The JSON proof ``{"leaf", "index", "path": [{"hash", "side"}], "root"}`` leads to ``root_hex``."""
    node = bytes.fromhex(proof["leaf"])
    for step in proof["path"]:
        sibling = bytes.fromhex(step["hash"])
        node = hashlib.sha256(sibling + node if step["side"] == "left" else node + sibling).digest()
    return bool(node.hex() == root_hex == proof["root"])


def independent_leaf(leaf: dict[str, Any]) -> str:
    """``SHA-256(voting public key ‖ vote ‖ signature)`` of a published leaf."""
    data = bytes.fromhex(leaf["voting_key"]) + leaf["vote"].encode() + bytes.fromhex(leaf["signature"])
    return hashlib.sha256(data).hexdigest()


def _digests(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(4, "big")).digest() for i in range(n)]


@given(st.integers(min_value=1, max_value=200), st.binary(max_size=8))
@settings(max_examples=60, deadline=None)
def test_every_inclusion_proof_verifies_with_the_independent_verifier(n: int, salt: bytes) -> None:
    leaves = _digests(n, salt)
    tree = MerkleTree(leaves)
    assert tree.root == independent_root(leaves)
    for index in {0, n - 1, n // 2, (n * 7) // 11}:
        proof = tree.proof(index)
        assert proof.leaf == leaves[index]
        verify_inclusion(proof, tree.root)
        assert independent_verify(proof.to_json(), tree.root.hex())
        verify_inclusion(InclusionProof.from_json(json.loads(json.dumps(proof.to_json()))), tree.root)


@given(st.integers(min_value=2, max_value=120), st.data())
@settings(max_examples=60, deadline=None)
def test_a_proof_for_an_altered_leaf_index_path_or_root_is_refused(n: int, data: st.DataObject) -> None:
    leaves = _digests(n)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    good = tree.proof(index)
    stranger = hashlib.sha256(b"stuffed").digest()
    forged = [
        InclusionProof(stranger, good.index, good.path, good.root),  # another leaf, same path
        InclusionProof(good.leaf, good.index, good.path, stranger),  # another root
        InclusionProof(good.leaf, good.index, good.path[:-1], good.root),  # a step short
    ]
    if good.path:
        step = data.draw(st.integers(min_value=0, max_value=len(good.path) - 1))
        flipped = list(good.path)
        original = flipped[step]
        flipped[step] = type(original)(original.hash, "left" if original.side == "right" else "right")
        forged.append(InclusionProof(good.leaf, good.index, tuple(flipped), good.root))
        changed = list(good.path)
        changed[step] = type(original)(hashlib.sha256(original.hash).digest(), original.side)
        forged.append(InclusionProof(good.leaf, good.index, tuple(changed), good.root))
    other = (index + 1) % n
    if leaves[other] != leaves[index] and tree.proof(other).path != good.path:
        forged.append(InclusionProof(good.leaf, other, good.path, good.root))  # claims another position
    for proof in forged:
        with pytest.raises(ProofInvalid):
            verify_inclusion(proof, tree.root)


def test_odd_levels_duplicate_their_last_node_and_no_leaves_is_the_empty_root() -> None:
    a, b, c = _digests(3)
    ab = hashlib.sha256(a + b).digest()
    cc = hashlib.sha256(c + c).digest()
    assert MerkleTree([a, b, c]).root == hashlib.sha256(ab + cc).digest()
    assert MerkleTree([a]).root == a and MerkleTree([a]).proof(0).path == ()
    assert MerkleTree([]).root == EMPTY_ROOT
    assert [s.side for s in MerkleTree([a, b, c]).proof(2).path] == ["right", "left"]  # c's twin, then ab


@pytest.mark.parametrize(
    "proof",
    [
        None,
        [],
        {"leaf": "00", "index": 0, "path": [], "root": "00" * 32},
        {"leaf": "zz" * 32, "index": 0, "path": [], "root": "00" * 32},
        {"leaf": "00" * 32, "index": -1, "path": [], "root": "00" * 32},
        {"leaf": "00" * 32, "index": True, "path": [], "root": "00" * 32},
        {"leaf": "00" * 32, "index": 0, "path": [{"hash": "00" * 32, "side": "up"}], "root": "00" * 32},
        {"leaf": "00" * 32, "index": 0, "path": [{"hash": "00" * 32, "side": "left"}] * 41, "root": "00" * 32},
        {"leaf": "00" * 32, "index": 0, "path": [7], "root": "00" * 32},
    ],
)
def test_malformed_proof_is_proof_invalid_never_a_crash(proof: Any) -> None:
    with pytest.raises(ProofInvalid):
        InclusionProof.from_json(proof)


# --- proposals ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("voting-sim")
    vault_image = NsmSimulator(state, app={"vault.py": b"the vault\n"})
    operator = Ed25519PrivateKey.generate()
    raw = operator.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    config = VaultEnclaveConfig.from_bytes(
        vault_config_document(kms_key_id="k", roots_der=[load_root(state)], operator_keys=(raw,))
    )
    return {"state": state, "image": vault_image, "operator": operator, "config": config}


def _proposal(pid: str = "budget-2027", opens: int = 1_000, closes: int = 2_000) -> Proposal:
    return Proposal(pid, "Adopt the 2027 budget?", ("yes", "no", "abstain"), opens, closes)


def test_proposal_signed_by_a_measured_operator_key_verifies_and_a_forged_one_is_refused(
    operator_world: dict[str, Any],
) -> None:
    config: VaultEnclaveConfig = operator_world["config"]
    signed = sign_proposal(_proposal(), operator_world["operator"].sign)
    published = json.dumps(signed.to_json())
    assert SignedProposal.from_json(published).verify(config.require_operator_signature) == _proposal()
    forged_by_host = sign_proposal(_proposal(), Ed25519PrivateKey.generate().sign)
    with pytest.raises(NotAnOperator):
        forged_by_host.verify(config.require_operator_signature)
    altered = signed.to_json()
    altered["proposal"]["choices"] = ["yes", "no", "yes please"]  # the host edits a published proposal
    with pytest.raises(NotAnOperator):
        SignedProposal.from_json(altered).verify(config.require_operator_signature)
    later = signed.to_json()
    later["proposal"]["closes_at"] = 3_000  # ... or keeps it open longer
    with pytest.raises(NotAnOperator):
        SignedProposal.from_json(later).verify(config.require_operator_signature)


def _document(**changes: Any) -> dict[str, Any]:
    body = _proposal().to_json() | changes
    return {"proposal": body, "signature": "00" * 64}


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        {"proposal": {}},
        {"proposal": _proposal().to_json(), "signature": "00" * 64, "extra": 1},
        _document(format="something-else"),
        _document(version=2),
        _document(id="../etc"),
        _document(id=""),
        _document(title=""),
        _document(title="x" * 201),
        _document(choices=["only"]),
        _document(choices=["yes", "yes"]),
        _document(choices=["a|b", "c"]),
        _document(choices=[f"c{i}" for i in range(17)]),
        _document(choices="yes,no"),
        _document(choices=["yes", 2]),
        _document(opens_at="soon"),
        _document(opens_at=2_000, closes_at=1_000),
        _document(opens_at=True),
        _document(closes_at=10**12),
        {"proposal": _proposal().to_json(), "signature": "zz" * 64},
        {"proposal": _proposal().to_json(), "signature": "00" * 10},
        json.dumps(_document(title="x" * 9000)),
        _document(title="x" * 9000),
    ],
)
def test_malformed_or_oversized_proposal_is_proposal_invalid(document: Any) -> None:
    with pytest.raises(ProposalInvalid):
        SignedProposal.from_json(document)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_json_as_a_proposal_or_ballot_is_a_specific_rejection_never_a_crash(data: st.DataObject) -> None:
    """Arbitrary JSON, alone or in place of one field of a valid document."""
    valid_proposal = sign_proposal(_proposal(), Ed25519PrivateKey.generate().sign).to_json()
    valid_ballot = _box(_proposal(), 1, Ed25519PrivateKey.generate())[0][0].to_json()
    value = data.draw(_JSON)
    field = data.draw(st.sampled_from([None, *sorted(valid_proposal["proposal"])]))
    if field is not None:
        valid_proposal["proposal"][field] = value
        value = valid_proposal
    try:
        parsed = SignedProposal.from_json(value)
    except ProposalInvalid:
        pass
    else:  # a field replaced by a value that is valid there: it parsed into exactly that document
        assert parsed.to_json() == value
    ballot_field = data.draw(st.sampled_from(sorted(valid_ballot)))
    valid_ballot[ballot_field] = data.draw(_JSON)
    for candidate in (valid_ballot, data.draw(_JSON)):
        with pytest.raises(BallotInvalid):  # parsed or not, it never counts: no endorser is trusted here
            Ballot.from_json(candidate).verify(_proposal(), [])


def test_votes_are_accepted_only_while_the_proposal_is_open_by_the_injected_clock() -> None:
    proposal = _proposal(opens=1_000, closes=2_000)
    for too_early in (0, 999, 999.999):
        with pytest.raises(VotingClosed, match="opens"):
            proposal.check_open(too_early)
    for now in (1_000, 1_500, 1_999.5):
        proposal.check_open(now)
    for too_late in (2_000, 2_000.001, 10**9):
        with pytest.raises(VotingClosed, match="closed"):
            proposal.check_open(too_late)
    assert proposal.check_choice("abstain") == "abstain"
    for bad in ("maybe", "YES", None, 1, ["yes"]):
        with pytest.raises(UnknownChoice):
            proposal.check_choice(bad)


# --- voting keys and the tally ------------------------------------------------------------------------------


def test_one_user_gets_one_key_per_proposal_and_keys_across_proposals_are_unrelated() -> None:
    seeds = [hashlib.sha256(b"seed %d" % i).digest() for i in range(20)]
    keys = {(i, p): raw_public(voting_key(seed, p)) for i, seed in enumerate(seeds) for p in ("p1", "p2", "p3")}
    assert len(set(keys.values())) == len(keys)  # no key repeats, across users or proposals
    assert all(raw_public(voting_key(seeds[0], "p1")) == keys[(0, "p1")] for _ in range(3))  # deterministic
    salt = hashlib.sha256(b"p1").digest()  # the derivation, recomputed independently (RFC 5869)
    prk = hmac.new(salt, seeds[0], "sha256").digest()
    okm = hmac.new(prk, b"vote\x01", "sha256").digest()
    assert raw_public(Ed25519PrivateKey.from_private_bytes(okm)) == keys[(0, "p1")]


def _box(
    proposal: Proposal, voters: int, endorser: Ed25519PrivateKey, *, who: bytes = b"voter"
) -> tuple[list[Ballot], list[bytes]]:
    seeds = [hashlib.sha256(who + b" %d" % i).digest() for i in range(voters)]
    ballots = [
        Ballot.cast(proposal, voting_key(seed, proposal.id), proposal.choices[i % 2], proposal.opens_at, endorser)
        for i, seed in enumerate(seeds)
    ]
    return ballots, seeds


_BOX_ENDORSER = Ed25519PrivateKey.generate()
_BOX = _box(_proposal(), 12, _BOX_ENDORSER)
_BOX_RESULTS = tally(_proposal(), _BOX[0], [raw_public(_BOX_ENDORSER)]).to_json()


def test_tally_counts_endorsed_ballots_once_each_sorted_by_voting_key_with_independent_leaves() -> None:
    proposal = _proposal()
    endorser = Ed25519PrivateKey.generate()
    ballots, _ = _box(proposal, 9, endorser)
    results = tally(proposal, [*ballots, ballots[3], ballots[3]], [raw_public(endorser)]).to_json()
    assert results["counts"] == {"yes": 5, "no": 4, "abstain": 0}
    assert set(results) == {"proposal", "root", "counts", "leaves"}
    keys = [leaf["voting_key"] for leaf in results["leaves"]]
    assert keys == sorted(keys) and len(set(keys)) == 9
    hashes = [independent_leaf(leaf) for leaf in results["leaves"]]
    assert hashes == [leaf["hash"] for leaf in results["leaves"]]
    assert results["root"] == independent_root([bytes.fromhex(h) for h in hashes]).hex()


@given(st.permutations(range(12)), st.lists(st.integers(min_value=0, max_value=11), max_size=6))
@settings(max_examples=30, deadline=None)
def test_results_do_not_depend_on_box_order_and_a_replayed_ballot_counts_once(
    order: list[int], replayed: list[int]
) -> None:
    proposal = _proposal()
    ballots, _ = _BOX
    shuffled = [ballots[i] for i in order] + [ballots[i] for i in replayed]
    assert tally(proposal, shuffled, [raw_public(_BOX_ENDORSER)]).to_json() == _BOX_RESULTS


def test_host_cannot_stuff_the_box_with_keys_it_made_up_or_alter_a_vote() -> None:
    proposal = _proposal()
    enclave = Ed25519PrivateKey.generate()
    ballots, _ = _box(proposal, 4, enclave)
    host_key = Ed25519PrivateKey.generate()
    made_up = [
        Ballot.cast(proposal, Ed25519PrivateKey.generate(), "no", 1_500, host_key),  # endorsed by a host key
        Ballot(  # an enclave endorsement of one key, reused for another key
            proposal.id,
            raw_public(host_key),
            "no",
            1_500,
            host_key.sign(b"budget-2027|no|1500"),
            ballots[0].endorser,
            ballots[0].endorsement,
        ),
    ]
    flipped = ballots[1]
    altered = Ballot(
        flipped.proposal,
        flipped.voting_key,
        "abstain",
        flipped.timestamp,
        flipped.signature,
        flipped.endorser,
        flipped.endorsement,
    )
    late = Ballot.cast(proposal, Ed25519PrivateKey.generate(), "no", proposal.closes_at, enclave)
    other = Ballot.cast(_proposal("other"), Ed25519PrivateKey.generate(), "no", 1_500, enclave)
    results = tally(proposal, [*ballots, *made_up, altered, late, other], [raw_public(enclave)])
    assert results.counts == {"yes": 2, "no": 2, "abstain": 0}
    assert results.rejected == 5
    for forged in [*made_up, altered, late, other]:
        with pytest.raises(BallotInvalid):
            forged.verify(proposal, [raw_public(enclave)])


def test_a_known_ballot_skips_its_signature_checks_but_an_altered_copy_is_checked_again() -> None:
    proposal = _proposal()
    enclave = Ed25519PrivateKey.generate()
    ballots, _ = _box(proposal, 6, enclave)
    known: set[bytes] = set()
    first = tally(proposal, ballots, [raw_public(enclave)], known=known)
    assert len(known) == 6
    b = ballots[0]
    altered = Ballot(b.proposal, b.voting_key, "abstain", b.timestamp, b.signature, b.endorser, b.endorsement)
    again = tally(proposal, [altered, *ballots[1:]], [raw_public(enclave)], known=known)
    assert again.rejected == 1 and again.counts["abstain"] == 0
    assert tally(proposal, ballots, [raw_public(enclave)], known=known).to_json() == first.to_json()
    other = Proposal(proposal.id, proposal.title, proposal.choices, proposal.opens_at + 1, proposal.closes_at)
    assert tally(other, ballots, [raw_public(enclave)], known=known).rejected == 6  # known for another document


def test_a_sealed_ballot_opens_only_with_its_box_key_for_its_proposal() -> None:
    proposal = _proposal()
    ballots, _ = _box(proposal, 1, Ed25519PrivateKey.generate())
    key, other = hashlib.sha256(b"box key").digest(), hashlib.sha256(b"another").digest()
    sealed = seal_ballot(key, "k1", ballots[0])
    assert open_sealed(sealed, proposal.id, {"k1": key}) == ballots[0]
    assert ballots[0].voting_key.hex().encode() not in sealed
    refused = [
        (sealed, proposal.id, {"k1": other}),  # another key
        (sealed, "other", {"k1": key}),  # moved to another proposal's box
        (sealed, proposal.id, {"k2": key}),  # unknown key id
        (sealed.replace(b'"k1"', b'"k2"'), proposal.id, {"k2": key}),  # relabelled key id (bound as data)
        (b"garbage", proposal.id, {"k1": key}),
        (b'{"key": "k1", "box": "%%%"}', proposal.id, {"k1": key}),
        (b"x" * 10_000, proposal.id, {"k1": key}),
    ]
    for data, pid, keys in refused:
        with pytest.raises(BallotInvalid):
            open_sealed(data, pid, keys)


def test_endorser_key_counts_only_with_an_attestation_of_the_vault_image(operator_world: dict[str, Any]) -> None:
    state: Path = operator_world["state"]
    vault_image: NsmSimulator = operator_world["image"]
    pcr0, roots = [vault_image.pcr(0)], [load_root(state)]
    endorser = raw_public(Ed25519PrivateKey.generate())
    genuine = vault_image.client().attestation(user_data=endorser_binding(endorser))
    verify_endorser(genuine, endorser, pcr0=pcr0, roots=roots)
    other_image = NsmSimulator(state, app={"other.py": b"the host's own enclave\n"})  # same CA, another PCR0
    refused = [
        (other_image.client().attestation(user_data=endorser_binding(endorser)), endorser),
        (genuine, raw_public(Ed25519PrivateKey.generate())),  # a genuine document for another key
        (b"garbage", endorser),
    ]
    for document, key in refused:
        with pytest.raises(Error):
            verify_endorser(document, key, pcr0=pcr0, roots=roots)


def test_box_tally_ignores_garbage_misnamed_and_unattested_ballots(tmp_path: Path) -> None:
    proposal = _proposal()
    enclave, host = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ballots, _ = _box(proposal, 3, enclave)
    stuffed, _ = _box(proposal, 2, host, who=b"made up by the host")
    objects = DirectoryObjectStore(tmp_path)
    trusted = raw_public(enclave)

    async def fill_and_count() -> Any:
        for ballot in [*ballots, *stuffed]:
            await objects.put(ballot_key(proposal.id, ballot.voting_key), ballot.to_bytes())
        await objects.put(endorser_key(proposal.id, trusted), b"document of the vault")
        await objects.put(endorser_key(proposal.id, raw_public(host)), b"document of the host")
        await objects.put(f"ballots/{proposal.id}/ballot-{'ab' * 32}", ballots[0].to_bytes())  # misnamed
        await objects.put(f"ballots/{proposal.id}/ballot-junk", b"\xff" * 5000)

        async def check(document: bytes, key: bytes) -> bool:
            return document == b"document of the vault" and key == trusted

        return await read_box(objects, proposal, check)

    results = asyncio.run(fill_and_count())
    assert results.counts == {"yes": 2, "no": 1, "abstain": 0}
    assert results.rejected == 4
    assert results.tree.root == independent_root(
        [leaf_hash(b.voting_key, b.vote, b.signature) for b in sorted(ballots, key=lambda b: b.voting_key)]
    )
