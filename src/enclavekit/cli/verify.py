"""``enclavekit verify``: check attestation evidence from files (the Typer command).

Its parameters are not written out here: the command is built from :data:`enclavekit.cli._verify_options.OPTIONS`,
the table the fast path's parser is built from too, so the two cannot drift. What the command does is
:func:`enclavekit.cli._verify_run.run_verify`, whose docstring states the contract (exit codes, output).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from enclavekit.cli._app import app
from enclavekit.cli._verify_options import OPTIONS, Kind, VerifyArgs, VerifyOption
from enclavekit.cli._verify_run import run_verify

__all__ = ["verify_command"]

_ANNOTATIONS: dict[Kind, Any] = {
    "paths": list[Path],
    "text": str,
    "optional_text": str | None,
    "optional_path": Path | None,
    "flag": bool,
    "repeated_path": list[Path],
}


def _parameter(option: VerifyOption) -> inspect.Parameter:
    if option.flag is None:
        info = typer.Argument(..., help=option.help, show_default=False)
    else:
        default: list[Path] | str | bool | None = [] if option.kind == "repeated_path" else option.default
        info = typer.Option(default, option.flag, help=option.help)
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=_ANNOTATIONS[option.kind]
    )


def verify_command(**parameters: Any) -> None:
    """Verify attestation evidence. Without --policy: authenticity only (any code), debug mode rejected."""
    raise typer.Exit(run_verify(VerifyArgs(**parameters)))


# Typer reads a command's parameters from its signature and type hints: give it those of OPTIONS.
verify_command.__signature__ = inspect.Signature([_parameter(option) for option in OPTIONS])  # type: ignore[attr-defined]
verify_command.__annotations__ = {option.name: _ANNOTATIONS[option.kind] for option in OPTIONS} | {"return": None}
app.command("verify")(verify_command)
