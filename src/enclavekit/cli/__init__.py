"""The ``enclavekit`` command."""

from __future__ import annotations

import sys

from enclavekit.cli import demo as _demo  # noqa: F401  (registers the commands)
from enclavekit.cli import enclave as _enclave  # noqa: F401  (registers the commands)
from enclavekit.cli import host as _host  # noqa: F401  (registers the commands)
from enclavekit.cli import kms as _kms  # noqa: F401  (registers the commands)
from enclavekit.cli import notify as _notify  # noqa: F401  (registers the commands)
from enclavekit.cli import nsm as _nsm  # noqa: F401  (registers the command)
from enclavekit.cli import stack as _stack  # noqa: F401  (registers the commands)
from enclavekit.cli import trust as _trust  # noqa: F401  (registers the commands)
from enclavekit.cli import vault as _vault  # noqa: F401  (registers the commands)
from enclavekit.cli import verify as _verify  # noqa: F401  (registers the command)
from enclavekit.cli._app import app
from enclavekit.errors import Error

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except Error as exc:  # what a command did not handle itself, e.g. a bad ENCLAVEKIT_LOG_LEVEL: one line
        print(f"enclavekit: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
