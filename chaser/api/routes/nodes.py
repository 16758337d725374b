"""`/v1/nodes`: the nodes sharing this database, and cordoning them (admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter

from chaser.api.deps import AdminKey, ServicesDep
from chaser.api.routes import AUTH_ERROR_RESPONSES, error_responses
from chaser.models.nodes import NodeCapacityPublic, NodePublic, NodesPublic
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
    return NodesPublic(nodes=[node_public(view) for view in services.nodes.views()])


@router.get("/{node_id}", response_model=NodePublic, responses=NOT_FOUND, summary="Get a node (admin)")
async def get_node(node_id: str, services: ServicesDep, _admin: AdminKey) -> NodePublic:
    return node_public(services.nodes.get(node_id))


@router.post("/{node_id}/cordon", response_model=NodePublic, responses=NOT_FOUND,
             summary="Cordon a node: it starts no new sessions (503 `node_cordoned`); running ones carry on (admin)")
async def cordon_node(node_id: str, services: ServicesDep, admin: AdminKey) -> NodePublic:
    return node_public(services.nodes.set_status(admin, node_id, NodeStatus.CORDONED))


@router.post("/{node_id}/uncordon", response_model=NodePublic, responses=NOT_FOUND,
             summary="Uncordon a node: it starts new sessions again (admin)")
async def uncordon_node(node_id: str, services: ServicesDep, admin: AdminKey) -> NodePublic:
    return node_public(services.nodes.set_status(admin, node_id, NodeStatus.ACTIVE))
