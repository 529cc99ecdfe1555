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
from typing import TYPE_CHECKING

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:  # typer vendors click; these are its types, for annotations only
    from typer._click import Command, Context, HelpFormatter

__all__ = ["COMMANDS", "LazyGroup", "app"]

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
    "receipt": ("enclavekit.cli.receipt", "AIR v1 inference receipts: verify them offline."),
    "nsm": ("enclavekit.cli.nsm", "The Nitro Secure Module: simulated attestation documents and NSM facts."),
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
