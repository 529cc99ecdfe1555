"""Targets (trust_apps) and verification tasks (verification_tasks).

Revision ID: 0001
Revises:

Frozen: this file is the schema as revision 0001 made it, written out in full, not read from ``store.py``'s live
tables (nor their ``UtcDateTime`` type, whose DDL is a plain ``DateTime``). A migration that imported the live
models would change what an old revision creates whenever the models change, and a database upgraded step by
step would no longer match one created fresh. So the table definitions stand twice on purpose: a change to the
tables in ``store.py`` goes with a new revision, and ``test_migrations_create_exactly_the_tables_the_code_uses``
fails until the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UtcDateTime = sa.DateTime  # its DDL: the live store's UtcDateTime (naive UTC) adds a conversion, not a column type


def upgrade() -> None:
    op.create_table(
        "trust_apps",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("tee", sa.String(16), nullable=False),
        sa.Column("endpoint_url", sa.Text, nullable=True),
        sa.Column("evidence_key", sa.String(200), nullable=True),
        sa.Column("collateral_key", sa.String(200), nullable=True),
        sa.Column("compose_key", sa.String(200), nullable=True),
        sa.Column("options", _JSON, nullable=False),
        sa.Column("app_metadata", _JSON, nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("os_name", sa.String(200), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("summary", _JSON, nullable=False),
        sa.Column("last_task_id", sa.String(36), nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("last_verified_at", UtcDateTime, nullable=True),
        sa.Column("last_success_at", UtcDateTime, nullable=True),
        sa.Column("last_failure_at", UtcDateTime, nullable=True),
        sa.Column("next_check_at", UtcDateTime, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
    )
    op.create_index("ix_trust_apps_verdict", "trust_apps", ["verdict"])
    op.create_index("ix_trust_apps_next_check_at", "trust_apps", ["next_check_at"])
    op.create_index("ix_trust_apps_last_verified_at", "trust_apps", ["last_verified_at"])
    op.create_index("ix_trust_apps_name", "trust_apps", ["name"])
    op.create_table(
        "verification_tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("app_id", sa.String(64), sa.ForeignKey("trust_apps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("job_name", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("valid", sa.Boolean, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("app_metadata", _JSON, nullable=False),
        sa.Column("verification_flags", _JSON, nullable=False),
        sa.Column("evidence_key", sa.String(200), nullable=True),
        sa.Column("result_bucket", sa.String(200), nullable=True),
        sa.Column("result_key", sa.String(200), nullable=True),
        sa.Column("summary", _JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(64), nullable=True),
        sa.Column("lease_until", UtcDateTime, nullable=True),
        sa.Column("not_before", UtcDateTime, nullable=True),
        sa.Column("enqueued_at", UtcDateTime, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=True),
        sa.Column("finished_at", UtcDateTime, nullable=True),
    )
    op.create_index("ix_verification_tasks_app_id", "verification_tasks", ["app_id"])
    op.create_index("ix_verification_tasks_status", "verification_tasks", ["status"])
    op.create_index("ix_verification_tasks_created_at", "verification_tasks", ["created_at"])
    op.create_index("ix_verification_tasks_started_at", "verification_tasks", ["started_at"])
    op.create_index("ix_verification_tasks_finished_at", "verification_tasks", ["finished_at"])


def downgrade() -> None:
    op.drop_table("verification_tasks")
    op.drop_table("trust_apps")
