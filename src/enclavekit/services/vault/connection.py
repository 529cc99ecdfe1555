"""Connections between vaults (sans-I/O): capabilities, invitations and the signed authorization of a peer request.

A *connection* joins two users' vaults. Each side holds its own Ed25519 connection key (in its encrypted state,
rotatable) and the peer's public key, and grants the peer :class:`Capabilities` — which profile fields, which
(non-critical) secrets, messaging, calls. A request from one vault's owner to the other vault travels as a vault
envelope on ``MessageSpace.{target}.forVault.{sender}.{op}`` and carries an :class:`Authorization`: the signature
of the sender's *vault* (its connection key; or, for a business, the key named in an accepted data contract) over
the connection, both users, the operation, the envelope's message id, a timestamp and the SHA-256 of the body.
The target vault checks it, the connection's state and the capability on every request (``docs/vault.md``,
*Connections*; ADR 0025).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from enclavekit.services.vault.errors import VaultRejected

__all__ = [
    "AUTH_WINDOW",
    "INVITATION_TTL",
    "MAX_INVITATION_TTL",
    "Authorization",
    "AuthorizationInvalid",
    "Capabilities",
    "CapabilityDenied",
    "ConnectionInvitationInvalid",
    "ConnectionRefused",
    "VaultClosed",
    "acceptance_message",
    "authorization_message",
    "body_digest",
    "canonical",
    "check_acceptance",
    "check_field",
    "new_key",
    "public_key",
    "sign",
    "token_digest",
    "tokens_match",
    "verify",
]

AUTH_WINDOW: Final = 120.0
"""A peer authorization is accepted within this many seconds of its timestamp (and its message id only once)."""
INVITATION_TTL: Final = 600.0
MAX_INVITATION_TTL: Final = 24 * 3600.0
MAX_LISTED: Final = 64
_FIELD: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_AUTH_LABEL: Final = b"enclavekit vault peer authorization v1\x00"


class ConnectionRefused(VaultRejected):
    """No active connection (or contract) lets this sender reach this vault: unknown, revoked, expired, or the
    signature is not by the key the connection names."""

    code = "connection_refused"


class CapabilityDenied(VaultRejected):
    """The connection exists but does not grant what the request asks (a field, a secret, messages, calls)."""

    code = "capability_denied"


class AuthorizationInvalid(VaultRejected):
    """A peer request's authorization is malformed, stale, or bound to another message, operation or body."""

    code = "authorization_invalid"


class ConnectionInvitationInvalid(VaultRejected):
    """A connection invitation that does not exist, expired, was already used, or whose token is wrong (not the
    operator's enrollment invitation codes)."""

    code = "connection_invitation_invalid"


class VaultClosed(VaultRejected):
    """The target vault is not open (its owner has not unlocked it since the enclave started): its data key is
    derived from the owner's PIN, so nobody can read or write it now. Retry later."""

    code = "vault_closed"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def body_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a peer request's body (its payload without ``auth``)."""
    return hashlib.sha256(canonical(dict(body))).hexdigest()


def token_digest(token: bytes) -> str:
    return hashlib.sha256(b"enclavekit vault invitation v1\x00" + token).hexdigest()


def check_field(name: object, what: str = "field") -> str:
    if not isinstance(name, str) or not _FIELD.fullmatch(name):
        raise VaultRejected(f"a {what} name is 1..64 characters of A-Z a-z 0-9 . _ -")
    return name


def _names(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_LISTED:
        raise CapabilityDenied(f"{what} is a list of at most {MAX_LISTED} names")
    return tuple(sorted({check_field(v, what) for v in value}))


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one side of a connection grants the other. Nothing by default: every grant is explicit."""

    profile: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    messages: bool = False
    calls: bool = False

    @classmethod
    def from_json(cls, raw: object) -> Capabilities:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or not set(raw) <= {"profile", "secrets", "messages", "calls"}:
            raise CapabilityDenied("capabilities are {profile: [...], secrets: [...], messages: bool, calls: bool}")
        flags = [raw.get("messages", False), raw.get("calls", False)]
        if not all(type(f) is bool for f in flags):
            raise CapabilityDenied("capabilities.messages and .calls are true or false")
        return cls(_names(raw.get("profile"), "profile"), _names(raw.get("secrets"), "secret"), flags[0], flags[1])

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": list(self.profile),
            "secrets": list(self.secrets),
            "messages": self.messages,
            "calls": self.calls,
        }


def new_key() -> bytes:
    """A new Ed25519 private key (32-byte seed)."""
    return secrets.token_bytes(32)


def public_key(private: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


@dataclass(frozen=True, slots=True)
class Authorization:
    """The signed claim that a peer request is the sender's: ``kind`` is ``connection`` or ``contract``, ``id``
    names it, ``at`` is the signer's clock (unix seconds)."""

    kind: str
    id: str
    at: float
    signature: bytes

    @classmethod
    def from_json(cls, raw: object) -> Authorization:
        if not isinstance(raw, dict) or set(raw) != {"kind", "id", "at", "signature"}:
            raise AuthorizationInvalid("auth is {kind, id, at, signature}")
        kind, ident, at, signature = raw["kind"], raw["id"], raw["at"], raw["signature"]
        if kind not in ("connection", "contract") or not isinstance(ident, str) or not _FIELD.fullmatch(ident):
            raise AuthorizationInvalid("auth.kind is connection or contract; auth.id a short name")
        if type(at) not in (int, float) or not isinstance(signature, str) or len(signature) != 128:
            raise AuthorizationInvalid("auth.at is a number; auth.signature 128 hex digits")
        try:
            return cls(kind, ident, float(at), bytes.fromhex(signature))
        except ValueError as exc:
            raise AuthorizationInvalid("auth.signature is not hex") from exc

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "at": self.at, "signature": self.signature.hex()}


def authorization_message(
    *, kind: str, ident: str, sender: str, target: str, op: str, message_id: str, at: float, digest: str
) -> bytes:
    """The bytes an authorization signs: everything that must not be moved to another request."""
    fields = {
        "kind": kind,
        "id": ident,
        "from": sender,
        "to": target,
        "op": op,
        "message_id": message_id,
        "at": at,
        "body": digest,
    }
    return _AUTH_LABEL + canonical(fields)


def sign(private: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def verify(
    authorization: Authorization,
    key: bytes,
    *,
    sender: str,
    target: str,
    op: str,
    message_id: str,
    digest: str,
    now: float,
) -> None:
    """Raise unless ``authorization`` is ``key``'s fresh signature over exactly this request."""
    if abs(now - authorization.at) > AUTH_WINDOW:
        raise AuthorizationInvalid("the authorization is outside the accepted time window")
    message = authorization_message(
        kind=authorization.kind,
        ident=authorization.id,
        sender=sender,
        target=target,
        op=op,
        message_id=message_id,
        at=authorization.at,
        digest=digest,
    )
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(authorization.signature, message)
    except (InvalidSignature, ValueError) as exc:
        raise ConnectionRefused("the authorization is not signed by the key this connection names") from exc


def acceptance_message(*, invitation: str, sender: str, inviter: str, key: bytes) -> bytes:
    """What the accepting vault signs with its new connection key: its user's name is bound (the bridge names the
    sender of a peer request; this proves it to the inviter's vault) and the key is proven held."""
    fields = {"invitation": invitation, "from": sender, "to": inviter, "key": key.hex()}
    return b"enclavekit vault connection acceptance v1\x00" + canonical(fields)


def check_acceptance(proof: bytes, *, invitation: str, sender: str, inviter: str, key: bytes) -> None:
    try:
        message = acceptance_message(invitation=invitation, sender=sender, inviter=inviter, key=key)
        Ed25519PublicKey.from_public_bytes(key).verify(proof, message)
    except (InvalidSignature, ValueError) as exc:
        raise ConnectionInvitationInvalid(
            "the acceptance is not signed by its key for this sender and invitation"
        ) from exc


def tokens_match(expected_digest: str, token: bytes) -> bool:
    return hmac.compare_digest(expected_digest, token_digest(token))
