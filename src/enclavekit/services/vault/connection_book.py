"""A vault's connections, invitations, profile, messages and data contracts — on top of :class:`VaultStore`.

Everything lives in the user's encrypted state (the host sees object sizes only). The index metadata holds::

    "invitations": {id: {"digest", "expires", "granted"}}                      single use, short-lived
    "connections": {id: {"peer", "key" (own Ed25519 seed, hex), "peer_key", "granted", "received",
                         "status": "pending" | "active" | "revoked", "created", "revoked_at"}}
    "profile":     {field: item id}                                           values are items
    "inbox":       [{"id", "connection", "from", "at", "read_at", "item"}]      newest last, at most 1000
    "outbox":      [{"id", "connection", "to", "at", "delivered_at", "read_at", "item"}]
    "contracts":   {id: {"contract": {...}, "signature", "status", "accepted_at", "revoked_at"}}

Every change, and every access by a peer or a business, appends a record to the hash-chained audit feed of
:class:`~enclavekit.services.vault.secret_store.SecretStore` in the same commit, so the owner sees each access.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from enclavekit.services.vault.connection import (
    MAX_INVITATION_TTL,
    Authorization,
    Capabilities,
    CapabilityDenied,
    ConnectionInvitationInvalid,
    ConnectionRefused,
    acceptance_message,
    authorization_message,
    check_acceptance,
    check_field,
    new_key,
    public_key,
    sign,
    token_digest,
    tokens_match,
    verify,
)
from enclavekit.services.vault.data_contract import ContractExpired, ContractInvalid, ContractRevoked, DataContract
from enclavekit.services.vault.errors import VaultRejected
from enclavekit.services.vault.secret_store import SecretStore

__all__ = ["MAX_CONNECTIONS", "MAX_MESSAGE", "MAX_PROFILE_VALUE", "ConnectionBook", "MessageNotFound"]

MAX_CONNECTIONS: Final = 1000
MAX_CONTRACTS: Final = 1000
MAX_INVITATIONS: Final = 100
MAX_PROFILE_FIELDS: Final = 64
MAX_PROFILE_VALUE: Final = 4096
MAX_MESSAGE: Final = 16 * 1024
MAX_MESSAGES: Final = 1000
KINDS: Final = ("invitations", "connections", "profile", "inbox", "outbox", "contracts")


class MessageNotFound(VaultRejected):
    code = "message_not_found"


def _short_id() -> str:
    return secrets.token_hex(16)


class ConnectionBook(SecretStore):
    """The connections side of one open vault (the owner's, or served to a peer)."""

    async def _meta(self) -> dict[str, Any]:
        meta = await super()._meta()
        for kind in KINDS:
            meta.setdefault(kind, [] if kind in ("inbox", "outbox") else {})
        return meta

    async def _commit(
        self,
        meta: dict[str, Any],
        now: float,
        op: str,
        writes: dict[str, bytes] | None = None,
        *,
        removed: list[str] | tuple[str, ...] = (),
        **audit: Any,
    ) -> None:
        """Write ``writes`` and ``meta`` with one more audit record (``op`` and ``audit``), in one commit."""
        item, record = self._audit(meta, now, op, **audit)
        await self.store.commit({**(writes or {}), item: record}, meta, tuple(removed))

    # --- invitations and connections ------------------------------------------------------------------------

    async def invite(self, granted: Capabilities, *, ttl: float, now: float) -> tuple[str, bytes, float]:
        """A single-use invitation: (its id, its secret token, when it expires)."""
        if not 0 < ttl <= MAX_INVITATION_TTL:
            raise ConnectionInvitationInvalid(f"an invitation lives 1..{int(MAX_INVITATION_TTL)} seconds")
        meta = await self._meta()
        invitations = {k: v for k, v in meta["invitations"].items() if v["expires"] > now}
        if len(invitations) >= MAX_INVITATIONS:
            raise ConnectionInvitationInvalid(f"at most {MAX_INVITATIONS} open invitations")
        ident, token = _short_id(), secrets.token_bytes(32)
        invitations[ident] = {"digest": token_digest(token), "expires": now + ttl, "granted": granted.to_json()}
        meta["invitations"] = invitations
        await self._commit(meta, now, "connection.invite", invitation=ident)
        return ident, token, now + ttl

    async def consume_invitation(
        self,
        ident: str,
        token: bytes,
        *,
        peer: str,
        peer_key: bytes,
        proof: bytes,
        received: Capabilities,
        now: float,
    ) -> tuple[str, bytes, Capabilities]:
        """The inviter's side of an acceptance: the right token with a valid proof uses the invitation up (an
        expired one too); anything else changes nothing. Returns (the new connection's id, this side's public key,
        what this side grants)."""
        meta = await self._meta()
        invitation = meta["invitations"].get(ident)
        if invitation is None or not tokens_match(str(invitation["digest"]), token):
            raise ConnectionInvitationInvalid("no such invitation (or it was used)")
        check_acceptance(proof, invitation=ident, sender=peer, inviter=self.store.user, key=peer_key)
        del meta["invitations"][ident]
        if invitation["expires"] <= now:
            await self._commit(meta, now, "connection.invitation_expired", invitation=ident)
            raise ConnectionInvitationInvalid("the invitation expired")
        self._check_room(meta)
        connection, own = _short_id(), new_key()
        granted = Capabilities.from_json(invitation["granted"])
        meta["connections"][connection] = self._record(peer, own, peer_key, granted, received, "active", now)
        await self._commit(meta, now, "connection.accepted", connection=connection, peer=peer)
        return connection, public_key(own), granted

    @staticmethod
    def _check_room(meta: dict[str, Any]) -> None:
        if len(meta["connections"]) >= MAX_CONNECTIONS:
            raise ConnectionRefused(f"a vault holds at most {MAX_CONNECTIONS} connections")

    @staticmethod
    def _record(
        peer: str,
        own: bytes,
        peer_key: bytes | None,
        granted: Capabilities,
        received: Capabilities,
        status: str,
        now: float,
    ) -> dict[str, Any]:
        return {
            "peer": peer,
            "key": own.hex(),
            "peer_key": None if peer_key is None else peer_key.hex(),
            "granted": granted.to_json(),
            "received": received.to_json(),
            "status": status,
            "created": now,
            "revoked_at": None,
        }

    async def prepare(
        self, inviter: str, invitation: str, granted: Capabilities, *, now: float
    ) -> tuple[str, bytes, bytes]:
        """The accepting side, before it asks the inviter's vault: a pending record, its new key, and the proof
        (:func:`acceptance_message`) that this vault, for this user, holds it."""
        meta = await self._meta()
        self._check_room(meta)
        pending, own = "pending-" + _short_id()[:16], new_key()
        meta["connections"][pending] = self._record(inviter, own, None, granted, Capabilities(), "pending", now)
        await self._commit(meta, now, "connection.accept", peer=inviter)
        key = public_key(own)
        proof = sign(own, acceptance_message(invitation=invitation, sender=self.store.user, inviter=inviter, key=key))
        return pending, key, proof

    async def confirm(
        self, pending: str, connection: str, *, peer_key: bytes, received: Capabilities, now: float
    ) -> None:
        """The inviter's vault accepted: the pending record becomes the active connection ``connection``."""
        check_field(connection, "connection")
        meta = await self._meta()
        record = meta["connections"].get(pending)
        if record is None or record["status"] != "pending" or connection in meta["connections"]:
            raise ConnectionRefused("no such pending connection")
        if len(peer_key) != 32:
            raise ConnectionRefused("the peer's key is 32 bytes")
        del meta["connections"][pending]
        record.update(status="active", peer_key=peer_key.hex(), received=received.to_json())
        meta["connections"][connection] = record
        await self._commit(meta, now, "connection.confirmed", connection=connection, peer=record["peer"])

    async def connection(self, connection: str) -> dict[str, Any]:
        meta = await self._meta()
        record = meta["connections"].get(connection)
        if record is None:
            raise ConnectionRefused(f"no connection {connection}")
        return dict(record)

    async def connections(self) -> list[dict[str, Any]]:
        meta = await self._meta()
        return [
            {
                "connection": ident,
                "peer": r["peer"],
                "status": r["status"],
                "granted": r["granted"],
                "received": r["received"],
                "key": public_key(bytes.fromhex(r["key"])).hex() if r["key"] else None,
                "created": r["created"],
                "revoked_at": r["revoked_at"],
            }
            for ident, r in sorted(meta["connections"].items())
        ]

    async def revoke(self, connection: str, *, now: float, by_peer: bool = False) -> None:
        """At once: the next request on this connection, either way, is refused; the own key is destroyed.
        ``by_peer``: the peer's vault announced its own revocation (audited as ``connection.revoked_by_peer``)."""
        meta = await self._meta()
        record = meta["connections"].get(connection)
        if record is None:
            raise ConnectionRefused(f"no connection {connection}")
        record.update(status="revoked", revoked_at=now, key=None)
        op = "connection.revoked_by_peer" if by_peer else "connection.revoke"
        await self._commit(meta, now, op, connection=connection, peer=record["peer"])

    async def grant(self, connection: str, granted: Capabilities, *, now: float) -> None:
        meta = await self._meta()
        record = self._active(meta, connection)
        record["granted"] = granted.to_json()
        await self._commit(meta, now, "connection.grant", connection=connection, granted=granted.to_json())

    @staticmethod
    def _active(meta: dict[str, Any], connection: str) -> dict[str, Any]:
        record = meta["connections"].get(connection)
        if record is None or record["status"] != "active":
            raise ConnectionRefused(f"no active connection {connection}")
        assert isinstance(record, dict)
        return record

    async def authorize(
        self, connection: str, *, op: str, message_id: str, digest: str, now: float, key: bytes | None = None
    ) -> Authorization:
        """This vault's signature (its key for ``connection``, or ``key``) for one request to the peer's vault."""
        meta = await self._meta()
        record = self._active(meta, connection)
        message = authorization_message(
            kind="connection",
            ident=connection,
            sender=self.store.user,
            target=record["peer"],
            op=op,
            message_id=message_id,
            at=now,
            digest=digest,
        )
        return Authorization("connection", connection, now, sign(key or bytes.fromhex(record["key"]), message))

    async def rotate(self, connection: str, *, now: float) -> tuple[bytes, bytes]:
        """A new key for this side of ``connection``: returns (old seed, new public key); the old seed signs the
        announcement to the peer (``connection.rotate``)."""
        meta = await self._meta()
        record = self._active(meta, connection)
        old, new = bytes.fromhex(record["key"]), new_key()
        record["key"] = new.hex()
        await self._commit(meta, now, "connection.rotate", connection=connection, peer=record["peer"])
        return old, public_key(new)

    async def check_peer(
        self, authorization: Authorization, *, sender: str, op: str, message_id: str, digest: str, now: float
    ) -> tuple[str, dict[str, Any]]:
        """The active connection this peer request comes through, checked: the sender is its peer, the signature is
        by the key it names, fresh and bound to this message. Raises :class:`ConnectionRefused` otherwise."""
        meta = await self._meta()
        record = meta["connections"].get(authorization.id)
        if authorization.kind != "connection" or record is None or record["status"] != "active":
            raise ConnectionRefused("no active connection lets this sender reach this vault")
        if record["peer"] != sender or record["peer_key"] is None:
            raise ConnectionRefused("no active connection lets this sender reach this vault")
        verify(authorization, bytes.fromhex(record["peer_key"]), **self._bound(sender, op, message_id, digest, now))
        return authorization.id, dict(record)

    def _bound(self, sender: str, op: str, message_id: str, digest: str, now: float) -> dict[str, Any]:
        """What a peer request's authorization must be bound to (for :func:`verify`)."""
        return {
            "sender": sender,
            "target": self.store.user,
            "op": op,
            "message_id": message_id,
            "digest": digest,
            "now": now,
        }

    async def peer_rotated(self, connection: str, new_key: bytes, *, now: float) -> None:
        meta = await self._meta()
        record = self._active(meta, connection)
        if len(new_key) != 32:
            raise ConnectionRefused("a connection key is 32 bytes")
        record["peer_key"] = new_key.hex()
        await self._commit(meta, now, "connection.peer_rotated", connection=connection, peer=record["peer"])

    # --- profile ----------------------------------------------------------------------------------------------

    async def set_profile(self, fields: dict[str, str | None], *, now: float) -> list[str]:
        """Set (or, with None, delete) profile fields; returns the fields now set."""
        meta = await self._meta()
        profile: dict[str, str] = meta["profile"]
        writes: dict[str, bytes] = {}
        removed: list[str] = []
        for name, value in fields.items():
            check_field(name, "profile field")
            if name in profile:
                removed.append(profile.pop(name))
            if value is None:
                continue
            if not isinstance(value, str) or len(value.encode()) > MAX_PROFILE_VALUE:
                raise VaultRejected(f"a profile value is text of at most {MAX_PROFILE_VALUE} bytes")
            profile[name] = item = _short_id()
            writes[item] = value.encode()
        if len(profile) > MAX_PROFILE_FIELDS:
            raise VaultRejected(f"a profile has at most {MAX_PROFILE_FIELDS} fields")
        await self._commit(meta, now, "profile.set", writes, fields=sorted(fields), removed=removed)
        return sorted(profile)

    async def profile(self, fields: tuple[str, ...] | None = None) -> dict[str, str]:
        """The profile's values (all, or the named fields that are set)."""
        meta = await self._meta()
        profile: dict[str, str] = meta["profile"]
        names = sorted(profile) if fields is None else [f for f in fields if f in profile]
        return {name: (await self.store.read_item(profile[name])).decode() for name in names}

    async def shared_profile(
        self, fields: tuple[str, ...] | None, *, granted: tuple[str, ...], now: float, **who: Any
    ) -> dict[str, str]:
        """A peer's (or business's) read of profile fields: every field asked must be granted; audited."""
        asked = granted if fields is None else fields
        denied = [f for f in asked if f not in granted]
        if denied:
            raise CapabilityDenied(f"not shared with this connection or contract: {', '.join(denied)}")
        values = await self.profile(tuple(asked))
        meta = await self._meta()
        await self._commit(meta, now, "peer.profile.get", fields=sorted(values), **who)
        return values

    async def shared_secret(self, name: str, *, granted: tuple[str, ...], now: float, **who: Any) -> tuple[bytes, int]:
        if name not in granted:
            raise CapabilityDenied(f"secret {name} is not shared with this connection")
        entry = await self.describe(name)
        if entry["critical"]:
            raise CapabilityDenied("a critical secret is never shared")
        value, version, _ = await self.get(name, now=now)
        meta = await self._meta()
        await self._commit(meta, now, "peer.secret.get", name=name, version=version, **who)
        return value, version

    # --- messages ---------------------------------------------------------------------------------------------

    async def deliver(self, message_id: str, text: str, *, connection: str, sender: str, now: float) -> None:
        """A connected peer's message into the inbox (at most once per message id)."""
        meta = await self._meta()
        if any(m["id"] == message_id and m["connection"] == connection for m in meta["inbox"]):
            return
        item = _short_id()
        meta["inbox"].append(
            {"id": message_id, "connection": connection, "from": sender, "at": now, "read_at": None, "item": item}
        )
        removed = [old["item"] for old in meta["inbox"][:-MAX_MESSAGES]]
        meta["inbox"] = meta["inbox"][-MAX_MESSAGES:]
        await self._commit(
            meta, now, "message.received", {item: text.encode()}, connection=connection, peer=sender, removed=removed
        )

    async def sent(
        self, message_id: str, text: str, *, connection: str, peer: str, delivered_at: float | None, now: float
    ) -> None:
        meta = await self._meta()
        item = _short_id()
        meta["outbox"].append(
            {
                "id": message_id,
                "connection": connection,
                "to": peer,
                "at": now,
                "delivered_at": delivered_at,
                "read_at": None,
                "item": item,
            }
        )
        removed = [old["item"] for old in meta["outbox"][:-MAX_MESSAGES]]
        meta["outbox"] = meta["outbox"][-MAX_MESSAGES:]
        await self._commit(
            meta, now, "message.sent", {item: text.encode()}, connection=connection, peer=peer, removed=removed
        )

    async def mark_read(self, message_id: str, *, now: float) -> dict[str, Any]:
        """The owner read an inbox message: returns its entry (the app then sends the read receipt)."""
        meta = await self._meta()
        entry = next((m for m in meta["inbox"] if m["id"] == message_id), None)
        if entry is None:
            raise MessageNotFound(f"no message {message_id} in the inbox")
        if entry["read_at"] is None:
            entry["read_at"] = now
            await self._commit(meta, now, "message.read", connection=entry["connection"])
        return dict(entry)

    async def receipt(self, message_id: str, *, connection: str, read_at: float, now: float) -> None:
        """The peer's read receipt for a message this vault sent on ``connection``."""
        meta = await self._meta()
        entry = next((m for m in meta["outbox"] if m["id"] == message_id and m["connection"] == connection), None)
        if entry is None:
            raise MessageNotFound(f"no message {message_id} sent on this connection")
        if entry["read_at"] is None:
            entry["read_at"] = read_at
            await self._commit(meta, now, "message.receipt", connection=connection)

    async def messages(self) -> dict[str, list[dict[str, Any]]]:
        meta = await self._meta()
        out: dict[str, list[dict[str, Any]]] = {}
        for box in ("inbox", "outbox"):
            out[box] = []
            for entry in meta[box]:
                text = (await self.store.read_item(entry["item"])).decode()
                out[box].append({k: v for k, v in entry.items() if k != "item"} | {"text": text})
        return out

    # --- business data contracts ------------------------------------------------------------------------------

    async def accept_contract(self, contract: DataContract, signature: bytes, *, now: float) -> None:
        contract.check_signature(signature)
        if contract.user != self.store.user:
            raise ContractInvalid(f"the contract is for {contract.user}, not {self.store.user}")
        if contract.expires_at <= now:
            raise ContractInvalid("the contract has expired")
        meta = await self._meta()
        if contract.id in meta["contracts"] or len(meta["contracts"]) >= MAX_CONTRACTS:
            raise ContractInvalid("this contract was already accepted (or the vault holds too many)")
        meta["contracts"][contract.id] = {
            "contract": contract.to_json(),
            "signature": signature.hex(),
            "status": "active",
            "accepted_at": now,
            "revoked_at": None,
        }
        await self._commit(
            meta,
            now,
            "contract.accept",
            contract=contract.id,
            business=contract.business,
            fields=list(contract.fields),
            purpose=contract.purpose,
        )

    async def revoke_contract(self, ident: str, *, now: float) -> None:
        meta = await self._meta()
        record = meta["contracts"].get(ident)
        if record is None:
            raise ContractRevoked(f"no contract {ident}")
        record.update(status="revoked", revoked_at=now)
        await self._commit(meta, now, "contract.revoke", contract=ident, business=record["contract"]["business"])

    async def contracts(self, now: float) -> list[dict[str, Any]]:
        meta = await self._meta()
        listed = []
        for ident, record in sorted(meta["contracts"].items()):
            expired = record["contract"]["expires_at"] <= now
            status = "expired" if record["status"] == "active" and expired else record["status"]
            listed.append(
                {"contract": ident, **record["contract"], "status": status, "revoked_at": record["revoked_at"]}
            )
        return listed

    async def check_contract(
        self, authorization: Authorization, *, sender: str, op: str, message_id: str, digest: str, now: float
    ) -> DataContract:
        """The accepted, unrevoked, unexpired contract this business request comes under, its signature checked."""
        meta = await self._meta()
        record = meta["contracts"].get(authorization.id)
        if authorization.kind != "contract" or record is None or record["status"] != "active":
            raise ContractRevoked("no accepted contract of that id (or it was revoked)")
        contract = DataContract.from_json(record["contract"])
        if now >= contract.expires_at:
            raise ContractExpired("the contract has expired")
        if sender != contract.business:
            raise ConnectionRefused("the contract is another business's")
        verify(authorization, contract.key, **self._bound(sender, op, message_id, digest, now))
        return contract
