"""vault voting: inclusion-proof verification for 100,000 voters (the issue asks ≤ 1 ms), and what building the
results costs.

    python3 dev.py run python benchmarks/vault_vote.py [--quick] [--json] [--voters N]

* ``verify_proof`` — :func:`enclavekit.services.vault.merkle.verify_inclusion` of one voter's proof (parsed from
  its JSON, as a voter's app receives it) against the published root; a sample of voters spread over the tree,
  each verified ``--rounds`` times; p50 and p99 in µs.
* ``build_tree`` — :class:`MerkleTree` over the N sorted leaves (once), and ``proof`` — one proof from it.
* ``tally`` — with ``--tally N``: :func:`enclavekit.services.vault.ballot.tally` of N real ballots (two Ed25519
  verifications each): the cost of computing results from the box (linear in N); ``tally_known_ms`` the same
  tally again once the ballots are known to verify (what an enclave pays for each later proof).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.services.vault.ballot import Ballot, raw_public, tally, voting_key
from enclavekit.services.vault.merkle import InclusionProof, MerkleTree, verify_inclusion
from enclavekit.services.vault.proposal import Proposal


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered), 2),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "n": len(ordered),
    }


def proofs(voters: int, sample: int, rounds: int) -> dict[str, Any]:
    leaves = sorted(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(voters))
    started = time.perf_counter()
    tree = MerkleTree(leaves)
    built = time.perf_counter() - started
    root = tree.root
    picks = random.Random(7).sample(range(voters), min(sample, voters))
    timings: list[float] = []
    proof_ms: list[float] = []
    for index in picks:
        t0 = time.perf_counter()
        published = tree.proof(index).to_json()
        proof_ms.append((time.perf_counter() - t0) * 1e6)
        for _ in range(rounds):
            t0 = time.perf_counter()
            verify_inclusion(InclusionProof.from_json(published), root)
            timings.append((time.perf_counter() - t0) * 1e6)
    return {
        "voters": voters,
        "path_length": len(tree.proof(0).path),
        "verify_proof": _percentiles(timings),
        "proof": _percentiles(proof_ms),
        "build_tree_ms": round(built * 1000, 1),
    }


def tally_cost(voters: int) -> dict[str, Any]:
    proposal = Proposal("bench", "Benchmark", ("yes", "no"), 0, 10**6)
    endorser = Ed25519PrivateKey.generate()
    ballots = [
        Ballot.cast(proposal, voting_key(hashlib.sha256(b"%d" % i).digest(), "bench"), "yes", 1, endorser)
        for i in range(voters)
    ]
    known: set[bytes] = set()
    started = time.perf_counter()
    results = tally(proposal, ballots, [raw_public(endorser)], known=known)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = tally(proposal, ballots, [raw_public(endorser)], known=known)
    second = time.perf_counter() - started
    assert results.counts["yes"] == voters and again.tree.root == results.tree.root
    return {"ballots": voters, "tally_ms": round(first * 1000, 1), "tally_known_ms": round(second * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a sample of 100 voters, 10 rounds each")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--voters", type=int, default=100_000)
    parser.add_argument("--tally", type=int, default=0, help="also time a tally of this many ballots")
    args = parser.parse_args()
    figures = proofs(args.voters, 100 if args.quick else 1000, 10 if args.quick else 50)
    if args.tally:
        figures["tally"] = tally_cost(args.tally)
    if args.json:
        print(json.dumps(figures))
        return
    verify = figures["verify_proof"]
    print(
        f"{figures['voters']} voters, path of {figures['path_length']} steps, tree built in "
        f"{figures['build_tree_ms']} ms"
    )
    print(f"verify one proof: p50 {verify['p50_us']} µs, p99 {verify['p99_us']} µs (n={verify['n']})")
    if "tally" in figures:
        cost = figures["tally"]
        print(f"tally of {cost['ballots']} ballots: {cost['tally_ms']} ms, again {cost['tally_known_ms']} ms")


if __name__ == "__main__":
    main()
