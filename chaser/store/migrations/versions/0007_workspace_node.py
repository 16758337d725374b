"""A workspace's disk lives on one node: `workspaces.node_id` names it (NULL until a session's VM
first used the disk, or for a workspace that has none yet). Placement sends its sessions there and
`chaser workspaces move` changes it (docs/architecture.md, "Several nodes").

Revision ID: 0007_workspace_node
Revises: 0006_nodes
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_workspace_node"
down_revision = "0006_nodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("node_id", sa.String(64), nullable=True))
        batch.create_index("ix_workspaces_node_id", ["node_id"])


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_index("ix_workspaces_node_id")
        batch.drop_column("node_id")
