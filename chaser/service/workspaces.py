"""Workspaces: a named, persistent writable disk that sessions attach."""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from chaser import errors
from chaser.config import Settings
from chaser.models.workspaces import WorkspaceCreate
from chaser.service.images import check_image_ref
from chaser.service.keys import Principal
from chaser.store import Database, SessionRow, Workspace
from chaser.store.tables import utcnow

ACTIVE_STATUSES = ("starting", "running")
_ID_PATTERN = re.compile(r"^ws_[0-9a-f]+$")


class WorkspaceManager:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def disk_path(self, workspace_id: str) -> Path:
        return self.settings.workspaces_dir / workspace_id / "disk.img"

    def create(self, principal: Principal, request: WorkspaceCreate) -> Workspace:
        return self.create_row(account_id=principal.account_id, name=request.name,
                               session_type=request.session_type, image=request.image,
                               template=bool(request.template), clone_from=request.clone_from)

    def create_row(self, *, account_id: str, name: str | None, session_type: str | None = None,
                   image: str | None = None, template: bool = False, clone_from: str | None = None) -> Workspace:
        if session_type not in (None, "sandbox"):
            raise errors.UnsupportedSessionType(f"session_type {session_type!r} is not supported; only 'sandbox'")
        if clone_from is not None:
            raise errors.InvalidRequest("clone_from is not supported yet")
        if name is not None and _ID_PATTERN.match(name):
            raise errors.InvalidRequest("a workspace name must not look like a workspace id (ws_…)")
        canonical_image = check_image_ref(image)
        row = Workspace(id="ws_" + secrets.token_hex(8), account_id=account_id, name=name,
                        image=canonical_image, session_type="sandbox", template=template, created_at=utcnow())
        try:
            with self.db.session() as s:
                s.add(row)
        except IntegrityError:
            raise errors.Conflict(f"a workspace named {name!r} already exists", code="workspace_exists") from None
        return row

    def get(self, principal: Principal, ref: str) -> Workspace:
        return self.get_in_account(principal.account_id, ref)

    def get_in_account(self, account_id: str, ref: str) -> Workspace:
        with self.db.session() as s:
            column = Workspace.id if _ID_PATTERN.match(ref) else Workspace.name
            row = s.scalar(select(Workspace).where(Workspace.account_id == account_id, column == ref))
        if row is None:
            raise errors.NotFound(f"no workspace {ref!r}", code="workspace_not_found")
        return row

    def find_in_account(self, account_id: str, ref: str) -> Workspace | None:
        try:
            return self.get_in_account(account_id, ref)
        except errors.NotFound:
            return None

    def list(self, principal: Principal) -> list[Workspace]:
        with self.db.session() as s:
            return list(s.scalars(select(Workspace).where(Workspace.account_id == principal.account_id)
                                  .order_by(Workspace.created_at)))

    def session_ids(self, workspace: Workspace) -> tuple[str | None, str | None]:
        """(active session id, last session id)."""
        with self.db.session() as s:
            rows = list(s.execute(
                select(SessionRow.id, SessionRow.status)
                .where(SessionRow.account_id == workspace.account_id, SessionRow.workspace_id == workspace.id)
                .order_by(SessionRow.created_at.desc())
            ))
        active = next((sid for sid, status in rows if status in ACTIVE_STATUSES), None)
        return active, rows[0][0] if rows else None

    def delete_row(self, workspace: Workspace) -> None:
        with self.db.session() as s:
            row = s.get(Workspace, workspace.id)
            if row is not None:
                s.delete(row)
        shutil.rmtree(self.disk_path(workspace.id).parent, ignore_errors=True)
