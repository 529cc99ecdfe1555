"""Alembic environment: :func:`enclavekit.database.run_migrations` with trust's tables and version table."""

from __future__ import annotations

from enclavekit.database import run_migrations
from enclavekit.services.trust.migrations import VERSION_TABLE
from enclavekit.services.trust.store import metadata

run_migrations(metadata, VERSION_TABLE)
