"""A proposal users vote on: an operator-signed document, parsed and checked once — pure, no I/O.

    {"proposal": {"format": "enclavekit-vault-proposal", "version": 1, "id": "...", "title": "...",
                  "choices": ["yes", "no"], "opens_at": 1700000000, "closes_at": 1700086400},
     "signature": "128 hex digits"}

The signature is Ed25519 over ``"enclavekit vault proposal v1\\0" ‖ canonical JSON of "proposal"`` by one of the
operator keys measured in the vault's configuration (``operator_keys``): the host publishes proposals (they are
public) but can neither invent nor alter one. Times are Unix seconds; a proposal is open for ``opens_at <= t <
closes_at`` by the clock of whoever checks (the vault enclave's, when a vote is cast).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from enclavekit.services.vault.errors import VaultRejected

__all__ = [
    "MAX_CHOICES",
    "MAX_PROPOSAL_BYTES",
    "PROPOSAL_FORMAT",
    "Proposal",
    "ProposalInvalid",
    "SignedProposal",
    "UnknownChoice",
    "VotingClosed",
    "sign_proposal",
]

PROPOSAL_FORMAT: Final = "enclavekit-vault-proposal"
MAX_PROPOSAL_BYTES: Final = 8 * 1024
MAX_CHOICES: Final = 16
MAX_TITLE: Final = 200
MAX_WINDOW: Final = 366 * 24 * 3600
_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHOICE: Final = re.compile(r"[^|\x00-\x1f\x7f]{1,64}")
_DOMAIN: Final = b"enclavekit vault proposal v1\x00"


class ProposalInvalid(VaultRejected):
    """A proposal document that is malformed, oversized or whose fields break a rule."""

    code = "proposal_invalid"


class VotingClosed(VaultRejected):
    """The proposal is not open at this time (not yet, or no longer)."""

    code = "voting_closed"


class UnknownChoice(VaultRejected):
    """A vote for a choice the proposal does not offer."""

    code = "unknown_choice"


def _canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Proposal:
    """The checked fields of a proposal: an id (``A-Z a-z 0-9 _ -``, 1..64), a title, 2..16 distinct choices
    (1..64 characters, no ``|`` or control character), and its window."""

    id: str
    title: str
    choices: tuple[str, ...]
    opens_at: int
    closes_at: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ProposalInvalid("a proposal id is 1..64 characters of A-Z a-z 0-9 _ -")
        if not isinstance(self.title, str) or not 1 <= len(self.title) <= MAX_TITLE:
            raise ProposalInvalid(f"a proposal title is 1..{MAX_TITLE} characters")
        choices = self.choices
        if not all(isinstance(c, str) and _CHOICE.fullmatch(c) for c in choices):
            raise ProposalInvalid("a choice is 1..64 characters, no '|' and no control character")
        if not 2 <= len(choices) <= MAX_CHOICES or len(set(choices)) != len(choices):
            raise ProposalInvalid(f"a proposal offers 2..{MAX_CHOICES} distinct choices")
        if type(self.opens_at) is not int or type(self.closes_at) is not int or self.opens_at < 0:
            raise ProposalInvalid("opens_at and closes_at are Unix seconds (integers)")
        if not self.opens_at < self.closes_at <= self.opens_at + MAX_WINDOW:
            raise ProposalInvalid("a proposal closes after it opens, within a year")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROPOSAL_FORMAT,
            "version": 1,
            "id": self.id,
            "title": self.title,
            "choices": list(self.choices),
            "opens_at": self.opens_at,
            "closes_at": self.closes_at,
        }

    def signing_bytes(self) -> bytes:
        """What the operator signs."""
        return _DOMAIN + _canonical(self.to_json())

    def check_open(self, now: float) -> None:
        """Raise :class:`VotingClosed` unless ``opens_at <= now < closes_at``."""
        if now < self.opens_at:
            raise VotingClosed(f"proposal {self.id} opens at {self.opens_at}")
        if now >= self.closes_at:
            raise VotingClosed(f"proposal {self.id} closed at {self.closes_at}")

    def check_choice(self, choice: Any) -> str:
        if not isinstance(choice, str) or choice not in self.choices:
            raise UnknownChoice(f"proposal {self.id} offers {', '.join(self.choices)}")
        return choice


@dataclass(frozen=True, slots=True)
class SignedProposal:
    """A proposal and its operator signature, as published. :meth:`verify` checks the signature."""

    proposal: Proposal
    signature: bytes

    @classmethod
    def from_json(cls, value: Any) -> SignedProposal:
        """Parse the published form (an object, or its JSON text/bytes); :class:`ProposalInvalid` otherwise."""
        if isinstance(value, str | bytes):
            if len(value) > MAX_PROPOSAL_BYTES:
                raise ProposalInvalid(f"a proposal document is at most {MAX_PROPOSAL_BYTES} bytes")
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ProposalInvalid("a proposal document is JSON") from exc
        if not isinstance(value, dict) or set(value) != {"proposal", "signature"}:
            raise ProposalInvalid("a proposal document has exactly proposal and signature")
        body, signature = value["proposal"], value["signature"]
        if len(_canonical(value)) > MAX_PROPOSAL_BYTES:
            raise ProposalInvalid(f"a proposal document is at most {MAX_PROPOSAL_BYTES} bytes")
        fields = {"format", "version", "id", "title", "choices", "opens_at", "closes_at"}
        if not isinstance(body, dict) or set(body) != fields:
            raise ProposalInvalid(f"a proposal has exactly {', '.join(sorted(fields))}")
        if body["format"] != PROPOSAL_FORMAT or body["version"] != 1:
            raise ProposalInvalid(f"expected format {PROPOSAL_FORMAT!r} version 1")
        if not isinstance(body["choices"], list):
            raise ProposalInvalid("choices is a list")
        if not isinstance(signature, str) or not re.fullmatch(r"[0-9a-f]{128}", signature):
            raise ProposalInvalid("the signature is 128 lower-case hex digits")
        proposal = Proposal(body["id"], body["title"], tuple(body["choices"]), body["opens_at"], body["closes_at"])
        return cls(proposal, bytes.fromhex(signature))

    def to_json(self) -> dict[str, Any]:
        return {"proposal": self.proposal.to_json(), "signature": self.signature.hex()}

    def verify(self, require_operator_signature: Callable[[bytes, bytes], bytes]) -> Proposal:
        """The proposal, if an operator key signed it (``VaultEnclaveConfig.require_operator_signature``, which
        raises ``not_an_operator`` otherwise)."""
        require_operator_signature(self.proposal.signing_bytes(), self.signature)
        return self.proposal


def sign_proposal(proposal: Proposal, sign: Callable[[bytes], bytes]) -> SignedProposal:
    """Sign ``proposal`` with an operator key's ``sign`` (e.g. the local operator key's)."""
    return SignedProposal(proposal, sign(proposal.signing_bytes()))
