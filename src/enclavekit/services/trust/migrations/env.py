"""Alembic environment: always online, on the connection that :func:`upgrade` hands over."""

from __future__ import annotations

from alembic import context

from enclavekit.services.trust.migrations import VERSION_TABLE
from enclavekit.services.trust.store import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
