"""The egress policy of sessions and workspaces.

Revision ID: 0003_network_policy
Revises: 0002_workspace_snapshots
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_network_policy"
down_revision = "0002_workspace_snapshots"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("network", sa.JSON(), nullable=True))
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("network", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("network")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("network")
