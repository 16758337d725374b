"""Workspace snapshots, and the clone source of a workspace.

Revision ID: 0002_workspace_snapshots
Revises: 0001_initial
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_workspace_snapshots"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("source_workspace_id", sa.String(64), nullable=True))
    op.create_table(
        "workspace_snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("used_bytes", sa.BigInteger(), nullable=False),
        sa.Column("has_disk", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("restored_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_workspace_snapshots_account_id", "workspace_snapshots", ["account_id"])
    op.create_index("ix_workspace_snapshots_workspace_id", "workspace_snapshots", ["workspace_id"])


def downgrade() -> None:
    op.drop_table("workspace_snapshots")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("source_workspace_id")
