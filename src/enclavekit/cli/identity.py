"""``enclavekit identity``: the client identity key the CLI proves to enclaves (see ``enclavekit.client.identity``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from enclavekit.cli._app import app
from enclavekit.client import identity as store
from enclavekit.errors import Error

__all__ = ["IDENTITY_OPTION", "identity_app"]

identity_app = typer.Typer(help="Your client identity: the Ed25519 key that enclaves know you by.")
app.add_typer(identity_app, name="identity")
IDENTITY_OPTION = typer.Option(
    None,
    "--identity",
    help="Identity key file (default: $ENCLAVEKIT_IDENTITY, else ~/.config/enclavekit/identity.key).",
)


@identity_app.command("new")
def new(
    identity: Path | None = IDENTITY_OPTION,
    force: bool = typer.Option(False, "--force", help="Replace an existing identity (its notes become unreachable)."),
) -> None:
    """Create a new identity key (mode 0600) and print its public key."""
    path = store.default_path() if identity is None else identity
    try:
        key = store.create(path, overwrite=force)
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"public_key": key.public_key.hex(), "path": str(path)}))


@identity_app.command("show")
def show(identity: Path | None = IDENTITY_OPTION) -> None:
    """Print the public key of the identity (what an enclave sees as the caller's key)."""
    path = store.default_path() if identity is None else identity
    try:
        key = store.load(path)
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps({"public_key": key.public_key.hex(), "path": str(path)}))
