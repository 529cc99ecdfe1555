"""Invitation codes: the operator invites, the vault enclave admits — once (ADR 0021).

An invitation is a document the operator signs with an Ed25519 key named in the vault's measured configuration
(``operator_keys``): a random id (96 bits), an expiry (UNIX seconds), the vault it admits to (the service name) and
optionally the one user it admits. The code a user pastes is the document and its signature in base32 (RFC 4648,
upper case, no padding: letters and digits only, so a double click selects all of it) of ``88 + len(user)``
bytes: ``ceil(8 * (88 + len(user)) / 5)`` characters — 141 without a user, 149 for a five-letter one, 244 at most.
Spaces, dashes and case in a pasted code are ignored.

Layout of the signed bytes (signature over ``"enclavekit vault invitation v1\\0" ‖ body``)::

    body = 0x01 ‖ id (12) ‖ expires_at (u32, big-endian) ‖ len(vault) (u8) ‖ vault ‖ len(user) (u8) ‖ user
    code = base32(body ‖ signature (64))

The enclave (:func:`admit`) checks the signature against the measured operator keys, the expiry against its own
clock, the vault name and the user binding, and then records the use in the guess ledger (the replicas the host
cannot roll back) at a majority, before the enrollment goes on: the key ``invite:{id hex}`` gets the user as a
claim, and only a code whose claims are exactly this user admits (:meth:`GuessLedger.claim`). A code already
claimed by someone else is refused before anything is written, so the user it admitted can still retry after a
lost answer; two users racing with one code are both refused if each sees the other. The host never sees
a code (it travels inside the enroll envelope), and cannot make one (no operator key).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.errors import Error
from enclavekit.services.vault.errors import VaultRejected
from enclavekit.services.vault.guesses import GuessLedger
from enclavekit.services.vault.objects import InvalidUser, check_user

__all__ = [
    "MAX_CODE",
    "VAULT_SERVICE",
    "Invitation",
    "InvitationExpired",
    "InvitationInvalid",
    "InvitationUsed",
    "admit",
    "issue",
    "parse_code",
]

VAULT_SERVICE: Final = "vault"
"""The service name an invitation to this vault carries (the enclave app's name)."""
CONTEXT: Final = b"enclavekit vault invitation v1\x00"
FORMAT_VERSION: Final = 1
ID_BYTES: Final = 12
SIGNATURE_BYTES: Final = 64
MAX_CODE: Final = 512
"""Longest code accepted before decoding (a code with a 64-character user is 244 characters)."""
MAX_EXPIRES: Final = 2**32 - 1


class InvitationInvalid(VaultRejected):
    """Not an invitation, not signed by an operator key of this vault, for another vault, or for another user."""

    code = "invitation_invalid"


class InvitationExpired(VaultRejected):
    """The invitation's expiry has passed (by the enclave's clock)."""

    code = "invitation_expired"


class InvitationUsed(VaultRejected):
    """The invitation already admitted another user (single use)."""

    code = "invitation_used"


@dataclass(frozen=True, slots=True)
class Invitation:
    """A parsed invitation; ``user`` None admits anyone (once)."""

    id: bytes
    expires_at: int
    vault: str = VAULT_SERVICE
    user: str | None = None

    def __post_init__(self) -> None:
        if len(self.id) != ID_BYTES:
            raise ValueError(f"an invitation id is {ID_BYTES} bytes")
        if not 0 <= self.expires_at <= MAX_EXPIRES:
            raise ValueError("expires_at is outside 0..2**32-1")
        if not 0 < len(self.vault.encode()) <= 64:
            raise ValueError("the vault name is 1..64 bytes")
        if self.user is not None:
            check_user(self.user)

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def ledger_key(self) -> str:
        """Where the guess ledger records the invitation's use."""
        return f"invite:{self.id_hex}"

    def body(self) -> bytes:
        vault, user = self.vault.encode(), (self.user or "").encode()
        return (
            bytes([FORMAT_VERSION])
            + self.id
            + struct.pack(">I", self.expires_at)
            + bytes([len(vault)])
            + vault
            + bytes([len(user)])
            + user
        )

    def sign(self, key: ClientIdentityKey) -> str:
        """The code: base32 of the body and the operator's signature over it."""
        data = self.body() + key.sign(CONTEXT + self.body())
        return base64.b32encode(data).decode().rstrip("=")


def issue(
    key: ClientIdentityKey, *, ttl: float, now: float, user: str | None = None, vault: str = VAULT_SERVICE
) -> tuple[Invitation, str]:
    """A new invitation (random id) valid for ``ttl`` seconds from ``now``, and its code."""
    invitation = Invitation(secrets.token_bytes(ID_BYTES), int(now + ttl), vault, user)
    return invitation, invitation.sign(key)


def parse_code(code: str) -> tuple[Invitation, bytes, bytes]:
    """``(invitation, signed message, signature)`` of a code (not yet verified); :class:`InvitationInvalid` if it
    does not parse. Whitespace, dashes and case are ignored."""
    if not isinstance(code, str) or len(code) > MAX_CODE:
        raise InvitationInvalid(f"an invitation code is text of at most {MAX_CODE} characters")
    text = "".join(code.split()).replace("-", "").upper()
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise InvitationInvalid("the invitation code is not base32") from exc
    try:
        if len(data) < 1 + ID_BYTES + 4 + 2 + SIGNATURE_BYTES or data[0] != FORMAT_VERSION:
            raise ValueError("too short or an unknown version")
        body, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
        at = 1 + ID_BYTES
        (expires_at,) = struct.unpack(">I", body[at : at + 4])
        at += 4
        vault_end = at + 1 + body[at]
        vault = body[at + 1 : vault_end].decode()
        user_end = vault_end + 1 + body[vault_end]
        if user_end != len(body):
            raise ValueError("the lengths do not add up")
        user = body[vault_end + 1 : user_end].decode()
        invitation = Invitation(body[1 : 1 + ID_BYTES], expires_at, vault, user or None)
    except (ValueError, IndexError, InvalidUser) as exc:
        raise InvitationInvalid(f"the invitation code does not parse: {exc}") from exc
    return invitation, CONTEXT + body, signature


async def admit(
    code: object,
    *,
    user: str,
    now: float,
    require_signature: Callable[[bytes, bytes], bytes],
    ledger: GuessLedger,
    vault: str = VAULT_SERVICE,
) -> Invitation:
    """Admit ``user`` with ``code`` or raise: the operator's signature (``require_signature``, the measured keys),
    this vault, the user binding, the expiry at ``now`` (the enclave's clock), then the single use recorded at a
    majority of the ledger — only then may the enrollment go on."""
    if not isinstance(code, str):
        raise InvitationInvalid("enrolling needs an invitation code from the operator (invitation)")
    invitation, message, signature = parse_code(code)
    try:
        require_signature(message, signature)
    except Error as exc:
        raise InvitationInvalid(f"the invitation is not signed by this vault's operator ({exc.code})") from exc
    if invitation.vault != vault:
        raise InvitationInvalid(f"the invitation is for {invitation.vault!r}, not this vault")
    if invitation.user is not None and invitation.user != user:
        raise InvitationInvalid("the invitation is for another user")
    if now > invitation.expires_at:
        raise InvitationExpired("the invitation has expired: ask the operator for a new one")
    known = await ledger.read(invitation.ledger_key)
    if known.claims and known.claims != {user}:  # used: refuse without writing (a refused claimant stays out)
        raise InvitationUsed("the invitation was already used")
    entry = await ledger.claim(invitation.ledger_key, user)
    if entry.claims != {user}:  # another user's claim raced this one: neither is admitted
        raise InvitationUsed("the invitation was already used")
    return invitation
