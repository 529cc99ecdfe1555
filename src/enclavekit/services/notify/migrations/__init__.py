"""Alembic migrations of notify's tables (version table ``notify_alembic_version``).

:func:`upgrade` runs them programmatically on an engine; ``alembic`` itself is not needed on the command line.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from enclavekit import database

__all__ = ["HEAD", "VERSION_TABLE", "upgrade"]

VERSION_TABLE = "notify_alembic_version"
HEAD = "0001"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema of ``engine``'s database to ``revision`` (idempotent)."""
    database.upgrade(engine, Path(__file__).parent, revision)
