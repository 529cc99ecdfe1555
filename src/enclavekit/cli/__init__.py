"""The ``enclavekit`` command."""

from __future__ import annotations

from enclavekit.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
