"""One active session per workspace, held in the database: servers that share one (PostgreSQL)
cannot both start a VM on a workspace's disk."""

from __future__ import annotations

from collections.abc import Collection, Container

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from chaser.store.tables import SessionRow, Workspace


class WorkspaceGone(LookupError):
    """The workspace row is not there (deleted meanwhile)."""


class WorkspaceElsewhere(LookupError):
    """The workspace's disk lives on another node (`args[0]`): a VM here would not find it."""


def claim_workspace(session: Session, row: SessionRow, *, active: Collection[str],
                    known: Container[str] = (), node_id: str | None = None) -> str | None:
    """Add `row`, a new session of `row.workspace_id`, unless another session of that workspace has
    a status in `active`: None when added, else that session's id (nothing added).

    The workspace's row is locked first (SELECT … FOR UPDATE on PostgreSQL, held until the caller's
    transaction ends), so two claims of one workspace go one after the other and the second sees the
    first's row (READ COMMITTED: each statement sees what committed before it). SQLite ignores FOR
    UPDATE; there one server process, its workspace lock and SQLite's single writer serialise claims.
    Sessions in `known` (the caller's own, which it checks in memory) do not count.

    `node_id` (the claiming node): WorkspaceElsewhere when the workspace's disk is another node's;
    a workspace of no node yet becomes this one's in the same transaction."""
    locked = session.execute(select(Workspace.id, Workspace.node_id).where(
        Workspace.id == row.workspace_id).with_for_update()).first()
    if locked is None:
        raise WorkspaceGone(row.workspace_id)
    if node_id is not None and locked.node_id not in (None, node_id):
        raise WorkspaceElsewhere(locked.node_id)
    holders = session.scalars(select(SessionRow.id).where(SessionRow.workspace_id == row.workspace_id,
                                                          SessionRow.status.in_(active)))
    for holder in holders:
        if holder not in known:
            return holder
    if node_id is not None and locked.node_id is None:
        session.execute(update(Workspace).where(Workspace.id == row.workspace_id).values(node_id=node_id))
    session.add(row)
    session.flush()
    return None
