"""`/_node/…`: what nodes ask of each other (served by `chaser node` only, behind its node token:
chaser/api/node_guard.py; not in /openapi.json). A workspace's move: chaser/service/workspace_move.py."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from chaser.api.deps import ServicesDep
from chaser.models.workspaces import WorkspaceMove, WorkspaceMovePublic

router = APIRouter(prefix="/_node", include_in_schema=False)
WorkspaceId = Path(pattern=r"^ws_[0-9a-f]+$", max_length=64)


@router.post("/workspaces/{workspace_id}/move", response_model=WorkspaceMovePublic)
async def move_workspace(body: WorkspaceMove, services: ServicesDep,
                         workspace_id: str = WorkspaceId) -> WorkspaceMovePublic:
    """Move a workspace whose disk is on this node (a replica or a drain asks)."""
    row = await services.mover.record(workspace_id)
    result = await services.mover.move(row, body.node_id)
    return WorkspaceMovePublic(**result.to_dict())


@router.put("/workspaces/{workspace_id}/disk")
async def receive_workspace(request: Request, services: ServicesDep,
                            workspace_id: str = WorkspaceId) -> dict[str, object]:
    """The stream of a workspace's directory from the node that holds it now."""
    summary = await services.mover.receive(workspace_id, request.stream())
    return {"files": summary.files, "bytes": summary.bytes, "sha256": summary.sha256}


@router.delete("/workspaces/{workspace_id}/disk")
async def discard_workspace(services: ServicesDep, workspace_id: str = WorkspaceId) -> dict[str, bool]:
    """Drop a received copy its sender did not make the workspace's."""
    await services.mover.discard(workspace_id)
    return {"discarded": True}
