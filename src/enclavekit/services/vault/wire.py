"""Messages between the vault's host bridge and its enclave (shared, pure), and the operations inside envelopes.

The host relays :class:`Message` (an opaque envelope with the subject's user and operation) and gets back an
opaque envelope; it sees neither PINs nor secrets nor the outcome (errors travel inside the response envelope).
Only an envelope that does not open at all is answered with an RPC error (``envelope_invalid``,
``envelope_replayed``): it reveals nothing the host did not send.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, Field

from enclavekit.rpc import Route
from enclavekit.services.vault.envelope import MAX_ENVELOPE

__all__ = [
    "ENCLAVE_LOST",
    "ENCLAVE_UNREACHABLE",
    "KEY",
    "LEDGER_JOIN",
    "LEDGER_MERGE",
    "LEDGER_SNAPSHOT",
    "MESSAGE",
    "PEER",
    "LedgerEntry",
    "LedgerJoin",
    "LedgerJoined",
    "LedgerMerge",
    "LedgerSnapshot",
    "LedgerSnapshotRequest",
    "Message",
    "MessageReply",
    "PeerMessage",
    "VaultKey",
    "VaultKeyRequest",
]

_USER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_LEDGER_KEY_PATTERN = r"^(?:[A-Za-z0-9_-]{1,64}|invite:[0-9a-f]{24})$"
"""A ledger entry's key: a user id, or ``invite:{id}`` (an invitation code's single-use record, ADR 0021)."""

ENCLAVE_UNREACHABLE: Final = "enclave_unreachable"
"""The bridge's ``Vault-Error`` for a message that reached no enclave holding the key it is sealed to (the enclave
died or restarted): nothing ran, the app fetches a key again and re-seals (ADR 0023)."""
ENCLAVE_LOST: Final = "enclave_lost"
"""The bridge's ``Vault-Error`` for a message whose enclave died or stopped answering while it was in flight: it
may have run; the app decides whether to send it again."""


class Message(BaseModel):
    model_config = {"extra": "forbid"}
    user: str = Field(pattern=_USER_PATTERN)
    op: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    envelope: str = Field(max_length=(MAX_ENVELOPE * 4) // 3 + 4)
    """The request envelope, base64."""


class PeerMessage(BaseModel):
    """A request from ``sender``'s app to ``user``'s vault (``MessageSpace.{user}.forVault.{sender}.{op}``: the
    NATS server lets only ``sender``'s credentials publish there); the envelope is sealed to ``user``'s vault."""

    model_config = {"extra": "forbid"}
    user: str = Field(pattern=_USER_PATTERN)
    sender: str = Field(pattern=_USER_PATTERN)
    op: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    envelope: str = Field(max_length=(MAX_ENVELOPE * 4) // 3 + 4)


class MessageReply(BaseModel):
    envelope: str
    """The response envelope, base64: only the requesting app can open it."""


class VaultKeyRequest(BaseModel):
    model_config = {"extra": "forbid"}
    nonce: str | None = Field(default=None, max_length=128, pattern=r"^[0-9a-fA-F]*$")


class VaultKey(BaseModel):
    document: str
    """An attestation document (base64) whose ``public_key`` is the vault's X25519 key."""
    public_key: str


class LedgerMerge(BaseModel):
    """A coordinator's entry for ``user``, with its attestation document binding it (see ``ledger_peers``)."""

    model_config = {"extra": "forbid"}
    user: str = Field(pattern=_LEDGER_KEY_PATTERN)
    entry: dict[str, Any]
    document: str = Field(max_length=24 * 1024)
    view: dict[str, Any] | None = None
    """The coordinator's ledger view: a replica of another view refuses the write."""


class LedgerEntry(BaseModel):
    entry: dict[str, Any]
    replica: str
    view: dict[str, Any] | None = None
    """The replica's ledger view (``guesses.View``): a coordinator counts it only with members of the same view."""


class LedgerSnapshotRequest(BaseModel):
    model_config = {"extra": "forbid"}


class LedgerSnapshot(BaseModel):
    """A replica's entries; ``ready`` false: it is booting (not caught up) and ``entries`` is empty."""

    entries: dict[str, dict[str, Any]]
    replica: str
    ready: bool
    view: dict[str, Any] | None = None


class LedgerJoin(BaseModel):
    """A booting replica (``joiner``, its boot identity) asks a member of ``view`` to accept the view's successor in
    which it replaces ``replaced``; the attestation document of the joiner binds all three (see ``ledger_peers``)."""

    model_config = {"extra": "forbid"}
    view: dict[str, Any]
    joiner: str = Field(max_length=64)
    replaced: str = Field(max_length=64)
    document: str = Field(max_length=24 * 1024)


class LedgerJoined(BaseModel):
    """The acceptor's new view and its snapshot, taken as it accepted."""

    entries: dict[str, dict[str, Any]]
    replica: str
    view: dict[str, Any]


MESSAGE = Route("vault.message", Message, MessageReply)
PEER = Route("vault.peer", PeerMessage, MessageReply)
LEDGER_MERGE = Route("vault.ledger.merge", LedgerMerge, LedgerEntry)
LEDGER_SNAPSHOT = Route("vault.ledger.snapshot", LedgerSnapshotRequest, LedgerSnapshot)
LEDGER_JOIN = Route("vault.ledger.join", LedgerJoin, LedgerJoined)
KEY = Route("vault.key", VaultKeyRequest, VaultKey)
