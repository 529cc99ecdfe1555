"""The ``enclavekit`` command. Importing this package loads only the root group; each sub-command's module
(and what it needs: a web framework, the ORM, the AWS SDK) is imported only when that command runs."""

from __future__ import annotations

import sys

from enclavekit.cli._app import app
from enclavekit.errors import Error

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except Error as exc:  # what a command did not handle itself, e.g. a bad ENCLAVEKIT_LOG_LEVEL: one line
        print(f"enclavekit: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
