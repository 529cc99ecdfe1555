"""The Merkle tree of a proposal's results and its inclusion proofs — pure, no I/O.

Leaves are SHA-256 digests given in their published order (the tally sorts them by voting key). A level of odd
length duplicates its last node; a parent is ``SHA-256(left ‖ right)``. The root of no leaves is
``SHA-256("")``. An inclusion proof is the list of siblings from the leaf up, each with the side it sits on
(``"left"``: the sibling is the left child, so the parent is ``SHA-256(sibling ‖ node)``).

A node's input is 64 bytes; a ballot's leaf input is 32 + len(vote) + 64 bytes with a non-empty vote, so an
interior node can never be passed off as a leaf (or the reverse) — no second preimage across levels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from enclavekit.services.vault.errors import VaultRejected

__all__ = [
    "EMPTY_ROOT",
    "MAX_PROOF_DEPTH",
    "InclusionProof",
    "MerkleTree",
    "ProofInvalid",
    "Step",
    "verify_inclusion",
]

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
MAX_PROOF_DEPTH: Final = 40
"""A proof longer than this cannot belong to a tree the vault builds (2**40 leaves)."""

Side = Literal["left", "right"]


class ProofInvalid(VaultRejected):
    """An inclusion proof that is malformed or does not lead from its leaf to the expected root."""

    code = "proof_invalid"


def _parent(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(left + right).digest()


@dataclass(frozen=True, slots=True)
class Step:
    """One sibling on the way up, and the side it is on."""

    hash: bytes
    side: Side


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Proof that ``leaf`` is the leaf at ``index`` of the tree whose root is ``root``."""

    leaf: bytes
    index: int
    path: tuple[Step, ...]
    root: bytes

    def to_json(self) -> dict[str, Any]:
        """``{"leaf", "index", "path": [{"hash", "side"}], "root"}`` (hashes in hex)."""
        return {
            "leaf": self.leaf.hex(),
            "index": self.index,
            "path": [{"hash": step.hash.hex(), "side": step.side} for step in self.path],
            "root": self.root.hex(),
        }

    @classmethod
    def from_json(cls, value: Any) -> InclusionProof:
        """Parse the JSON form; :class:`ProofInvalid` for anything malformed (never a crash)."""
        try:
            if not isinstance(value, dict) or not isinstance(value["path"], list):
                raise ProofInvalid("a proof is an object with leaf, index, path and root")
            if len(value["path"]) > MAX_PROOF_DEPTH:
                raise ProofInvalid("a proof path is at most 40 steps")
            index = value["index"]
            if type(index) is not int or index < 0:
                raise ProofInvalid("a proof's index is a non-negative integer")
            path = []
            for step in value["path"]:
                if step["side"] not in ("left", "right"):
                    raise ProofInvalid("a proof step's side is left or right")
                path.append(Step(_digest(step["hash"]), step["side"]))
            return cls(_digest(value["leaf"]), index, tuple(path), _digest(value["root"]))
        except (KeyError, TypeError) as exc:
            raise ProofInvalid(f"malformed proof: {exc}") from exc


def _digest(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) != 64:
        raise ProofInvalid("a hash is 64 hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise ProofInvalid("a hash is 64 hex digits") from exc


class MerkleTree:
    """The tree over ``leaves`` (32-byte digests, in order), every level kept for proofs."""

    __slots__ = ("levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if any(len(leaf) != 32 for leaf in leaves):
            raise ValueError("a leaf is a 32-byte digest")
        self.levels: list[list[bytes]] = [list(leaves)]
        level = self.levels[0]
        while len(level) > 1:
            if len(level) % 2:
                level = [*level, level[-1]]
            level = [_parent(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            self.levels.append(level)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.levels[0] else EMPTY_ROOT

    def __len__(self) -> int:
        return len(self.levels[0])

    def proof(self, index: int) -> InclusionProof:
        """The inclusion proof of the leaf at ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"no leaf {index} in a tree of {len(self)}")
        path: list[Step] = []
        position = index
        for level in self.levels[:-1]:
            if position % 2:
                path.append(Step(level[position - 1], "left"))
            else:
                sibling = level[position + 1] if position + 1 < len(level) else level[position]
                path.append(Step(sibling, "right"))
            position //= 2
        return InclusionProof(self.levels[0][index], index, tuple(path), self.root)


def verify_inclusion(proof: InclusionProof, root: bytes) -> None:
    """Raise :class:`ProofInvalid` unless ``proof`` leads from its leaf to ``root`` (the published root), with
    sides that match its index."""
    if len(proof.path) > MAX_PROOF_DEPTH:
        raise ProofInvalid("a proof path is at most 40 steps")
    node = proof.leaf
    position = proof.index
    for step in proof.path:
        if step.side != ("left" if position % 2 else "right"):
            raise ProofInvalid("a proof step is on the wrong side for the leaf's index")
        node = _parent(step.hash, node) if step.side == "left" else _parent(node, step.hash)
        position //= 2
    if position != 0:
        raise ProofInvalid("the proof's index is beyond its tree")
    if node != root or proof.root != root:
        raise ProofInvalid("the proof does not lead to the published root")
