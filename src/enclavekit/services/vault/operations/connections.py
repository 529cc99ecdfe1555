"""Connections. The owner's operations: ``connection.invite`` ``{grant?, ttl?}``, ``connection.accept``
``{inviter, invitation, grant?}`` (a pending record, a new key and its proof), ``connection.confirm`` ``{pending,
connection, key, granted?}``, ``connection.list``, ``connection.revoke`` ``{connection}``, ``connection.grant``
``{connection, grant}``, ``connection.sign`` ``{connection, op, message_id, body}`` (this vault's signature for
one request to the peer's vault) and ``connection.rotate`` ``{connection, message_id}`` — each with ``pin`` or
``session``.

A peer's operations (``MessageSpace.{user}.forVault.{sender}.{op}``): ``connection.accept`` ``{invitation, token,
key, proof, grant?}`` (the invitation is the authorization: single use, short-lived; ``proof`` is the new key's
signature binding the accepting user's name, which the host bridge could otherwise misstate) and
``connection.rotate`` ``{key, auth}`` (signed by the key it replaces), ``connection.revoke`` ``{auth}`` (the peer
revoked on its side). :func:`through_connection` is the check
every other peer operation makes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.connection import (
    INVITATION_TTL,
    Authorization,
    AuthorizationInvalid,
    Capabilities,
    ConnectionRefused,
    body_digest,
    check_field,
)
from enclavekit.services.vault.connection_book import ConnectionBook
from enclavekit.services.vault.operations import BadPayload, Handler, Request, payload_hex, payload_str

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["OPERATIONS", "PEER_OPERATIONS", "peer_auth", "peer_book", "through_connection"]


def _connection(payload: Mapping[str, Any]) -> str:
    return check_field(payload_str(payload, "connection"), "connection")


def peer_auth(request: Request) -> tuple[Authorization, str]:
    """A peer request's authorization and the digest of its body (the payload without ``auth``)."""
    if request.sender is None:
        raise AuthorizationInvalid("not a peer request")
    authorization = Authorization.from_json(request.payload.get("auth"))
    return authorization, body_digest({k: v for k, v in request.payload.items() if k != "auth"})


async def through_connection(vault: VaultEnclave, request: Request) -> tuple[ConnectionBook, str, dict[str, Any]]:
    """For a peer request: the target's open state, and the active connection that lets the sender in — checked
    on every request: it exists, is not revoked, names the sender, and its key signed this very message, operation
    and body recently. (Operations on one user run one at a time: ``VaultEnclave.state_lock``.)"""
    book, authorization, bound = await peer_book(vault, request)
    connection, record = await book.check_peer(authorization, **bound)
    return book, connection, record


async def peer_book(vault: VaultEnclave, request: Request) -> tuple[ConnectionBook, Authorization, dict[str, Any]]:
    """The target's open state, the request's authorization, and what it must be bound to (sender, operation,
    message id, body digest, time) — for :meth:`ConnectionBook.check_peer` or ``check_contract``."""
    authorization, digest = peer_auth(request)
    book = ConnectionBook(await vault.open_for_peer(request.user))
    assert request.sender is not None
    bound = {"sender": request.sender, "op": request.op, "message_id": request.message_id, "digest": digest}
    return book, authorization, {**bound, "now": request.now}


async def invite(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    granted = Capabilities.from_json(request.payload.get("grant"))
    ttl = request.payload.get("ttl", INVITATION_TTL)
    if type(ttl) not in (int, float):
        raise BadPayload("ttl is a number of seconds")
    ident, token, expires = await ConnectionBook(opened.store).invite(granted, ttl=float(ttl), now=request.now)
    invitation = {"inviter": request.user, "id": ident, "token": token.hex(), "expires_at": expires}
    return {"invitation": invitation, "session": opened.session}


async def accept(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    inviter = check_field(payload_str(request.payload, "inviter"), "user")
    invitation = check_field(payload_str(request.payload, "invitation"), "invitation")
    if inviter == request.user:
        raise BadPayload("a vault does not connect to itself")
    granted = Capabilities.from_json(request.payload.get("grant"))
    book = ConnectionBook(opened.store)
    pending, key, proof = await book.prepare(inviter, invitation, granted, now=request.now)
    return {"pending": pending, "key": key.hex(), "proof": proof.hex(), "session": opened.session}


async def confirm(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    payload = request.payload
    pending, connection = payload_str(payload, "pending"), _connection(payload)
    received = Capabilities.from_json(payload.get("granted"))
    book = ConnectionBook(opened.store)
    await book.confirm(
        pending, connection, peer_key=payload_hex(payload, "key", 32), received=received, now=request.now
    )
    return {"connection": connection, "session": opened.session}


async def listing(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    return {"connections": await ConnectionBook(opened.store).connections(), "session": opened.session}


async def revoke(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    await ConnectionBook(opened.store).revoke(_connection(request.payload), now=request.now)
    return {"revoked": True, "session": opened.session}


async def grant(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    granted = Capabilities.from_json(request.payload.get("grant"))
    await ConnectionBook(opened.store).grant(_connection(request.payload), granted, now=request.now)
    return {"granted": granted.to_json(), "session": opened.session}


async def sign(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    payload = request.payload
    op = payload_str(payload, "op")
    message_id, digest = payload_hex(payload, "message_id", 16).hex(), payload_hex(payload, "body", 32).hex()
    book = ConnectionBook(opened.store)
    connection = _connection(payload)
    record = await book.connection(connection)
    authorization = await book.authorize(connection, op=op, message_id=message_id, digest=digest, now=request.now)
    return {"auth": authorization.to_json(), "peer": record["peer"], "session": opened.session}


async def rotate(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    """A new key for this side; the answer carries the announcement for the peer, signed by the old key."""
    opened = await vault.unlock(request)
    connection, message_id = _connection(request.payload), payload_hex(request.payload, "message_id", 16).hex()
    book = ConnectionBook(opened.store)
    record = await book.connection(connection)
    old, new = await book.rotate(connection, now=request.now)
    digest = body_digest({"key": new.hex()})
    authorization = await book.authorize(
        connection, op="connection.rotate", message_id=message_id, digest=digest, now=request.now, key=old
    )
    return {"key": new.hex(), "auth": authorization.to_json(), "peer": record["peer"], "session": opened.session}


async def peer_accept(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    assert request.sender is not None
    payload = request.payload
    invitation = check_field(payload_str(payload, "invitation"), "invitation")
    token, key, proof = (
        payload_hex(payload, "token", 32),
        payload_hex(payload, "key", 32),
        payload_hex(payload, "proof", 64),
    )
    received = Capabilities.from_json(payload.get("grant"))
    if request.sender == request.user:
        raise ConnectionRefused("a vault does not connect to itself")
    book = ConnectionBook(await vault.open_for_peer(request.user))
    connection, own, granted = await book.consume_invitation(
        invitation, token, peer=request.sender, peer_key=key, proof=proof, received=received, now=request.now
    )
    return {"connection": connection, "key": own.hex(), "granted": granted.to_json()}


async def peer_revoke(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    """The peer revoked the connection on its side and says so (signed by its key, before it destroyed it)."""
    book, connection, _ = await through_connection(vault, request)
    await book.revoke(connection, now=request.now, by_peer=True)
    return {"revoked": True}


async def peer_rotate(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    key = payload_hex(request.payload, "key", 32)
    book, connection, _ = await through_connection(vault, request)
    await book.peer_rotated(connection, key, now=request.now)
    return {"rotated": True}


OPERATIONS: Final[dict[str, Handler]] = {
    "connection.invite": invite,
    "connection.accept": accept,
    "connection.confirm": confirm,
    "connection.list": listing,
    "connection.revoke": revoke,
    "connection.grant": grant,
    "connection.sign": sign,
    "connection.rotate": rotate,
}
PEER_OPERATIONS: Final[dict[str, Handler]] = {
    "connection.accept": peer_accept,
    "connection.rotate": peer_rotate,
    "connection.revoke": peer_revoke,
}
