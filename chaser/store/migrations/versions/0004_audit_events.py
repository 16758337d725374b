"""The audit log: who did what, and when (append-only; pruned after the retention time).

Revision ID: 0004_audit_events
Revises: 0003_network_policy
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_audit_events"
down_revision = "0003_network_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        # AUTOINCREMENT (SQLite): an id is never reused, even after pruning, so `before=<id>` stays a stable cursor.
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("actor_type", sa.String(32), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=False),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("summary", sa.String(500), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_events_account_id_id", "audit_events", ["account_id", "id"])
    op.create_index("ix_audit_events_created_at", "audit_events", ["created_at"])


def downgrade() -> None:
    op.drop_table("audit_events")
