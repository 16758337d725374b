"""One active session per workspace, held in the database: servers that share one (PostgreSQL)
cannot both start a VM on a workspace's disk."""

from __future__ import annotations

from collections.abc import Collection, Container

from sqlalchemy import select
from sqlalchemy.orm import Session

from chaser.store.tables import SessionRow, Workspace


class WorkspaceGone(LookupError):
    """The workspace row is not there (deleted meanwhile)."""


def claim_workspace(session: Session, row: SessionRow, *, active: Collection[str],
                    known: Container[str] = ()) -> str | None:
    """Add `row`, a new session of `row.workspace_id`, unless another session of that workspace has
    a status in `active`: None when added, else that session's id (nothing added).

    The workspace's row is locked first (SELECT … FOR UPDATE on PostgreSQL, held until the caller's
    transaction ends), so two claims of one workspace go one after the other and the second sees the
    first's row (READ COMMITTED: each statement sees what committed before it). SQLite ignores FOR
    UPDATE; there one server process, its workspace lock and SQLite's single writer serialise claims.
    Sessions in `known` (the caller's own, which it checks in memory) do not count."""
    locked = session.scalar(select(Workspace.id).where(Workspace.id == row.workspace_id).with_for_update())
    if locked is None:
        raise WorkspaceGone(row.workspace_id)
    holders = session.scalars(select(SessionRow.id).where(SessionRow.workspace_id == row.workspace_id,
                                                          SessionRow.status.in_(active)))
    for holder in holders:
        if holder not in known:
            return holder
    session.add(row)
    session.flush()
    return None
