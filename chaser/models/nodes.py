"""Node wire schemas (`/v1/nodes`, admin keys only; docs/api.md "Nodes")."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class NodeCapacityPublic(BaseModel):
    vcpus: int
    memory_mib: int = Field(description="Memory VMs may have (the host's minus the reserve)")
    disk_mib: int = Field(description="Disk VMs may have on the file system of the node's CHASER_HOME")
    sessions: int = Field(description="VMs at once (the node's session limit)")


class NodePublic(BaseModel):
    id: str = Field(description="`node_` + hex, kept in the node's `$CHASER_HOME/node-id`")
    name: str
    advertise_url: str | None = None
    version: str
    labels: dict[str, str]
    capacity: NodeCapacityPublic
    status: str = Field(description="`active`, `cordoned` (no new sessions) or `draining` (likewise)")
    lost: bool = Field(description="It stopped heartbeating for CHASER_NODE_LOST_AFTER_S: its sessions failed "
                                   "(`node_lost`); false again once it heartbeats")
    lost_at: datetime | None = None
    last_heartbeat_at: datetime
    heartbeat_age_s: float = Field(description="Seconds since its last heartbeat, as the answering server sees it")
    started_at: datetime
    created_at: datetime
    sessions_running: int
    current: bool = Field(description="This is the node that answered the request")


class NodesPublic(BaseModel):
    nodes: list[NodePublic]


class DrainedWorkspacePublic(BaseModel):
    workspace_id: str
    name: str | None = None
    node_id: str | None = Field(description="The node it moved to (null: it stayed, see error)")
    error: str | None = Field(None, description="Why it stayed (an active session: `workspace_busy`, …)")


class NodeDrainPublic(BaseModel):
    node: NodePublic
    moved: int = Field(description="Workspaces moved off the node")
    kept: int = Field(description="Workspaces still on it (drain again once their sessions ended)")
    workspaces: list[DrainedWorkspacePublic]
