"""Rate-limit buckets in the database: API replicas share each key's bucket (chaser/service/ratelimit.py).

Revision ID: 0008_rate_buckets
Revises: 0007_workspace_node
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_rate_buckets"
down_revision = "0007_workspace_node"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
