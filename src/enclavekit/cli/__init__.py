"""The ``enclavekit`` command."""

from __future__ import annotations

from enclavekit.cli import demo as _demo  # noqa: F401  (registers the commands)
from enclavekit.cli import enclave as _enclave  # noqa: F401  (registers the commands)
from enclavekit.cli import host as _host  # noqa: F401  (registers the commands)
from enclavekit.cli import kms as _kms  # noqa: F401  (registers the commands)
from enclavekit.cli import notify as _notify  # noqa: F401  (registers the commands)
from enclavekit.cli import nsm as _nsm  # noqa: F401  (registers the command)
from enclavekit.cli import stack as _stack  # noqa: F401  (registers the commands)
from enclavekit.cli import trust as _trust  # noqa: F401  (registers the commands)
from enclavekit.cli import verify as _verify  # noqa: F401  (registers the command)
from enclavekit.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
