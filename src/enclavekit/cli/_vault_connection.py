"""``enclavekit vault connection invite|accept|list|revoke|rotate``: connections between users' vaults.

``invite USER --pin PIN [--share-field F]... [--share-secret S]... [--messages] [--calls] [--ttl SECONDS]`` prints
the single-use invitation (JSON) to hand to the other user; ``accept USER INVITATION --pin PIN [--share-...]``
(``INVITATION`` is that JSON, or ``-`` for stdin) connects; ``list``, ``revoke USER CONNECTION`` (at once) and
``rotate USER CONNECTION`` (a new key on this side, announced to the peer's vault). Each takes ``--state`` and
``--json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from enclavekit.cli.vault import JSON, PIN, STATE, _emit, _fail, _run_as_user

__all__ = ["connection_app", "grant_options", "read_document"]

connection_app: typer.Typer = typer.Typer(
    help="Connections between users' vaults: invite, accept, list, revoke, rotate."
)

FIELDS = typer.Option([], "--share-field", help="A profile field the peer may read (repeatable).")
SECRETS = typer.Option([], "--share-secret", help="A (non-critical) secret the peer may read (repeatable).")
MESSAGES = typer.Option(False, "--messages", help="The peer may send messages to this vault.")
CALLS = typer.Option(False, "--calls", help="The peer may call (signal calls to) this vault's owner.")


def grant_options(fields: list[str], secrets: list[str], messages: bool, calls: bool) -> dict[str, Any]:
    return {"profile": fields, "secrets": secrets, "messages": messages, "calls": calls}


def read_document(text: str, as_json: bool, what: str) -> dict[str, Any]:
    """A JSON object given as an argument, or ``-``: read from stdin."""
    try:
        document = json.loads(sys.stdin.read(256 * 1024) if text == "-" else text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        _fail({"code": "bad_input", "message": f"{what} is a JSON object (or - to read it from stdin)"}, as_json)
    return dict(document)


@connection_app.command("invite")
def invite(
    user: str = typer.Argument(...),
    pin: str = PIN,
    fields: list[str] = FIELDS,
    secrets: list[str] = SECRETS,
    messages: bool = MESSAGES,
    calls: bool = CALLS,
    ttl: int = typer.Option(600, "--ttl", min=1, max=86400, help="Seconds before the invitation expires."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Make a single-use invitation granting what the options name; print it (give it to the other user)."""
    grant = grant_options(fields, secrets, messages, calls)

    async def go(client: Any) -> dict[str, Any]:
        return {"invitation": await client.invite(grant=grant, ttl=ttl, pin=pin)}

    result = _run_as_user(state, user, as_json, go)
    _emit(result, as_json, json.dumps(result["invitation"]))


@connection_app.command("accept")
def accept(
    user: str = typer.Argument(...),
    invitation: str = typer.Argument(
        ..., help="The invitation's JSON (as `connection invite --json` prints it), or - to read it from stdin."
    ),
    pin: str = PIN,
    fields: list[str] = FIELDS,
    secrets: list[str] = SECRETS,
    messages: bool = MESSAGES,
    calls: bool = CALLS,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Use an invitation: connect USER's vault to the inviter's, granting what the options name."""
    document = read_document(invitation, as_json, "the invitation")
    if isinstance(document.get("invitation"), dict):  # the whole output of `connection invite --json`
        document = document["invitation"]
    grant = grant_options(fields, secrets, messages, calls)
    result = _run_as_user(state, user, as_json, lambda c: c.accept(document, grant=grant, pin=pin))
    _emit(result, as_json, f"connected to {result['peer']}: connection {result['connection']}")


@connection_app.command("list")
def listing(user: str = typer.Argument(...), pin: str = PIN, state: Path = STATE, as_json: bool = JSON) -> None:
    """List USER's connections: peer, status, what each side grants."""

    async def go(client: Any) -> dict[str, Any]:
        return {"connections": await client.connections(pin=pin)}

    result = _run_as_user(state, user, as_json, go)
    lines = [
        f"{c['connection']}\t{c['peer']}\t{c['status']}\t{json.dumps(c['granted'])}" for c in result["connections"]
    ]
    _emit(result, as_json, "\n".join(lines))


@connection_app.command("revoke")
def revoke(
    user: str = typer.Argument(...),
    connection: str = typer.Argument(...),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Revoke a connection: the peer's next request is refused (and the peer's vault is told, if it is open)."""

    async def go(client: Any) -> dict[str, Any]:
        return {"connection": connection, "revoked": True, "peer_told": await client.revoke(connection, pin=pin)}

    result = _run_as_user(state, user, as_json, go)
    _emit(result, as_json, f"revoked {connection}")


@connection_app.command("rotate")
def rotate(
    user: str = typer.Argument(...),
    connection: str = typer.Argument(...),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """A new connection key on USER's side, announced to the peer's vault."""

    async def go(client: Any) -> dict[str, Any]:
        return {"connection": connection, "key": await client.rotate(connection, pin=pin)}

    result = _run_as_user(state, user, as_json, go)
    _emit(result, as_json, f"{connection}: new key {result['key']}")
