"""The ``enclavekit`` command."""

from __future__ import annotations

from enclavekit.cli._app import app
from enclavekit.cli import verify as _verify  # noqa: F401  (registers commands)

__all__ = ["app", "main"]


def main() -> None:
    app()
