"""`/v1/workspaces`: persistent disks that sessions attach."""

from __future__ import annotations

from fastapi import APIRouter, Body, Query

from chaser.api.deps import ServicesDep, WorkspacesRead, WorkspacesWrite
from chaser.api.routes import ERROR_RESPONSES
from chaser.models import WorkspaceCreate, WorkspaceDeletedPublic, WorkspacePublic
from chaser.service.images import DEFAULT_IMAGE
from chaser.service.workspaces import WorkspaceManager
from chaser.store import Workspace

router = APIRouter(prefix="/v1/workspaces", tags=["workspaces"], responses=ERROR_RESPONSES)


def workspace_public(row: Workspace, workspaces: WorkspaceManager) -> WorkspacePublic:
    active, last = workspaces.session_ids(row)
    return WorkspacePublic(id=row.id, name=row.name, image=row.image or DEFAULT_IMAGE, template=row.template,
                           created_at=row.created_at, active_session_id=active, last_session_id=last)


@router.post("", response_model=WorkspacePublic, summary="Create a workspace")
async def create_workspace(services: ServicesDep, principal: WorkspacesWrite,
                           body: WorkspaceCreate | None = Body(default=None)) -> WorkspacePublic:
    row = services.workspaces.create(principal, body or WorkspaceCreate())
    return workspace_public(row, services.workspaces)


@router.get("", response_model=list[WorkspacePublic], summary="List workspaces (a JSON list)")
async def list_workspaces(services: ServicesDep, principal: WorkspacesRead) -> list[WorkspacePublic]:
    return [workspace_public(row, services.workspaces) for row in services.workspaces.list(principal)]


@router.get("/{workspace}", response_model=WorkspacePublic, summary="Get a workspace by id or name")
async def get_workspace(workspace: str, services: ServicesDep, principal: WorkspacesRead) -> WorkspacePublic:
    return workspace_public(services.workspaces.get(principal, workspace), services.workspaces)


@router.delete("/{workspace}", response_model=WorkspaceDeletedPublic,
               summary="Delete a workspace and its disk (409 while a session runs, unless force=true)")
async def delete_workspace(workspace: str, services: ServicesDep, principal: WorkspacesWrite,
                           force: bool = Query(False)) -> WorkspaceDeletedPublic:
    row = services.workspaces.get(principal, workspace)
    await services.sessions.delete_workspace(principal, row, force=force)
    return WorkspaceDeletedPublic(id=row.id, deleted=True)
