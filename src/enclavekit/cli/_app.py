"""The root Typer application that every ``enclavekit`` sub-command registers on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
import typer.core

from enclavekit import __version__
from enclavekit.stack.state import StateDir

__all__ = ["app", "no_stack_message", "running_stack"]

_TEXT_LABELS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT"}


def _value_label(param: Any, ctx: Any) -> str:
    """What a parameter takes, as click writes it: ``PATH``, ``TEXT``, ``[a|b]`` (Typer writes ``<list[Path]>``)."""
    label = str(typer.core._TyperParameter.display_type(param, ctx)).removeprefix("<").removesuffix(">")
    if label.startswith("list[") and label.endswith("]"):  # a repeatable option takes one value each time
        label = label[len("list[") : -1]
    if param.type_descriptor.is_choice:
        return f"[{label}]"
    return _TEXT_LABELS.get(label, label.upper())


def _option_type(self: Any, ctx: Any) -> str | None:
    """Nothing after a flag (``--json``, not ``--json <bool>``); the value's label after other options."""
    if self.metavar is not None:
        return str(self.metavar)
    if self.is_flag or self.count:
        return None
    return _value_label(self, ctx) + ("..." if self.nargs != 1 else "")


def _argument_type(self: Any, ctx: Any) -> str | None:
    return str(self.metavar) if self.metavar is not None else _value_label(self, ctx)


def _argument_usage(self: Any, ctx: Any) -> list[str]:
    """``FILES...`` and ``[NAME]`` in usage lines, as click writes them (Typer writes ``{files}...``)."""
    name = str(self.metavar) if self.metavar is not None else str(self.name).upper()
    if self.nargs != 1:
        name += "..."
    return [name if self.required else f"[{name}]"]


# Typer's help shows ``<bool>`` after every flag and ``{files}...`` in usage lines, which reads as if a flag
# took a value and a brace were to be typed. Its rendering has no setting for either, so the three methods
# that render them are replaced here, once, for every command (tests/test_cli_help.py keeps the result).
setattr(typer.core.TyperOption, "display_type_rich", _option_type)  # noqa: B010
setattr(typer.core.TyperArgument, "display_type_rich", _argument_type)  # noqa: B010
setattr(typer.core.TyperArgument, "get_usage_pieces", _argument_usage)  # noqa: B010

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


def running_stack(state: Path) -> dict[str, Any] | None:
    """The ``stack.json`` of the stack whose state folder is ``state``, if its ``enclavekit up`` is alive."""
    data = StateDir(state.resolve()).read_stack()
    if data is None:
        return None
    try:
        os.kill(int(data.get("pid", 0)), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, ValueError, OverflowError):
        pass  # alive under another user; or a hand-written stack.json: let the command find out
    return data


def no_stack_message(state: Path) -> str:
    """Why a command found no stack: the folder it looked in and how to point at one.

    ``--state`` is relative to the current directory, so run from another folder (``docs/``) every command
    finds nothing; when a running stack's folder of that name is found above the current directory, say so.
    """
    lines = [f"no stack is running with state folder {state.resolve()}"]
    if not state.is_absolute():
        for parent in Path.cwd().parents:
            if running_stack(parent / state) is not None:
                lines.append(f"a stack is running in {parent / state}: pass --state {parent / state}")
                break
        else:
            lines.append(f"(--state {state} is taken relative to the current directory, {Path.cwd()})")
    lines.append("start one with `enclavekit up`, or point at its state folder with --state DIR")
    return "\n".join(lines)
