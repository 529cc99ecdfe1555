"""Relational storage for the host side: one way to open SQLite or PostgreSQL, and to migrate a schema.

The same code runs against a SQLite file (the embedded default) and PostgreSQL (at scale); only the URL
differs. SQLite gets what concurrent writers need: WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE``
for transactions marked as writes (``connection.execution_options(**WRITE)``), so two writers queue instead of
failing with "database is locked" halfway through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

__all__ = ["WRITE", "create_engine", "run_migrations", "upgrade"]

WRITE: dict[str, Any] = {"enclavekit_write": True}
"""Execution options of a connection that will write: SQLite takes its write lock at BEGIN."""
_BUSY_TIMEOUT_MS = 30_000


def create_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    database = sa.engine.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("enclavekit_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def upgrade(engine: Engine, script_location: Path, revision: str = "head") -> None:
    """Run the Alembic migrations in ``script_location`` on ``engine``'s database up to ``revision``.

    The migrations' ``env.py`` takes the connection from ``config.attributes["connection"]``.
    """
    config = Config()
    config.set_main_option("script_location", str(script_location))
    with engine.connect() as connection:
        connection.execution_options(**WRITE)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def run_migrations(metadata: sa.MetaData, version_table: str) -> None:
    """The whole of a service's Alembic ``env.py``: migrate online, on the connection :func:`upgrade` hands over
    (batch mode on SQLite, whose ALTER TABLE is limited), recording versions in ``version_table``."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
