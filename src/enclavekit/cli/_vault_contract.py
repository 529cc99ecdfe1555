"""``enclavekit vault contract offer|accept|revoke|list|read``: business (B2C) data contracts.

``offer BUSINESS USER --field F... --purpose TEXT [--expires-in SECONDS]`` (the business signs with its key,
``STATE/vault/businesses/BUSINESS.key``, made on first use; prints ``{contract, signature}``); ``accept USER OFFER
--pin PIN`` (``OFFER`` that JSON, or ``-``); ``revoke USER ID --pin PIN``; ``list USER --pin PIN``; ``read BUSINESS
USER ID [--field F]...`` (as the business). ``--state``, ``--json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from enclavekit.cli._vault_connection import read_document
from enclavekit.cli.vault import JSON, PIN, STATE, _emit, _fail, _run_as_user
from enclavekit.errors import Error

__all__ = ["business_key", "contract_app"]

contract_app: typer.Typer = typer.Typer(
    help="Business data contracts: offer (as a business), accept, revoke, list, read."
)


def business_key(state: Path, business: str) -> bytes:
    """The business's Ed25519 seed (``STATE/vault/businesses/{business}.key``, PKCS#8 PEM, 0600; made once)."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from enclavekit.client.identity import load_or_create
    from enclavekit.services.vault.objects import check_user

    key, _ = load_or_create(state / "vault" / "businesses" / f"{check_user(business)}.key")
    return key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@contract_app.command("offer")
def offer(
    business: str = typer.Argument(...),
    user: str = typer.Argument(...),
    field: list[str] = typer.Option(..., "--field", help="A profile field the business asks for (repeatable)."),
    purpose: str = typer.Option(..., "--purpose", help="What the business uses the data for."),
    expires_in: int = typer.Option(30 * 86400, "--expires-in", min=1, help="Seconds until the contract ends."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """As BUSINESS: sign a data contract asking USER for the fields; print it (the user accepts it)."""
    from enclavekit.services.vault.data_contract import offer_contract

    try:
        contract, signature = offer_contract(
            business_key(state, business),
            business=business,
            user=user,
            fields=field,
            purpose=purpose,
            expires_at=time.time() + expires_in,
        )
    except Error as exc:
        _fail(exc.to_json(), as_json)
    result = {"contract": contract.to_json(), "signature": signature.hex()}
    _emit(result, as_json, json.dumps(result))


@contract_app.command("accept")
def accept(
    user: str = typer.Argument(...),
    document: str = typer.Argument(..., metavar="OFFER", help="The offer's JSON, or - to read it from stdin."),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Accept a business's signed data contract: it may read the fields it names until it ends or is revoked."""
    offered = read_document(document, as_json, "the offer")
    contract, signature = offered.get("contract"), str(offered.get("signature", ""))
    result = _run_as_user(state, user, as_json, lambda c: c.accept_contract(contract, signature, pin=pin))
    result.pop("session", None)
    _emit(result, as_json, f"accepted contract {result['contract']} of {result['business']}")


@contract_app.command("revoke")
def revoke(
    user: str = typer.Argument(...),
    ident: str = typer.Argument(..., metavar="ID"),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Revoke a contract: the business's next read is refused."""

    async def go(client: Any) -> dict[str, Any]:
        await client.revoke_contract(ident, pin=pin)
        return {"contract": ident, "revoked": True}

    result = _run_as_user(state, user, as_json, go)
    _emit(result, as_json, f"revoked {ident}")


@contract_app.command("list")
def listing(user: str = typer.Argument(...), pin: str = PIN, state: Path = STATE, as_json: bool = JSON) -> None:
    """List USER's contracts: business, fields, purpose, status (active, revoked, expired)."""

    async def go(client: Any) -> dict[str, Any]:
        return {"contracts": await client.contracts(pin=pin)}

    result = _run_as_user(state, user, as_json, go)
    lines = [
        f"{c['contract']}\t{c['business']}\t{c['status']}\t{','.join(c['fields'])}\t{c['purpose']}"
        for c in result["contracts"]
    ]
    _emit(result, as_json, "\n".join(lines))


@contract_app.command("read")
def read(
    business: str = typer.Argument(...),
    user: str = typer.Argument(...),
    ident: str = typer.Argument(..., metavar="ID"),
    field: list[str] = typer.Option([], "--field", help="Only this field (repeatable)."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """As BUSINESS: read USER's fields under contract ID."""
    key = business_key(state, business)

    async def go(client: Any) -> dict[str, Any]:
        return {"fields": await client.contract_read(user, ident, key, field or None)}

    result = _run_as_user(state, business, as_json, go)
    _emit(result, as_json, "\n".join(f"{k}\t{v}" for k, v in result["fields"].items()))
