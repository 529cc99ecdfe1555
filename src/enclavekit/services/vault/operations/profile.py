"""Profile and personal data, shared per connection. The owner's: ``profile.set`` ``{fields: {name: text|null}}``
and ``profile.get`` ``{fields?}``. A connected peer's: ``profile.get`` ``{fields?, auth}`` (only fields the
connection — or a business's accepted data contract — grants: asking for any other is ``capability_denied``;
without ``fields``, every granted field that is set) and ``secret.get`` ``{name, auth}`` (a secret the connection
grants; never a critical one). Each peer read is in the owner's audit feed."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from enclavekit.services.vault.connection import Capabilities, check_field
from enclavekit.services.vault.connection_book import ConnectionBook
from enclavekit.services.vault.operations import BadPayload, Handler, Request, payload_str
from enclavekit.services.vault.operations.connections import peer_auth, through_connection
from enclavekit.services.vault.operations.contracts import through_contract

if TYPE_CHECKING:
    from enclavekit.services.vault.enclave_app import VaultEnclave

__all__ = ["OPERATIONS", "PEER_OPERATIONS", "asked_fields"]


def asked_fields(payload: Mapping[str, Any]) -> tuple[str, ...] | None:
    fields = payload.get("fields")
    if fields is None:
        return None
    if not isinstance(fields, list) or len(fields) > 64:
        raise BadPayload("fields is a list of at most 64 names")
    return tuple(check_field(f, "profile field") for f in fields)


async def set_fields(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    fields = request.payload.get("fields")
    if not isinstance(fields, dict) or not fields or len(fields) > 64:
        raise BadPayload("fields is an object of 1..64 name: text (or null to delete)")
    names = await ConnectionBook(opened.store).set_profile(fields, now=request.now)
    return {"fields": names, "session": opened.session}


async def get_fields(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    opened = await vault.unlock(request)
    return {
        "fields": await ConnectionBook(opened.store).profile(asked_fields(request.payload)),
        "session": opened.session,
    }


async def peer_get_fields(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    """Through a connection (its ``profile`` grant) or a business's data contract (its ``fields``)."""
    fields = asked_fields(request.payload)
    authorization, _ = peer_auth(request)
    if authorization.kind == "contract":
        book, contract = await through_contract(vault, request)
        values = await book.shared_profile(
            fields,
            granted=contract.fields,
            now=request.now,
            contract=contract.id,
            business=request.sender,
            purpose=contract.purpose,
        )
        return {"fields": values}
    book, connection, record = await through_connection(vault, request)
    granted = Capabilities.from_json(record["granted"]).profile
    values = await book.shared_profile(
        fields, granted=granted, now=request.now, connection=connection, peer=request.sender
    )
    return {"fields": values}


async def peer_get_secret(vault: VaultEnclave, request: Request) -> dict[str, Any]:
    name = payload_str(request.payload, "name")
    book, connection, record = await through_connection(vault, request)
    granted = Capabilities.from_json(record["granted"]).secrets
    value, version = await book.shared_secret(
        name, granted=granted, now=request.now, connection=connection, peer=request.sender
    )
    return {"value": base64.b64encode(value).decode(), "version": version}


OPERATIONS: Final[dict[str, Handler]] = {"profile.set": set_fields, "profile.get": get_fields}
PEER_OPERATIONS: Final[dict[str, Handler]] = {"profile.get": peer_get_fields, "secret.get": peer_get_secret}
