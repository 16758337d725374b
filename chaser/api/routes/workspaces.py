"""`/v1/workspaces`: persistent disks that sessions attach, their clones and snapshots."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Body, Query

from chaser.api.deps import AdminKey, ServicesDep, WorkspacesRead, WorkspacesWrite
from chaser.api.routes import AUTH_ERROR_RESPONSES, START_ERROR_RESPONSES, error_responses
from chaser.models import WorkspaceCreate, WorkspaceDeletedPublic, WorkspacePublic
from chaser.models.workspaces import (
    BulkDeleteWorkspaceItem,
    BulkDeleteWorkspacesCreate,
    BulkDeleteWorkspacesPublic,
    SnapshotCreate,
    SnapshotDeletedPublic,
    SnapshotRestore,
    WorkspaceMove,
    WorkspaceMovePublic,
    WorkspaceNamePublic,
    WorkspaceRename,
    WorkspaceSnapshotPublic,
    WorkspaceTemplatePublic,
    WorkspaceTemplateSet,
)
from chaser.service.images import DEFAULT_IMAGE
from chaser.service.network import policy_public, stored_policy
from chaser.service.records import SnapshotRecord, WorkspaceRecord
from chaser.service.workspaces import WorkspaceManager

router = APIRouter(prefix="/v1/workspaces", tags=["workspaces"], responses=AUTH_ERROR_RESPONSES)
# Copying the disk of a workspace whose session runs (clone, snapshot) freezes its VM: 503 if that VM is gone.
COPY_ERROR = (503, "The running session's VM could not be frozen for the copy (`vm_crashed`, …); "
                   "nothing was recorded")


def workspace_public(row: WorkspaceRecord, workspaces: WorkspaceManager, *, enforced: bool) -> WorkspacePublic:
    active, last = workspaces.session_ids(row)
    network = None
    if row.network is not None:
        policy = stored_policy(row.network, default_internet=workspaces.settings.network_internet_default)
        network = policy_public(policy, enforced=enforced)
    return WorkspacePublic(id=row.id, name=row.name, image=row.image or DEFAULT_IMAGE, template=row.template,
                           source_workspace_id=row.source_workspace_id,
                           created_at=row.created_at, active_session_id=active, last_session_id=last,
                           network=network, node_id=row.node_id)


def snapshot_public(row: SnapshotRecord, *, memory: bool = False) -> WorkspaceSnapshotPublic:
    return WorkspaceSnapshotPublic(id=row.id, workspace_id=row.workspace_id, name=row.name,
                                   used_bytes=row.used_bytes, created_at=row.created_at,
                                   restored_at=row.restored_at, memory=memory)


@router.post("", response_model=WorkspacePublic, responses=error_responses(400, 404, 409, COPY_ERROR),
             summary="Create a workspace (clone_from: start with a copy of another workspace's disk)")
async def create_workspace(services: ServicesDep, principal: WorkspacesWrite,
                           body: WorkspaceCreate | None = Body(default=None)) -> WorkspacePublic:
    row = await services.disks.create_workspace(principal, body or WorkspaceCreate())
    return await asyncio.to_thread(workspace_public, row, services.workspaces,
                                   enforced=services.sessions.network.enforced())


@router.get("", response_model=list[WorkspacePublic], summary="List workspaces (a JSON list)")
async def list_workspaces(services: ServicesDep, principal: WorkspacesRead) -> list[WorkspacePublic]:
    enforced = services.sessions.network.enforced()

    def listed() -> list[WorkspacePublic]:
        return [workspace_public(row, services.workspaces, enforced=enforced)
                for row in services.workspaces.list(principal)]

    return await asyncio.to_thread(listed)


@router.post("/bulk-delete", response_model=BulkDeleteWorkspacesPublic,
             summary="Delete several workspaces (ids, or all); force also terminates their sessions")
async def bulk_delete_workspaces(services: ServicesDep, principal: WorkspacesWrite,
                                 body: BulkDeleteWorkspacesCreate | None = Body(default=None)
                                 ) -> BulkDeleteWorkspacesPublic:
    results = await services.disks.bulk_delete_workspaces(principal, body or BulkDeleteWorkspacesCreate())
    items = [BulkDeleteWorkspaceItem(id=ref, deleted=error is None, error=error) for ref, error in results]
    deleted = sum(item.deleted for item in items)
    return BulkDeleteWorkspacesPublic(requested=len(items), deleted=deleted, failed=len(items) - deleted,
                                      results=items)


@router.get("/{workspace}", response_model=WorkspacePublic, responses=error_responses(404),
            summary="Get a workspace by id or name")
async def get_workspace(workspace: str, services: ServicesDep, principal: WorkspacesRead) -> WorkspacePublic:
    enforced = services.sessions.network.enforced()
    row = await asyncio.to_thread(services.workspaces.get, principal, workspace)
    return await asyncio.to_thread(workspace_public, row, services.workspaces, enforced=enforced)


@router.delete("/{workspace}", response_model=WorkspaceDeletedPublic, responses=error_responses(404, 409),
               summary="Delete a workspace, its disk and snapshots (409 while a session runs, unless force=true)")
async def delete_workspace(workspace: str, services: ServicesDep, principal: WorkspacesWrite,
                           force: bool = Query(False)) -> WorkspaceDeletedPublic:
    row = await asyncio.to_thread(services.workspaces.get, principal, workspace)
    await services.disks.delete_workspace(principal, row, force=force)
    return WorkspaceDeletedPublic(id=row.id, deleted=True)


@router.put("/{workspace}/name", response_model=WorkspaceNamePublic, responses=error_responses(400, 404, 409),
            summary="Rename a workspace (null clears the name; 409 workspace_exists if taken)")
async def rename_workspace(workspace: str, body: WorkspaceRename, services: ServicesDep,
                           principal: WorkspacesWrite) -> WorkspaceNamePublic:
    row = await asyncio.to_thread(services.workspaces.get, principal, workspace)
    row = await asyncio.to_thread(services.workspaces.rename, row, body.name)
    services.sessions.rename_live(row)
    return WorkspaceNamePublic(id=row.id, name=row.name)


@router.post("/{workspace}/move", response_model=WorkspaceMovePublic,
             responses=error_responses(400, (403, "Not an admin key (`forbidden`)"), 404,
                                       (409, "A session of it is active (`workspace_busy`), or the target node "
                                             "is cordoned or draining (`node_not_accepting`)"),
                                       (502, "The checksum read back on the target differs (`checksum_mismatch`); "
                                             "the workspace stays where it was"),
                                       (503, "The source or the target node is lost (`node_unavailable`)"), 507),
             summary="Move a workspace's disk and snapshots to another node, checked by checksum (admin)")
async def move_workspace(workspace: str, body: WorkspaceMove, services: ServicesDep,
                         admin: AdminKey) -> WorkspaceMovePublic:
    row = await asyncio.to_thread(services.workspaces.get, admin, workspace)
    result = await services.mover.move(row, body.node_id, principal=admin)
    return WorkspaceMovePublic(**result.to_dict())


@router.put("/{workspace}/template", response_model=WorkspaceTemplatePublic, responses=error_responses(404),
            summary="Mark a workspace as a template (or not)")
async def set_workspace_template(workspace: str, body: WorkspaceTemplateSet, services: ServicesDep,
                                 principal: WorkspacesWrite) -> WorkspaceTemplatePublic:
    row = await asyncio.to_thread(services.workspaces.get, principal, workspace)
    row = await asyncio.to_thread(services.workspaces.set_template, row, body.template)
    return WorkspaceTemplatePublic(id=row.id, template=row.template)


@router.get("/{workspace}/snapshots", response_model=list[WorkspaceSnapshotPublic], responses=error_responses(404),
            summary="List a workspace's snapshots (a JSON list, oldest first)")
async def list_snapshots(workspace: str, services: ServicesDep,
                         principal: WorkspacesRead) -> list[WorkspaceSnapshotPublic]:
    def listed() -> list[WorkspaceSnapshotPublic]:
        row = services.workspaces.get(principal, workspace)
        return [snapshot_public(snapshot, memory=services.workspaces.has_memory(snapshot))
                for snapshot in services.workspaces.list_snapshots(row)]

    return await asyncio.to_thread(listed)


@router.post("/{workspace}/snapshots", response_model=WorkspaceSnapshotPublic,
             responses=error_responses(400, 404, 409, COPY_ERROR, 507),
             summary="Snapshot a workspace's disk (a running session is frozen for the copy); "
                     "memory=true keeps the running session's memory too")
async def create_snapshot(workspace: str, services: ServicesDep, principal: WorkspacesWrite,
                          body: SnapshotCreate | None = Body(default=None)) -> WorkspaceSnapshotPublic:
    row = await asyncio.to_thread(services.workspaces.get, principal, workspace)
    request = body or SnapshotCreate()
    snapshot = await services.disks.create_snapshot(principal, row, name=request.name, memory=request.memory)
    return snapshot_public(snapshot, memory=services.workspaces.has_memory(snapshot))


@router.post("/{workspace}/snapshots/{snapshot}/restore", response_model=WorkspaceSnapshotPublic,
             responses={**error_responses(404, 409), **START_ERROR_RESPONSES},
             summary="Restore a snapshot over the workspace's disk (409 while a session runs, unless force); "
                     "a memory snapshot's processes resume in a new session")
async def restore_snapshot(workspace: str, snapshot: str, services: ServicesDep, principal: WorkspacesWrite,
                           body: SnapshotRestore | None = Body(default=None)) -> WorkspaceSnapshotPublic:
    row = await asyncio.to_thread(services.workspaces.get, principal, workspace)
    restored = await services.disks.restore_snapshot(principal, row, snapshot,
                                                        force=(body or SnapshotRestore()).force)
    return snapshot_public(restored, memory=services.workspaces.has_memory(restored))


@router.delete("/{workspace}/snapshots/{snapshot}", response_model=SnapshotDeletedPublic,
               responses=error_responses(404),
               summary="Delete a snapshot")
async def delete_snapshot(workspace: str, snapshot: str, services: ServicesDep,
                          principal: WorkspacesWrite) -> SnapshotDeletedPublic:
    row = await asyncio.to_thread(services.workspaces.get, principal, workspace)
    deleted = await services.disks.delete_snapshot(principal, row, snapshot)
    return SnapshotDeletedPublic(id=deleted.id, workspace_id=deleted.workspace_id)
