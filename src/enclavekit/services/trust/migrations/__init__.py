"""Alembic migrations of the trust service's tables (version table ``trust_alembic_version``).

:func:`upgrade` runs them programmatically on an engine; ``alembic`` itself is not needed on the command line.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

__all__ = ["HEAD", "VERSION_TABLE", "alembic_config", "upgrade"]

VERSION_TABLE = "trust_alembic_version"
HEAD = "0001"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema of ``engine``'s database to ``revision``."""
    config = alembic_config()
    with engine.connect() as connection:
        connection.execution_options(trust_write=True)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()
