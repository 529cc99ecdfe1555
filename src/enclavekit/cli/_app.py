"""The root Typer application that every ``enclavekit`` sub-command registers on, loaded lazily.

Each sub-command lives in its own module (``enclavekit.cli.verify``, ``enclavekit.cli.stack``...) that registers
on :data:`app` when imported. The root group imports a module only when one of its commands runs, so
``enclavekit --help`` and ``enclavekit verify DOC`` do not pay for the web framework, the ORM or the AWS SDK that
other commands use. ``--help`` lists every command from :data:`COMMANDS` without importing any of them (a test
checks that the table matches what the modules register).
"""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import typer.core
from typer.core import TyperGroup

if TYPE_CHECKING:  # typer vendors click; these are its types, for annotations only
    from typer._click import Command, Context, HelpFormatter

__all__ = ["COMMANDS", "LazyGroup", "app", "no_stack_message", "running_stack"]

COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "enclavekit.cli.stack",
        "Run the whole stack locally (simulated NSM, SQLite, local NATS, local KMS) until Ctrl-C.",
    ),
    "status": ("enclavekit.cli.stack", "Show what the local stack runs, live."),
    "verify": ("enclavekit.cli.verify", "Verify attestation evidence."),
    "demo": ("enclavekit.cli.demo", "The demo enclave of `enclavekit up`: a notebook only the enclave can read."),
    "enclave": (
        "enclavekit.cli.enclave",
        "Enclave apps: run one (in a Nitro Enclave, or simulated), list what runs inside one.",
    ),
    "host": ("enclavekit.cli.host", "The untrusted host side: relays and endpoints that never see plaintext."),
    "identity": ("enclavekit.cli.identity", "Your client identity: the Ed25519 key that enclaves know you by."),
    "kms": (
        "enclavekit.cli.kms",
        "The local KMS emulator: AWS KMS's protocol, key policies with Nitro attestation conditions.",
    ),
    "notify": ("enclavekit.cli.notify", "Confidential push notifications: the notify service and its local tools."),
    "inference": (
        "enclavekit.cli.inference",
        "Confidential embeddings with signed receipts: the inference service's tools.",
    ),
    "receipt": ("enclavekit.cli.receipt", "AIR v1 inference receipts: verify them offline."),
    "nsm": ("enclavekit.cli.nsm", "The Nitro Secure Module: simulated attestation documents and NSM facts."),
    "vault": ("enclavekit.cli.vault", "Personal vaults in enclaves: the host bridge and a user's commands."),
    "trust": (
        "enclavekit.cli.trust",
        "The Trust Center: verify attestation on a schedule, keep the history, show it (web, badge, JSON, EAR).",
    ),
}
"""Every top-level command: the module that registers it, and its one-line help (shown by ``--help``)."""


class LazyGroup(TyperGroup):
    """The root group: knows every command by name, imports a command's module the first time it is asked for."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(COMMANDS[cmd_name][0])
            loaded = typer.main.get_command(app)
            if isinstance(loaded, TyperGroup):
                for name, command in loaded.commands.items():
                    self.commands.setdefault(name, command)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS and name not in self.commands:
            matches = difflib.get_close_matches(name, [*COMMANDS, *self.commands])
            hint = f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
            ctx.fail(f"No such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        # Plain click layout for the root page: rendering it with rich would import rich (~0.1 s) for one page.
        super(TyperGroup, self).format_help(ctx, formatter)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


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
    cls=LazyGroup,
    help="Confidential services on AWS Nitro Enclaves and Intel TDX: verify, simulate, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from enclavekit import __version__

        typer.echo(f"enclavekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """enclavekit: attestation, attested sessions and confidential services."""


def running_stack(state: Path) -> dict[str, Any] | None:
    """The ``stack.json`` of the stack whose state folder is ``state``, if its ``enclavekit up`` is alive."""
    from enclavekit.stack.state import StateDir

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
