"""Workspaces: a named, persistent writable disk that sessions attach."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from chaser import errors
from chaser.config import Settings
from chaser.models.status import ACTIVE_STATUSES
from chaser.models.workspaces import WorkspaceCreate
from chaser.service.audit import AuditLog
from chaser.service.images import check_image_ref
from chaser.service.keys import Principal
from chaser.service.network import effective_policy
from chaser.service.records import SnapshotRecord, WorkspaceRecord
from chaser.store import Database, SessionRow, Workspace
from chaser.store.tables import WorkspaceSnapshot, utcnow

log = logging.getLogger(__name__)

_ID_PATTERN = re.compile(r"^ws_[0-9a-f]+$")
_SNAPSHOT_ID_PATTERN = re.compile(r"^snap_[0-9a-f]+$")


def allocated_bytes(path: Path) -> int:
    """Bytes the file really occupies (its sparse holes and shared extents aside)."""
    return path.stat().st_blocks * 512


class WorkspaceManager:
    def __init__(self, db: Database, settings: Settings, audit: AuditLog | None = None) -> None:
        self.db = db
        self.settings = settings
        # The server's one audit log (service/container.py); the sessions' services record into it too.
        self.audit = audit or AuditLog(db, retention_days=settings.audit_retention_days)

    def disk_path(self, workspace_id: str) -> Path:
        return self.settings.workspaces_dir / workspace_id / "disk.img"

    def snapshot_state_dir(self, workspace_id: str, snapshot_id: str) -> Path:
        """A memory snapshot's saved VM state (its disk is `snapshot_path`)."""
        return self.settings.workspaces_dir / workspace_id / "snapshots" / f"{snapshot_id}.state"

    def has_memory(self, snapshot: SnapshotRecord) -> bool:
        return (self.snapshot_state_dir(snapshot.workspace_id, snapshot.id) / "meta.json").exists()

    def snapshot_path(self, workspace_id: str, snapshot_id: str) -> Path:
        return self.settings.workspaces_dir / workspace_id / "snapshots" / f"{snapshot_id}.img"

    def create(self, principal: Principal, request: WorkspaceCreate) -> WorkspaceRecord:
        """A new, empty workspace (`clone_from` is SessionManager.create_workspace's business)."""
        return self.create_row(account_id=principal.account_id, name=request.name,
                               session_type=request.session_type, image=request.image,
                               template=bool(request.template), network=self.network_of(request))

    def network_of(self, request: WorkspaceCreate, source: WorkspaceRecord | None = None) -> dict[str, Any] | None:
        """The policy a new workspace stores: the request's (fields it omits from the clone
        source's policy, then the default), else the source's; None: the server default."""
        base = source.network if source is not None else None
        if request.network is None:
            return base
        return effective_policy(request.network, base=base,
                                default_internet=self.settings.network_internet_default).to_dict()

    def create_row(self, *, account_id: str, name: str | None, session_type: str | None = None,
                   image: str | None = None, template: bool = False, source: WorkspaceRecord | None = None,
                   network: dict[str, Any] | None = None) -> WorkspaceRecord:
        """The row only; `source` (a clone's origin) gives the image, its disk is copied by the caller."""
        if session_type not in (None, "sandbox"):
            raise errors.UnsupportedSessionType(f"session_type {session_type!r} is not supported; only 'sandbox'")
        self._check_name(name)
        if source is not None:
            if image is not None and check_image_ref(image) != source.image:
                raise errors.InvalidRequest("a clone has the image of the workspace it is cloned from; omit image")
            canonical_image = source.image
        else:
            canonical_image = check_image_ref(image)
        row = Workspace(id="ws_" + secrets.token_hex(8), account_id=account_id, name=name,
                        image=canonical_image, session_type="sandbox", template=template, created_at=utcnow(),
                        source_workspace_id=source.id if source is not None else None, network=network)
        try:
            with self.db.session() as s:
                s.add(row)
        except IntegrityError:
            raise errors.WorkspaceExists(f"a workspace named {name!r} already exists") from None
        self.audit.record("workspace.created", account_id=account_id, resource_type="workspace", resource_id=row.id,
                          summary=f"workspace {name or row.id} created",
                          metadata={"name": name, "image": canonical_image,
                                    "clone_from": source.id if source is not None else None})
        return WorkspaceRecord.of(row)

    def resolve_ref(self, principal: Principal, *, ephemeral: bool, workspace: str | None,
                              image: str | None) -> WorkspaceRecord | None:
        """The workspace a request targets, per the rules shared by sessions and /v1/exec."""
        if image is not None and workspace is not None:
            raise errors.InvalidRequest("pass either workspace or image, not both: a workspace carries its own image")
        if ephemeral:
            if workspace is not None:
                raise errors.InvalidRequest("an ephemeral session has no workspace; pass one of ephemeral or workspace")
            return None
        if image is not None:
            raise errors.InvalidRequest("image is only accepted with ephemeral: true; set the image on the workspace")
        if workspace is None:
            default = self.settings.default_workspace
            if not default:
                raise errors.WorkspaceRequired("pass a workspace, or ephemeral: true")
            found = self.find_in_account(principal.account_id, default)
            if found is None:  # the configured default is created on first use
                try:
                    found = self.create_row(account_id=principal.account_id, name=default)
                except errors.Conflict:
                    found = self.get_in_account(principal.account_id, default)
            return found
        return self.get(principal, workspace)

    def get(self, principal: Principal, ref: str) -> WorkspaceRecord:
        return self.get_in_account(principal.account_id, ref)

    def get_in_account(self, account_id: str, ref: str) -> WorkspaceRecord:
        with self.db.session() as s:
            column = Workspace.id if _ID_PATTERN.match(ref) else Workspace.name
            row = s.scalar(select(Workspace).where(Workspace.account_id == account_id, column == ref))
        if row is None:
            raise errors.WorkspaceNotFound(f"no workspace {ref!r}")
        return WorkspaceRecord.of(row)

    @staticmethod
    def _check_name(name: str | None) -> None:
        if name is not None and _ID_PATTERN.match(name):
            raise errors.InvalidRequest("a workspace name must not look like a workspace id (ws_…)")

    def check_new_name(self, account_id: str, name: str) -> None:
        """A valid name that no workspace of the account has (409 workspace_exists)."""
        self._check_name(name)
        if self.find_in_account(account_id, name) is not None:
            raise errors.WorkspaceExists(f"a workspace named {name!r} already exists")

    def rename(self, workspace: WorkspaceRecord, name: str | None) -> WorkspaceRecord:
        self._check_name(name)
        try:
            with self.db.session() as s:
                row = s.get(Workspace, workspace.id)
                if row is None:
                    raise errors.WorkspaceNotFound(f"no workspace {workspace.id!r}")
                row.name = name
        except IntegrityError:
            raise errors.WorkspaceExists(f"a workspace named {name!r} already exists") from None
        self.audit.record("workspace.renamed", account_id=workspace.account_id, resource_type="workspace",
                          resource_id=workspace.id, summary=f"workspace {workspace.name or workspace.id} renamed",
                          metadata={"old_name": workspace.name, "name": name})
        return WorkspaceRecord.of(row)

    def set_template(self, workspace: WorkspaceRecord, template: bool) -> WorkspaceRecord:
        with self.db.session() as s:
            row = s.get(Workspace, workspace.id)
            if row is None:
                raise errors.WorkspaceNotFound(f"no workspace {workspace.id!r}")
            row.template = template
        return WorkspaceRecord.of(row)

    # --- snapshots -----------------------------------------------------------
    def list_snapshots(self, workspace: WorkspaceRecord) -> list[SnapshotRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(WorkspaceSnapshot)
                             .where(WorkspaceSnapshot.account_id == workspace.account_id,
                                    WorkspaceSnapshot.workspace_id == workspace.id)
                             .order_by(WorkspaceSnapshot.created_at))
            return [SnapshotRecord.of(row) for row in rows]

    def get_snapshot(self, workspace: WorkspaceRecord, ref: str) -> SnapshotRecord:
        """A snapshot of this workspace by id or name, or 404 snapshot_not_found."""
        column = WorkspaceSnapshot.id if _SNAPSHOT_ID_PATTERN.match(ref) else WorkspaceSnapshot.name
        with self.db.session() as s:
            row = s.scalar(select(WorkspaceSnapshot).where(WorkspaceSnapshot.account_id == workspace.account_id,
                                                           WorkspaceSnapshot.workspace_id == workspace.id,
                                                           column == ref))
        if row is None:
            raise errors.SnapshotNotFound(f"workspace {workspace.name or workspace.id} has no snapshot {ref!r}")
        return SnapshotRecord.of(row)

    def check_snapshot_name(self, workspace: WorkspaceRecord, name: str | None) -> None:
        if name is None:
            return
        if _SNAPSHOT_ID_PATTERN.match(name):
            raise errors.InvalidRequest("a snapshot name must not look like a snapshot id (snap_…)")
        try:
            self.get_snapshot(workspace, name)
        except errors.NotFound:
            return
        raise errors.SnapshotExists(f"workspace {workspace.name or workspace.id} already has a snapshot named {name!r}")

    def new_snapshot_id(self) -> str:
        return "snap_" + secrets.token_hex(8)

    def add_snapshot_row(self, workspace: WorkspaceRecord, snapshot_id: str, *, name: str | None,
                         has_disk: bool) -> SnapshotRecord:
        path = self.snapshot_path(workspace.id, snapshot_id)
        row = WorkspaceSnapshot(id=snapshot_id, account_id=workspace.account_id, workspace_id=workspace.id,
                                name=name, used_bytes=allocated_bytes(path) if has_disk else 0,
                                has_disk=has_disk, created_at=utcnow())
        with self.db.session() as s:
            s.add(row)
        self.audit.record("snapshot.created", account_id=workspace.account_id, resource_type="snapshot",
                          resource_id=snapshot_id, summary=f"snapshot of workspace {workspace.name or workspace.id}",
                          metadata={"workspace_id": workspace.id, "name": name, "used_bytes": row.used_bytes})
        return SnapshotRecord.of(row)

    def mark_restored(self, snapshot: SnapshotRecord) -> SnapshotRecord:
        with self.db.session() as s:
            row = s.get(WorkspaceSnapshot, snapshot.id)
            if row is None:
                raise errors.SnapshotNotFound(f"snapshot {snapshot.id} was deleted meanwhile")
            row.restored_at = utcnow()
        self.audit.record("snapshot.restored", account_id=snapshot.account_id, resource_type="snapshot",
                          resource_id=snapshot.id, summary=f"workspace {snapshot.workspace_id} restored",
                          metadata={"workspace_id": snapshot.workspace_id, "name": snapshot.name})
        return SnapshotRecord.of(row)

    def delete_snapshot_row(self, snapshot: SnapshotRecord) -> None:
        with self.db.session() as s:
            row = s.get(WorkspaceSnapshot, snapshot.id)
            if row is not None:
                s.delete(row)
        self.snapshot_path(snapshot.workspace_id, snapshot.id).unlink(missing_ok=True)
        shutil.rmtree(self.snapshot_state_dir(snapshot.workspace_id, snapshot.id), ignore_errors=True)
        if row is not None:
            self.audit.record("snapshot.deleted", account_id=snapshot.account_id, resource_type="snapshot",
                              resource_id=snapshot.id, summary=f"snapshot {snapshot.name or snapshot.id} deleted",
                              metadata={"workspace_id": snapshot.workspace_id, "name": snapshot.name})

    def find_in_account(self, account_id: str, ref: str) -> WorkspaceRecord | None:
        try:
            return self.get_in_account(account_id, ref)
        except errors.NotFound:
            return None

    def list(self, principal: Principal) -> list[WorkspaceRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(Workspace).where(Workspace.account_id == principal.account_id)
                             .order_by(Workspace.created_at))
            return [WorkspaceRecord.of(row) for row in rows]

    def session_ids(self, workspace: WorkspaceRecord) -> tuple[str | None, str | None]:
        """(active session id, last session id)."""
        with self.db.session() as s:
            rows = list(s.execute(
                select(SessionRow.id, SessionRow.status)
                .where(SessionRow.account_id == workspace.account_id, SessionRow.workspace_id == workspace.id)
                .order_by(SessionRow.created_at.desc())
            ))
        active = next((sid for sid, status in rows if status in ACTIVE_STATUSES), None)
        return active, rows[0][0] if rows else None

    async def delete(self, workspace: WorkspaceRecord) -> None:
        """The row, its snapshots' rows, then its directory (disk and snapshots) off the event loop."""
        with self.db.session() as s:
            row = s.get(Workspace, workspace.id)
            if row is not None:
                s.delete(row)
            for snapshot in s.scalars(select(WorkspaceSnapshot).where(WorkspaceSnapshot.workspace_id == workspace.id)):
                s.delete(snapshot)
        if row is not None:
            self.audit.record("workspace.deleted", account_id=workspace.account_id, resource_type="workspace",
                              resource_id=workspace.id, summary=f"workspace {workspace.name or workspace.id} deleted",
                              metadata={"name": workspace.name})
        await asyncio.to_thread(shutil.rmtree, self.disk_path(workspace.id).parent, ignore_errors=True)
