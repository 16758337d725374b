"""Workspace wire schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from chaser.models.common import OmitNoneModel, RequestModel
from chaser.models.network import NetworkPolicyCreate, NetworkPolicyPublic

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class WorkspaceCreate(RequestModel):
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN)
    session_type: str | None = None
    image: str | None = Field(default=None, max_length=1000)
    template: bool | None = None
    clone_from: str | None = Field(default=None, min_length=1, max_length=200)  # a workspace name or id
    network: NetworkPolicyCreate | None = None  # inherited by its sessions (a clone: the source's unless given)


class WorkspacePublic(BaseModel):
    id: str
    name: str | None = None
    image: str
    template: bool = False
    source_workspace_id: str | None = None
    session_type: Literal["sandbox"] = "sandbox"
    status: str = "ready"
    persistence: bool = True
    created_at: datetime
    active_session_id: str | None = None
    last_session_id: str | None = None
    network: NetworkPolicyPublic | None = None  # null: its sessions get the server default
    node_id: str | None = Field(default=None, description="The node holding its disk (null: none yet)")


class WorkspaceMove(RequestModel):
    node_id: str = Field(min_length=1, max_length=64, pattern=r"^node_[0-9a-f]+$",
                         description="The node to move the disk and its snapshots to (`chaser nodes list`)")


class WorkspaceMovePublic(BaseModel):
    workspace_id: str
    from_node_id: str | None = Field(description="Where its disk was (null: nowhere yet)")
    node_id: str = Field(description="Where its disk is now")
    moved: bool = Field(description="false: it was there already, or had no disk yet (only its node was set)")
    files: int = Field(0, description="Files moved: the disk, snapshots, saved VM states")
    bytes: int = Field(0, description="Data bytes streamed (a disk's holes and zero blocks are not)")
    sha256: str | None = Field(None, description="Over every moved file's path and checksum, as the target read "
                                                 "them back; equal to the sender's or nothing moved")
    duration_ms: int = 0


class WorkspaceDeletedPublic(BaseModel):
    id: str
    deleted: bool = True


class WorkspaceRename(RequestModel):
    name: str | None = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)  # null clears the name


class WorkspaceNamePublic(BaseModel):
    id: str
    name: str | None = None


class WorkspaceTemplateSet(RequestModel):
    template: bool


class WorkspaceTemplatePublic(BaseModel):
    id: str
    template: bool


class BulkDeleteWorkspacesCreate(RequestModel):
    ids: list[str] | None = Field(default=None, max_length=1000)
    all: bool = False
    force: bool = False


class BulkDeleteWorkspaceItem(OmitNoneModel):
    omit_if_none = frozenset({"error"})  # only on a failure

    id: str
    deleted: bool
    error: str | None = None


class BulkDeleteWorkspacesPublic(BaseModel):
    requested: int
    deleted: int
    failed: int
    results: list[BulkDeleteWorkspaceItem]


class SnapshotCreate(RequestModel):
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN)
    memory: bool = Field(False, description="Also keep the running session's memory: restoring the snapshot "
                                            "then resumes its processes (docs/pause-and-fork.md)")


class SnapshotRestore(RequestModel):
    force: bool = False  # terminate the workspace's running session first


class WorkspaceSnapshotPublic(BaseModel):
    id: str
    workspace_id: str
    name: str | None = None
    used_bytes: int
    created_at: datetime
    restored_at: datetime | None = None
    memory: bool = False  # holds a session's memory too


class SnapshotDeletedPublic(BaseModel):
    id: str
    workspace_id: str
    deleted: bool = True
