"""The options of ``enclavekit verify``, declared once, and the small parser of its fast path.

:data:`OPTIONS` is the one source of truth: ``enclavekit.cli.verify`` builds the Typer command (what ``--help``
shows, what every other way in parses) from it, and :func:`parse_fast` builds an :mod:`argparse` parser from the
same table. ``enclavekit verify DOC`` then starts without Typer, the pydantic it converts parameters with, or
the root group (issue #12: ``verify`` within 2x a plain script). The fast parser only accepts what it is sure
of: anything it does not parse (a usage error, ``--help``, an unknown option) returns ``None`` and the caller
hands the command line to the Typer application, so usage errors and help read exactly as before.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["OPTIONS", "VerifyArgs", "VerifyOption", "parse_fast"]

Kind = Literal["paths", "text", "optional_text", "optional_path", "flag", "repeated_path"]


@dataclass(frozen=True, slots=True)
class VerifyOption:
    """One parameter of ``enclavekit verify``: its Python name, its flag (``None``: the positional files), what
    it takes, its default and its help line."""

    name: str
    flag: str | None
    kind: Kind
    help: str
    default: str | bool | None = None


OPTIONS: tuple[VerifyOption, ...] = (
    VerifyOption("files", None, "paths", "Evidence files: Nitro documents, DCAP quotes (raw or hex), dstack bundles."),
    VerifyOption("at", "--at", "text", "Verify as of: now, doc (its own timestamp), UNIX seconds, ISO 8601.", "now"),
    VerifyOption("policy", "--policy", "optional_path", "TOML policy file (see docs/attestation.md)."),
    VerifyOption("allow_debug", "--allow-debug", "flag", "Accept debug enclaves (UNSAFE).", False),
    VerifyOption(
        "trust_sim_root",
        "--trust-sim-root",
        "repeated_path",
        "Also trust the simulated NSM root kept in this state folder (repeatable).",
    ),
    VerifyOption(
        "collateral",
        "--collateral",
        "repeated_path",
        "Intel DCAP collateral JSON for TDX/SGX quotes (repeatable: one per platform).",
    ),
    VerifyOption("pccs", "--pccs", "optional_text", "Fetch missing collateral from this PCCS URL (cached)."),
    VerifyOption("compose", "--compose", "optional_path", "The app-compose file of a dstack bundle."),
    VerifyOption(
        "unsafe_no_collateral",
        "--unsafe-no-collateral",
        "flag",
        "Without collateral, check all but the hardware (UNSAFE).",
        False,
    ),
    VerifyOption("output_format", "--format", "text", "report (the JSON report) or ear (EAR claims).", "report"),
    VerifyOption("as_json", "--json", "flag", "One JSON object per file, one per line.", False),
)
"""Every parameter of ``enclavekit verify``, in the order ``--help`` lists them."""


@dataclass(frozen=True, slots=True)
class VerifyArgs:
    """A parsed ``enclavekit verify`` command line, whichever parser read it."""

    files: list[Path]
    at: str
    policy: Path | None
    allow_debug: bool
    trust_sim_root: list[Path]
    collateral: list[Path]
    pccs: str | None
    compose: Path | None
    unsafe_no_collateral: bool
    output_format: str
    as_json: bool


class _Refused(Exception):
    """The fast parser met something it leaves to Typer."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # never print or exit: Typer answers usage errors
        raise _Refused(message)


def _parser() -> _Parser:
    parser = _Parser(prog="enclavekit verify", add_help=False, allow_abbrev=False)
    for option in OPTIONS:
        if option.flag is None:
            parser.add_argument(option.name, nargs="+", type=Path)
        elif option.kind == "flag":
            parser.add_argument(option.flag, dest=option.name, action="store_true")
        elif option.kind == "repeated_path":
            parser.add_argument(option.flag, dest=option.name, action="append", type=Path, default=[])
        elif option.kind == "optional_path":
            parser.add_argument(option.flag, dest=option.name, type=Path, default=None)
        else:
            parser.add_argument(option.flag, dest=option.name, default=option.default)
    return parser


def parse_fast(argv: list[str]) -> VerifyArgs | None:
    """``verify``'s arguments (after the word ``verify``) parsed without Typer, or ``None`` when Typer must.

    ``None`` for ``--help`` and for anything argparse refuses or reads differently from click: such command lines
    go through the Typer command, which answers them as it always did.
    """
    if any(arg == "--help" or arg == "--" or (arg.startswith("-") and arg[1:2] != "-") for arg in argv):
        return None  # help; or a spelling (``--``, short or negative-looking words) where the parsers may differ
    try:
        parsed = _parser().parse_intermixed_args(argv)
    except _Refused:
        return None
    return VerifyArgs(**vars(parsed))
