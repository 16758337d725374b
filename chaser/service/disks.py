"""Workspace disks while sessions may hold them: deletion, clones and snapshots.

A workspace's disk is used by at most one VM; every operation here runs under
the workspace's lock (`SessionManager.workspace_lock`), so no session starts on
a disk while it is copied or replaced. A copy of a disk whose session runs is
made with the VM frozen (`_consistent_copy`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from sqlalchemy import select

from chaser import errors
from chaser.diskcopy import copy_disk
from chaser.models.status import ACTIVE_STATUSES, EndReason, SessionStatus
from chaser.models.workspaces import BulkDeleteWorkspacesCreate, WorkspaceCreate
from chaser.runtime import SandboxVM
from chaser.service.keys import Principal
from chaser.service.live import LiveSession
from chaser.service.records import SnapshotRecord, WorkspaceRecord
from chaser.service.sessions import SessionManager
from chaser.service.workspaces import WorkspaceManager
from chaser.store import Database, SessionRow
from chaser.store.tables import utcnow

log = logging.getLogger(__name__)


class WorkspaceDisks:
    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions
        self.db: Database = sessions.db
        self.workspaces: WorkspaceManager = sessions.workspaces

    async def end_sessions(self, workspace: WorkspaceRecord, *, force: bool, graceful: bool, reason: str) -> None:
        """The workspace's running session holds its disk: 409 workspace_busy,
        or with `force` it is stopped first (call under the workspace lock)."""
        active = [live for live in self.sessions.live.values() if live.workspace_id == workspace.id]
        if active and not force:
            raise errors.WorkspaceBusy(
                f"workspace {workspace.name or workspace.id} has a running session {active[0].id}; "
                "terminate it first or pass force=true")
        for live in active:
            await self.sessions.end(live, force=not graceful, status=SessionStatus.TERMINATED, reason=reason)

    async def delete_workspace(self, principal: Principal, workspace: WorkspaceRecord, *, force: bool) -> None:
        """Delete a workspace and its disk; its running session blocks this (409) unless `force`."""
        async with self.sessions.workspace_lock(workspace.id):
            await self.end_sessions(workspace, force=force, graceful=False, reason=EndReason.WORKSPACE_DELETED)
            with self.db.session() as s:  # stale rows of an earlier process
                for row in s.scalars(select(SessionRow).where(SessionRow.workspace_id == workspace.id,
                                                              SessionRow.status.in_(ACTIVE_STATUSES))):
                    row.status, row.end_reason = SessionStatus.TERMINATED, EndReason.WORKSPACE_DELETED
                    row.ended_at = utcnow()
            await self.workspaces.delete(workspace)
        self.sessions.forget_workspace_lock(workspace.id)

    async def bulk_delete_workspaces(self, principal: Principal, request: BulkDeleteWorkspacesCreate
                                     ) -> list[tuple[str, str | None]]:
        """(id or the ref given, error message or None) for each workspace targeted."""
        targets: dict[str, None] = {ref: None for ref in request.ids or []}
        if request.all:
            for row in self.workspaces.list(principal):
                targets[row.id] = None
        results: list[tuple[str, str | None]] = []
        resolved: dict[str, WorkspaceRecord] = {}
        for ref in targets:  # resolved first: the same workspace by name and by id counts once
            try:
                workspace = self.workspaces.get(principal, ref)
            except errors.ChaserError as exc:
                results.append((ref, exc.message))
                continue
            resolved.setdefault(workspace.id, workspace)
        for workspace in resolved.values():
            try:
                await self.delete_workspace(principal, workspace, force=request.force)
                results.append((workspace.id, None))
            except errors.ChaserError as exc:
                results.append((workspace.id, exc.message))
        return results

    # --- workspace disks: clones and snapshots -------------------------------
    def _still_there(self, workspace: WorkspaceRecord) -> None:
        """Under the workspace lock: a delete that ran while we waited for it wins."""
        if self.workspaces.find_in_account(workspace.account_id, workspace.id) is None:
            raise errors.WorkspaceNotFound(f"no workspace {workspace.id!r}")

    async def create_workspace(self, principal: Principal, request: WorkspaceCreate) -> WorkspaceRecord:
        """A new workspace; with `clone_from`, its disk starts as a copy of that workspace's."""
        if request.clone_from is None:
            return self.workspaces.create(principal, request)
        source = self.workspaces.get(principal, request.clone_from)
        async with self.sessions.workspace_lock(source.id):
            self._still_there(source)
            row = self.workspaces.create_row(account_id=principal.account_id, name=request.name,
                                             session_type=request.session_type, image=request.image,
                                             template=bool(request.template), source=source,
                                             network=self.workspaces.network_of(request, source))
            try:
                source_disk = self.workspaces.disk_path(source.id)
                if source_disk.exists():
                    await self._consistent_copy(source, source_disk, self.workspaces.disk_path(row.id))
            except BaseException:
                await self.workspaces.delete(row)
                raise
        return row

    async def create_snapshot(self, principal: Principal, workspace: WorkspaceRecord, *,
                              name: str | None, memory: bool = False) -> SnapshotRecord:
        """Copy the workspace's disk; a running session is frozen (guest `sync`, QMP stop/cont) around it.
        `memory`: the running session's memory is kept too (a fork's save, chaser/service/suspend.py)."""
        async with self.sessions.workspace_lock(workspace.id):
            self._still_there(workspace)
            self.workspaces.check_snapshot_name(workspace, name)
            snapshot_id = self.workspaces.new_snapshot_id()
            disk = self.workspaces.disk_path(workspace.id)
            path = self.workspaces.snapshot_path(workspace.id, snapshot_id)
            state = self.workspaces.snapshot_state_dir(workspace.id, snapshot_id)
            has_disk = disk.exists()
            try:
                if memory:
                    live = self._running_session(workspace)
                    await self.sessions.suspender.save_copy(live, state)
                    await asyncio.to_thread(os.replace, state / "writable.img", path)
                    has_disk = True
                elif has_disk:
                    await self._consistent_copy(workspace, disk, path)
                return self.workspaces.add_snapshot_row(workspace, snapshot_id, name=name, has_disk=has_disk)
            except BaseException:
                path.unlink(missing_ok=True)
                await asyncio.to_thread(shutil.rmtree, state, True)
                raise

    def _running_session(self, workspace: WorkspaceRecord) -> LiveSession:
        live = next((item for item in self.sessions.live.values()
                     if item.workspace_id == workspace.id and not item.terminating), None)
        if live is None:
            raise errors.SessionNotRunning(
                f"workspace {workspace.name or workspace.id} has no running session: a memory snapshot "
                "keeps a running session's memory (start one, or snapshot without memory)")
        return live

    async def restore_snapshot(self, principal: Principal, workspace: WorkspaceRecord, snapshot_ref: str, *,
                               force: bool) -> SnapshotRecord:
        """Replace the workspace's disk by the snapshot's (atomically). A running session
        holds the disk: 409 workspace_busy, or with `force` it is terminated first."""
        async with self.sessions.workspace_lock(workspace.id):
            self._still_there(workspace)
            snapshot = self.workspaces.get_snapshot(workspace, snapshot_ref)
            await self.end_sessions(workspace, force=force, graceful=True, reason=EndReason.SNAPSHOT_RESTORED)
            disk = self.workspaces.disk_path(workspace.id)
            if snapshot.has_disk:
                source = self.workspaces.snapshot_path(workspace.id, snapshot.id)
                if not source.exists():
                    raise errors.SnapshotNotFound(f"the disk file of snapshot {snapshot.id} is missing")
                await asyncio.to_thread(copy_disk, source, disk)
            else:  # taken before the workspace had a disk: the next session starts empty
                disk.unlink(missing_ok=True)
            restored = self.workspaces.mark_restored(snapshot)
            state = self.workspaces.snapshot_state_dir(workspace.id, snapshot.id)
            if state.is_dir():  # a memory snapshot: its processes come back in a new session
                await self.sessions.suspender.start_from_copy(principal, workspace, state)
            return restored

    async def delete_snapshot(self, principal: Principal, workspace: WorkspaceRecord, snapshot_ref: str
                              ) -> SnapshotRecord:
        async with self.sessions.workspace_lock(workspace.id):
            snapshot = self.workspaces.get_snapshot(workspace, snapshot_ref)
            self.workspaces.delete_snapshot_row(snapshot)
            return snapshot

    async def _consistent_copy(self, workspace: WorkspaceRecord, src: Path, dst: Path) -> None:
        """Copy a workspace disk (the caller holds the workspace lock, so no session starts).

        With a session running, the copy is made with the VM frozen: `sync` in the
        guest writes its dirty pages to the disk, QMP `stop` pauses the vCPUs and
        drains QEMU's I/O, the copy runs, then `cont`. The copy is what a power cut
        at that instant would leave — with everything synced, a clean ext4 (its
        journal replays on mount). The session's lock is held meanwhile, so a
        terminate waits for `cont`."""
        live = next((item for item in self.sessions.live.values() if item.workspace_id == workspace.id), None)
        if live is None:
            await asyncio.to_thread(copy_disk, src, dst)
            return
        crashed: errors.VMCrashed | None = None
        async with live.lock:  # a session still starting is waited for; a stop in progress finishes
            if self.sessions.live.get(live.id) is not live or live.vm is None:
                await asyncio.to_thread(copy_disk, src, dst)
                return
            vm = live.vm
            live.active_requests += 1  # not `using()`: its crash handling takes live.lock
            try:
                await self._frozen_copy(live, vm, src, dst)
            except errors.VMCrashed as exc:
                crashed = exc
            finally:
                live.active_requests -= 1
                live.touch()
        if crashed is not None:
            await self.sessions.end_crashed(live)
            raise crashed

    async def _frozen_copy(self, live: LiveSession, vm: SandboxVM, src: Path, dst: Path) -> None:
        result = await vm.exec("sync", timeout_ms=120_000)
        if result.get("exit_code") not in (0, None):
            raise errors.SandboxRuntimeError(f"sync in the guest failed (exit code {result.get('exit_code')})")
        await vm.freeze()
        try:
            await asyncio.to_thread(copy_disk, src, dst)
        finally:
            try:
                await vm.thaw()
            except Exception:
                log.exception("session %s: resuming the VM after a disk copy failed", live.id)
