"""``enclavekit vault message send|list|read``: messages between connected users, with receipts.

``send USER CONNECTION TEXT --pin PIN`` (prints the delivery receipt), ``list USER --pin PIN`` (inbox and outbox
with ``delivered_at`` and ``read_at``), ``read USER ID --pin PIN`` (marks it read; the sender gets the read
receipt). ``--state``, ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from enclavekit.cli.vault import JSON, PIN, STATE, _emit, _run_as_user, _when

__all__ = ["message_app"]

message_app: typer.Typer = typer.Typer(help="Messages between connected users, with delivery and read receipts.")


@message_app.command("send")
def send(
    user: str = typer.Argument(...),
    connection: str = typer.Argument(...),
    text: str = typer.Argument(...),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Send TEXT on CONNECTION (the peer must allow messages)."""
    result = _run_as_user(state, user, as_json, lambda c: c.send_message(connection, text, pin=pin))
    _emit(result, as_json, f"delivered {result['id']} at {_when(result['delivered_at'])}")


@message_app.command("list")
def listing(user: str = typer.Argument(...), pin: str = PIN, state: Path = STATE, as_json: bool = JSON) -> None:
    """List the inbox and the outbox, with receipts."""
    result = _run_as_user(state, user, as_json, lambda c: c.messages(pin=pin))
    lines = [f"in\t{m['id']}\t{m['from']}\tread={_when(m['read_at'])}\t{m['text']}" for m in result["inbox"]]
    lines += [
        f"out\t{m['id']}\t{m['to']}\tdelivered={_when(m['delivered_at'])}\tread={_when(m['read_at'])}\t{m['text']}"
        for m in result["outbox"]
    ]
    _emit(result, as_json, "\n".join(lines))


@message_app.command("read")
def read(
    user: str = typer.Argument(...),
    ident: str = typer.Argument(..., metavar="ID"),
    pin: str = PIN,
    state: Path = STATE,
    as_json: bool = JSON,
) -> None:
    """Mark an inbox message read; its sender's vault gets the read receipt."""

    async def go(client: Any) -> dict[str, Any]:
        return {"message": await client.read_message(ident, pin=pin)}

    result = _run_as_user(state, user, as_json, go)
    _emit(result, as_json, f"read {ident}")
