"""A session's env is no longer stored (it may hold secrets): blank what earlier versions kept.

Every session a database holds when this runs belongs to an earlier server process (its VM is
gone; the reaper's start-up recovery ends those still marked active), so no session needs it.

Revision ID: 0005_session_env_not_stored
Revises: 0004_audit_events
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_session_env_not_stored"
down_revision = "0004_audit_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sessions = sa.table("sessions", sa.column("env", sa.JSON()))
    op.execute(sessions.update().values(env={}))


def downgrade() -> None:
    pass  # the values are gone
