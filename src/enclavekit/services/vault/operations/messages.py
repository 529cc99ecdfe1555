"""Messages between connected users, with delivery and read receipts. One name per route, the same on both sides
(the reference mixed ``message`` and ``new-message``):

* peer ``message.send`` ``{id, text, auth}`` — the recipient's vault stores it (the connection must grant the
  sender ``messages``) and answers ``delivered_at``: the delivery receipt;
* owner ``message.sent`` ``{connection, id, text, delivered_at}`` — the sender's app records it in its outbox;
* owner ``message.read`` ``{id}`` — marks an inbox message read and answers its entry (the app then sends the
  receipt);
* peer ``message.receipt`` ``{id, read_at, auth}`` — the read receipt, into the sender's outbox;
* owner ``message.list`` — inbox and outbox, with ``delivered_at`` and ``read_at``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.connection import Capabilities, CapabilityDenied, check_field
from enclavekit.services.vault.connection_book import MAX_MESSAGE, ConnectionBook
from enclavekit.services.vault.operations import BadPayload, Handler, Request, payload_str
from enclavekit.services.vault.operations.connections import through_connection

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["OPERATIONS", "PEER_OPERATIONS"]

_ID: Final = re.compile(r"[0-9a-f]{32}")


def _message_id(request: Request) -> str:
    ident = payload_str(request.payload, "id")
    if not _ID.fullmatch(ident):
        raise BadPayload("id is 32 lowercase hex digits")
    return ident


def _text(request: Request) -> str:
    text = payload_str(request.payload, "text")
    if not text or len(text.encode()) > MAX_MESSAGE:
        raise BadPayload(f"text is 1..{MAX_MESSAGE} bytes")
    return text


def _time(request: Request, key: str) -> float | None:
    value = request.payload.get(key)
    if value is not None and type(value) not in (int, float):
        raise BadPayload(f"{key} is a unix time")
    return None if value is None else float(value)


async def peer_send(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    ident, text = _message_id(request), _text(request)
    book, connection, record = await through_connection(vault, request)
    if not Capabilities.from_json(record["granted"]).messages:
        raise CapabilityDenied("this connection may not send messages here")
    assert request.sender is not None
    await book.deliver(ident, text, connection=connection, sender=request.sender, now=request.now)
    return {"delivered_at": request.now}


async def peer_receipt(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    ident, read_at = _message_id(request), _time(request, "read_at")
    if read_at is None:
        raise BadPayload("read_at is a unix time")
    book, connection, _ = await through_connection(vault, request)
    await book.receipt(ident, connection=connection, read_at=read_at, now=request.now)
    return {"recorded": True}


async def sent(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    connection = check_field(payload_str(request.payload, "connection"), "connection")
    ident, text, delivered_at = _message_id(request), _text(request), _time(request, "delivered_at")
    book = ConnectionBook(opened.store)
    record = await book.connection(connection)
    await book.sent(ident, text, connection=connection, peer=record["peer"], delivered_at=delivered_at, now=request.now)
    return {"recorded": True, "session": opened.session}


async def read(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    entry = await ConnectionBook(opened.store).mark_read(_message_id(request), now=request.now)
    entry.pop("item", None)
    return {"message": entry, "session": opened.session}


async def listing(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    return {**await ConnectionBook(opened.store).messages(), "session": opened.session}


OPERATIONS: Final[dict[str, Handler]] = {"message.sent": sent, "message.read": read, "message.list": listing}
PEER_OPERATIONS: Final[dict[str, Handler]] = {"message.send": peer_send, "message.receipt": peer_receipt}
