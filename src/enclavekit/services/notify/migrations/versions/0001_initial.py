"""Subscriptions (notify_subscriptions) and auth proofs (notify_auth_proofs).

Revision ID: 0001
Revises:
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


def upgrade() -> None:
    op.create_table(
        "notify_subscriptions",
        sa.Column("topic", sa.String(256), primary_key=True),
        sa.Column("hmac_key", sa.String(84), primary_key=True),
        sa.Column("encrypted_push_id", sa.String(1120), nullable=False),
        sa.Column("ttl", sa.BigInteger, nullable=False),
        sa.Column("deletion_request", _JSON, nullable=False),
    )
    op.create_index("notify_subscriptions_ttl", "notify_subscriptions", ["ttl"])
    op.create_table(
        "notify_auth_proofs",
        sa.Column("nullifier_hash", sa.String(66), primary_key=True),
        sa.Column("encrypted_push_id", sa.String(1120), nullable=False),
        sa.Column("push_id_rotated_at", sa.BigInteger, nullable=False),
        sa.Column("ttl", sa.BigInteger, nullable=False),
    )
    op.create_index("notify_auth_proofs_ttl", "notify_auth_proofs", ["ttl"])


def downgrade() -> None:
    op.drop_table("notify_auth_proofs")
    op.drop_table("notify_subscriptions")
