"""The root Typer application that every ``enclavekit`` sub-command registers on."""

from __future__ import annotations

import typer

from enclavekit import __version__

__all__ = ["app"]

app = typer.Typer(
    name="enclavekit",
    help="Confidential services on AWS Nitro Enclaves and Intel TDX: verify, simulate, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"enclavekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """enclavekit: attestation, attested sessions and confidential services."""
