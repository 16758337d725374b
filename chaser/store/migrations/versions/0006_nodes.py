"""Nodes: each server process that runs VMs registers itself and heartbeats (chaser/service/nodes.py);
a session records the node its VM runs on.

Sessions written before this have no node (`node_id` NULL): start-up recovery treats them as
docs/architecture.md "Nodes" says.

Revision ID: 0006_nodes
Revises: 0005_session_env_not_stored
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_nodes"
down_revision = "0005_session_env_not_stored"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("advertise_url", sa.String(2000), nullable=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("capacity_vcpus", sa.Integer(), nullable=False),
        sa.Column("capacity_memory_mib", sa.BigInteger(), nullable=False),
        sa.Column("capacity_disk_mib", sa.BigInteger(), nullable=False),
        sa.Column("capacity_sessions", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lost_at", sa.DateTime(), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("node_id", sa.String(64), nullable=True))
        batch.create_index("ix_sessions_node_id", ["node_id"])


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_node_id")
        batch.drop_column("node_id")
    op.drop_table("nodes")
