"""``enclavekit vault profile set|get``: a user's profile fields, and a connected peer's shared ones.

``set USER --pin PIN --field NAME=VALUE... [--delete NAME]...``; ``get USER --pin PIN [--field NAME]...
[--connection ID]`` (with ``--connection``: the fields the peer shares on that connection). ``--state``, ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from enclavekit.cli.vault import JSON, PIN, STATE, _emit, _fail, _run_as_user

__all__ = ["profile_app"]

profile_app: typer.Typer = typer.Typer(
    help="Profile fields: set your own, read yours or a connected peer's shared ones."
)


@profile_app.command("set")
def set_fields(
    user: str = typer.Argument(...),
    pin: str = PIN,
    field: list[str] = typer.Option([], "--field", help="NAME=VALUE (repeatable)."),
    delete: list[str] = typer.Option([], "--delete", help="A field to delete (repeatable)."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Set (or delete) profile fields."""
    fields: dict[str, str | None] = dict.fromkeys(delete)
    for item in field:
        name, sep, value = item.partition("=")
        if not sep:
            _fail({"code": "bad_input", "message": f"--field takes NAME=VALUE, not {item!r}"}, as_json)
        fields[name] = value
    if not fields:
        _fail({"code": "bad_input", "message": "name at least one --field or --delete"}, as_json)

    async def go(client: Any) -> dict[str, Any]:
        return {"fields": await client.set_profile(fields, pin=pin)}

    result = _run_as_user(state, user, as_json, go)
    _emit(result, as_json, "fields set: " + ", ".join(result["fields"]))


@profile_app.command("get")
def get_fields(
    user: str = typer.Argument(...),
    pin: str = PIN,
    field: list[str] = typer.Option([], "--field", help="Only this field (repeatable)."),
    connection: str | None = typer.Option(None, "--connection", help="Read the peer's shared fields instead."),
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Print profile fields (USER's own, or with --connection the peer's that it shares)."""
    fields = field or None

    async def go(client: Any) -> dict[str, Any]:
        if connection is None:
            return {"fields": await client.profile(fields, pin=pin)}
        return {"fields": await client.peer_profile(connection, fields, pin=pin), "connection": connection}

    result = _run_as_user(state, user, as_json, go)
    _emit(result, as_json, "\n".join(f"{k}\t{v}" for k, v in result["fields"].items()))
