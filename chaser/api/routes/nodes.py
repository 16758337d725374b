"""`/v1/nodes`: the nodes sharing this database, and cordoning them (admin keys only)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from chaser.api.deps import AdminKey, ServicesDep
from chaser.api.routes import AUTH_ERROR_RESPONSES, error_responses
from chaser.models.nodes import DrainedWorkspacePublic, NodeCapacityPublic, NodeDrainPublic, NodePublic, NodesPublic
from chaser.models.status import NodeStatus
from chaser.service.nodes import NodeView

router = APIRouter(prefix="/v1/nodes", tags=["nodes"], responses={
    **AUTH_ERROR_RESPONSES, **error_responses((403, "The key is not an admin (full-access) key (`forbidden`)"))})
NOT_FOUND = error_responses((404, "`node_not_found`: no such node"))


def node_public(view: NodeView) -> NodePublic:
    node = view.node
    return NodePublic(
        id=node.id, name=node.name, advertise_url=node.advertise_url, version=node.version, labels=node.labels or {},
        capacity=NodeCapacityPublic(vcpus=node.capacity_vcpus, memory_mib=node.capacity_memory_mib,
                                    disk_mib=node.capacity_disk_mib, sessions=node.capacity_sessions),
        status=node.status, lost=node.lost_at is not None, lost_at=node.lost_at,
        last_heartbeat_at=node.last_heartbeat_at, heartbeat_age_s=round(view.heartbeat_age_s, 3),
        started_at=node.started_at, created_at=node.created_at, sessions_running=view.sessions_running,
        current=view.current,
    )


@router.get("", response_model=NodesPublic, summary="List the nodes (admin)")
async def list_nodes(services: ServicesDep, _admin: AdminKey) -> NodesPublic:
    return NodesPublic(nodes=[node_public(view) for view in await asyncio.to_thread(services.nodes.views)])


@router.get("/{node_id}", response_model=NodePublic, responses=NOT_FOUND, summary="Get a node (admin)")
async def get_node(node_id: str, services: ServicesDep, _admin: AdminKey) -> NodePublic:
    return node_public(await asyncio.to_thread(services.nodes.get, node_id))


@router.post("/{node_id}/cordon", response_model=NodePublic, responses=NOT_FOUND,
             summary="Cordon a node: it starts no new sessions (503 `node_cordoned`); running ones carry on (admin)")
async def cordon_node(node_id: str, services: ServicesDep, admin: AdminKey) -> NodePublic:
    return node_public(await asyncio.to_thread(services.nodes.set_status, admin, node_id, NodeStatus.CORDONED))


@router.post("/{node_id}/uncordon", response_model=NodePublic, responses=NOT_FOUND,
             summary="Uncordon a node: it starts new sessions again (admin)")
async def uncordon_node(node_id: str, services: ServicesDep, admin: AdminKey) -> NodePublic:
    return node_public(await asyncio.to_thread(services.nodes.set_status, admin, node_id, NodeStatus.ACTIVE))


@router.post("/{node_id}/drain", response_model=NodeDrainPublic, responses=NOT_FOUND,
             summary="Drain a node: no new sessions, and its idle workspaces move to other nodes, each checked by "
                     "checksum; those with an active session stay (admin)")
async def drain_node(node_id: str, services: ServicesDep, admin: AdminKey) -> NodeDrainPublic:
    items = await services.mover.drain(admin, node_id)
    moved = sum(item.node_id is not None for item in items)
    view = await asyncio.to_thread(services.nodes.get, node_id)
    return NodeDrainPublic(node=node_public(view), moved=moved, kept=len(items) - moved,
                           workspaces=[DrainedWorkspacePublic(workspace_id=item.workspace_id, name=item.name,
                                                              node_id=item.node_id, error=item.error)
                                       for item in items])
